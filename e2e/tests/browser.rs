//! The web page in a real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from e2e/browser/): upload a real photo to an `all` server with the
//! pretrained model, wait for the labels, check the top label and the history, and keep a
//! screenshot in e2e/artifacts/page.png.
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

#[test]
fn a_photo_through_the_page_in_headless_chromium() {
    let browser = repo_root().join("e2e/browser");
    if !require(&[
        ort_lib(),
        models().join("efficientnet-lite0.onnx"),
        models().join("photos/coffee.png"),
        chromium(),
        browser.join("node_modules/playwright-core/package.json"),
    ]) {
        return;
    }
    let data = ScratchDir::new("browser").expect("scratch dir");
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
    let artifacts = repo_root().join("e2e/artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let screenshot = artifacts.join("page.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new("node")
        .arg(browser.join("page.mjs"))
        .arg(server.url(""))
        .arg(models().join("photos/coffee.png"))
        .arg("espresso")
        .arg(&screenshot)
        .env("CHROMIUM", chromium())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(seen["ok"], true, "{stdout}");
    assert_eq!(seen["seen"]["labels"][0], "espresso");
    assert_eq!(seen["seen"]["history"][0], "espresso");
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
}
