//! The upload role over HTTP: the seed's upload (absolute, fetchable URL), the v1 upload,
//! content addressing (same bytes → one file), downloads with ETag, conditional and range
//! requests, and every bad input answered with a 4xx JSON error.

mod pipeline_support;
mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use image::ImageFormat;
use pipeline_support::*;
use support::{body_bytes, body_json, get, multipart, post, send, solid};

fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = solid(1, 1, [0, 0, 0], ImageFormat::Png);
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// Files in the image store (not counting the temporary directory).
fn stored_files(dir: &std::path::Path) -> usize {
    let images = dir.join("images");
    std::fs::read_dir(&images)
        .expect("images dir")
        .flatten()
        .filter(|e| e.file_name() != "tmp")
        .map(|e| std::fs::read_dir(e.path()).map(|d| d.count()).unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn seed_upload_returns_an_absolute_url_that_serves_the_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _) = role_app(&role_args(
        "upload",
        dir.path(),
        &["--public-url", "http://upload.example:9000/"],
    ))
    .await;
    let png = solid(20, 10, [200, 10, 10], ImageFormat::Png);
    let (content_type, body) = multipart("image", "cat.png", &png);
    // The URL is made from --public-url, whatever Host the request names.
    let request = Request::post("/api/images/upload")
        .header("content-type", content_type)
        .header("host", "other.example:1234")
        .body(Body::from(body))
        .expect("request");
    let (status, response) = send(&app, request).await;
    assert_eq!(status, StatusCode::CREATED);
    let json = body_json(response).await;
    let url = json["url"].as_str().expect("url");
    let id = sightline_server::upload::sha256_hex(&png);
    assert_eq!(
        url,
        format!("http://upload.example:9000/api/v1/images/{id}")
    );
    assert_eq!(
        json.as_object().expect("object").len(),
        1,
        "exactly the seed's shape"
    );

    let (status, response) = send(&app, get(&format!("/api/v1/images/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.headers()["etag"], format!("\"{id}\"").as_str());
    assert_eq!(body_bytes(response).await.as_ref(), png.as_slice());
    let (status, _) = send(&app, get(&format!("/uploads/{id}.png"))).await;
    assert_eq!(status, StatusCode::OK, "the seed-style path serves it too");
}

#[tokio::test]
async fn v1_upload_is_content_addressed_with_conditional_and_range_downloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = role_args(
        "upload",
        dir.path(),
        &["--public-url", "http://upload:8080/"],
    );
    let (app, _) = role_app(&args).await;
    let jpeg = solid(64, 48, [10, 200, 10], ImageFormat::Jpeg);
    let (status, response) = send(&app, post("/api/v1/images", "image/jpeg", jpeg.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    let first = body_json(response).await;
    let id = sightline_server::upload::sha256_hex(&jpeg);
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["sha256"], id.as_str());
    assert_eq!(
        first["url"],
        format!("http://upload:8080/api/v1/images/{id}").as_str()
    );
    assert_eq!(
        (first["width"].as_u64(), first["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert_eq!(first["format"], "jpeg");
    assert_eq!(first["bytes"].as_u64(), Some(jpeg.len() as u64));

    // The same bytes again, under another name and as multipart: the same id, one file.
    let (content_type, body) = multipart("image", "other-name.jpg", &jpeg);
    let (status, response) = send(&app, post("/api/v1/images", &content_type, body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body_json(response).await, first);
    assert_eq!(stored_files(dir.path()), 1);

    let uri = format!("/api/v1/images/{id}");
    let conditional = Request::get(&uri)
        .header("if-none-match", format!("\"{id}\""))
        .body(Body::empty())
        .expect("request");
    let (status, _) = send(&app, conditional).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    let ranged = Request::get(&uri)
        .header("range", "bytes=0-9")
        .body(Body::empty())
        .expect("request");
    let (status, response) = send(&app, ranged).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 0-9/{}", jpeg.len()).as_str()
    );
    assert_eq!(body_bytes(response).await.as_ref(), &jpeg[..10]);

    let beyond = Request::get(&uri)
        .header("range", "bytes=999999-")
        .body(Body::empty())
        .expect("request");
    let (status, response) = send(&app, beyond).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert!(body_json(response).await["error"].is_string());
}

#[tokio::test]
async fn bad_uploads_get_a_4xx_json_error_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = role_args("upload", dir.path(), &["--max-upload-bytes", "1000000"]);
    let (app, _) = role_app(&args).await;
    let png = solid(8, 8, [1, 2, 3], ImageFormat::Png);
    let mut polyglot = png.clone();
    polyglot.extend_from_slice(b"PK\x03\x04 a zip file hides here <script>alert(1)</script>");
    let mut jpeg_zip = solid(8, 8, [1, 2, 3], ImageFormat::Jpeg);
    jpeg_zip.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00 zip");
    let mut header_only = b"\x89PNG\r\n\x1a\n".to_vec();
    header_only.extend_from_slice(b"<html><body>not an image</body></html>");
    let text = b"just some text, renamed to cat.jpg".to_vec();

    for (uri, field, filename, bytes, expected) in [
        (
            "/api/images/upload",
            "file",
            "cat.png",
            png.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/images/upload",
            "Image",
            "cat.png",
            png.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/images/upload",
            "image",
            "empty.png",
            Vec::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/images/upload",
            "image",
            "",
            png.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/images/upload",
            "image",
            "cat.jpg",
            text.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/api/images/upload",
            "image",
            "cat.png",
            polyglot.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/images",
            "image",
            "cat.jpg",
            jpeg_zip.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/images",
            "image",
            "cat.png",
            header_only.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/images",
            "image",
            "bomb.png",
            png_claiming(100_000, 100_000),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/api/v1/images",
            "image",
            "big.png",
            vec![0u8; 2_000_000],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let (content_type, body) = multipart(field, filename, &bytes);
        let (status, response) = send(&app, post(uri, &content_type, body)).await;
        let json = body_json(response).await;
        assert_eq!(
            status, expected,
            "{uri} field={field} file={filename}: {json}"
        );
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{json}"
        );
    }
    for (uri, content_type, body, expected) in [
        (
            "/api/v1/images",
            "image/png",
            Vec::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/images",
            "image/jpeg",
            text.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/api/v1/images",
            "image/png",
            vec![7u8; 100 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/api/images/upload",
            "image/png",
            png.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/images",
            "multipart/form-data; boundary=x",
            b"garbage".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, response) = send(&app, post(uri, content_type, body)).await;
        let json = body_json(response).await;
        assert_eq!(status, expected, "{uri} {content_type}: {json}");
        assert!(json["error"].is_string(), "{json}");
    }
    assert_eq!(stored_files(dir.path()), 0, "nothing bad was stored");

    for uri in [
        "/api/v1/images/0000000000000000000000000000000000000000000000000000000000000000",
        "/api/v1/images/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/images/%E7%8C%AB.jpg",
        "/uploads/..%2Fsightline.db",
        "/uploads/sightline.db",
    ] {
        let (status, response) = send(&app, get(uri)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert!(body_json(response).await["error"].is_string());
    }
}

#[tokio::test]
async fn client_file_names_are_never_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _) = role_app(&role_args("upload", dir.path(), &[])).await;
    for (i, name) in [
        "../../../../tmp/evil.png",
        "猫 🐈.png",
        "/etc/passwd",
        "a\\..\\b.png",
        "CON",
    ]
    .into_iter()
    .enumerate()
    {
        let png = solid(4 + i as u32, 4, [9, 9, 9], ImageFormat::Png);
        let (content_type, body) = multipart("image", name, &png);
        let (status, response) = send(&app, post("/api/images/upload", &content_type, body)).await;
        assert_eq!(status, StatusCode::CREATED, "{name}");
        let url = body_json(response).await["url"]
            .as_str()
            .expect("url")
            .to_string();
        assert!(
            url.ends_with(&sightline_server::upload::sha256_hex(&png)),
            "{url}"
        );
    }
    assert_eq!(stored_files(dir.path()), 5);
    assert!(!std::path::Path::new("/tmp/evil.png").exists());
}
