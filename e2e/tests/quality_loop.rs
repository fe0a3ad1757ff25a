//! The quality loop end to end (issue 20): the three roles as separate processes with a
//! real database (SQLite, PostgreSQL, MariaDB) and API keys, every image of a small
//! labelled set (the test classifier's: red, green and blue images, solid and noisy, one
//! green image filed under red) recognised through the front door's `/api/v1/pipeline`,
//! the true labels posted as feedback through the front door, and the live figures of
//! `/api/v1/quality` compared with `sightline-server eval` on the same set: the accuracy
//! and every class's counts, precision, recall and F1 exactly equal (one implementation
//! of the seed's formulas); the averages equal up to the order of a sum.
//!
//! Needs `target/debug/sightline-server` (`make test` builds it first).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sightline_e2e::process::require_server_binary;
use sightline_e2e::split::{Backend, Split, SplitOptions, fresh_database, json_of, pipeline};
use sightline_e2e::{models, ort_lib};

const KEY: &str = "quality-secret-1";

/// A 24×24 PNG around `rgb` with deterministic noise of ±`noise` (the generator of the
/// eval tests, `inference-server/tests/eval.rs`).
fn noisy_png(path: &Path, rgb: [u8; 3], noise: u8, seed: u32) {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let img = image::ImageBuffer::from_fn(24, 24, |_, _| {
        let mut px = [0u8; 3];
        for (c, v) in px.iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let jitter = if noise == 0 {
                0
            } else {
                (state % (2 * noise as u32 + 1)) as i32 - noise as i32
            };
            *v = (rgb[c] as i32 + jitter).clamp(0, 255) as u8;
        }
        image::Rgb(px)
    });
    img.save(path).expect("write png");
}

/// red/, green/, blue/ with four images each, plus a green image filed under red/: each
/// image's path and true class.
fn labelled_set(dir: &Path) -> Vec<(PathBuf, String)> {
    let colours = [
        ("red", [220, 30, 30]),
        ("green", [30, 200, 40]),
        ("blue", [20, 40, 230]),
    ];
    let mut set = Vec::new();
    let mut seed = 1;
    for (name, rgb) in colours {
        let class = dir.join(name);
        std::fs::create_dir_all(&class).expect("mkdir");
        for (i, noise) in [0u8, 20, 40, 60].into_iter().enumerate() {
            let path = class.join(format!("{name}-{i}.png"));
            noisy_png(&path, rgb, noise, seed);
            set.push((path, name.to_string()));
            seed += 1;
        }
    }
    let mislabelled = dir.join("red/mislabelled.png");
    noisy_png(&mislabelled, [30, 200, 40], 10, 99);
    set.push((mislabelled, "red".to_string()));
    set
}

/// `sightline-server eval` of the test classifier on `set`: its JSON report.
fn offline_report(binary: &Path, set: &Path, json: &Path) -> Value {
    let out = Command::new(binary)
        .arg("eval")
        .arg("--model")
        .arg(models().join("test-classifier.onnx"))
        .arg("--ort-lib")
        .arg(ort_lib())
        .arg("--intra-threads")
        .arg("1")
        .arg("--dataset")
        .arg(set)
        .arg("--json")
        .arg(json)
        .arg("--no-progress")
        .output()
        .expect("eval runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(json).expect("report")).expect("json")
}

fn by_label(classes: &Value) -> std::collections::BTreeMap<String, Value> {
    classes
        .as_array()
        .expect("per-class figures")
        .iter()
        .map(|c| (c["label"].as_str().expect("label").to_string(), c.clone()))
        .collect()
}

async fn live_figures_equal_the_offline_evaluation(backend: Backend) {
    let Some(binary) = require_server_binary() else {
        return;
    };
    let Some(db) = fresh_database(backend) else {
        return;
    };
    let options = SplitOptions {
        database_url: db.url.clone(),
        common: vec!["--api-keys".into(), format!("tester:{KEY}")],
        ..SplitOptions::default()
    };
    let Some(split) = Split::start_opts(&options) else {
        return;
    };
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {KEY}").parse().expect("a header value"),
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client");
    let set_dir = split.dir.path().join("set");
    let set = labelled_set(&set_dir);
    let front_door = split.upload.url("");

    let mut model: Option<(String, String)> = None;
    for (n, (path, truth)) in set.iter().enumerate() {
        let bytes = std::fs::read(path).expect("an image");
        let (status, record) = pipeline(&client, &front_door, bytes).await;
        assert_eq!(status, 201, "{record}\n{}", split.logs());
        assert_eq!(record["provenance"], "server");
        let name = record["model"]["name"].as_str().expect("model").to_string();
        let digest = record["model"]["sha256"]
            .as_str()
            .expect("digest")
            .to_string();
        model.get_or_insert((name, digest));
        // Right answers confirmed both ways: `correct`, or the label.
        let right = record["top_label"] == truth.as_str();
        let body = if right && n % 2 == 0 {
            json!({"correct": true})
        } else {
            json!({ "label": truth })
        };
        let id = record["id"].as_str().expect("id");
        let response = client
            .post(split.upload.url(&format!("/api/v1/results/{id}/feedback")))
            // Whoever a caller claims to be, the front door names its key.
            .header("x-sightline-caller", "mallory")
            .json(&body)
            .send()
            .await
            .expect("feedback");
        let (status, recorded) = json_of(response).await;
        assert_eq!(status, 201, "{recorded}\n{}", split.logs());
        assert_eq!(recorded["caller"], "tester");
        assert_eq!(recorded["label"], truth.as_str());
        assert_eq!(recorded["correct"], right);
    }
    let (model, digest) = model.expect("a model answered");

    let response = client
        .get(
            split
                .upload
                .url(&format!("/api/v1/quality?model={model}&window=1h")),
        )
        .send()
        .await
        .expect("quality");
    let (status, quality) = json_of(response).await;
    assert_eq!(status, 200, "{quality}\n{}", split.logs());
    let digests = quality["digests"].as_array().expect("digests");
    assert_eq!(digests.len(), 1, "{quality}");
    let live = &digests[0];
    assert_eq!(live["model_sha256"], digest.as_str());

    let report = offline_report(&binary, &set_dir, &split.dir.path().join("report.json"));
    assert_eq!(report["failed"], json!([]), "{report}");
    assert_eq!(live["samples"], report["evaluated"]);
    assert_eq!(live["samples"], set.len());
    assert_eq!(live["accuracy"], report["accuracy"], "exactly");
    assert!(
        live["accuracy"].as_f64().is_some_and(|a| a < 1.0),
        "the mislabelled image counts"
    );
    assert_eq!(
        by_label(&live["per_class"]),
        by_label(&report["per_class"]),
        "every class's tp, fp, fn, support, precision, recall and F1, exactly"
    );
    for average in ["macro", "weighted"] {
        for figure in ["precision", "recall", "f1"] {
            let (a, b) = (
                live[average][figure].as_f64().expect("live"),
                report[average][figure].as_f64().expect("offline"),
            );
            assert!((a - b).abs() <= 1e-12, "{average}.{figure}: {a} vs {b}");
        }
    }
    // The confusion pairs are the offline matrix's cells.
    let labels = report["confusion"]["labels"].as_array().expect("labels");
    for pair in live["confusion"].as_array().expect("pairs") {
        let at = |key: &str| {
            labels
                .iter()
                .position(|l| *l == pair[key])
                .expect("a label")
        };
        let cell = &report["confusion"]["matrix"][at("truth")][at("predicted")];
        assert_eq!(pair["count"], *cell, "{pair}");
    }
    drop(split);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_quality_equals_eval_on_sqlite() {
    live_figures_equal_the_offline_evaluation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_quality_equals_eval_on_postgres() {
    live_figures_equal_the_offline_evaluation(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_quality_equals_eval_on_mariadb() {
    live_figures_equal_the_offline_evaluation(Backend::Mariadb).await;
}
