//! Hostile input, second round (issue 18), on the open surface of a server — none of it
//! needs a model:
//!
//! - metric labels an unauthenticated caller controls stay bounded (finding 4): invented
//!   HTTP methods are counted as `other`;
//! - trailing data after a GIF, WebP or BMP is refused like after a PNG or JPEG (finding 11);
//! - `/readyz` pings the database at most about once a second and names no internals, SSRF
//!   refusals do not list the allowlist, and stored URLs are never made from the `Host`
//!   header (finding 12);
//! - a cross-site form POST (what any web page can make a browser send to a server on
//!   loopback with no keys) is refused;
//! - an idle HTTP/2 prior-knowledge connection is closed at the header deadline like an
//!   HTTP/1 one (finding 8).

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use image::ImageFormat;
use serde_json::{Value, json};
use sightline_server::http::slow_clients::HeaderDeadline;
use support::{body_bytes, body_json, get, multipart, post, send, solid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn app(role: &str, dir: &std::path::Path, extra: &[&str]) -> Router {
    support::unloaded_app(role, dir, extra).await
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, response) = send(app, request).await;
    (status, body_json(response).await)
}

async fn metrics_text(app: &Router) -> String {
    let (_, response) = send(app, get("/metrics")).await;
    String::from_utf8(body_bytes(response).await.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn invented_methods_do_not_become_metric_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app("upload", dir.path(), &[]).await;
    let long = "X".repeat(2000);
    for method in ["FOOBAR", "PROPFIND", long.as_str(), "get"] {
        let request = Request::builder()
            .method(method)
            .uri("/api/v1/images")
            .body(Body::empty())
            .expect("request");
        let (status, _) = send(&app, request).await;
        assert!(status.is_client_error(), "{method:.20}: {status}");
    }
    let text = metrics_text(&app).await;
    for invented in ["FOOBAR", "PROPFIND", "XXXXXXXXXX", "method=\"get\""] {
        assert!(
            !text.contains(invented),
            "{invented:.20} is a label:\n{text}"
        );
    }
    assert!(
        text.contains("method=\"other\""),
        "counted as other:\n{text}"
    );
    let methods: std::collections::BTreeSet<&str> = text
        .match_indices("method=\"")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .collect();
    assert!(
        methods.iter().all(|m| [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"
        ]
        .contains(m)),
        "{methods:?}"
    );
}

/// `image` followed by a zip file that names an HTML page (a polyglot).
fn with_zip(image: &[u8]) -> Vec<u8> {
    let mut bytes = image.to_vec();
    bytes.extend_from_slice(&support::zip_of(&[(
        "index.html",
        b"<html><script>alert(1)</script></html>".to_vec(),
    )]));
    bytes
}

#[tokio::test]
async fn gif_webp_and_bmp_polyglots_are_refused_like_png_and_jpeg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app("upload", dir.path(), &["--max-upload-bytes", "1000000"]).await;
    for format in [
        ImageFormat::Gif,
        ImageFormat::WebP,
        ImageFormat::Bmp,
        ImageFormat::Png,
        ImageFormat::Jpeg,
    ] {
        let image = solid(9, 7, [200, 30, 40], format);
        let (status, body) = call(&app, post("/api/v1/images", "image/x", with_zip(&image))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{format:?} + zip: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("follow")),
            "{format:?}: {body}"
        );
        let mut html = image.clone();
        html.extend_from_slice(b"<html><script>alert(1)</script></html>");
        let (status, body) = call(&app, post("/api/v1/images", "image/x", html)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{format:?} + html: {body}");
        let (status, body) = call(&app, post("/api/v1/images", "image/x", image)).await;
        assert_eq!(status, StatusCode::CREATED, "{format:?} alone: {body}");
    }
}

/// `sightline_db_query_duration_seconds_count{operation="ping"}`.
fn pings(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("sightline_db_query_duration_seconds_count")
                && l.contains("operation=\"ping\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

/// An HTTP/2 frame header: length, type, flags, stream.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads until the server closes the connection or `limit` passes; true when closed.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

