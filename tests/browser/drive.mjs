// What the dashboard's browser scripts share: the admin API as the test sees it (to check
// what a click did), a bounded wait on a state of the API, signing in, the confirmations the
// page asked for, and the elements wider than the screen. Every wait is bounded.
export const LIMIT = 15000;

export function apiOf(url, token) {
  const get = async path => {
    const r = await fetch(`${url}${path.replace(/^\//, "")}`, { headers: { authorization: `Bearer ${token}` } });
    return r.json();
  };
  // Polls `read` until `check` holds on its answer (15 s at most).
  const until = async (what, read, check) => {
    for (const end = Date.now() + LIMIT; Date.now() < end; await new Promise(r => setTimeout(r, 50))) {
      if (check(await read())) return;
    }
    throw new Error(`not reached within ${LIMIT / 1000} s: ${what}; the API says ${JSON.stringify(await read())}`);
  };
  const rollout = svc => get(`api/v1/services/${svc}/rollout`);
  return { get, until, rollout, untilRollout: (svc, what, check) => until(what, () => rollout(svc), check) };
}

// A page's text by test id, its whitespace folded.
export const textOf = async (page, id) => (await page.getByTestId(id).textContent()).replace(/\s+/g, " ").trim();

// Waits until the element with test id `id` exists and its text passes `check` (a RegExp).
export const untilText = (page, id, re) => page.waitForFunction(([id, src]) =>
  new RegExp(src).test(document.querySelector(`[data-testid="${id}"]`)?.textContent.replace(/\s+/g, " ") || ""),
[id, re.source], { timeout: LIMIT });

export async function signIn(page, token) {
  await page.fill("#token", token);
  await page.click("#token-form button");
}

// Accepts every confirmation the page asks for and keeps its question.
export function confirmations(page) {
  const asked = [];
  page.on("dialog", d => { asked.push(d.message()); d.accept(); });
  return asked;
}

// Clicks the button with test id `id`, waits for its effect (`effect`: an async check that
// throws when it is not reached) and says what the page asked before it acted ("" if nothing):
// once the effect is seen, any confirmation was asked and answered.
export async function act(page, asked, id, effect) {
  const before = asked.length;
  await page.getByTestId(id).click();
  await effect();
  return asked.slice(before).join(" | ");
}

// Every element whose box is wider than the screen or reaches past its right edge.
export const tooWide = page => page.evaluate(() => {
  const w = document.documentElement.clientWidth;
  return [...document.querySelectorAll("body *")]
    .filter(e => { const r = e.getBoundingClientRect(); return r.width > w + 0.5 || r.right > w + 0.5; })
    .map(e => `${e.tagName.toLowerCase()}${e.dataset.testid ? `[${e.dataset.testid}]` : ""}${e.className ? `.${e.className}` : ""} ${Math.round(e.getBoundingClientRect().right)}px`)
    .concat(document.documentElement.scrollWidth > w ? [`page scrolls to ${document.documentElement.scrollWidth}px`] : []);
});
