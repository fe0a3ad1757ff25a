//! The upload role as the pipeline's one front door, with real recognize, store and upload
//! servers on loopback, as they run in a cluster: API keys on the upload role only, and the
//! model given nothing to fetch from (no `--upload-url`, no `--fetch-allowlist`).
//!
//! Every public route the server declares (read from the source, the list the OpenAPI and
//! route-auth tests use, so a new route fails here until it has an example call) answers
//! 401 through the front door without a key and succeeds with one; recognition by URL is
//! resolved from the front door's own image store and anything else is a 400, never
//! fetched; a downstream that is down, hangs or answers garbage is a JSON 503 or 502 in
//! bounded time; Open Inference Protocol binary tensors pass through byte for byte.

mod pipeline_support;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use image::ImageFormat;
use pipeline_support::{role_app, role_args};
use reqwest::Method;
use serde_json::{Value, json};
use support::{OPEN_ROUTES as OPEN, declared_routes, solid, test_classifier_ready, zip_of};
use tokio::task::JoinHandle;

const KEY: &str = "front-door-key-0123456789";
const MODEL: &str = "test-classifier";

fn png(rgb: [u8; 3], w: u32) -> Vec<u8> {
    solid(w, 20, rgb, ImageFormat::Png)
}

/// Serves `app` on an ephemeral loopback port.
async fn serve(app: Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

/// A port where nothing listens (bound, then closed).
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr")
}

/// A listener that accepts connections, counts them and never answers.
async fn trap() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepted, task)
}

/// Three roles on loopback, the upload role wired to the others.
struct Split {
    upload: String,
    recognize: String,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Split {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Split {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.upload)
    }
}

/// Recognize (no fetch source) and store, and an upload role with `upload_extra` flags
/// wired to `recognize_url`/`store_url` when given, else to those two.
async fn split(
    upload_extra: &[&str],
    recognize_url: Option<String>,
    store_url: Option<String>,
) -> Split {
    let dir = tempfile::tempdir().expect("tempdir");
    let (recognize_app, _) = role_app(&role_args("recognize", &dir.path().join("r"), &[])).await;
    let (store_app, _) = role_app(&role_args("store", &dir.path().join("s"), &[])).await;
    let (recognize_addr, recognize_task) = serve(recognize_app).await;
    let (store_addr, store_task) = serve(store_app).await;
    let recognize = format!("http://{recognize_addr}");
    let recognize_url = recognize_url.unwrap_or_else(|| recognize.clone());
    let store_url = store_url.unwrap_or_else(|| format!("http://{store_addr}"));
    // Bound first: its address is the base of the image URLs it hands out, as when
    // `Server::bind` starts the role.
    let upload_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upload_addr = upload_listener.local_addr().expect("addr");
    let public = format!("http://{upload_addr}");
    let mut flags = vec![
        "--recognize-url",
        recognize_url.as_str(),
        "--store-url",
        store_url.as_str(),
        "--public-url",
        public.as_str(),
    ];
    flags.extend_from_slice(upload_extra);
    let (upload_app, _) = role_app(&role_args("upload", &dir.path().join("u"), &flags)).await;
    let upload_task = tokio::spawn(async move {
        let _ = axum::serve(upload_listener, upload_app).await;
    });
    Split {
        upload: format!("http://{upload_addr}"),
        recognize,
        tasks: vec![recognize_task, store_task, upload_task],
        _dir: dir,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// One example call of a route.
#[derive(Clone)]
struct Call {
    method: Method,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Call {
    fn get(path: impl Into<String>) -> Call {
        Call {
            method: Method::GET,
            path: path.into(),
            content_type: None,
            body: Vec::new(),
        }
    }

    fn post(path: impl Into<String>, content_type: &str, body: impl Into<Vec<u8>>) -> Call {
        Call {
            method: Method::POST,
            path: path.into(),
            content_type: Some(content_type.to_string()),
            body: body.into(),
        }
    }

    fn json(path: impl Into<String>, body: &Value) -> Call {
        Call::post(path, "application/json", body.to_string())
    }

    async fn send(
        &self,
        split: &Split,
        key: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut request = client().request(self.method.clone(), split.url(&self.path));
        if let Some(content_type) = &self.content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request
            .body(self.body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", self.method, self.path));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("a body").to_vec();
        (status, headers, body)
    }
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

/// What the example calls refer to: made through the front door first.
struct Made {
    image_id: String,
    image_url: String,
    result_id: String,
    /// A result the pipeline produced (feedback takes only those).
    recognized_id: String,
    evaluation_id: String,
    infer: Value,
}

async fn make(split: &Split) -> Made {
    let red = png([230, 20, 10], 30);
    let (status, _, body) = Call::post("/api/v1/images", "image/png", red.clone())
        .send(split, Some(KEY))
        .await;
    assert!(status == 201 || status == 200, "{status}");
    let image = json_of(&body);
    let image_id = image["id"].as_str().expect("id").to_string();
    let image_url = image["url"].as_str().expect("url").to_string();
    let record = json!({
        "image_id": image_id,
        "image_url": image_url,
        "model": {"name": MODEL, "sha256": "d".repeat(64)},
        "predictions": [{"label": "red", "probability": 0.9}],
    });
    let (status, _, body) = Call::json("/api/v1/results", &record)
        .send(split, Some(KEY))
        .await;
    assert!(status == 201 || status == 200, "{status}");
    let result_id = json_of(&body)["id"].as_str().expect("id").to_string();
    let (status, _, body) = Call::post("/api/v1/pipeline", "image/png", png([20, 220, 20], 28))
        .send(split, Some(KEY))
        .await;
    assert!(status == 201 || status == 200, "{status}");
    let recognized_id = json_of(&body)["id"].as_str().expect("id").to_string();
    let (status, _, body) = Call::post("/api/v1/evaluations", "application/zip", labelled_zip())
        .send(split, Some(KEY))
        .await;
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let evaluation_id = json_of(&body)["id"].as_str().expect("id").to_string();
    let (status, _, body) = Call::get(format!("/v2/models/{MODEL}"))
        .send(split, Some(KEY))
        .await;
    assert_eq!(status, 200);
    let metadata = json_of(&body);
    let input = &metadata["inputs"][0];
    let shape: Vec<i64> = input["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_i64().expect("dimension").max(1))
        .collect();
    let count: i64 = shape.iter().product();
    let infer = json!({
        "id": "through-the-front-door",
        "inputs": [{
            "name": input["name"],
            "shape": shape,
            "datatype": "FP32",
            "data": vec![0.5f32; count as usize],
        }],
    });
    Made {
        image_id,
        image_url,
        result_id,
        recognized_id,
        evaluation_id,
        infer,
    }
}

fn labelled_zip() -> Vec<u8> {
    zip_of(&[
        ("red/1.png", png([230, 20, 20], 16)),
        ("green/1.png", png([20, 220, 20], 16)),
        ("blue/1.png", png([20, 20, 230], 16)),
    ])
}

/// An example call of each route the server declares; `None` for a route without one (a
/// new route: add its example here).
fn example(method: &str, route: &str, made: &Made) -> Option<Call> {
    let id = &made.image_id;
    let image = png([20, 20, 230], 24);
    let call = match (method, route) {
        (
            "get",
            "/" | "/healthz" | "/readyz" | "/metrics" | "/api/openapi.json" | "/api/docs" | "/v2"
            | "/v2/health/live" | "/v2/health/ready" | "/api/v1/results",
        ) => Call::get(route),
        ("post", "/api/images/upload") => {
            let (content_type, body) = support::multipart("image", "photo.png", &image);
            Call::post(route, &content_type, body)
        }
        ("post", "/api/v1/images" | "/api/v1/recognize" | "/api/v1/pipeline") => {
            Call::post(route, "image/png", image)
        }
        ("get", "/api/v1/images/{id}" | "/api/v1/images/{id}/results") => {
            Call::get(route.replace("{id}", id))
        }
        ("get", "/uploads/{name}") => Call::get(format!("/uploads/{id}.png")),
        ("post", "/api/v1/images/{id}/recognize") => {
            Call::post(route.replace("{id}", id), "application/json", "")
        }
        ("post", "/api/images/recognition") => Call::json(route, &json!({"url": made.image_url})),
        ("post", "/api/results/save") => Call::json(
            route,
            &json!({"url": made.image_url, "result": [{"label": "red", "probability": 0.8}]}),
        ),
        ("post", "/api/v1/results") => Call::json(
            route,
            &json!({
                "image_id": id,
                "image_url": made.image_url,
                "model": {"name": "another", "sha256": "e".repeat(64)},
                "predictions": [{"label": "blue", "probability": 0.7}],
            }),
        ),
        ("get", "/api/v1/results/{id}" | "/api/v1/results/{id}/feedback") => {
            Call::get(route.replace("{id}", &made.result_id))
        }
        ("post", "/api/v1/results/{id}/feedback") => Call::json(
            route.replace("{id}", &made.recognized_id),
            &json!({"correct": true}),
        ),
        ("get", "/api/v1/quality") => Call::get(format!("/api/v1/quality?model={MODEL}")),
        ("post", "/api/v1/evaluations") => Call::post(route, "application/zip", labelled_zip()),
        ("get", "/api/v1/evaluations/{id}") => {
            Call::get(route.replace("{id}", &made.evaluation_id))
        }
        (
            "get",
            "/v2/models/{name}"
            | "/v2/models/{name}/ready"
            | "/v2/models/{name}/versions/{version}"
            | "/v2/models/{name}/versions/{version}/ready",
        ) => Call::get(route.replace("{name}", MODEL).replace("{version}", "1")),
        ("post", "/v2/repository/index") => Call::post(route, "application/json", ""),
        ("post", "/v2/models/{name}/infer" | "/v2/models/{name}/versions/{version}/infer") => {
            Call::json(
                route.replace("{name}", MODEL).replace("{version}", "1"),
                &made.infer,
            )
        }
        _ => return None,
    };
    Some(call)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_route_enters_through_the_front_door_with_a_key() {
    if !test_classifier_ready() {
        return;
    }
    let split = split(&["--api-keys", &format!("ci:{KEY}")], None, None).await;
    let made = make(&split).await;

    let routes = declared_routes();
    assert!(routes.len() > 20, "found only {routes:?}");
    let mut without_example = Vec::new();
    let mut open_found = Vec::new();
    for (method, route) in &routes {
        if route.starts_with("/internal/") {
            // Another role's calls inside the deployment: never forwarded.
            let call = Call {
                method: Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method"),
                ..Call::json(
                    route.replace("{id}", "0123456789abcdef01234567"),
                    &json!({}),
                )
            };
            let (status, _, _) = call.send(&split, Some(KEY)).await;
            assert_eq!(
                status, 404,
                "{method} {route} reached through the front door"
            );
            continue;
        }
        let Some(call) = example(method, route, &made) else {
            without_example.push(format!("{method} {route}"));
            continue;
        };
        let (anonymous, _, body) = call.send(&split, None).await;
        if anonymous == 401 {
            assert!(json_of(&body)["error"].is_string(), "{method} {route}");
        } else {
            assert!(
                (200..300).contains(&anonymous),
                "{method} {route} without a key: {anonymous} {}",
                String::from_utf8_lossy(&body)
            );
            open_found.push((method.as_str(), route.as_str()));
        }
        let (with_key, _, body) = call.send(&split, Some(KEY)).await;
        assert!(
            (200..300).contains(&with_key),
            "{method} {route} with the key: {with_key} {}",
            String::from_utf8_lossy(&body)
        );
        let (wrong_key, _, _) = call.send(&split, Some("wrong-key-0123456789")).await;
        if anonymous == 401 {
            assert_eq!(wrong_key, 401, "{method} {route} with a wrong key");
        }
    }
    assert!(
        without_example.is_empty(),
        "routes without an example call through the front door: {without_example:?}"
    );
    let mut expected = OPEN.to_vec();
    expected.sort();
    open_found.sort();
    assert_eq!(
        open_found, expected,
        "the routes answering without a key differ from the reviewed open list"
    );
    // The recognize role checks no key here: the front door is what does.
    let direct = client()
        .get(format!("{}/v2/models/{MODEL}", split.recognize))
        .send()
        .await
        .expect("direct");
    assert_eq!(direct.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recognition_by_url_reads_the_front_doors_store_and_fetches_nothing_else() {
    if !test_classifier_ready() {
        return;
    }
    let split = split(&[], None, None).await;
    let red = png([230, 20, 10], 41);
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(red.clone()).file_name("cat.jpg"),
    );
    let response = client()
        .post(split.url("/api/images/upload"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status().as_u16(), 201);
    let uploaded: Value = response.json().await.expect("json");
    let url = uploaded["url"].as_str().expect("url").to_string();
    assert!(url.starts_with(&split.upload), "{url}");
    let id = sightline_server::upload::sha256_hex(&red);

    // What the recognize role answers for these bytes, top 3: the seed's answer, byte for byte.
    let direct = client()
        .post(format!("{}/api/v1/recognize?top_k=3", split.recognize))
        .header("content-type", "image/png")
        .body(red.clone())
        .send()
        .await
        .expect("direct");
    let direct: Value = direct.json().await.expect("json");
    let expected = serde_json::to_vec(&direct["predictions"]).expect("encode");
    for url in [url.clone(), split.url(&format!("/uploads/{id}.png"))] {
        let (status, headers, body) = Call::json("/api/images/recognition", &json!({ "url": url }))
            .send(&split, None)
            .await;
        assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert_eq!(body, expected, "{url}");
        assert_eq!(json_of(&body)[0]["label"], "red");
    }

    // Anything else is refused before any connection: the trap sees none.
    let (trap, accepted, _trap_task) = trap().await;
    for url in [
        "http://127.0.0.1:1/x".to_string(),
        format!("http://{trap}/api/v1/images/{id}"),
        format!("http://{trap}/x"),
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("{}/api/v1/images/{id}", split.recognize),
        split.url(&format!("/elsewhere/{id}")),
        split.url(&format!("/api/v1/images/{id}/results")),
        format!("file:///api/v1/images/{id}"),
        "not a url".to_string(),
    ] {
        let (status, _, body) = Call::json("/api/images/recognition", &json!({ "url": url }))
            .send(&split, None)
            .await;
        assert_eq!(status, 400, "{url}: {}", String::from_utf8_lossy(&body));
        assert!(json_of(&body)["error"].is_string(), "{url}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing is fetched");

    // The seed's errors keep their shape.
    let unknown = split.url(&format!("/api/v1/images/{}", "0".repeat(64)));
    for (body, expected) in [
        (json!({ "url": unknown }), 404),
        (json!({}), 400),
        (json!({ "url": "  " }), 400),
    ] {
        let (status, _, answer) = Call::json("/api/images/recognition", &body)
            .send(&split, None)
            .await;
        assert_eq!(status, expected, "{body}");
        assert!(json_of(&answer)["error"].is_string(), "{body}");
    }
    let (status, _, answer) = Call::post("/api/images/recognition", "text/plain", "x")
        .send(&split, None)
        .await;
    assert_eq!(status, 415);
    assert!(json_of(&answer)["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_down_hanging_or_garbled_is_a_json_503_or_502_in_bounded_time() {
    if !test_classifier_ready() {
        return;
    }
    let flags = [
        "--downstream-timeout-secs",
        "2",
        "--downstream-retries",
        "1",
    ];
    let image = png([20, 220, 20], 23);

    // Nothing listens where recognize and store should be.
    let down = split(
        &flags,
        Some(format!("http://{}", closed_port().await)),
        Some(format!("http://{}", closed_port().await)),
    )
    .await;
    let (status, _, body) = Call::post("/api/v1/images", "image/png", image.clone())
        .send(&down, None)
        .await;
    assert!(
        status == 201 || status == 200,
        "the front door's own routes work"
    );
    let url = json_of(&body)["url"].as_str().expect("url").to_string();
    for (call, component) in [
        (
            Call::post("/api/v1/recognize", "image/png", image.clone()),
            "recognize",
        ),
        (
            Call::json("/api/images/recognition", &json!({ "url": url })),
            "recognize",
        ),
        (Call::get("/v2/health/ready"), "recognize"),
        (Call::get(format!("/v2/models/{MODEL}")), "recognize"),
        (Call::get("/api/v1/results"), "store"),
        (
            Call::json("/api/results/save", &json!({"url": url, "result": []})),
            "store",
        ),
    ] {
        let started = Instant::now();
        let (status, headers, body) = call.send(&down, None).await;
        assert_eq!(status, 503, "{} {}", call.method, call.path);
        let error = json_of(&body)["error"].as_str().expect("error").to_string();
        assert!(error.contains(component), "{error}");
        assert!(headers.contains_key("retry-after"), "{}", call.path);
        assert!(started.elapsed() < Duration::from_secs(4), "{}", call.path);
    }
    // Liveness is the front door's own.
    let (status, _, _) = Call::get("/v2/health/live").send(&down, None).await;
    assert_eq!(status, 200);

    // A recognize service that takes connections and never answers.
    let (hanging, accepted, _task) = trap().await;
    let hung = split(&flags, Some(format!("http://{hanging}")), None).await;
    let started = Instant::now();
    let (status, _, body) = Call::post("/api/v1/recognize", "image/png", image.clone())
        .send(&hung, None)
        .await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(
        json_of(&body)["error"]
            .as_str()
            .expect("error")
            .contains("recognize")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(accepted.load(Ordering::SeqCst) >= 1);

    // One that answers garbage where the front door reads the answer.
    let garbled = Router::new().route(
        "/api/v1/recognize",
        axum::routing::post(|| async { "this is not JSON" }),
    );
    let (garbled, _garbled_task) = serve(garbled).await;
    let bad = split(&flags, Some(format!("http://{garbled}")), None).await;
    let (_, _, body) = Call::post("/api/v1/images", "image/png", image.clone())
        .send(&bad, None)
        .await;
    let url = json_of(&body)["url"].as_str().expect("url").to_string();
    let (status, _, body) = Call::json("/api/images/recognition", &json!({ "url": url }))
        .send(&bad, None)
        .await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(json_of(&body)["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oip_and_recognition_answers_pass_through_byte_for_byte() {
    if !test_classifier_ready() {
        return;
    }
    let split = split(&["--max-upload-bytes", "200000"], None, None).await;
    let made = make(&split).await;
    let input = &made.infer["inputs"][0];
    // The binary tensor extension: a JSON header, then the raw tensor, both ways.
    let values = input["data"].as_array().expect("data").len();
    let header = json!({
        "id": "binary",
        "inputs": [{
            "name": input["name"],
            "shape": input["shape"],
            "datatype": "FP32",
            "parameters": {"binary_data_size": values * 4},
        }],
        "outputs": [{"name": "", "parameters": {"binary_data": true}}],
    });
    let metadata: Value = client()
        .get(split.url(&format!("/v2/models/{MODEL}")))
        .send()
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    let mut header = header;
    header["outputs"][0]["name"] = metadata["outputs"][0]["name"].clone();
    let header = serde_json::to_vec(&header).expect("encode");
    let mut body = header.clone();
    for i in 0..values {
        body.extend_from_slice(&((i % 7) as f32 / 7.0).to_le_bytes());
    }
    let send = |base: String| {
        let body = body.clone();
        let length = header.len();
        async move {
            let response = client()
                .post(format!("{base}/v2/models/{MODEL}/infer"))
                .header("content-type", "application/octet-stream")
                .header("inference-header-content-length", length.to_string())
                .body(body)
                .send()
                .await
                .expect("infer");
            let status = response.status().as_u16();
            let length = response
                .headers()
                .get("inference-header-content-length")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (status, length, response.bytes().await.expect("body"))
        }
    };
    let (status, length, through) = send(split.upload.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&through));
    let direct = send(split.recognize.clone()).await;
    assert_eq!((status, length.clone(), through.clone()), direct);
    assert!(
        length.is_some(),
        "the binary output's header length is passed back"
    );

    // A refusal passes through with its status and JSON error.
    let bad = Call::json(format!("/v2/models/{MODEL}/infer"), &json!({"inputs": []}));
    let (status, _, answer) = bad.send(&split, None).await;
    assert_eq!(status, 400);
    assert!(json_of(&answer)["error"].is_string());
    let (status, _, _) = Call::get("/v2/models/another-model")
        .send(&split, None)
        .await;
    assert_eq!(status, 404);

    // Multipart recognition is forwarded as sent; a body over the limit stops at the door.
    let image = png([230, 20, 10], 30);
    let (content_type, multipart) = support::multipart("image", "x.png", &image);
    let (status, _, answer) = Call::post("/api/v1/recognize?top_k=2", &content_type, multipart)
        .send(&split, None)
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer = json_of(&answer);
    assert_eq!(answer["predictions"].as_array().expect("list").len(), 2);
    assert_eq!(answer["predictions"][0]["label"], "red");
    let (status, _, answer) = Call::post("/api/v1/recognize", "image/png", vec![0u8; 300_000])
        .send(&split, None)
        .await;
    assert_eq!(status, 413);
    assert!(json_of(&answer)["error"].is_string());
}
