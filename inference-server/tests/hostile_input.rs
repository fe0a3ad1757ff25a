//! Hostile input against the HTTP surface, the rows of RELIABILITY.md "Hostile input":
//! slow clients (headers and bodies trickled), oversized headers, decompression bombs
//! (PNG, WebP, JPEG), path traversal, SSRF through recognition by URL, header and JSON
//! injection, unicode — each answered with a clear 4xx (or a closed connection) and never
//! a crash, a hang or a 5xx. None of these needs a model: the `all` role is built without
//! loading one (recognition answers 503 until it is, which is not what is tested here).

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use image::ImageFormat;
use serde_json::{Value, json};
use sightline_server::http::slow_clients::HeaderDeadline;
use sightline_server::image_source::ImageSource;
use support::{body_json, get, multipart, post, send, solid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The router of `role` (no model loaded).
async fn app(role: &str, dir: &std::path::Path, extra: &[&str]) -> Router {
    support::unloaded_app(role, dir, extra).await
}

/// Serves `app` on loopback behind the header deadline, as `Server::serve` does.
async fn serve(app: Router, header_timeout: Duration) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        async move { axum::serve(HeaderDeadline::new(listener, header_timeout), app).await },
    );
    addr
}

/// Reads until the server closes the connection (or `limit` passes); what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, response) = send(app, request).await;
    (status, body_json(response).await)
}

fn assert_error(what: &str, status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn slowloris_headers_and_idle_connections_are_cut_at_the_header_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = serve(app("upload", dir.path(), &[]).await, Duration::from_secs(1)).await;

    // Trickles a header line every 200 ms for up to 20 s: the server hangs up long before.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"POST /api/v1/images HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let trickle = async {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return true;
            }
            let mut probe = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), slow.peek(&mut probe)).await
            {
                return true;
            }
        }
        false
    };
    assert!(trickle.await, "the slow connection was never closed");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "closed only after {took:?}");

    // A connection that sends nothing is closed too.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(closed, "an idle connection stayed open");

    // A prompt client on a keep-alive connection is served, then its idle connection closes.
    let mut ok = TcpStream::connect(addr).await.expect("connect");
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (answer, closed) = read_until_closed(&mut ok, Duration::from_secs(10)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(closed, "the idle keep-alive connection stayed open");
}

#[tokio::test]
async fn a_trickled_body_is_answered_503_at_the_request_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app("upload", dir.path(), &["--request-timeout-secs", "1"]).await;
    let addr = serve(app, Duration::from_secs(5)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /api/v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n\x89PNG",
        )
        .await
        .expect("write");
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b"\0").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(15), reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!("no answer to a trickled body: {other:?}"),
        }
    }
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn oversized_and_too_many_headers_are_431() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = serve(app("upload", dir.path(), &[]).await, Duration::from_secs(5)).await;
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge = format!("X-Big: {}\r\n", "a".repeat(1024 * 1024));
    for (what, headers) in [("500 headers", many), ("a 1 MiB header", huge)] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        // The server may answer and close before reading it all.
        let _ = stream.write_all(request.as_bytes()).await;
        let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 431"),
            "{what}: {text}"
        );
    }
    // Still serving.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

/// A PNG of `w × h` black grey pixels: ~1/190 of the `w × h` bytes it inflates to.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let img = image::GrayImage::new(w, h);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).expect("encode");
    out.into_inner()
}

/// A WebP claiming a `w × h` canvas (extended header) over a lossless image header of
/// the same size (when it fits VP8L's 14 bits), with no pixel data.
fn webp_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut vp8x = vec![0u8; 4];
    vp8x.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    let bits: u32 = ((w - 1) & 0x3fff) | (((h - 1) & 0x3fff) << 14);
    let mut vp8l = vec![0x2f];
    vp8l.extend_from_slice(&bits.to_le_bytes());
    vp8l.extend_from_slice(&[0; 7]);
    let mut body = b"WEBP".to_vec();
    for (name, chunk) in [(b"VP8X", vp8x), (b"VP8L", vp8l)] {
        body.extend_from_slice(name);
        body.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        body.extend_from_slice(&chunk);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A real JPEG whose frame header is patched to claim `w × h`.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut bytes = solid(16, 16, [10, 20, 30], ImageFormat::Jpeg);
    let sof = bytes
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("a baseline frame header");
    bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    bytes
}

#[tokio::test]
async fn decompression_bombs_are_refused_from_the_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(
        "upload",
        dir.path(),
        &[
            "--max-image-pixels",
            "4000000",
            "--max-upload-bytes",
            "1000000",
        ],
    )
    .await;
    let bomb = png_bomb(5000, 5000);
    assert!(bomb.len() < 200_000, "{} bytes", bomb.len());
    let small_bomb = png_bomb(1500, 1500);
    for (what, bytes, expected) in [
        (
            "PNG 5000×5000 (25 MB of pixels in ~130 KB)",
            bomb,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "WebP claiming 16000×16000",
            webp_claiming(16_000, 16_000),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        // Beyond WebP's own 16384 limit the decoder refuses the header as malformed.
        (
            "WebP claiming 1000000×1000000",
            webp_claiming(1_000_000, 1_000_000),
            StatusCode::BAD_REQUEST,
        ),
        (
            "JPEG claiming 65000×65000",
            jpeg_claiming(65000, 65000),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "JPEG claiming 0×0",
            jpeg_claiming(0, 0),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PNG 1500×1500 within the limit",
            small_bomb,
            StatusCode::CREATED,
        ),
    ] {
        let started = Instant::now();
        let (status, body) = call(&app, post("/api/v1/images", "image/png", bytes)).await;
        if expected == StatusCode::CREATED {
            assert_eq!(status, expected, "{what}: {body}");
        } else {
            assert_error(what, status, &body, expected);
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{what}");
    }
    if let Some(peak) = support::peak_rss_bytes() {
        assert!(peak < 1 << 30, "peak RSS {peak} bytes");
    }
}

#[tokio::test]
async fn path_traversal_and_unicode_in_ids_are_404_or_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret.txt"), "top secret").expect("write");
    let app = app("all", dir.path(), &[]).await;
    for uri in [
        "/api/v1/images/..%2Fsecret.txt",
        "/api/v1/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/v1/images/..%5C..%5Csecret.txt",
        "/uploads/..%2F..%2Fsecret.txt",
        "/uploads/%00.png",
        "/api/v1/images/%F0%9F%90%88",
        "/api/v1/results/..%2F..%2Fsecret.txt",
        "/api/v1/results/%E7%8C%AB",
        "/api/v1/images/..%2F..%2Fsecret.txt/results",
    ] {
        let (status, response) = send(&app, get(uri)).await;
        let body = body_json(response).await;
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
            "{uri}: {status} {body}"
        );
        assert!(!body.to_string().contains("top secret"), "{uri}");
    }
    let (status, body) = call(
        &app,
        post(
            "/api/v1/images/..%2F..%2Fsecret.txt/recognize",
            "application/json",
            "{}",
        ),
    )
    .await;
    assert!(status.is_client_error(), "{status} {body}");
}

#[test]
fn ssrf_recognition_by_url_fetches_only_the_image_store() {
    // As the `all` role on port 8080 sets it up: its own store, by address and by name.
    let source = ImageSource::new(
        &[
            "http://127.0.0.1:8080/api/v1/images".into(),
            "http://localhost:8080/api/v1/images".into(),
        ],
        1 << 20,
        Duration::from_secs(1),
    )
    .expect("prefixes");
    let id = "a".repeat(64);
    assert!(
        source
            .check(&format!("http://127.0.0.1:8080/api/v1/images/{id}"))
            .is_ok()
    );
    // Other spellings of the same loopback address normalise to it and stay inside the store.
    assert!(
        source
            .check(&format!("http://2130706433:8080/api/v1/images/{id}"))
            .is_ok()
    );
    assert!(
        source
            .check(&format!("http://0x7f.0.0.1:8080/api/v1/images/{id}"))
            .is_ok()
    );
    for bad in [
        // Other paths on the same host: the API itself, metrics.
        "http://127.0.0.1:8080/api/v1/results".to_string(),
        "http://127.0.0.1:8080/metrics".into(),
        format!("http://127.0.0.1:8080/api/v1/images/../results/{id}"),
        "http://127.0.0.1:8080/api/v1/images/%2e%2e/%2e%2e/metrics".into(),
        // Other ports and hosts on loopback, by every spelling.
        "http://127.0.0.1:5432/".into(),
        "http://127.0.0.2:8080/api/v1/images/x".into(),
        "http://[::1]:8080/api/v1/images/x".into(),
        "http://[::ffff:127.0.0.1]:8080/api/v1/images/x".into(),
        "http://0:8080/api/v1/images/x".into(),
        "http://2130706434:8080/api/v1/images/x".into(),
        "http://0177.0.0.2:8080/api/v1/images/x".into(),
        // Names that resolve to loopback (as nip.io-style DNS does) are not the store.
        "http://127.0.0.1.nip.io:8080/api/v1/images/x".into(),
        "http://localtest.me:8080/api/v1/images/x".into(),
        "http://localhost.:8080/api/v1/images/x".into(),
        // Private ranges, link-local metadata, other schemes, credentials.
        "http://10.0.0.1/api/v1/images/x".into(),
        "http://192.168.1.1:8080/api/v1/images/x".into(),
        "http://172.16.0.1:8080/api/v1/images/x".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[fd00::1]:8080/api/v1/images/x".into(),
        "file:///etc/passwd".into(),
        "file://127.0.0.1:8080/api/v1/images/x".into(),
        "gopher://127.0.0.1:8080/api/v1/images/x".into(),
        "https://127.0.0.1:8080/api/v1/images/x".into(),
        "http://user:pw@127.0.0.1:8080/api/v1/images/x".into(),
        "http://127.0.0.1:8080@evil.example/api/v1/images/x".into(),
        "http://evil.example#@127.0.0.1:8080/api/v1/images/x".into(),
        "//127.0.0.1:8080/api/v1/images/x".into(),
        "http://127.0.0.1:8080\r\nHost: evil/api/v1/images/x".into(),
    ] {
        assert!(source.check(&bad).is_err(), "{bad} must be refused");
    }
}

#[tokio::test]
async fn ssrf_attempts_on_the_seed_recognition_endpoint_are_403() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(
        "recognize",
        dir.path(),
        &["--upload-url", "http://upload:8080/api/v1/images"],
    )
    .await;
    for url in [
        "http://localhost:8080/api/v1/images/x",
        "http://[::1]/api/v1/images/x",
        "http://2130706433/",
        "http://127.0.0.1.nip.io/api/v1/images/x",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
    ] {
        let body = json!({ "url": url }).to_string();
        let (status, body) = call(
            &app,
            post("/api/images/recognition", "application/json", body),
        )
        .await;
        // The model is not loaded here; the URL check comes first only when it is, so
        // either answer proves nothing was fetched — but a 2xx or a 502 would be a fetch.
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::SERVICE_UNAVAILABLE,
            "{url}: {status} {body}"
        );
    }
}

#[tokio::test]
async fn header_and_json_injection_and_unicode_stay_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app("all", dir.path(), &["--max-upload-bytes", "1000000"]).await;

    // A Host header that would turn the returned URL into something else is not used.
    let png = solid(5, 5, [1, 2, 3], ImageFormat::Png);
    for host in [
        "evil.example/#",
        "a@evil.example",
        "x\"><script>",
        "évil.example",
    ] {
        let (content_type, body) = multipart("image", "猫.png", &png);
        let request = Request::post("/api/images/upload")
            .header("content-type", content_type)
            .header(
                "host",
                axum::http::HeaderValue::from_bytes(host.as_bytes()).expect("header"),
            )
            .body(Body::from(body))
            .expect("request");
        let (status, body) = call(&app, request).await;
        assert_eq!(status, StatusCode::CREATED, "{host}: {body}");
        let url = body["url"].as_str().expect("url");
        assert!(
            url.starts_with("http://localhost/api/v1/images/"),
            "{host}: {url}"
        );
    }
    // Multipart headers with CRLF-ish and quote tricks in names: only the field 'image' counts.
    let boundary = "b";
    let tricky = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\\\"; filename=\\\"x\"\r\n\r\nnot an image\r\n--{boundary}--\r\n"
    );
    let (status, body) = call(
        &app,
        post(
            "/api/v1/images",
            &format!("multipart/form-data; boundary={boundary}"),
            tricky,
        ),
    )
    .await;
    assert!(status.is_client_error(), "{status} {body}");

    // JSON that tries to break out of its string, unicode labels, deep nesting.
    let label = "\"}], \"injected\": true, \"x\": [{\"a\": \"猫 🐈 \u{202e}txt.exe";
    let record = json!({
        "url": "http://localhost/api/v1/images/".to_string() + &"b".repeat(64),
        "result": [{"label": label, "probability": 0.5}],
    });
    let (status, saved) = call(
        &app,
        post("/api/results/save", "application/json", record.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    let (status, listed) = call(&app, get("/api/v1/results?limit=5")).await;
    assert_eq!(status, StatusCode::OK);
    let text = listed.to_string();
    assert!(!text.contains("\"injected\":true"), "{text}");
    assert!(
        text.contains("🐈"),
        "unicode survives the round trip: {text}"
    );

    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    for (uri, body) in [
        ("/api/results/save", deep.clone()),
        ("/api/v1/results", format!("{{\"url\":{deep}}}")),
        ("/api/images/recognition", format!("{{\"url\":{deep}}}")),
        (
            "/v2/models/m/infer",
            format!(
                "{{\"inputs\":[{{\"name\":\"input\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":{deep}}}]}}"
            ),
        ),
        ("/api/results/save", "{\"url\": \"\\ud800\"}".to_string()),
        // NUL cannot be stored by PostgreSQL: refused up front on every backend.
        (
            "/api/results/save",
            json!({"url": "http://x/\u{0}", "result": []}).to_string(),
        ),
        (
            "/api/results/save",
            json!({"url": "http://x/", "result": [{"label": "a\u{0}", "probability": 0.1}]})
                .to_string(),
        ),
    ] {
        let (status, body) = call(&app, post(uri, "application/json", body)).await;
        assert!(
            status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE,
            "{uri}: {status} {body}"
        );
        assert!(body["error"].is_string(), "{uri}: {body}");
    }
    // Duplicate keys: the last one wins (serde_json), consistently for every reader here.
    let (status, body) = call(
        &app,
        post(
            "/api/results/save",
            "application/json",
            "{\"url\": \"a\", \"url\": \"http://y/\", \"result\": []}",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A request id that is too long or not plain ASCII is replaced, never echoed.
    for id in [
        "a".repeat(200),
        "id with spaces".to_string(),
        "<script>é".to_string(),
    ] {
        let Ok(value) = axum::http::HeaderValue::from_bytes(id.as_bytes()) else {
            continue;
        };
        let request = Request::get("/healthz")
            .header("x-request-id", value)
            .body(Body::empty())
            .expect("request");
        let (status, response) = send(&app, request).await;
        assert_eq!(status, StatusCode::OK);
        let echoed = response.headers().get("x-request-id").expect("an id");
        assert_ne!(echoed.as_bytes(), id.as_bytes(), "{id:?} was echoed");
        assert!(echoed.len() <= 128);
    }
    // Unicode where numbers and ids are expected.
    for uri in [
        "/api/v1/results?limit=%D9%A3",
        "/api/v1/results?cursor=%F0%9F%90%88",
        "/api/v1/results?since=%E2%80%AE2020",
        "/api/v1/results?label=%E7%8C%AB",
    ] {
        let (status, body) = call(&app, get(uri)).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
            "{uri}: {status} {body}"
        );
    }
}
