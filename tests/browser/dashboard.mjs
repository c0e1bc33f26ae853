// Drives the switchyard dashboard in headless Chromium (Debian's /usr/bin/chromium):
// enters the token, watches the split change while a rollout steps (clicking Promote past its
// first pause), waits for the observed split and the charts to show the traffic, clicks
// Pause and Resume (checking the API's rollout after each), clicks Abort, and waits for the
// rollback in the timeline. Every wait is on a state of the page or the API, bounded.
// Usage: node dashboard.mjs ADMIN_URL TOKEN SCREENSHOT_DIR
import { launch } from "./chromium.mjs";

const [url, token, shots] = process.argv.slice(2);
const browser = await launch();
const step = msg => console.log(`dashboard: ${msg}`);
// The API's view of the rollout, to check what a click did.
const rollout = async () => (await fetch(`${url}api/v1/services/shop/rollout`, { headers: { authorization: `Bearer ${token}` } })).json();
const until = async (what, check) => {
  for (const end = Date.now() + 15000; Date.now() < end; await new Promise(r => setTimeout(r, 50))) {
    if (check(await rollout())) return;
  }
  throw new Error(`not reached within 15 s: ${what}; rollout is ${JSON.stringify(await rollout())}`);
};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("dialog", d => d.accept());
  await page.goto(url);
  await page.fill("#token", token);
  await page.click("#token-form button");
  const split = page.getByTestId("split-shop");
  await split.waitFor();
  await page.waitForFunction(() => document.querySelector('[data-testid="split-shop"]')?.textContent.includes("green 10%"), null, { timeout: 15000 });
  step(`split at the first step: ${await split.textContent()}`);
  // A single instance (no shared state) has no Fleet card.
  step(`fleet cards: ${await page.getByTestId("fleet").count()}`);
  // The rollout waits for a person at 10 % (a timed pause raced Chromium's start on a loaded
  // machine: the page could open after the split had already moved on).
  await page.getByTestId("promote-shop").click();
  await page.waitForFunction(() => document.querySelector('[data-testid="split-shop"]')?.textContent.includes("green 50%"), null, { timeout: 15000 });
  step(`split at the second step: ${await split.textContent()}`);
  // Both charts draw a line per group that had traffic.
  await page.waitForFunction(() => ["success rate", "p99"].every(label =>
    [...document.querySelectorAll(`[data-testid="service-shop"] svg[aria-label="${label}"] polyline`)]
      .some(l => l.getAttribute("points").split(" ").length >= 2)), null, { timeout: 15000 });
  const lines = await page.evaluate(() => ["success rate", "p99"].map(label =>
    `${label} ${document.querySelectorAll(`[data-testid="service-shop"] svg[aria-label="${label}"] polyline`).length}`).join(", "));
  step(`chart lines: ${lines}`);
  // Pause holds the rollout; Resume lets it go on (to its next wait for promotion).
  await page.getByTestId("pause-shop").click();
  await until("held after Pause", r => r.status === "paused" && r.held === true);
  step("after pause: held");
  await page.getByTestId("resume-shop").click();
  await until("not held after Resume", r => r.held === false && r.weight === 5000);
  step("after resume: not held, green still at 50%");
  // The observed split (last 5 s) settles at the configured one once 5 s have passed at 50 %
  // (checked last, so that the clicks above overlap that wait).
  await page.waitForFunction(() => {
    const m = document.querySelector('[data-testid="observed-shop"]')?.textContent.match(/green (\d+(\.\d+)?)%/);
    return m && Math.abs(Number(m[1]) - 50) <= 5;
  }, null, { timeout: 20000 });
  step(`observed: ${await page.getByTestId("observed-shop").textContent()}`);
  await page.screenshot({ path: `${shots}/dashboard-rollout.png`, fullPage: true });
  await page.getByTestId("abort-shop").click();
  await page.waitForFunction(() => document.querySelector('[data-testid="timeline-shop"]')?.textContent.includes("aborted by admin on behalf of dashboard"), null, { timeout: 15000 });
  await page.waitForFunction(() => document.querySelector('[data-testid="rollout-status-shop"]')?.textContent === "aborted", null, { timeout: 15000 });
  step(`after abort: ${await split.textContent()}`);
  // A narrow screen still shows the service.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${shots}/dashboard-narrow.png`, fullPage: true });
  const width = await page.getByTestId("service-shop").evaluate(e => e.getBoundingClientRect().width);
  if (width > 390) throw new Error(`the service card is ${width}px wide on a 390px screen`);
  step("ok");
} catch (e) {
  console.error(`dashboard: FAILED: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
