// Drives headless Chromium through a knotd's web pages for tests/web.rs.
// Usage: node browse.mjs <base-url> <repo-id> <search-text> <out-dir>
// Prints one JSON line per fact it saw ({"step": ..., ...}); tests/web.rs
// asserts on them. Before the live step it prints {"step":"live-ready"} and
// waits for the test to publish a state of <repo-id>.
import { chromium } from "playwright-core";

const [base, repoId, searchText, outDir] = process.argv.slice(2);
const executablePath = process.env.KNOTD_CHROMIUM || "/usr/bin/chromium";
const say = (fact) => console.log(JSON.stringify(fact));

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  const scriptErrors = [];
  page.on("pageerror", (e) => scriptErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") scriptErrors.push(m.text()); });
  page.on("dialog", async (d) => { scriptErrors.push("dialog: " + d.message()); await d.dismiss(); });

  // The list.
  const started = Date.now();
  const response = await page.goto(base + "/", { waitUntil: "load" });
  const indexBytes = (await response.body()).length;
  await page.screenshot({ path: `${outDir}/index.png`, fullPage: true });
  const copyButtons = await page.locator("button.copy:visible").count();
  say({
    step: "index",
    ms: Date.now() - started,
    bytes: indexBytes,
    text: await page.locator("main").innerText(),
    rows: await page.locator("li.repo").count(),
    copy_buttons: copyButtons,
  });

  // Readable on a phone: nothing wider than its screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${outDir}/index-phone.png`, fullPage: false });
  say({
    step: "phone",
    scroll_width: await page.evaluate(() => document.documentElement.scrollWidth),
  });
  await page.setViewportSize({ width: 1000, height: 900 });

  // The search box filters as you type (no submit).
  await page.locator("#q").pressSequentially(searchText, { delay: 20 });
  await page.waitForFunction(
    (n) => document.querySelectorAll("li.repo").length === n,
    1,
    { timeout: 10000 },
  ).catch(() => {});
  say({
    step: "search",
    rows: await page.locator("li.repo").count(),
    ids: await page.locator("li.repo").evaluateAll((rows) => rows.map((r) => r.dataset.id)),
    url: page.url(),
  });

  // The repository page.
  await page.goto(`${base}/${repoId}`, { waitUntil: "load" });
  await page.screenshot({ path: `${outDir}/repo.png`, fullPage: true });
  say({
    step: "repo",
    title: await page.title(),
    text: await page.locator("main").innerText(),
    injected: await page.evaluate(() => document.querySelectorAll("main svg, main img, main script").length),
  });

  // The status page's live view: a publish made while it is open appears.
  await page.goto(`${base}/status`, { waitUntil: "load" });
  await page.waitForSelector("ol.events.live", { timeout: 10000 });
  const before = await page.locator("ol.events li").count();
  say({ step: "live-ready", events: before });
  let live = null;
  try {
    await page.waitForFunction(
      (id) => [...document.querySelectorAll("ol.events li.new")]
        .some((li) => li.textContent.includes(id) && li.textContent.includes("published")),
      repoId,
      { timeout: 60000 },
    );
    live = await page.locator("ol.events li.new").allInnerTexts();
  } catch (e) {
    live = { error: String(e) };
  }
  await page.screenshot({ path: `${outDir}/status.png`, fullPage: true });
  say({
    step: "live",
    lines: live,
    text: await page.locator("main").innerText(),
  });
  say({ step: "done", script_errors: scriptErrors });
} finally {
  await browser.close();
}
