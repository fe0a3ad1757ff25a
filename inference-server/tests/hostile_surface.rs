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

#[tokio::test]
async fn readiness_pings_the_database_about_once_a_second_and_names_no_internals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    let argv = ["sightline-server", "store", "--data-dir", &data];
    let args = sightline_server::cli::parse(argv.into_iter().map(Into::into).collect())
        .expect("flags")
        .command
        .into_serve_args()
        .expect("a serving subcommand");
    let state = sightline_server::server::role_state(&args, "", None)
        .await
        .expect("state");
    let app = sightline_server::http::app(state.clone());
    let started = Instant::now();
    for _ in 0..50 {
        let (status, body) = call(&app, get("/readyz")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let seconds = started.elapsed().as_secs() + 1;
    let count = pings(&metrics_text(&app).await);
    assert!(
        count <= seconds + 1,
        "{count} database pings for 50 readiness calls in {seconds} s"
    );

    state.results.as_ref().expect("a database").close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (status, body) = call(&app, get("/readyz")).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break body;
        }
        assert!(Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["reason"], "DatabaseUnreachable", "{body}");
    let text = body.to_string().to_lowercase();
    for internal in ["pool", "sqlx", "query", "sqlite", "ping", "os error", ".db"] {
        assert!(!text.contains(internal), "{internal:?} in {body}");
    }
}

#[tokio::test]
async fn ssrf_refusals_do_not_list_the_allowlist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(
        "recognize",
        dir.path(),
        &[
            "--upload-url",
            "http://internal-upload.ns.svc:8080/api/v1/images",
            "--fetch-allowlist",
            "http://10.20.30.40:9000/private-bucket/",
        ],
    )
    .await;
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://evil.example/x.png",
        "file:///etc/passwd",
    ] {
        let (status, body) = call(
            &app,
            post(
                "/api/images/recognition",
                "application/json",
                json!({ "url": url }).to_string(),
            ),
        )
        .await;
        assert!(status.is_client_error(), "{url}: {status} {body}");
        let text = body.to_string();
        for secret in ["internal-upload", "10.20.30.40", "private-bucket"] {
            assert!(!text.contains(secret), "{url}: {body}");
        }
    }
}

#[tokio::test]
async fn stored_urls_are_never_made_from_the_host_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let door = app("upload", dir.path(), &[]).await;
    let png = solid(6, 6, [9, 8, 7], ImageFormat::Png);
    let (content_type, body) = multipart("image", "x.png", &png);
    let request = Request::post("/api/images/upload")
        .header("content-type", content_type)
        .header("host", "evil.example:8080")
        .body(Body::from(body))
        .expect("request");
    let (status, body) = call(&door, request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let url = body["url"].as_str().expect("url");
    assert!(!url.contains("evil.example"), "{url}");
    // With --public-url, that base.
    let dir = tempfile::tempdir().expect("tempdir");
    let door = app(
        "upload",
        dir.path(),
        &["--public-url", "https://images.example.com/team"],
    )
    .await;
    let request = Request::post("/api/v1/images")
        .header("content-type", "image/png")
        .header("host", "evil.example")
        .body(Body::from(png))
        .expect("request");
    let (status, body) = call(&door, request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        body["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://images.example.com/team/api/v1/images/")),
        "{body}"
    );
}

#[tokio::test]
async fn a_cross_site_form_post_is_refused_and_same_origin_and_curl_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app("all", dir.path(), &[]).await;
    let png = solid(5, 5, [1, 2, 3], ImageFormat::Png);
    let form = |origin: Option<&str>, site: Option<&str>| {
        let (content_type, body) = multipart("image", "x.png", &png);
        let mut request = Request::post("/api/v1/images")
            .header("content-type", content_type)
            .header("host", "127.0.0.1:8080");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        request.body(Body::from(body)).expect("request")
    };
    for (origin, site) in [
        (Some("https://evil.example"), Some("cross-site")),
        (Some("https://evil.example"), None),
        (Some("null"), None),
        (None, Some("cross-site")),
        (Some("http://127.0.0.1:9999"), Some("same-site")),
    ] {
        let (status, body) = call(&app, form(origin, site)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin:?} {site:?}: {body}");
        assert!(body["error"].is_string());
    }
    // The evaluation route too: it reads an archive and runs the model.
    let request = Request::post("/api/v1/evaluations")
        .header("content-type", "text/plain")
        .header("origin", "https://evil.example")
        .body(Body::from("PK\u{3}\u{4}"))
        .expect("request");
    assert_eq!(send(&app, request).await.0, StatusCode::FORBIDDEN);
    for (origin, site) in [
        (Some("http://127.0.0.1:8080"), Some("same-origin")),
        (None, None),
        (None, Some("none")),
    ] {
        let (status, body) = call(&app, form(origin, site)).await;
        assert!(status.is_success(), "{origin:?} {site:?}: {status} {body}");
    }
    // Reading stays open to cross-site GETs (images embedded elsewhere).
    let request = Request::get("/healthz")
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&app, request).await.0, StatusCode::OK);
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

#[tokio::test]
async fn idle_and_stalled_http2_connections_are_closed_at_the_header_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app("upload", dir.path(), &[]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(HeaderDeadline::new(listener, Duration::from_secs(1)), app).await
    });
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    // The preface and a SETTINGS frame, then nothing.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(preface).await.expect("preface");
    idle.write_all(&frame(4, 0, 0, &[]))
        .await
        .expect("settings");
    let started = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(6)).await,
        "an idle h2c connection is still open after 6 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A HEADERS frame whose block never ends (no END_HEADERS, no CONTINUATION).
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    stalled.write_all(preface).await.expect("preface");
    stalled
        .write_all(&frame(4, 0, 0, &[]))
        .await
        .expect("settings");
    // `:method GET` (static index 2), END_STREAM but not END_HEADERS.
    stalled
        .write_all(&frame(1, 0x1, 1, &[0x82]))
        .await
        .expect("headers");
    assert!(
        closed_within(&mut stalled, Duration::from_secs(6)).await,
        "a stalled header block is still open after 6 s"
    );
}

/// Reads HTTP/2 frames until one of `kind` on `stream` arrives (true) or the connection
/// closes or `limit` passes (false).
async fn frame_arrives(stream: &mut TcpStream, kind: u8, id: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let on = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7FFF_FFFF;
            if buf[3] == kind && on == id {
                return true;
            }
            buf.drain(..9 + len);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
}

#[tokio::test]
async fn an_http2_request_slower_than_the_deadline_is_answered() {
    let app = Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            "done"
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(HeaderDeadline::new(listener, Duration::from_secs(1)), app).await
    });
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    client
        .write_all(&frame(4, 0, 0, &[]))
        .await
        .expect("settings");
    // HPACK: :method GET, :scheme http, :path /slow, :authority x.
    let mut block = vec![0x82, 0x86, 0x44, 5];
    block.extend_from_slice(b"/slow");
    block.extend_from_slice(&[0x41, 1, b'x']);
    client
        .write_all(&frame(1, 0x5, 1, &block))
        .await
        .expect("headers");
    assert!(
        frame_arrives(&mut client, 1, 1, Duration::from_secs(6)).await,
        "the connection was cut while its request was in progress"
    );
}
