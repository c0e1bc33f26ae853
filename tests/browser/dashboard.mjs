// Drives a release of service `shop` through the dashboard in headless Chromium at desktop
// size (1280×900), each click's effect checked in the API: a refused token sends the page
// back to the form; signed in, the figures beside the charts are the API's (`/series`
// `recent`); Start (picking the candidate, confirmed), the pause left seen counting down,
// Pause and Resume, Promote (no question before the last step), the analysis step's
// deadline and verdict, Promote on the last step (confirmed), Undo, Start again, Abort, Retry
// and Promote fully (each confirmed); then the timeline's filters hide events. Prints one
// "dashboard: ..." line per thing seen; any check that fails ends it with exit code 1.
// Usage: node dashboard.mjs ADMIN_URL TOKEN SCREENSHOT_DIR
import { launch } from "./chromium.mjs";
import { act, apiOf, confirmations, LIMIT, signIn, textOf, untilText } from "./drive.mjs";

const [url, token, shots] = process.argv.slice(2);
const browser = await launch();
const say = msg => console.log(`dashboard: ${msg}`);
const api = apiOf(url, token);
const expect = (ok, what) => { if (!ok) throw new Error(what); };
const seconds = text => {
  const m = text.match(/(?:(\d+)h )?(?:(\d+)m )?(?:(\d+)s)? left/);
  return m ? (Number(m[1] || 0) * 3600 + Number(m[2] || 0) * 60 + Number(m[3] || 0)) : NaN;
};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const asked = confirmations(page);
  // Every /series answer the page got: its figures must be one of them.
  const seriesSeen = [];
  page.on("response", async r => { if (r.url().includes("/api/v1/series")) seriesSeen.push(await r.json().catch(() => null)); });
  await page.goto(url);

  // A wrong token: back to the form, saying so.
  await signIn(page, "wrong");
  await untilText(page, "token-message", /refused the token/);
  expect(await page.locator("#token-form").isVisible(), "the token form is shown after a 401");
  say(`after a wrong token: ${await textOf(page, "token-message")}`);
  await signIn(page, token);
  await untilText(page, "signed-in", /signed in/);
  say(`${await textOf(page, "signed-in")}`);
  // A single instance (no shared state) has no Fleet card.
  await page.getByTestId("service-shop").waitFor({ timeout: LIMIT });
  say(`fleet cards: ${await page.getByTestId("fleet").count()}`);

  // The figures: the page's are those of an answer of /series it got.
  await page.waitForFunction(() => {
    const cell = k => document.querySelector(`[data-testid="figures-shop-blue"] [data-k="${k}"]`)?.textContent || "";
    return parseFloat(cell("requests_per_s")) > 0 && cell("p99_ms").endsWith(" ms");
  }, null, { timeout: LIMIT });
  const figures = await page.getByTestId("figures-shop-blue").evaluate(tr =>
    Object.fromEntries([...tr.querySelectorAll("[data-k]")].map(td => [td.dataset.k, td.textContent])));
  const near = (shown, v, digits) => v == null ? shown === "—" : Math.abs(parseFloat(shown) - v) <= 0.51 * 10 ** -digits;
  const match = seriesSeen.filter(Boolean).some(s => {
    const f = s.recent.services.shop.blue;
    return near(figures.requests_per_s, f.requests_per_s, 1) && near(figures.error_pct, f.error_pct, 2)
      && near(figures.p50_ms, f.p50_ms, 2) && near(figures.p99_ms, f.p99_ms, 2);
  });
  expect(match, `the page's figures ${JSON.stringify(figures)} are in none of the /series answers ${JSON.stringify(seriesSeen.map(s => s?.recent?.services?.shop?.blue))}`);
  say(`figures of blue as /series says: ${JSON.stringify(figures)} over "${await textOf(page, "figures-window-shop")}"`);
  say(`observed label: ${await textOf(page, "observed-window-shop")}`);

  // Start: the candidate picked, the configured strategy named, confirmed.
  await page.getByTestId("start-group-shop").selectOption("green");
  let q = await act(page, asked, "start-shop", () => api.untilRollout("shop", "started", r => r.candidate === "green" && r.status === "progressing"));
  say(`start asked: ${q}`);
  // The timed pause (step 2): time in the step and the pause left, counting down between polls.
  await untilText(page, "step-shop", /^step 2 of 5$/);
  await untilText(page, "pause-left-shop", /\d+s left of 1m$/);
  const first = await textOf(page, "pause-left-shop");
  await page.waitForTimeout(2100);
  const then = await textOf(page, "pause-left-shop");
  expect(seconds(then) < seconds(first), `the pause left did not decrease: "${first}", then "${then}"`);
  say(`pause left: "${first}", 2 s later "${then}"; ${await textOf(page, "step-time-shop")}`);

  // Pause holds (Resume appears, the pause stops counting); Resume lets it go on.
  await act(page, asked, "pause-shop", () => api.untilRollout("shop", "held", r => r.held === true));
  await untilText(page, "pause-left-shop", /stopped while paused/);
  expect(await page.getByTestId("pause-shop").count() === 0, "Pause is shown on a held rollout");
  say(`held: Resume shown, ${await textOf(page, "pause-left-shop")}`);
  await act(page, asked, "resume-shop", () => api.untilRollout("shop", "resumed", r => r.held === false && r.status === "progressing"));
  await page.getByTestId("pause-shop").waitFor({ timeout: LIMIT });
  expect(await page.getByTestId("resume-shop").count() === 0, "Resume is shown on a rollout nobody held");
  say("resumed: Pause shown again, Resume gone");

  // Promote past the pause (not the last step: no question) to 50 % and the analysis.
  await page.getByTestId("promote-shop").waitFor({ timeout: LIMIT });
  q = await act(page, asked, "promote-shop", () => api.untilRollout("shop", "past the pause", r => r.step >= 3));
  say(`promote past the pause asked: ${q || "nothing"}`);
  await untilText(page, "deadline-shop", /progress deadline 2m: aborts at .* left\)/);
  say(`during the analysis: ${await textOf(page, "deadline-shop")}`);
  await untilText(page, "verdicts-shop", /analysis/);
  say(`verdict: ${await textOf(page, "verdicts-shop")}`);
  await untilText(page, "guard-shop", /guard/);
  say(`guard: ${await textOf(page, "guard-shop")}`);

  // The last step (until promoted): Promote asks, naming what happens.
  await untilText(page, "step-shop", /^step 5 of 5$/);
  q = await act(page, asked, "promote-shop", () => api.untilRollout("shop", "completed", r => r.status === "completed"));
  say(`promote on the last step asked: ${q}`);
  await page.screenshot({ path: `${shots}/dashboard-completed.png`, fullPage: true });

  // Completed: Undo (not Retry). Undone: neither (the API retries only an aborted rollout),
  // a new rollout can start; aborted: Retry; then Promote fully.
  await page.getByTestId("undo-shop").waitFor({ timeout: LIMIT });
  expect(await page.getByTestId("retry-shop").count() === 0, "Retry is shown on a completed rollout");
  q = await act(page, asked, "undo-shop", () => api.untilRollout("shop", "undone", r => r.status === "rolled_back"));
  say(`undo asked: ${q}`);
  await untilText(page, "rollout-status-shop", /^rolled_back$/);
  await page.getByTestId("start-shop").waitFor({ timeout: LIMIT });
  expect(await page.getByTestId("undo-shop").count() + await page.getByTestId("retry-shop").count() === 0,
    "Undo or Retry is shown on an undone rollout");
  await act(page, asked, "start-shop", () => api.untilRollout("shop", "the second rollout", r => r.id === 2 && r.status === "progressing"));
  await page.getByTestId("abort-shop").waitFor({ timeout: LIMIT });
  q = await act(page, asked, "abort-shop", () => api.untilRollout("shop", "aborted", r => r.status === "aborted"));
  say(`abort asked: ${q}`);
  await page.getByTestId("retry-shop").waitFor({ timeout: LIMIT });
  q = await act(page, asked, "retry-shop", () => api.untilRollout("shop", "retried", r => r.status === "progressing" && r.attempt === 1));
  say(`retry asked: ${q}`);
  await page.getByTestId("promote-full-shop").waitFor({ timeout: LIMIT });
  q = await act(page, asked, "promote-full-shop", () => api.untilRollout("shop", "promoted fully", r => r.status === "completed" && r.attempt === 1));
  say(`promote fully asked: ${q}`);

  // The charts: a line per group that had traffic, each drawn its own way.
  await page.waitForFunction(() => ["success rate", "p99"].every(label =>
    document.querySelectorAll(`[data-testid="service-shop"] svg[aria-label="${label}"] polyline`).length === 2), null, { timeout: LIMIT });
  const strokes = await page.evaluate(() => ["success rate", "p99"].map(label => `${label}: ` +
    [...document.querySelectorAll(`[data-testid="service-shop"] svg[aria-label="${label}"] polyline`)]
      .map(l => `${l.getAttribute("stroke-width")}/${l.getAttribute("stroke-dasharray") || "solid"}`).join(", ")).join("; "));
  say(`chart strokes: ${strokes}`);
  say(`chart axes: ${await page.locator('[data-testid="service-shop"] .chart').first().evaluate(c => c.textContent.replace(/\s+/g, " ").trim())}`);

  // The timeline: dated, newest first; the kind filter hides what it does not show.
  await untilText(page, "timeline-shop", /completed/);
  const rows = () => page.getByTestId("timeline-shop").locator("[data-kind]");
  const all = await rows().count();
  const iso = await rows().first().locator("time").getAttribute("title");
  const times = await rows().locator("time").evaluateAll(ts => ts.map(t => Date.parse(t.getAttribute("datetime"))));
  expect(times.every((t, i) => i === 0 || times[i - 1] >= t), `the timeline is not newest first: ${times}`);
  await page.getByTestId("filter-kind-shop").selectOption("rollbacks");
  const kinds = await rows().evaluateAll(rs => [...new Set(rs.map(r => r.dataset.kind))].sort().join(","));
  say(`timeline: ${all} events, newest at ${iso}; filtered to rollbacks: ${await rows().count()} (${kinds})`);
  await page.getByTestId("filter-kind-shop").selectOption("all");
  await page.getByTestId("filter-actor-shop").fill("nobody-acted-so");
  say(`actor filter: ${await textOf(page, "timeline-shop")}`);
  await page.getByTestId("filter-actor-shop").fill("");
  await page.screenshot({ path: `${shots}/dashboard-desktop.png`, fullPage: true });
  say("ok");
} catch (e) {
  console.error(`dashboard: FAILED: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
