//! Shared set-up for the integration tests: paths to the built models and the ONNX Runtime
//! library, a fully loaded router for a model, and request helpers.
#![allow(dead_code)]

pub mod moto;

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use sightline_server::cli::ServeArgs;
use sightline_server::http::{AppState, app};
use sightline_server::serving::load_into;
use tower::ServiceExt;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn models() -> PathBuf {
    repo_root().join("models/build")
}

pub fn ort_lib() -> PathBuf {
    repo_root().join(".ort/libonnxruntime.so")
}

/// True when every path exists. Otherwise: under CI a failure, locally a loud skip.
pub fn require(paths: &[PathBuf]) -> bool {
    let missing: Vec<&PathBuf> = paths.iter().filter(|p| !p.exists()).collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!("missing {missing:?}: run `make deps models` from the repository root");
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("\n*** SKIPPED (not in CI): {message} ***\n");
    false
}

pub fn test_classifier_ready() -> bool {
    require(&[ort_lib(), models().join("test-classifier.onnx")])
}

pub fn pretrained_ready() -> bool {
    require(&[
        ort_lib(),
        models().join("efficientnet-lite0.onnx"),
        models().join("photos/expected.json"),
    ])
}

/// Serving flags for `model` (a file name in models/build) plus `extra` flags.
pub fn args(model: &str, extra: &[&str]) -> ServeArgs {
    let model = models().join(model);
    let ort = ort_lib();
    let mut argv = vec![
        "sightline-server".to_string(),
        "recognize".into(),
        "--model".into(),
        model.display().to_string(),
        "--ort-lib".into(),
        ort.display().to_string(),
        "--intra-threads".into(),
        "1".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let argv = argv.into_iter().map(std::ffi::OsString::from).collect();
    sightline_server::cli::parse(argv)
        .expect("valid flags")
        .command
        .into_serve_args()
        .expect("a serving subcommand")
}

/// A router whose model load has finished (ready or failed).
pub async fn loaded_app(args: &ServeArgs) -> (Router, AppState) {
    let setup = sightline_server::server::model_setup(args).expect("model setup");
    let state = sightline_server::server::state(args, &setup.name).expect("state");
    load_into(state.model.clone(), setup, state.metrics.inference.clone()).await;
    (app(state.clone()), state)
}

pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Response<Body>) {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("infallible router");
    (response.status(), response)
}

pub async fn body_json(response: Response<Body>) -> serde_json::Value {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
}

pub async fn body_bytes(response: Response<Body>) -> bytes::Bytes {
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

pub fn post(uri: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header("content-type", content_type)
        .body(body.into())
        .expect("request")
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

/// `POST uri` with a JSON body: the status and the JSON answer.
pub async fn post_json(
    app: &Router,
    uri: &str,
    body: &serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let (status, response) = send(app, post(uri, "application/json", body.to_string())).await;
    (status, body_json(response).await)
}

/// `GET uri`: the status and the JSON answer.
pub async fn get_json(app: &Router, uri: &str) -> (StatusCode, serde_json::Value) {
    let (status, response) = send(app, get(uri)).await;
    (status, body_json(response).await)
}

/// A `w×h` image of one colour, encoded as `format`.
pub fn solid(w: u32, h: u32, rgb: [u8; 3], format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .expect("encode");
    out.into_inner()
}

/// A zip file of `(path inside the zip, bytes)`.
pub fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .expect("start file");
        w.write_all(bytes).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

/// A multipart body with one file field.
pub fn multipart(field: &str, filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "sightline-test-boundary-7f3a";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Peak resident memory of this process so far, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `(METHOD, path)` of every `.route("path", get(..).post(..))` in the crate's source.
pub fn declared_routes() -> std::collections::BTreeSet<(String, String)> {
    let src = repo_root().join("inference-server/src");
    let mut files = vec![src];
    let mut routes = std::collections::BTreeSet::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                files.push(entry.expect("entry").path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        // Routers built inside unit tests are not served.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join("");
        for chunk in flat.split(".route(\"").skip(1) {
            let Some((route, rest)) = chunk.split_once('"') else {
                continue;
            };
            // The handlers up to the closing parenthesis of `.route(`.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(rest.len());
            let handlers = &rest[..end];
            for method in ["get", "post", "put", "delete", "patch"] {
                if handlers.contains(&format!(",{method}("))
                    || handlers.contains(&format!(".{method}("))
                {
                    routes.insert((method.to_string(), route.to_string()));
                }
            }
        }
    }
    routes
}

/// The router of `role` with `--data-dir data_dir` plus `extra`, its model not loaded (the
/// recognize routes answer 503): for tests of everything around the model.
pub async fn unloaded_app(role: &str, data_dir: &Path, extra: &[&str]) -> Router {
    let data = data_dir.display().to_string();
    let mut argv = vec!["sightline-server", role, "--data-dir", &data];
    argv.extend_from_slice(extra);
    let args = sightline_server::cli::parse(argv.into_iter().map(Into::into).collect())
        .expect("valid flags")
        .command
        .into_serve_args()
        .expect("a serving subcommand");
    let state = sightline_server::server::role_state(&args, "m", None)
        .await
        .expect("state");
    app(state)
}

/// The routes anyone may call, with or without keys: health, readiness, metrics, the index
/// and API docs, and image downloads by content id (see `inference-server/src/auth.rs`).
/// The reviewed list `tests/auth_routes.rs` and `tests/front_door.rs` check against.
#[allow(dead_code)]
pub const OPEN_ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v2/health/live"),
    ("get", "/v2/health/ready"),
    ("get", "/api/openapi.json"),
    ("get", "/api/docs"),
    ("get", "/api/v1/images/{id}"),
    ("get", "/uploads/{name}"),
];

/// Serves `app` on a loopback port (until the test's runtime ends); its base URL.
pub async fn serve_on_loopback(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// `sightline-server batch` with the test classifier and `extra` flags, as parsed.
pub fn batch_args(extra: &[&str]) -> sightline_server::cli::BatchArgs {
    let mut argv: Vec<std::ffi::OsString> = vec![
        "sightline-server".into(),
        "batch".into(),
        "--model".into(),
        models().join("test-classifier.onnx").into(),
        "--ort-lib".into(),
        ort_lib().into(),
        "--no-progress".into(),
    ];
    argv.extend(extra.iter().map(Into::into));
    match sightline_server::cli::parse(argv)
        .expect("flags parse")
        .command
    {
        sightline_server::cli::Command::Batch(args) => args,
        _ => panic!("not the batch command"),
    }
}
