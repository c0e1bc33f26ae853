// The dashboard in headless Chromium at phone size (390×844), each click's effect checked in
// the API: signed in with a read-only token, an action's refusal is shown beside it and
// changes nothing; Sign out forgets the token and shows the form; signed in again, Switch of
// the blue-green service `site` (group picked, confirmed) moves its traffic, and a rollout of
// `shop` is started, paused, resumed, promoted, aborted, retried, promoted fully and undone.
// No element is wider than the screen, with the rollout held and after it ended. Prints one "phone: ..." line per thing
// seen; any check that fails ends it with exit code 1.
// Usage: node dashboard-phone.mjs ADMIN_URL TOKEN READ_ONLY_TOKEN SCREENSHOT_DIR
import { launch } from "./chromium.mjs";
import { act, apiOf, confirmations, LIMIT, signIn, textOf, tooWide, untilText } from "./drive.mjs";

const [url, token, viewer, shots] = process.argv.slice(2);
const browser = await launch();
const say = msg => console.log(`phone: ${msg}`);
const api = apiOf(url, token);
const expect = (ok, what) => { if (!ok) throw new Error(what); };
const fits = async when => {
  const wide = await tooWide(page);
  expect(wide.length === 0, `${when}: wider than the 390px screen: ${wide.join("; ")}`);
  say(`${when}: nothing wider than the screen`);
};
const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
try {
  const asked = confirmations(page);
  await page.goto(url);

  // Read-only: the refusal beside the button, the split unchanged.
  await signIn(page, viewer);
  await untilText(page, "signed-in", /signed in as viewer/);
  say(await textOf(page, "signed-in"));
  await page.getByTestId("switch-site").waitFor({ timeout: LIMIT });
  await act(page, asked, "switch-site", () => untilText(page, "error-switch-site", /scope/));
  say(`switch as viewer: ${await textOf(page, "error-switch-site")}`);
  const site = (await api.get("api/v1/status")).services.find(s => s.name === "site");
  expect(site.split.blue === 10000, `the viewer's switch moved traffic: ${JSON.stringify(site.split)}`);

  // Sign out while a poll is in flight (its answer held back 500 ms): the token forgotten,
  // the form back, and the late answer changes neither.
  await page.route("**/api/v1/status", async route => { await new Promise(r => setTimeout(r, 500)); await route.continue(); });
  await page.waitForRequest("**/api/v1/status", { timeout: LIMIT });
  await page.getByTestId("sign-out").click();
  await page.waitForResponse("**/api/v1/status", { timeout: LIMIT });
  await page.waitForTimeout(300);
  await page.unroute("**/api/v1/status");
  expect(await page.locator("#token-form").isVisible(), "the form is gone after a late answer");
  const kept = await page.evaluate(() => sessionStorage.getItem("sy-token"));
  expect(kept === null, `the token is still in sessionStorage: ${kept}`);
  expect(await page.getByTestId("service-shop").count() === 0, "the services are still shown after sign-out");
  say(`signed out: ${await textOf(page, "token-message")}`);

  // Signed in with the release token: Switch on the blue-green service.
  await signIn(page, token);
  await untilText(page, "signed-in", /signed in as admin/);
  await page.getByTestId("switch-group-site").selectOption("green");
  let q = await act(page, asked, "switch-site", () => api.until("site all on green",
    () => api.get("api/v1/status"), st => st.services.find(s => s.name === "site").split.green === 10000));
  say(`switch asked: ${q}`);
  expect(await page.getByTestId("start-shop").count() === 1 && await page.getByTestId("switch-shop").count() === 0,
    "the canary service shows Start and no Switch");

  // A rollout of shop: every action again, on the small screen.
  q = await act(page, asked, "start-shop", () => api.untilRollout("shop", "started", r => r.status === "progressing"));
  say(`start asked: ${q}`);
  await untilText(page, "step-shop", /^step 2 of 5$/);
  await act(page, asked, "pause-shop", () => api.untilRollout("shop", "held", r => r.held === true));
  await page.getByTestId("resume-shop").waitFor({ timeout: LIMIT });
  await fits("held rollout");
  await page.screenshot({ path: `${shots}/dashboard-phone.png`, fullPage: true });
  await act(page, asked, "resume-shop", () => api.untilRollout("shop", "resumed", r => r.held === false));
  await page.getByTestId("promote-shop").waitFor({ timeout: LIMIT });
  await act(page, asked, "promote-shop", () => api.untilRollout("shop", "past the pause", r => r.step >= 3));
  q = await act(page, asked, "abort-shop", () => api.untilRollout("shop", "aborted", r => r.status === "aborted"));
  say(`abort asked: ${q}`);
  await page.getByTestId("retry-shop").waitFor({ timeout: LIMIT });
  await act(page, asked, "retry-shop", () => api.untilRollout("shop", "retried", r => r.status === "progressing" && r.attempt === 1));
  await page.getByTestId("promote-full-shop").waitFor({ timeout: LIMIT });
  await act(page, asked, "promote-full-shop", () => api.untilRollout("shop", "promoted fully", r => r.status === "completed"));
  await page.getByTestId("undo-shop").waitFor({ timeout: LIMIT });
  q = await act(page, asked, "undo-shop", () => api.untilRollout("shop", "undone", r => r.status === "rolled_back"));
  say(`undo asked: ${q}`);
  await untilText(page, "rollout-status-shop", /^rolled_back$/);
  await fits("undone rollout");
  say("ok");
} catch (e) {
  console.error(`phone: FAILED: ${e.message}`);
  await page.screenshot({ path: `${shots}/dashboard-phone-failed.png`, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
