//! The upload role with an S3-compatible image store (`--image-store s3://bucket/prefix`),
//! against a real S3-compatible server: moto's standalone server from PyPI
//! (`moto[server]` in requirements.txt, in .venv after `make deps`), started by the test on
//! a loopback port. Same contract as the local store: content-addressed keys, one object per
//! image, bytes and ETag back; an unreachable bucket is a 503, not a crash.

mod pipeline_support;
mod support;

use axum::http::StatusCode;
use image::ImageFormat;
use pipeline_support::*;
use support::moto::Moto;
use support::{body_bytes, body_json, get, post, send, solid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_live_in_an_s3_compatible_bucket() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let client = reqwest::Client::new();
    let bucket = "sightline-images";
    let created = client
        .put(format!("{}/{bucket}", moto.url))
        .send()
        .await
        .expect("create the bucket");
    assert!(created.status().is_success(), "{:?}", created.status());

    let dir = tempfile::tempdir().expect("tempdir");
    let store_url = format!("s3://{bucket}/uploads");
    let args = role_args(
        "upload",
        dir.path(),
        &[
            "--image-store",
            &store_url,
            "--s3-endpoint",
            &moto.url,
            "--s3-region",
            "us-east-1",
            "--s3-access-key-id",
            "testing",
            "--s3-secret-access-key",
            "testing",
        ],
    );
    let (app, _) = role_app(&args).await;

    let png = solid(24, 16, [1, 200, 3], ImageFormat::Png);
    let id = sightline_server::upload::sha256_hex(&png);
    let (status, response) = send(&app, post("/api/v1/images", "image/png", png.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body_json(response).await["id"], id.as_str());
    let (status, _) = send(&app, post("/api/v1/images", "image/png", png.clone())).await;
    assert_eq!(status, StatusCode::OK, "the same bytes are one object");

    // Racing uploads of one new image: all succeed with the same id.
    let other = solid(25, 16, [1, 2, 200], ImageFormat::Png);
    let racers = (0..6).map(|_| {
        let app = app.clone();
        let other = other.clone();
        tokio::spawn(async move {
            let (status, response) = send(&app, post("/api/v1/images", "image/png", other)).await;
            (status, body_json(response).await)
        })
    });
    for answer in futures::future::join_all(racers).await {
        let (status, body) = answer.expect("task");
        assert!(status.is_success(), "{status}: {body}");
        assert_eq!(
            body["id"],
            sightline_server::upload::sha256_hex(&other).as_str()
        );
    }

    // The object is in the bucket under its content key, and served back by id.
    let bucket_client = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(&moto.url)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .expect("client");
    let key = object_store::path::Path::from(format!("uploads/{}/{id}", &id[..2]));
    let object = object_store::ObjectStore::get(&bucket_client, &key)
        .await
        .expect("the object is in the bucket")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(object.as_ref(), png.as_slice());
    let (status, response) = send(&app, get(&format!("/api/v1/images/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(body_bytes(response).await.as_ref(), png.as_slice());
    let (status, _) = send(&app, get(&format!("/api/v1/images/{}", "f".repeat(64)))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        !dir.path().join("images").exists(),
        "nothing is written locally with an S3 store"
    );

    // The bucket goes away: a clear 503, and the service stays up.
    drop(moto);
    let third = solid(26, 16, [200, 2, 3], ImageFormat::Png);
    let (status, response) = send(&app, post("/api/v1/images", "image/png", third)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body_json(response).await["error"].is_string());
}
