//! The upload path end to end, through the real router of an `upload` role (image store in
//! a temporary directory): multipart parsing (boundaries, headers, field names, file
//! names), the raw-body path, the image checks and the content-addressed store. Whatever
//! the bytes, the answer is a JSON 2xx/4xx — never a panic, a 5xx or a hang.
#![no_main]

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Upload {
    runtime: tokio::runtime::Runtime,
    app: Router,
    _dir: tempfile::TempDir,
}

fn upload() -> &'static Upload {
    static UPLOAD: OnceLock<Upload> = OnceLock::new();
    UPLOAD.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().display().to_string();
        let argv = [
            "sightline-server",
            "upload",
            "--data-dir",
            &data,
            "--max-upload-bytes",
            "1000000",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let args = sightline_server::cli::parse(argv)
            .expect("flags")
            .command
            .into_serve_args()
            .expect("a serving subcommand");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let state = runtime
            .block_on(sightline_server::server::role_state(&args, "m", None))
            .expect("state");
        Upload {
            runtime,
            app: sightline_server::http::app(state),
            _dir: dir,
        }
    })
}

const BOUNDARY: &str = "fuzz-boundary";

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, body)) = data.split_first() else {
        return;
    };
    let uri = if knobs & 1 == 0 {
        "/api/v1/images"
    } else {
        "/api/images/upload"
    };
    let content_type = match (knobs >> 1) % 4 {
        0 | 1 => format!("multipart/form-data; boundary={BOUNDARY}"),
        2 => "multipart/form-data".to_string(),
        _ => "image/png".to_string(),
    };
    let request = Request::post(uri)
        .header("content-type", content_type)
        .body(Body::from(body.to_vec()))
        .expect("request");
    let u = upload();
    let (status, bytes) = u.runtime.block_on(async {
        let response = u
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("infallible router");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, bytes)
    });
    assert!(
        status.is_success() || status.is_client_error(),
        "{status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let json: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON answer");
    if status.is_client_error() {
        assert!(json["error"].is_string(), "{json}");
    }
});
