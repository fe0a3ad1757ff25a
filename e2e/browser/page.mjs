// Drives the web page of a live sightline-server in Debian's headless chromium:
// upload a real photo, wait for the top-5 labels, check the top label and that the
// history lists it, keep a screenshot.
//
//   node page.mjs BASE_URL PHOTO EXPECTED_LABEL SCREENSHOT
//
// Prints one JSON line with what it saw; exits non-zero on any failed check.
import { chromium } from "playwright-core";

const [base, photo, expected, screenshot] = process.argv.slice(2);
if (!base || !photo || !expected || !screenshot) {
  console.error("usage: node page.mjs BASE_URL PHOTO EXPECTED_LABEL SCREENSHOT");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
  ],
  timeout: 60_000,
});
const problems = [];
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 412, height: 915 } }); // a phone
  page.setDefaultTimeout(60_000);
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  await page.goto(base + "/", { waitUntil: "load" });
  seen.title = await page.title();
  // Accessible names: the file input has a label, the button says what it does.
  await page.getByLabel(/drop a photo here/i).setInputFiles(photo);
  await page.getByRole("img", { name: /preview of/i }).waitFor();
  await page.getByRole("button", { name: "Recognise" }).click();
  await page.locator("#labels li").first().waitFor();
  seen.labels = await page.locator("#labels li .name").allTextContents();
  seen.percentages = await page.locator("#labels li .pct").allTextContents();
  seen.latency = await page.locator("#latency").textContent();
  seen.status = await page.locator("#status").textContent();
  if (seen.labels.length !== 5) problems.push(`expected 5 labels, saw ${seen.labels.length}`);
  if (seen.labels[0] !== expected) problems.push(`top label ${JSON.stringify(seen.labels[0])}, expected ${JSON.stringify(expected)}`);
  if (!/ms/.test(seen.latency || "")) problems.push(`no latency shown: ${JSON.stringify(seen.latency)}`);

  // The history (GET /api/v1/results) shows the new result first.
  const firstRow = page.locator("#history tbody tr").first();
  await firstRow.waitFor();
  await page.waitForFunction(
    (label) => document.querySelector("#history tbody tr td.label")?.textContent === label,
    expected,
    { timeout: 30_000 },
  ).catch(() => {});
  seen.history = await page.locator("#history tbody tr td.label").allTextContents();
  if (seen.history[0] !== expected) problems.push(`history starts with ${JSON.stringify(seen.history[0])}`);
  await page.locator("#history tbody tr img").first().evaluate((img) =>
    img.complete ? null : new Promise((r) => { img.onload = img.onerror = r; }));
  seen.thumbnailLoaded = await page.locator("#history tbody tr img").first().evaluate((img) => img.naturalWidth > 0);
  if (!seen.thumbnailLoaded) problems.push("the history thumbnail did not load");

  // Fits a phone: nothing wider than the viewport.
  seen.scrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  if (seen.scrollWidth > 412) problems.push(`the page is ${seen.scrollWidth}px wide on a 412px screen`);

  await page.screenshot({ path: screenshot, fullPage: true });

  // Keyboard: from the top, Tab reaches the skip link, the two header links, the file
  // input and (with a photo chosen) the button.
  await page.reload({ waitUntil: "load" });
  const focused = [];
  for (let i = 0; i < 4; i++) {
    await page.keyboard.press("Tab");
    focused.push(await page.evaluate(() => document.activeElement?.id || document.activeElement?.textContent?.trim()));
  }
  seen.tabOrder = focused;
  if (focused[0] !== "Skip to content" || focused[3] !== "file") problems.push(`Tab order from the top: ${JSON.stringify(focused)}`);

  seen.consoleErrors = consoleErrors;
  if (consoleErrors.length) problems.push(`console errors: ${consoleErrors.join("; ")}`);
} catch (e) {
  problems.push(String(e && e.stack ? e.stack : e));
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok: problems.length === 0, problems, seen }));
process.exit(problems.length === 0 ? 0 : 1);
