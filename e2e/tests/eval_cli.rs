//! `sightline-server eval` as a user runs it: the binary, the pretrained model, the real
//! photos (truth = the first class `expected.json` accepts), a JSON report, and the random
//! ResNet-50 as a baseline.

use sightline_e2e::process::{ScratchDir, require_server_binary};
use sightline_e2e::{models, ort_lib, require, run_eval};

#[test]
fn the_pretrained_model_on_the_real_photos() {
    if !require(&[
        ort_lib(),
        models().join("efficientnet-lite0.onnx"),
        models().join("resnet50-random.onnx"),
        models().join("photos/expected.json"),
    ]) {
        return;
    }
    let Some(binary) = require_server_binary() else {
        return;
    };
    let dir = ScratchDir::new("eval").expect("scratch dir");
    let photos = models().join("photos");
    let mut csv = String::from("path,label\n");
    for file in ["expected.json", "expected-top5.json"] {
        let text = std::fs::read_to_string(photos.join(file)).expect("expected file");
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).expect("object");
        for (photo, classes) in map {
            let first = classes
                .get("top1")
                .unwrap_or(&classes)
                .get(0)
                .and_then(|v| v.as_u64())
                .expect("a class index");
            csv.push_str(&format!("{},{first}\n", photos.join(photo).display()));
        }
    }
    let set = dir.path().join("photos.csv");
    std::fs::write(&set, &csv).expect("write csv");
    let json = dir.path().join("report.json");
    let out = run_eval(
        &binary,
        &models().join("efficientnet-lite0.onnx"),
        &set,
        &json,
        &models().join("resnet50-random.onnx"),
    )
    .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("accuracy (top-1)"), "{stdout}");
    assert!(stdout.contains("top-1 changed on"), "{stdout}");
    assert!(
        !stderr.contains('\r'),
        "no progress bar when stderr is not a terminal"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
    let images = report["images"].as_u64().expect("images");
    assert!(images >= 6, "{images}");
    assert_eq!(report["evaluated"], images);
    // Every photo's first accepted class is in the top 5; most are the top 1 (the cat is
    // an "Egyptian cat" rather than a "tabby", which the strict single-label set counts
    // as wrong).
    assert_eq!(report["top5_accuracy"], 1.0, "{stdout}");
    let accuracy = report["accuracy"].as_f64().expect("accuracy");
    assert!(accuracy >= 0.5, "{stdout}");
    // The random-weight baseline is no better than chance.
    assert!(report["baseline"]["accuracy"].as_f64().expect("baseline") <= 0.2);
    assert!(
        report["changed"].as_array().is_some_and(|c| !c.is_empty()),
        "{stdout}"
    );
}
