// Drives the Fleet card of one fleet instance's dashboard in headless Chromium (Debian's
// /usr/bin/chromium): enters the token, waits until the card lists every instance the API
// names, with its state revision, and until the fleet's observed split is in; prints what the
// page shows, one "fleet: ..." line each; then says "waiting for degraded" (the test stops
// etcd on that line) and waits for the DEGRADED banner. Every wait is on a state of the page,
// bounded. Usage: node fleet.mjs ADMIN_URL TOKEN SCREENSHOT_DIR
import { launch } from "./chromium.mjs";

const [url, token, shots] = process.argv.slice(2);
const browser = await launch();
const step = msg => console.log(`fleet: ${msg}`);
const status = async () => (await fetch(`${url}api/v1/status`, { headers: { authorization: `Bearer ${token}` } })).json();
const text = (page, id) => page.getByTestId(id).textContent().then(t => t.replace(/\s+/g, " ").trim());
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(url);
  await page.fill("#token", token);
  await page.click("#token-form button");
  const names = (await status()).fleet.instances.map(i => i.name);
  // Every instance listed, and traffic seen by the fleet.
  await page.waitForFunction(names => names.every(n => document.querySelector(`[data-testid="fleet-revision-${n}"]`))
    && /\d%/.test(document.querySelector('[data-testid="fleet-observed-shop"]')?.textContent || ""), names, { timeout: 15000 });
  for (const n of names) {
    const row = page.getByTestId(`fleet-instance-${n}`);
    const badge = async (cls, word) => (await row.locator(`.badge.${cls}`).count()) ? ` ${word}` : "";
    step(`instance ${n} revision ${await text(page, `fleet-revision-${n}`)}${await badge("leader", "leader")}${await badge("me", "this")}`);
  }
  step(`leader ${await text(page, "fleet-leader")}`);
  step(`whole fleet: ${await text(page, "fleet-observed-shop")}`);
  // Each instance's row: its observed split, and whether it is marked stale.
  for (const n of names) {
    const [who, split] = await page.getByTestId(`fleet-observed-shop-${n}`).locator("td").allInnerTexts();
    step(`on ${n}: ${split.replace(/\s+/g, " ").trim()}${/\bstale\b/.test(who) ? " (stale)" : ""}`);
  }
  // While etcd runs the page shows no DEGRADED banner (an etcd call slowed past its bound
  // on a loaded machine shows one for a moment: it must go).
  await page.getByTestId("fleet-degraded").waitFor({ state: "detached", timeout: 15000 });
  step("no degraded banner while etcd runs");
  await page.screenshot({ path: `${shots}/dashboard-fleet.png`, fullPage: true });
  step("waiting for degraded");
  await page.getByTestId("fleet-degraded").waitFor({ timeout: 20000 });
  step(`degraded: ${await text(page, "fleet-degraded")}`);
  // A narrow screen still fits the card (its tables scroll inside it).
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${shots}/dashboard-fleet-narrow.png`, fullPage: true });
  const width = await page.getByTestId("fleet").evaluate(e => e.getBoundingClientRect().width);
  if (width > 390) throw new Error(`the fleet card is ${width}px wide on a 390px screen`);
  step("ok");
} catch (e) {
  console.error(`fleet: FAILED: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
