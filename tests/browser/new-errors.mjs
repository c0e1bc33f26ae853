// The dashboard in headless Chromium: a rollout of `shop` whose candidate gives a 500 that
// stable never gave lists it under "New errors", marked new, with both groups' counts.
// Prints one "new errors: ..." line with the list's text; a check that fails ends it with
// exit code 1.
// Usage: node new-errors.mjs ADMIN_URL TOKEN
import { launch } from "./chromium.mjs";
import { signIn, textOf, untilText } from "./drive.mjs";

const [url, token] = process.argv.slice(2);
const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
try {
  await page.goto(url);
  await signIn(page, token);
  await untilText(page, "new-errors-shop", /new 500 'db pool exhausted after <n> waits' all \d+ 0 /).catch(async e => {
    const shown = await page.evaluate(() => document.querySelector("main")?.textContent.replace(/\s+/g, " "));
    throw new Error(`${e.message}; the page shows: ${shown}`);
  });
  console.log(`new errors: ${await textOf(page, "new-errors-shop")}`);
} finally {
  await browser.close();
}
