//! The web page in a real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from e2e/browser/): upload a real photo to an `all` server with the
//! pretrained model, wait for the labels, check the top label and the history, and keep a
//! screenshot in e2e/artifacts/page.png; and the feedback controls with the live quality.
//!
//! Needs `make deps` (chromium, `npm ci` in e2e/browser) and `make models`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sightline_e2e::process::ScratchDir;
use sightline_e2e::{RunningServer, models, ort_lib, repo_root, require};

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// An `all` server with the pretrained model (the page asks for five labels) and its
/// scratch dir, or `None` (after a loud skip) when the model, Chromium or playwright-core
/// is missing.
fn pretrained_server(name: &str) -> Option<(RunningServer, ScratchDir)> {
    if !require(&[
        ort_lib(),
        models().join("efficientnet-lite0.onnx"),
        models().join("photos/coffee.png"),
        chromium(),
        browser_dir().join("node_modules/playwright-core/package.json"),
    ]) {
        return None;
    }
    let data = ScratchDir::new(name).expect("scratch dir");
    let argv: Vec<std::ffi::OsString> = vec![
        "sightline-server".into(),
        "all".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data.path().into(),
        "--model".into(),
        models().join("efficientnet-lite0.onnx").into(),
        "--ort-lib".into(),
        ort_lib().into(),
    ];
    let args = sightline_server::cli::parse(argv)
        .expect("flags")
        .command
        .into_serve_args()
        .expect("a serving subcommand");
    let server = RunningServer::start(args, 2, Duration::from_secs(120)).expect("server ready");
    Some((server, data))
}

fn browser_dir() -> PathBuf {
    repo_root().join("e2e/browser")
}

/// Runs `node` with `args` in e2e/browser; the one JSON line it printed, which says `ok`.
fn drive(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = Command::new("node")
        .current_dir(browser_dir())
        .args(args)
        .env("CHROMIUM", chromium())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(seen["ok"], true, "{stdout}");
    seen
}

#[test]
fn a_photo_through_the_page_in_headless_chromium() {
    let Some((server, _data)) = pretrained_server("browser") else {
        return;
    };
    let artifacts = repo_root().join("e2e/artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let screenshot = artifacts.join("page.png");
    let _ = std::fs::remove_file(&screenshot);
    let (url, photo) = (server.url(""), models().join("photos/coffee.png"));
    let seen = drive(&[
        browser_dir().join("page.mjs").as_os_str(),
        url.as_ref(),
        photo.as_os_str(),
        "espresso".as_ref(),
        screenshot.as_os_str(),
    ]);
    assert_eq!(seen["seen"]["labels"][0], "espresso");
    assert_eq!(seen["seen"]["history"][0], "espresso");
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
}

/// The page's feedback controls, by keyboard as much as by mouse, in headless Chromium: say
/// the current answer was wrong ("it is a teapot"), see the answer recorded and the live
/// quality at 0 % of 1 answer; change it to right from the history row and see 100 % of 1
/// (one answer per caller, replaced); an empty label is an error shown on the page, not a
/// request. The driver is inline (`node --input-type=module`, run in e2e/browser so it finds
/// playwright-core); the pretrained model, as the page asks for five labels.
const FEEDBACK_DRIVER: &str = r##"
import { chromium } from "playwright-core";
const [base, photo] = process.argv.slice(1);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
  timeout: 60_000,
});
const problems = [];
const seen = {};
const check = (ok, what) => { if (!ok) problems.push(what); };
let pageRef = null;
try {
  const page = await browser.newPage({ viewport: { width: 412, height: 915 } });
  pageRef = page;
  page.setDefaultTimeout(30_000);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/", { waitUntil: "load" });
  await page.getByLabel(/drop a photo here/i).setInputFiles(photo);
  await page.getByRole("button", { name: "Recognise" }).click();
  const answer = page.locator("#answer-feedback form");
  await answer.waitFor();
  seen.answerForm = await answer.getAttribute("aria-label");
  // Keyboard: focus "Wrong…", Enter opens the label field (focused), Enter with it empty
  // is refused on the page, then typed and sent with Enter.
  await answer.getByRole("button", { name: "Wrong…" }).focus();
  await page.keyboard.press("Enter");
  const field = answer.getByLabel("It is a");
  await field.waitFor();
  check(await field.evaluate((el) => el === document.activeElement), "the label field is not focused");
  check(await answer.getByRole("button", { name: "Wrong…" }).getAttribute("aria-expanded") === "true", "aria-expanded");
  await page.keyboard.press("Enter");
  const status = answer.getByRole("status");
  await page.waitForFunction(() => /Type what/.test(document.querySelector("#answer-feedback .fb-status")?.textContent || ""));
  check(await status.evaluate((el) => el.classList.contains("error")), "an empty label is not shown as an error");
  await page.keyboard.type("teapot");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => /Recorded/.test(document.querySelector("#answer-feedback .fb-status")?.textContent || ""));
  seen.wrong = await status.textContent();
  check(seen.wrong === "Recorded: wrong, it is a teapot.", "wrong: " + seen.wrong);
  await page.waitForFunction(() => document.querySelector("#quality tbody td.samples")?.textContent === "1");
  seen.qualityWrong = await page.locator("#quality tbody tr td.accuracy").allTextContents();
  check(seen.qualityWrong[0] === "0.0%", "quality after wrong: " + seen.qualityWrong);
  // The history row: "Right" replaces this caller's answer.
  const row = page.locator("#history tbody tr").first().locator("form.feedback");
  await row.getByRole("button", { name: "Right" }).click();
  await page.waitForFunction(() => /Recorded/.test(document.querySelector("#history tbody tr .fb-status")?.textContent || ""));
  seen.right = await row.getByRole("status").textContent();
  check(/^Recorded: right \(.+\), replacing your earlier answer\.$/.test(seen.right), "right: " + seen.right);
  await page.waitForFunction(() => document.querySelector("#quality tbody td.accuracy")?.textContent === "100.0%");
  seen.samples = await page.locator("#quality tbody td.samples").first().textContent();
  check(seen.samples === "1", "one answer per caller, got " + seen.samples);
  // The window selector asks again.
  await page.getByLabel("Window").selectOption("1h");
  await page.waitForFunction(() => document.querySelector("#quality tbody td.accuracy")?.textContent === "100.0%");
  seen.scrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  check(seen.scrollWidth <= 412, "the page is " + seen.scrollWidth + "px wide on a 412px screen");
  seen.errors = errors;
  check(errors.length === 0, "page errors: " + errors.join("; "));
} catch (e) {
  problems.push(String(e && e.stack ? e.stack : e));
  seen.pageStatus = await pageRef?.locator("#status").textContent().catch(() => null);
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok: problems.length === 0, problems, seen }));
process.exit(problems.length === 0 ? 0 : 1);
"##;

#[test]
fn feedback_and_live_quality_on_the_page() {
    let Some((server, _data)) = pretrained_server("browser-feedback") else {
        return;
    };
    let (url, photo) = (server.url(""), models().join("photos/coffee.png"));
    drive(&[
        "--input-type=module".as_ref(),
        "-e".as_ref(),
        FEEDBACK_DRIVER.as_ref(),
        url.as_ref(),
        photo.as_os_str(),
    ]);
}
