//! A client that hangs up does not free its decode slot while its image is still being
//! decoded (issue 18, finding 3): `--decode-threads` bounds the decodes that run, not the
//! callers still waiting. Seen through `sightline_preprocess_in_progress`, the decodes
//! running now.

mod support;

use std::time::{Duration, Instant};

use support::{body_bytes, get, post, send, test_classifier_ready};

fn big_png(seed: u8) -> Vec<u8> {
    let mut img = image::GrayImage::new(5000, 5000);
    img.put_pixel(u32::from(seed), 0, image::Luma([seed]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    out.into_inner()
}

async fn decoding_now(app: &axum::Router) -> f64 {
    let (_, response) = send(app, get("/metrics")).await;
    let text = String::from_utf8(body_bytes(response).await.to_vec()).expect("utf-8");
    text.lines()
        .find(|l| l.starts_with("sightline_preprocess_in_progress{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_up_requests_keep_their_decode_slot_until_the_decode_ends() {
    if !test_classifier_ready() {
        return;
    }
    let (app, _) = support::loaded_app(&support::args(
        "test-classifier.onnx",
        &["--decode-threads", "1", "--cache-bytes", "0"],
    ))
    .await;
    let images: Vec<Vec<u8>> = (1..=4).map(big_png).collect();
    // Each client sends a 25-megapixel PNG and hangs up while it is being decoded.
    for image in images {
        let app = app.clone();
        let client =
            tokio::spawn(
                async move { send(&app, post("/api/v1/recognize", "image/png", image)).await },
            );
        tokio::time::sleep(Duration::from_millis(30)).await;
        client.abort();
    }
    let mut most = 0.0f64;
    let mut seen = false;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let now = decoding_now(&app).await;
        seen |= now > 0.0;
        most = most.max(now);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen, "no decode was ever seen running");
    assert!(
        most <= 1.0,
        "{most} decodes at once with --decode-threads 1 after their clients hung up"
    );
}
