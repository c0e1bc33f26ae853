// Drives the switchyard dashboard in headless Chromium (Debian's /usr/bin/chromium):
// enters the token, watches the split change while a rollout steps (clicking Promote past its
// first pause), clicks Abort, and waits
// for the rollback in the timeline. Usage: node dashboard.mjs ADMIN_URL TOKEN SCREENSHOT_DIR
import { chromium } from "playwright-core";

const [url, token, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const step = msg => console.log(`dashboard: ${msg}`);
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
  // The rollout waits for a person at 10 % (a timed pause raced Chromium's start on a loaded
  // machine: the page could open after the split had already moved on).
  await page.getByTestId("promote-shop").click();
  await page.waitForFunction(() => document.querySelector('[data-testid="split-shop"]')?.textContent.includes("green 50%"), null, { timeout: 15000 });
  step(`split at the second step: ${await split.textContent()}`);
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
