//! The OpenAPI document of a live `all` server is valid (openapi-spec-validator) and a
//! schema-driven fuzzer (schemathesis) finds no 5xx in any documented operation.

use std::process::Command;
use std::time::Duration;

use sightline_e2e::process::ScratchDir;
use sightline_e2e::{RunningServer, models, ort_lib, repo_root, require, venv_python};

#[test]
fn the_document_validates_and_schemathesis_finds_no_server_error() {
    let script = repo_root().join("e2e/clients/openapi_check.py");
    let schemathesis = repo_root().join(".venv/bin/schemathesis");
    if !require(&[
        ort_lib(),
        models().join("test-classifier.onnx"),
        venv_python(),
        schemathesis,
    ]) {
        return;
    }
    let data = ScratchDir::new("openapi").expect("scratch dir");
    let argv: Vec<std::ffi::OsString> = vec![
        "sightline-server".into(),
        "all".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data.path().into(),
        "--model".into(),
        models().join("test-classifier.onnx").into(),
        "--ort-lib".into(),
        ort_lib().into(),
        "--intra-threads".into(),
        "1".into(),
    ];
    let args = sightline_server::cli::parse(argv)
        .expect("flags")
        .command
        .into_serve_args()
        .expect("a serving subcommand");
    let server = RunningServer::start(args, 2, Duration::from_secs(60)).expect("server ready");
    let out = Command::new(venv_python())
        .arg(&script)
        .arg(server.url(""))
        .arg("10")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("valid OpenAPI 3.0.3"), "{stdout}");
    assert!(stdout.contains("passed"), "{stdout}");
}
