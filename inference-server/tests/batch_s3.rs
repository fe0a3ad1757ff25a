//! `sightline-server batch --input s3://bucket/prefix`: the images of a real S3-compatible
//! bucket (moto's server, see support/moto.rs) listed with the folder's rules (image
//! endings, no hidden segments, only under the prefix), read through `object_store`, and
//! evaluated against a truth CSV that names them under the prefix. A bad object is a
//! recorded error; a bucket that does not answer is an error, not a hang or a panic.

mod support;

use std::collections::HashMap;

use image::ImageFormat;
use support::moto::Moto;
use support::{solid, test_classifier_ready};

const LABELS: [&str; 3] = ["red", "green", "blue"];

/// The batch flags with moto's credentials.
fn batch_args(extra: &[&str]) -> sightline_server::cli::BatchArgs {
    let mut flags = vec![
        "--s3-region",
        "us-east-1",
        "--s3-access-key-id",
        "testing",
        "--s3-secret-access-key",
        "testing",
    ];
    flags.extend_from_slice(extra);
    support::batch_args(&flags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_prefix_is_recognized_like_a_folder() {
    if !test_classifier_ready() {
        return;
    }
    let Some(moto) = Moto::start() else {
        return;
    };
    let client = reqwest::Client::new();
    let put = |key: String, body: Vec<u8>| {
        let request = client.put(format!("{}/{key}", moto.url)).body(body);
        async move {
            let response = request.send().await.expect("PUT");
            assert!(response.status().is_success(), "PUT: {}", response.status());
        }
    };
    put("archive".into(), Vec::new()).await;
    let mut truth = String::from("path,label\n");
    for n in 0..30u8 {
        let class = usize::from(n % 3);
        let mut rgb = [10 + n, 10 + n, 10 + n];
        rgb[class] = 240;
        let name = format!("{}/{n:03}.png", LABELS[class]);
        put(
            format!("archive/photos/{name}"),
            solid(8, 8, rgb, ImageFormat::Png),
        )
        .await;
        truth.push_str(&format!("{name},{}\n", LABELS[class]));
    }
    put("archive/photos/broken.png".into(), b"not an image".to_vec()).await;
    for key in [
        "photos/.cache/x.png",
        "photos/readme.txt",
        "photos-old/a.png",
    ] {
        let png = solid(8, 8, [255, 0, 0], ImageFormat::Png);
        put(format!("archive/{key}"), png).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("truth.csv");
    std::fs::write(&csv, truth).expect("write the truth");
    let out = dir.path().join("results.jsonl");

    let args = batch_args(&[
        "--input",
        "s3://archive/photos",
        "--s3-endpoint",
        &moto.url,
        "--out",
        &out.display().to_string(),
        "--truth",
        &csv.display().to_string(),
    ]);
    let summary = sightline_server::batch::run_cli(args)
        .await
        .expect("the batch runs");
    assert_eq!(summary.shard.total, 31, "{summary:?}");
    assert_eq!(summary.shard.recognized, 30, "{summary:?}");
    assert_eq!(summary.shard.failed, 1, "{summary:?}");
    let report = summary.report.expect("the truth's report");
    assert_eq!(report.images, 30);
    assert_eq!(report.accuracy, 1.0);

    let text = std::fs::read_to_string(&out).expect("results");
    let lines: HashMap<String, serde_json::Value> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            (v["image"].as_str().expect("image").to_string(), v)
        })
        .collect();
    assert_eq!(lines.len(), 31);
    assert!(lines["broken.png"]["error"].is_string());
    assert_eq!(lines["green/001.png"]["predictions"][0]["label"], "green");
    assert!(
        !lines
            .keys()
            .any(|k| k.contains(".cache") || k.ends_with(".txt"))
    );

    // A bucket nobody serves: an error that names it, quickly.
    let args = batch_args(&[
        "--input",
        "s3://archive/photos",
        "--s3-endpoint",
        "http://127.0.0.1:9",
        "--out",
        &dir.path().join("none.jsonl").display().to_string(),
    ]);
    let error = sightline_server::batch::run_cli(args)
        .await
        .expect_err("no bucket there");
    assert!(error.to_string().contains("s3://archive/photos"), "{error}");
    assert!(
        !error.is_permanent(),
        "a bucket that does not answer may answer later"
    );
}
