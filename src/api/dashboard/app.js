// The dashboard's script (served inside index.html): signs in with an admin token kept in
// sessionStorage, polls the JSON API every second and shows per service what a release
// engineer decides from — the split configured and observed, the last seconds' figures and
// the charts, the rollout (step, time in it, pause left, deadline, guard, new errors,
// verdicts) with the
// actions its state allows, and the timeline. Each card is made once and its parts replaced
// only when their text changes, so a picker or a filter keeps what a person chose.
"use strict";

const COLORS = ["var(--c0)", "var(--c1)", "var(--c2)", "var(--c3)"];
// Each group's line drawn differently, so a line under another stays visible.
const STROKES = [{ width: 2.5, dash: "" }, { width: 1.5, dash: "6 3" }, { width: 1.5, dash: "2 2" }, { width: 1.5, dash: "8 2 2 2" }];
// The timeline's filters: which event kinds each shows.
const KINDS = {
  rollouts: ["started", "weight", "mirror", "step", "paused", "resumed", "promoted", "retried", "hook", "hook_failed", "retired", "completed", "restored"],
  traffic: ["switch", "switch_back", "weights", "config"],
  analysis: ["analysis"],
  rollbacks: ["aborted", "rolled_back"],
};
const OBSERVED_WINDOW = "last 5 s"; // the status answer's observed split (5000 ms)

let token = sessionStorage.getItem("sy-token") || "";
const $ = (sel, root = document) => root.querySelector(sel);
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const pct = n => `${n.toFixed(1)}%`;
const ago = ms => ms == null ? "never" : `${(Math.max(0, Date.now() - ms) / 1000).toFixed(1)} s ago`;
// A duration as the CLI prints it (humantime): "1h 2m 5s", "40s", "0s".
const dur = ms => {
  let s = Math.max(0, Math.ceil(ms / 1000));
  const parts = [[3600, "h"], [60, "m"], [1, "s"]].flatMap(([n, u]) => { const v = Math.floor(s / n); s %= n; return v ? [`${v}${u}`] : []; });
  return parts.join(" ") || "0s";
};
const when = ms => `<time datetime="${new Date(ms).toISOString()}" title="${new Date(ms).toISOString()}">${esc(new Date(ms).toLocaleString())}</time>`;

// What a person chose or was told, kept across polls: errors by service and action, the
// pickers' choices, the timeline filters, and the last data each card was drawn from.
const ui = { errors: {}, picks: {}, filters: {}, data: {}, pauseEnd: {} };

// ---- signing in and out ----

function showSignedIn(who) {
  $("#token-form").hidden = !!who;
  $("#who").hidden = !who;
  if (who) $('[data-testid="signed-in"]').textContent = who;
}

function signOut(message) {
  token = "";
  sessionStorage.removeItem("sy-token");
  // What was shown or refused for that token is not the next one's.
  ui.data = {};
  ui.errors = {};
  showSignedIn(null);
  $("#gen").textContent = "";
  $("#error").textContent = "";
  $("#services").innerHTML = `<p class="dim" data-testid="token-message">${esc(message)}</p>`;
  $("#token").focus();
}

$("#token-form").addEventListener("submit", e => {
  e.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("sy-token", token);
  $("#token").value = "";
  refresh();
});
$("#sign-out").addEventListener("click", () => signOut("Signed out: the token is forgotten. Enter the admin token to see services."));

class Refused extends Error {}

// A call with the token in use when it began: a 401 signs out only if that token is still
// the one in use (an answer to a call made before a sign-out or another sign-in is dropped).
async function api(path, opts = {}) {
  const used = token;
  const r = await fetch(path, { ...opts, headers: { "Authorization": "Bearer " + used, "Content-Type": "application/json", "x-switchyard-actor": "dashboard" } });
  const body = await r.json().catch(() => null);
  if (used !== token) throw new Refused("the token changed meanwhile");
  if (r.status === 401) {
    signOut(`The admin API refused the token (${body?.error?.message || "401"}). Enter the admin token again.`);
    throw new Refused("signed out");
  }
  if (!r.ok) throw new Error(body?.error?.message || r.status + " " + r.statusText);
  return body;
}

// ---- actions ----

const svcPath = svc => `/api/v1/services/${encodeURIComponent(svc)}`;

// What each action asks (null: nothing) and does, given the card's data.
const ACTIONS = {
  pause: { call: d => [`${svcPath(d.svc.name)}/rollout/pause`, {}] },
  resume: { call: d => [`${svcPath(d.svc.name)}/rollout/resume`, {}] },
  promote: {
    ask: d => lastStep(d.rollout)
      ? `Promote ${d.svc.name} past its last step? ${d.rollout.candidate} takes all traffic (100%) and the rollout completes; ${d.rollout.stable} gets none.`
      : null,
    call: d => [`${svcPath(d.svc.name)}/rollout/promote`, {}],
  },
  "promote-full": {
    ask: d => `Promote ${d.svc.name} fully? The ${d.rollout.steps.length - d.rollout.step} remaining step(s) are skipped: ${d.rollout.candidate} takes all traffic (100%) at once.`,
    call: d => [`${svcPath(d.svc.name)}/rollout/promote`, { full: true }],
  },
  abort: {
    ask: d => `Abort rollout #${d.rollout.id} of ${d.svc.name}? All traffic goes back to ${d.rollout.stable} at once.`,
    call: d => [`${svcPath(d.svc.name)}/rollout/abort`, {}],
  },
  retry: {
    ask: d => `Retry rollout #${d.rollout.id} of ${d.svc.name} from its first step? ${d.rollout.candidate} gets traffic again (attempt ${d.rollout.attempt + 2}).`,
    call: d => [`${svcPath(d.svc.name)}/rollout/retry`, {}],
  },
  undo: {
    ask: d => `Undo rollout #${d.rollout.id} of ${d.svc.name}? All traffic goes back to ${d.rollout.stable}; ${d.rollout.candidate} gets none. (Past the service's rollback window this starts a rollout back to ${d.rollout.stable} through the steps instead.)`,
    call: d => [`${svcPath(d.svc.name)}/rollout/undo`, {}],
  },
  start: {
    ask: d => `Start a rollout of ${d.svc.name}: ${pick(d, "start")} as candidate, from ${d.svc.stable || "the stable group"}, with the configured strategy ${d.svc.strategy?.name}?`,
    call: d => ["/api/v1/rollouts", { service: d.svc.name, candidate: pick(d, "start") }],
  },
  switch: {
    ask: d => `Switch ${d.svc.name}: all traffic to ${pick(d, "switch")} at once (now ${d.svc.split_text})?`,
    call: d => [`${svcPath(d.svc.name)}/switch`, { group: pick(d, "switch") }],
  },
};

async function act(service, verb) {
  const d = ui.data[service];
  const a = ACTIONS[verb];
  if (!d || !a) return;
  const question = a.ask?.(d);
  if (question && !confirm(question)) return;
  const errors = ui.errors[service] ||= {};
  try {
    const [path, body] = a.call(d);
    await api(path, { method: "POST", body: JSON.stringify(body) });
    delete errors[verb];
  } catch (e) {
    if (e instanceof Refused) return;
    errors[verb] = e.message;
  }
  refresh();
}

// ---- what the rollout is doing ----

const active = r => r && (r.status === "progressing" || r.status === "paused");
const stepKind = r => Object.keys(r?.strategy?.steps?.[r.step] || {})[0];
const lastStep = r => r.step >= r.steps.length - 1;
// Waiting for a person or a measurement: a pause (timed or until promoted) or an analysis.
const waiting = r => active(r) && !r.held && (r.status === "paused" || ["pause", "analysis"].includes(stepKind(r)));
// "step 2 of 4", counted from 1 as the CLI says it (the API's `step` counts from 0).
const stepOf = r => `step ${Math.min(r.step + 1, r.steps.length)} of ${r.steps.length}`;

// When the timed pause in progress ends (local clock), or null. The API has the time spent
// (checkpointed every second) and when it was written; between polls the page counts down
// itself, and never shows more time left than it showed before for the same pause.
function pauseEnd(r) {
  const ms = r.strategy.steps[r.step]?.pause?.duration_ms;
  if (!active(r) || ms == null) return null;
  const key = `${r.service}/${r.id}/${r.attempt}/${r.step}`;
  const running = r.status === "progressing";
  const since = running ? Math.min(Math.max(0, Date.now() - r.updated_at), 1000) : 0;
  let end = Date.now() + ms - r.pause_elapsed_ms - since;
  const before = ui.pauseEnd[r.service];
  if (running && before?.key === key && before.running) end = Math.min(end, before.end);
  ui.pauseEnd[r.service] = { key, end, running, total: ms };
  return ui.pauseEnd[r.service];
}

// Texts that change every second, redrawn by `tick` between polls.
const LIVE = {
  since: at => `${dur(Date.now() - at)} in this step`,
  left: (end, total, stopped) => `${dur(stopped ? end : end - Date.now())} left of ${dur(total)}${stopped ? ", stopped while paused" : ""}`,
  deadline: (at, after) => `progress deadline ${dur(after)}: aborts at ${new Date(at).toLocaleTimeString()} (${dur(at - Date.now())} left)`,
};

function tick() {
  document.querySelectorAll("[data-live]").forEach(el => {
    const args = JSON.parse(el.dataset.args);
    el.textContent = LIVE[el.dataset.live](...args);
  });
}
const live = (testid, kind, ...args) =>
  `<span data-testid="${esc(testid)}" data-live="${kind}" data-args="${esc(JSON.stringify(args))}">${esc(LIVE[kind](...args))}</span>`;

// The candidate's failed answers by fingerprint against stable's (`new_errors` of the
// rollout view): the new ones — only the candidate, `min_count` times or more — first and
// marked, at most five, so a new bug at a low rate is seen before any check fails.
function newErrorsPart(r, n) {
  const e = r.new_errors;
  if (!e || (!e.fingerprints.length && !e.candidate_overflow)) return "";
  const rows = e.fingerprints.slice(0, 5).map(f => {
    const what = `${f.status}${f.cause ? ` ${f.cause}` : ""}${f.sample ? ` '${f.sample}'` : ""}`;
    // Cells apart by a space, so the row reads as words in its text too.
    const cells = [f.new ? "<b>new</b>" : "", esc(what), esc(f.route), f.candidate, f.stable, esc(new Date(f.first_unix_ms).toLocaleTimeString())];
    return `<tr class="${f.new ? "err" : ""}">${cells.map(c => `<td>${c}</td>`).join(" ")}</tr>`;
  }).join("");
  const more = e.fingerprints.length > 5 ? `<div class="dim">and ${e.fingerprints.length - 5} more</div>` : "";
  const over = e.candidate_overflow ? `<div class="dim">${e.candidate_overflow} failed answers of ${esc(r.candidate)} beyond the fingerprints kept</div>` : "";
  const fresh = e.fingerprints.filter(f => f.new).length;
  return `<div class="label">New errors since ${esc(new Date(e.since_unix_ms).toLocaleTimeString())}: ${fresh} new (only ${esc(r.candidate)}, ${e.min_count}+ times)</div>
    <div class="scroll" data-testid="new-errors-${n}"><table><tr><th></th> <th>answer</th> <th>route</th> <th>${esc(r.candidate)}</th> <th>${esc(r.stable)}</th> <th>first</th></tr> ${rows}</table>${more}${over}</div>`;
}

function rolloutPart(svc, r, events) {
  if (!r) return `<div class="label">Rollout</div><p class="dim">No rollout yet.</p>`;
  const n = esc(svc.name);
  const facts = [`<b data-testid="step-${n}">${esc(stepOf(r))}</b>`];
  if (active(r)) {
    facts.push(`<span class="dim">${esc(r.steps[r.step] || "")}</span>`);
    if (r.step_began && r.step_began.step === r.step && r.step_began.attempt === r.attempt) facts.push(live(`step-time-${svc.name}`, "since", r.step_began.at));
    const p = pauseEnd(r);
    if (p) facts.push(p.running ? live(`pause-left-${svc.name}`, "left", p.end, p.total, false)
      : live(`pause-left-${svc.name}`, "left", p.total - r.pause_elapsed_ms, p.total, true));
  }
  const deadline = r.deadline ? `<div>${live(`deadline-${svc.name}`, "deadline", r.deadline.at, r.deadline.after_ms)}</div>` : "";
  const guard = r.guard && r.guard.attempt === r.attempt
    ? `<div data-testid="guard-${n}">guard <b>${esc(r.guard.state.replaceAll("_", " "))}</b> <span class="dim">— ${esc(r.guard.detail)}</span></div>` : "";
  const verdicts = (events || []).filter(e => e.rollout === r.id && (e.kind === "analysis" || e.actor === "analysis"))
    .map(e => `<div>${when(e.at)} <b>${esc(e.kind)}</b> ${esc(e.reason)}</div>`).join("");
  const steps = r.steps.map((s, i) => {
    const cls = r.status === "completed" || i < r.step ? "done" : (i === r.step && active(r) ? "current" : "todo");
    return `<li class="${cls}">${i + 1}. ${esc(s)}</li>`;
  }).join("");
  return `<div class="label">Rollout #${r.id}: ${esc(r.stable)} → ${esc(r.candidate)} (${esc(r.strategy.name)}), attempt ${r.attempt + 1}</div>
    <div>status <b class="status-${esc(r.status)}" data-testid="rollout-status-${n}">${esc(r.status)}</b>${r.held ? " (held by a person)" : ""}
      ${r.reason ? `<span class="dim"> — ${esc(r.reason)}</span>` : ""}</div>
    <div class="facts">${facts.join("")}</div>${deadline}${guard}${newErrorsPart(r, n)}
    ${r.waiting_for ? `<div class="dim">waiting for ${esc(r.waiting_for)}</div>` : ""}
    <div class="label">Analysis verdicts</div><div class="verdicts" data-testid="verdicts-${n}">${verdicts || `<span class="dim">${active(r) ? "none yet" : "none"}</span>`}</div>
    <ul class="steps">${steps}</ul>`;
}

// The choice of a picker ("start": candidate, "switch": group), defaulting to the first option.
const pick = (d, which) => ui.picks[d.svc.name]?.[which] ?? options(d, which)[0];
const options = (d, which) => d.svc.groups.map(g => g.name)
  .filter(g => which === "start" ? g !== d.svc.stable : d.svc.split[g] !== 10000);

function button(svc, verb, label, danger) {
  const err = ui.errors[svc]?.[verb];
  return `<span class="act"><button${danger ? ` class="danger"` : ""} data-act="${verb}" data-svc="${esc(svc)}" data-testid="${verb}-${esc(svc)}">${label}</button>${err ? `<span class="err" role="alert" data-testid="error-${verb}-${esc(svc)}">${esc(err)}</span>` : ""}</span>`;
}

function picker(d, which, label) {
  const opts = options(d, which);
  if (!opts.length) return "";
  const chosen = pick(d, which);
  const n = esc(d.svc.name);
  return `<span class="act"><select data-pick="${which}" data-svc="${n}" data-testid="${which}-group-${n}" aria-label="${esc(label)}">
    ${opts.map(g => `<option${g === chosen ? " selected" : ""}>${esc(g)}</option>`).join("")}</select></span>`;
}

// Only the actions the state allows: a button that does not apply is not shown.
function actionsPart(d) {
  const { svc, rollout: r } = d;
  const n = svc.name;
  const b = [];
  if (active(r)) {
    if (r.status === "progressing") b.push(button(n, "pause", "Pause"));
    if (r.held) b.push(button(n, "resume", "Resume"));
    if (waiting(r)) b.push(button(n, "promote", lastStep(r) ? "Promote (last step)" : "Promote"));
    b.push(button(n, "promote-full", "Promote fully"), button(n, "abort", "Abort", true));
  } else {
    // The API's rules: only an aborted rollout is retried, only a completed one undone.
    if (r && r.status === "aborted") b.push(button(n, "retry", `Retry #${r.id}`));
    if (r && r.status === "completed") b.push(button(n, "undo", `Undo #${r.id}`, true));
    if (options(d, "start").length) b.push(picker(d, "start", "candidate group") + button(n, "start", `Start rollout (${esc(svc.strategy?.name || "configured strategy")})`));
    if (svc.strategy?.blue_green && options(d, "switch").length) b.push(picker(d, "switch", "group to switch to") + button(n, "switch", "Switch"));
  }
  return `<div class="actions">${b.join("")}</div>`;
}

// ---- split, figures, charts, timeline ----

const groupColor = svc => name => COLORS[svc.groups.findIndex(g => g.name === name) % 4];
const observedParts = (obs, color) => Object.entries(obs || {}).map(([n, s]) => ({ name: n, share: s, text: pct(s * 100), color: color(n) }));
const partsText = parts => parts.filter(p => p.share > 0).map(p => `${p.name} ${p.text}`).join(" · ");
const bar = parts => `<div class="bar">${parts.filter(p => p.share > 0).map(p =>
  `<div style="flex-grow:${p.share};background:${p.color}" title="${esc(p.name)} ${p.text}">${esc(p.name)} ${p.text}</div>`).join("")}</div>`;

function splitPart(svc) {
  const color = groupColor(svc);
  const configured = svc.groups.map(g => ({ name: g.name, share: g.weight, text: g.weight_text, color: color(g.name) }));
  const observed = observedParts(svc.observed, color);
  const n = esc(svc.name);
  const rows = svc.groups.map(g => `<tr><td><span style="color:${color(g.name)}">■</span> ${esc(g.name)}</td><td>${g.weight_text}</td>
      <td>${g.healthy_targets}/${g.targets.length}</td>
      <td>${g.targets.map(t => `<span class="badge ${t.ejected ? "ejected" : esc(t.health)}">${esc(t.addr)} ${t.ejected ? "ejected" : esc(t.health)}</span>`).join("")}</td></tr>`).join("");
  return `<div class="label">Configured split</div>${bar(configured)}<div class="dim" data-testid="split-${n}">${esc(partsText(configured))}</div>
    <div class="label" data-testid="observed-window-${n}">Observed, ${OBSERVED_WINDOW}</div>${observed.length ? bar(observed) : `<div class="dim">no traffic</div>`}
    <div class="dim" data-testid="observed-${n}">${esc(partsText(observed))}</div>
    <div class="label">Groups</div><div class="scroll"><table><tr><th>group</th><th>weight</th><th>healthy</th><th>targets</th></tr>${rows}</table></div>`;
}

const fixed = (v, digits, unit) => v == null ? "—" : `${v.toFixed(digits)}${unit}`;

function figuresPart(svc, recent) {
  const color = groupColor(svc);
  const rows = svc.groups.map(g => {
    const f = recent?.services?.[svc.name]?.[g.name] || {};
    return `<tr data-testid="figures-${esc(svc.name)}-${esc(g.name)}"><td><span style="color:${color(g.name)}">■</span> ${esc(g.name)}</td>
      <td data-k="requests_per_s">${fixed(f.requests_per_s, 1, "")}</td><td data-k="error_pct">${fixed(f.error_pct, 2, " %")}</td>
      <td data-k="p50_ms">${fixed(f.p50_ms, 2, " ms")}</td><td data-k="p99_ms">${fixed(f.p99_ms, 2, " ms")}</td></tr>`;
  }).join("");
  return `<div class="label" data-testid="figures-window-${esc(svc.name)}">Last ${recent?.seconds ?? 10} s</div>
    <div class="scroll"><table class="figures"><tr><th>group</th><th>req/s</th><th>5xx</th><th>p50</th><th>p99</th></tr>${rows}</table></div>`;
}

// A line per group over the series' seconds, with its y range labelled in `unit` and the
// time axis from "-N min" to "now".
function chart(series, groups, col, min, max, label, unit) {
  const W = 300, H = 100, secs = series?.seconds || 300;
  const lines = groups.map((g, i) => {
    const pts = (series?.services?.[g.svc]?.[g.name] || []).filter(p => p[col] !== null && p[1] > 0)
      .map(p => `${(W - p[0] * W / secs).toFixed(1)},${(H - 6 - (Math.min(Math.max(p[col], min), max) - min) / (max - min) * (H - 12)).toFixed(1)}`);
    const s = STROKES[i % 4];
    return pts.length ? `<polyline fill="none" stroke="${COLORS[i % 4]}" stroke-width="${s.width}" stroke-dasharray="${s.dash}" stroke-opacity="0.85" vector-effect="non-scaling-stroke" points="${pts.join(" ")}"/>` : "";
  }).join("");
  const mins = secs / 60;
  return `<div class="chart"><div class="y"><span>${max}${unit}</span> <span>${min}${unit}</span></div>
    <svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="${label}">${lines}</svg>
    <div class="x"><span>-${mins} min</span> <span>-${mins / 2} min</span> <span>now</span></div></div>`;
}

function chartsPart(svc, series) {
  const groups = svc.groups.map(g => ({ svc: svc.name, name: g.name }));
  const color = groupColor(svc);
  const p99s = groups.flatMap(g => (series?.services?.[svc.name]?.[g.name] || []).map(p => p[3] || 0));
  const top = Math.max(1, Math.ceil(Math.max(0, ...p99s)));
  const legend = svc.groups.map((g, i) => `<span style="color:${color(g.name)}">${["━", "╍", "┅", "━ ·"][i % 4]} ${esc(g.name)}</span>`).join("");
  return `<div class="charts"><div><div class="label">Success rate (%)</div>${chart(series, groups, 2, 80, 100, "success rate", " %")}</div>
    <div><div class="label">p99 latency (ms)</div>${chart(series, groups, 3, 0, top, "p99", " ms")}</div></div>
    <div class="legend">${legend}</div>`;
}

function timelinePart(svc, events) {
  const f = ui.filters[svc.name] || { kind: "all", actor: "" };
  const shown = (events || []).filter(e => (f.kind === "all" || KINDS[f.kind].includes(e.kind))
    && (!f.actor || `${e.actor} ${e.on_behalf_of || ""}`.toLowerCase().includes(f.actor.toLowerCase())));
  return shown.map(e => `<div data-kind="${esc(e.kind)}">${when(e.at)}
      <span class="kind ${esc(e.kind)}">${esc(e.kind)}</span> <span class="dim">${esc(e.actor)}${e.on_behalf_of ? " for " + esc(e.on_behalf_of) : ""}</span> ${esc(e.reason)}</div>`).join("")
    || `<span class="dim">${events?.length ? "no events match the filters" : "no events"}</span>`;
}

// ---- the cards ----

// A service's card, made once: its parts are filled by `draw`.
function makeCard(name) {
  const n = esc(name);
  const el = document.createElement("section");
  el.className = "card";
  el.dataset.testid = `service-${name}`;
  el.innerHTML = `<h2 data-part="head"></h2><div data-part="split"></div><div data-part="figures"></div><div data-part="charts"></div>
    <div data-part="rollout"></div><div data-part="actions"></div>
    <div class="label">Timeline</div>
    <div class="filters"><select data-filter="kind" data-svc="${n}" data-testid="filter-kind-${n}" aria-label="event kind">
      ${["all", ...Object.keys(KINDS)].map(k => `<option>${k}</option>`).join("")}</select>
      <input data-filter="actor" data-svc="${n}" data-testid="filter-actor-${n}" placeholder="actor" aria-label="actor"></div>
    <div class="timeline" data-part="timeline" data-testid="timeline-${n}"></div>`;
  return el;
}

const drawn = new WeakMap();
function setPart(card, part, html) {
  const el = $(`[data-part="${part}"]`, card);
  const was = drawn.get(el);
  if (was !== html) { el.innerHTML = html; drawn.set(el, html); }
}

function draw(card, d) {
  const { svc, rollout, events } = d;
  setPart(card, "head", `${esc(svc.name)} <span class="dim">stable ${esc(svc.stable || "—")}${svc.candidate ? `, candidate ${esc(svc.candidate)}` : ""}</span>`);
  setPart(card, "split", splitPart(svc));
  setPart(card, "figures", figuresPart(svc, d.series?.recent));
  setPart(card, "charts", chartsPart(svc, d.series));
  setPart(card, "rollout", rolloutPart(svc, rollout, events));
  setPart(card, "actions", actionsPart(d));
  setPart(card, "timeline", timelinePart(svc, events));
}

function redraw(service) {
  const card = $(`[data-testid="service-${CSS.escape(service)}"]`);
  if (card && ui.data[service]) draw(card, ui.data[service]);
}

$("#services").addEventListener("click", e => {
  const b = e.target.closest("[data-act]");
  if (b) act(b.dataset.svc, b.dataset.act);
});
$("#services").addEventListener("change", e => {
  const t = e.target;
  if (t.dataset.pick) (ui.picks[t.dataset.svc] ||= {})[t.dataset.pick] = t.value;
  if (t.dataset.filter === "kind") (ui.filters[t.dataset.svc] ||= { kind: "all", actor: "" }).kind = t.value;
  redraw(t.dataset.svc);
});
$("#services").addEventListener("input", e => {
  const t = e.target;
  if (t.dataset.filter !== "actor") return;
  (ui.filters[t.dataset.svc] ||= { kind: "all", actor: "" }).actor = t.value;
  redraw(t.dataset.svc);
});

// The fleet (state shared in etcd), as `status.fleet` has it: whether this instance reaches
// etcd, who leads, every instance with its state revision and last contact, and per service
// the split the whole fleet observed and each instance's (this one's from the service's own
// `observed`, the others' as pulled from them, stale when those pulls fail).
function fleetCard(f, services) {
  const st = f.store;
  const banner = st.connected
    ? `<div class="dim" data-testid="fleet-store">etcd reached ${ago(st.last_contact)} · state revision ${st.revision}</div>`
    : `<div class="banner" role="alert" data-testid="fleet-degraded">DEGRADED — etcd unreachable (${esc(st.last_error || "no answer")}): serving the last state (revision ${st.revision}), no rollout moves</div>`;
  const rows = f.instances.map(i => `<tr data-testid="fleet-instance-${esc(i.name)}"><td>${esc(i.name)}
      ${i.name === f.instance ? `<span class="badge me">this</span>` : ""}${i.name === f.leader ? `<span class="badge leader">leader</span>` : ""}</td>
      <td>${esc(i.advertise)}</td><td data-testid="fleet-revision-${esc(i.name)}">${i.revision}</td><td>${ago(i.last_contact)}</td></tr>`).join("");
  const obs = services.map(svc => {
    const color = groupColor(svc);
    const whole = observedParts(f.observed?.[svc.name], color);
    const one = (name, shares, stale) => {
      const parts = observedParts(shares, color);
      return `<tr data-testid="fleet-observed-${esc(svc.name)}-${esc(name)}"><td>${esc(name)}${stale ? ` <span class="badge stale" title="${esc(stale)}">stale</span>` : ""}</td>
        <td>${parts.length ? esc(partsText(parts)) : `<span class="dim">no traffic</span>`}${stale ? `<div class="dim">${esc(stale)}</div>` : ""}</td></tr>`;
    };
    return `<div class="label">Observed, ${OBSERVED_WINDOW}, ${esc(svc.name)}, whole fleet</div>${whole.length ? bar(whole) : `<div class="dim">no traffic</div>`}
      <div class="dim" data-testid="fleet-observed-${esc(svc.name)}">${esc(partsText(whole))}</div>
      <div class="scroll"><table><tr><th>instance</th><th>observed</th></tr>${one(f.instance, svc.observed, null)}${f.peers.map(p => one(p.name, p.observed?.[svc.name], p.stale)).join("")}</table></div>`;
  }).join("");
  return `<h2>Fleet <span class="dim">this instance ${esc(f.instance)}${f.leading ? " (leads)" : ""}, leader <b data-testid="fleet-leader">${esc(f.leader || "none")}</b></span></h2>
    ${banner}
    <div class="label">Instances</div>
    <div class="scroll"><table><tr><th>instance</th><th>admin</th><th>state revision</th><th>last contact</th></tr>${rows}</table></div>
    ${obs}`;
}

// Puts the cards in place: the fleet's first (when there is one), then one per service.
function layout(status) {
  const main = $("#services");
  main.querySelectorAll(":scope > :not(section)").forEach(el => el.remove());
  let fleet = $('[data-testid="fleet"]', main);
  if (status.fleet) {
    if (!fleet) { fleet = document.createElement("section"); fleet.className = "card wide"; fleet.dataset.testid = "fleet"; main.prepend(fleet); }
    fleet.innerHTML = fleetCard(status.fleet, status.services);
  } else fleet?.remove();
  const names = status.services.map(s => s.name);
  main.querySelectorAll('section[data-testid^="service-"]').forEach(c => { if (!names.includes(c.dataset.testid.slice(8))) c.remove(); });
  for (const name of names) {
    if (!$(`[data-testid="service-${CSS.escape(name)}"]`, main)) main.append(makeCard(name));
  }
  if (!names.length) main.insertAdjacentHTML("beforeend", `<p class="dim">No services.</p>`);
}

let series = null, polls = 0;
async function refresh() {
  if (!token) return;
  try {
    // Every call below throws `Refused` once the token is no longer the one it was made with.
    const status = await api("/api/v1/status");
    showSignedIn(status.caller ? `signed in as ${status.caller.name}` : "signed in");
    if (polls++ % 2 === 0) series = await api("/api/v1/series?seconds=300").catch(e => { if (e instanceof Refused) throw e; return series; });
    const data = await Promise.all(status.services.map(async svc => {
      const name = encodeURIComponent(svc.name);
      const [rollout, events] = await Promise.all([
        api(`/api/v1/services/${name}/rollout`).catch(e => { if (e instanceof Refused) throw e; return null; }),
        api(`/api/v1/events?service=${name}&limit=100`).catch(e => { if (e instanceof Refused) throw e; return []; }),
      ]);
      return { svc, rollout, events, series };
    }));
    $("#gen").textContent = `generation ${status.generation} · ${status.listeners.map(l => `${l.name} ${l.addr}`).join(", ")}`;
    layout(status);
    for (const d of data) { ui.data[d.svc.name] = d; redraw(d.svc.name); }
    if ($("#error").textContent.startsWith("status")) $("#error").textContent = "";
  } catch (e) {
    if (!(e instanceof Refused)) $("#error").textContent = "status: " + e.message;
  }
}
if (token) showSignedIn("signed in");
refresh();
setInterval(refresh, 1000);
setInterval(tick, 250);
