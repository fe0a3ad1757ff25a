//! The Open Inference Protocol endpoints answer NVIDIA Triton's stock Python client
//! (`tritonclient[http]` from PyPI) unchanged: health, metadata, inference with binary and
//! JSON tensors, the classification extension and the model repository index
//! (`get_model_repository_index()`) — from a recognize server, and through the upload role
//! as the pipeline's front door (with its API key, which only it checks).

use std::process::Command;
use std::time::Duration;

use sightline_e2e::split::{Split, SplitOptions};
use sightline_e2e::{RunningServer, models, ort_lib, repo_root, require, serve_args, venv_python};

const KEY: &str = "triton-front-door-key-1";

/// What the stock client saw at `addr` (`host:port`), sending `key` when given.
fn run_client(addr: &str, key: Option<&str>) -> serde_json::Value {
    let mut command = Command::new(venv_python());
    command
        .arg(repo_root().join("e2e/clients/oip_triton_client.py"))
        .arg(addr)
        .arg("test-classifier");
    if let Some(key) = key {
        command.arg(key);
    }
    let output = command.output().expect("run the client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("client prints JSON")
}

#[test]
fn tritonclient_works_unchanged() {
    if !require(&[
        ort_lib(),
        models().join("test-classifier.onnx"),
        venv_python(),
    ]) {
        return;
    }
    let server = RunningServer::start(
        serve_args("test-classifier.onnx", &[]).expect("args"),
        2,
        Duration::from_secs(60),
    )
    .expect("server starts and gets ready");
    check(&run_client(&server.addr.to_string(), None));
}

#[test]
fn tritonclient_works_through_the_front_door() {
    if !require(&[venv_python()]) {
        return;
    }
    let Some(split) = Split::start_opts(&SplitOptions {
        upload_extra: vec!["--api-keys".into(), format!("triton:{KEY}")],
        ..SplitOptions::default()
    }) else {
        return;
    };
    let seen = run_client(&split.upload.addr.to_string(), Some(KEY));
    check(&seen);
    let refused = seen["metadata_without_key"]
        .as_str()
        .expect("the front door refuses a call without the key");
    assert!(refused.contains("API key"), "{refused}\n{}", split.logs());
}

/// The answers the stock client must have seen from the test classifier.
fn check(seen: &serde_json::Value) {
    assert_eq!(seen["live"], true);
    assert_eq!(seen["ready"], true);
    assert_eq!(seen["model_ready"], true);
    assert_eq!(seen["server"]["name"], "sightline");
    assert_eq!(seen["metadata"]["name"], "test-classifier");
    assert_eq!(
        seen["metadata"]["inputs"][0]["shape"],
        serde_json::json!([-1, 3, 32, 32])
    );
    assert_eq!(seen["metadata"]["outputs"][0]["datatype"], "FP32");
    for binary in ["True", "False"] {
        let scores = &seen[format!("scores_binary_{binary}")];
        let argmax = |row: &serde_json::Value| {
            let row: Vec<f64> = row
                .as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().expect("num"))
                .collect();
            (0..row.len())
                .max_by(|a, b| row[*a].total_cmp(&row[*b]))
                .expect("non-empty")
        };
        assert_eq!(
            argmax(&scores[0]),
            0,
            "red image → class 0 ({binary}): {scores}"
        );
        assert_eq!(
            argmax(&scores[1]),
            2,
            "blue image → class 2 ({binary}): {scores}"
        );
        assert_eq!(
            seen[format!("id_binary_{binary}")],
            format!("scores-{binary}")
        );
        let classes = &seen[format!("classes_binary_{binary}")];
        let top = classes[0][0].as_str().expect("label string");
        assert!(
            top.ends_with(":0:red"),
            "classification extension ({binary}): {classes}"
        );
        assert!(
            classes[1][0].as_str().expect("label").ends_with(":2:blue"),
            "{classes}"
        );
    }
    assert_eq!(
        seen["repository_index"],
        serde_json::json!([{"name": "test-classifier", "version": "1", "state": "READY", "reason": ""}]),
        "get_model_repository_index()"
    );
    let unknown = seen["unknown_model_error"]
        .as_str()
        .expect("an error for an unknown model");
    assert!(unknown.contains("unknown model"), "{unknown}");
}
