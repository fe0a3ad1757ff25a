//! An in-memory Kubernetes API (kube-fake-client) behind a recording layer: every request
//! the operator sends is kept as (verb, group, resource), so tests can assert what was
//! written and the RBAC test can compare it with the ClusterRole.

#![allow(dead_code)]

pub mod drive;
pub mod netpol;
pub mod scrape_sim;
pub mod sim;
pub mod ssa;
pub mod store_sim;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use gateway_api::apis::standard::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use serde_json::json;
use sightline_operator::build::monitoring::ServiceMonitor;
use sightline_operator::build::pod::Platform;
use sightline_operator::controller::{ClusterApis, Context};
use sightline_operator::crd::{ImageModel, RecognitionPipeline};
use sightline_operator::metrics::Metrics;
use sightline_operator::status::FixedClock;

/// One request: the RBAC verb, the API group ("" for core), the resource (with
/// `/subresource`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    pub verb: String,
    pub group: String,
    pub resource: String,
}

impl Call {
    pub fn writes(&self) -> bool {
        !matches!(self.verb.as_str(), "get" | "list" | "watch")
    }
}

/// Maps a request to its RBAC verb and resource, as the API server's authorizer does.
fn classify(method: &http::Method, uri: &http::Uri) -> Option<Call> {
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        // `services/proxy` and other subresources (anything after them is the proxied path).
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watch = uri.query().is_some_and(|q| q.contains("watch=true"));
    let verb = match (method.as_str(), named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some(Call {
        verb: verb.into(),
        group,
        resource,
    })
}

/// The fake API with every kind the operator touches registered.
pub struct Cluster {
    /// The operator's client: its requests are recorded.
    pub client: Client,
    /// A user's client (kubectl, the kubelet, controllers): not recorded.
    pub admin: Client,
    calls: Arc<Mutex<Vec<Call>>>,
    /// What the model pods answer through `services/proxy` (`None`: unreachable, 503).
    proxied: Arc<Mutex<Option<String>>>,
    /// What each pod answers through `pods/proxy`: (pod name, path) → (status, body).
    pod_answers: Arc<Mutex<PodAnswers>>,
    /// Writes the API server refuses: resource plural → (status code, Status message).
    refusals: Arc<Mutex<BTreeMap<String, (u16, String)>>>,
    /// The paths asked of pods through `pods/proxy`, in order.
    asked: Arc<Mutex<Vec<String>>>,
    /// The API key a pod's path answers only to ([`Cluster::require_key`]).
    keys: Arc<Mutex<BTreeMap<(String, String), String>>>,
}

type PodAnswers = BTreeMap<(String, String), (u16, String)>;

fn respond(status: u16, body: String) -> http::Response<kube::client::Body> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(body.into_bytes()))
        .expect("response")
}

/// A `Status` failure body as the API server writes it.
pub fn status_body(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
    .to_string()
}

/// SIMULATION of a Sightline server's key check (inference-server/src/auth/mod.rs,
/// `enforce`): a request presenting no key (`Authorization: Bearer` or `X-API-Key`; the
/// API server's proxy passes `X-API-Key` on and consumes `Authorization` itself) or
/// another key than `key` is refused 401 with the server's words.
fn refuse_key(
    request: &http::Request<kube::client::Body>,
    key: &str,
) -> Option<http::Response<kube::client::Body>> {
    let presented = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok());
    let error = match presented {
        Some(k) if k == key => return None,
        Some(_) => "the API key is not valid",
        None => "an API key is required: send Authorization: Bearer <key> or X-API-Key",
    };
    Some(respond(401, json!({ "error": error }).to_string()))
}

/// `/api/v1/namespaces/{ns}/pods/{pod}[:port]/proxy/{path}` → (pod, `/path`).
fn pod_proxy_target(path: &str) -> Option<(String, String)> {
    let (_, rest) = path.split_once("/pods/")?;
    let (pod, rest) = rest.split_once("/proxy")?;
    let pod = pod.split(':').next()?.to_string();
    let rest = if rest.is_empty() { "/" } else { rest };
    Some((pod, rest.to_string()))
}

/// SIMULATION of what a real API server does to every object it stores and kube-fake-client
/// does not: fields holding an empty list are dropped (Go's `omitempty`, e.g. a
/// NetworkPolicy's `ingress: []`), and resource quantities are written in canonical form
/// (`0.5` → `500m`, `1024Mi` → `1Gi`).
pub fn apiserver_normalise(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !matches!(v, Value::Array(a) if a.is_empty()));
            for (key, v) in map.iter_mut() {
                let quantities =
                    matches!(key.as_str(), "limits" | "requests" | "capacity" | "hard");
                match v {
                    Value::Object(inner) if quantities => {
                        for q in inner.values_mut() {
                            if let Value::String(text) = q {
                                *text = canonical_quantity(text);
                            }
                        }
                    }
                    Value::String(text) if key == "sizeLimit" => {
                        *text = canonical_quantity(text);
                    }
                    _ => apiserver_normalise(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(apiserver_normalise),
        _ => {}
    }
}

/// The canonical form of the quantities the tests use (the API server's rules, for
/// decimal numbers, `m`, and the binary suffixes).
pub fn canonical_quantity(text: &str) -> String {
    const BINARY: [(&str, u32); 5] = [("Ki", 1), ("Mi", 2), ("Gi", 3), ("Ti", 4), ("Pi", 5)];
    for (suffix, power) in BINARY {
        if let Some(number) = text.strip_suffix(suffix)
            && let Ok(mut n) = number.parse::<u64>()
        {
            let mut power = power;
            while n >= 1024 && n % 1024 == 0 && power < 5 {
                n /= 1024;
                power += 1;
            }
            return format!("{n}{}", BINARY[power as usize - 1].0);
        }
    }
    let milli = match text.strip_suffix('m') {
        Some(number) => number.parse::<f64>().ok(),
        None => text.parse::<f64>().ok().map(|n| n * 1000.0),
    };
    match milli {
        Some(m) if m.fract() == 0.0 && (m as i64) % 1000 == 0 => format!("{}", m as i64 / 1000),
        Some(m) if m.fract() == 0.0 => format!("{}m", m as i64),
        _ => text.to_string(),
    }
}

impl Cluster {
    pub async fn new() -> Cluster {
        let fake = kube_fake_client::ClientBuilder::new()
            .with_resource::<ImageModel>()
            .with_resource::<RecognitionPipeline>()
            .with_resource::<sightline_operator::crd::RecognitionJob>()
            .with_status_subresource::<k8s_openapi::api::batch::v1::Job>()
            .with_resource::<HttpRoute>()
            .with_resource::<ServiceMonitor>()
            .with_status_subresource::<Deployment>()
            .build()
            .await
            .expect("fake client");
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let log = calls.clone();
        let admin = fake.clone();
        let proxied: Arc<Mutex<Option<String>>> = Arc::default();
        let pod_answers: Arc<Mutex<PodAnswers>> = Arc::default();
        let refusals: Arc<Mutex<BTreeMap<String, (u16, String)>>> = Arc::default();
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let keys: Arc<Mutex<BTreeMap<(String, String), String>>> = Arc::default();
        let (answer, pods, refused) = (proxied.clone(), pod_answers.clone(), refusals.clone());
        let asked_log = asked.clone();
        let required = keys.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let fake = fake.clone();
            let log = log.clone();
            let answer = answer.clone();
            let pods = pods.clone();
            let refused = refused.clone();
            let asked_log = asked_log.clone();
            let required = required.clone();
            async move {
                let call = classify(request.method(), request.uri());
                if let Some(call) = &call {
                    log.lock().expect("log").push(call.clone());
                }
                let path = request.uri().path().to_string();
                if let Some(mut target) = pod_proxy_target(&path) {
                    if let Some(query) = request.uri().query() {
                        target.1 = format!("{}?{query}", target.1);
                    }
                    asked_log.lock().expect("asked").push(target.1.clone());
                    let key = required.lock().expect("keys").get(&target).cloned();
                    if let Some(refusal) = key.and_then(|k| refuse_key(&request, &k)) {
                        return Ok(refusal);
                    }
                    let found = pods.lock().expect("answers").get(&target).cloned();
                    let (status, body) = found.unwrap_or_else(|| {
                        let message = format!("no endpoints available for pod {:?}", target.0);
                        (503, status_body(503, "ServiceUnavailable", &message))
                    });
                    return Ok(respond(status, body));
                }
                if path.contains("/proxy/") {
                    // The fake has no pods behind its Services: answer as the pod would.
                    let body = answer.lock().expect("answer").clone();
                    return Ok(match body {
                        Some(body) => respond(200, body),
                        None => respond(
                            503,
                            status_body(503, "ServiceUnavailable", "no endpoints available"),
                        ),
                    });
                }
                if let Some(call) = call.as_ref().filter(|c| c.writes()) {
                    let plural = call.resource.split('/').next().unwrap_or_default();
                    let refusal = refused.lock().expect("refusals").get(plural).cloned();
                    if let Some((code, message)) = refusal {
                        return Ok(respond(code, status_body(code, "Forbidden", &message)));
                    }
                }
                let request = status_apply_removes_omitted_fields(&fake, request).await;
                let apply = (request.method() == http::Method::PATCH
                    && request
                        .headers()
                        .get("content-type")
                        .is_some_and(|c| c.as_bytes().starts_with(b"application/apply-patch")))
                .then(|| ssa::deployment_path(&path))
                .flatten();
                let (request, body) = normalised(request).await;
                let response = fake.send(request).await;
                let applied = matches!(&response, Ok(r) if r.status().is_success());
                if let (Some((ns, name)), true) = (apply, applied) {
                    ssa::after_apply(&fake, &ns, &name, &body).await;
                }
                response
            }
        });
        Cluster {
            client: Client::new(service, "default"),
            admin,
            calls,
            proxied,
            pod_answers,
            refusals,
            asked,
            keys,
        }
    }

    /// Makes `GET pods/{pod}/proxy{path}` answer only to the API key `key`.
    pub fn require_key(&self, pod: &str, path: &str, key: &str) {
        self.keys
            .lock()
            .expect("keys")
            .insert((pod.to_string(), path.to_string()), key.to_string());
    }

    /// Forgets the paths asked of pods so far; returns them.
    pub fn take_asked(&self) -> Vec<String> {
        std::mem::take(&mut *self.asked.lock().expect("asked"))
    }

    /// Sets what `GET pods/{pod}/proxy{path}` answers (the pod's own HTTP API).
    pub fn answer_pod(&self, pod: &str, path: &str, status: u16, body: String) {
        self.pod_answers
            .lock()
            .expect("answers")
            .insert((pod.to_string(), path.to_string()), (status, body));
    }

    /// Makes the API server refuse every write of `plural` (a webhook, a quota) with `code`
    /// and `message`; `None` lifts the refusal.
    pub fn refuse_writes(&self, plural: &str, refusal: Option<(u16, &str)>) {
        let mut refusals = self.refusals.lock().expect("refusals");
        match refusal {
            Some((code, message)) => refusals.insert(plural.to_string(), (code, message.into())),
            None => refusals.remove(plural),
        };
    }

    /// A reconcile context over this cluster whose time the test moves.
    pub fn context_with(&self, apis: ClusterApis, clock: Arc<TestClock>) -> Arc<Context> {
        Arc::new(Context::new(
            self.client.clone(),
            Platform::default(),
            apis,
            Arc::new(Metrics::new()),
            clock,
            Some("test".into()),
        ))
    }

    /// A reconcile context over this cluster, at a fixed time.
    pub fn context(&self, apis: ClusterApis) -> Arc<Context> {
        Arc::new(Context::new(
            self.client.clone(),
            Platform::default(),
            apis,
            Arc::new(Metrics::new()),
            Arc::new(FixedClock(
                Timestamp::from_second(1_800_000_000).expect("time"),
            )),
            Some("test".into()),
        ))
    }

    /// Sets what `GET services/proxy/…` answers (the model pod's own API).
    pub fn answer_proxied(&self, body: Option<String>) {
        *self.proxied.lock().expect("answer") = body;
    }

    /// Forgets the requests so far; returns the writes among them.
    pub fn take_writes(&self) -> Vec<Call> {
        self.take_calls().into_iter().filter(Call::writes).collect()
    }

    /// Forgets the requests so far; returns them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().expect("log"))
    }

    pub fn distinct_calls(&self) -> BTreeSet<Call> {
        self.calls.lock().expect("log").iter().cloned().collect()
    }
}

/// SIMULATION of a rule of server-side apply that kube-fake-client does not follow (it
/// merges an apply as a JSON merge patch): a field the manager applied before and leaves
/// out now is removed when no other manager owns it
/// (<https://kubernetes.io/docs/reference/using-api/server-side-apply/#field-management>).
/// Modelled for `status` applies, whose only manager is the operator: each field of the
/// live status the apply leaves out is sent as `null`, which the merge removes.
async fn status_apply_removes_omitted_fields(
    fake: &Client,
    request: http::Request<kube::client::Body>,
) -> http::Request<kube::client::Body> {
    use http_body_util::BodyExt;
    let path = request.uri().path().to_string();
    let is_apply = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
    let Some(object_path) = path.strip_suffix("/status").filter(|_| is_apply) else {
        return request;
    };
    let get = http::Request::get(object_path)
        .body(Vec::new())
        .expect("get request");
    let Ok(live) = fake.request::<serde_json::Value>(get).await else {
        return request;
    };
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.expect("request body").to_bytes();
    let Ok(mut applied) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return http::Request::from_parts(parts, kube::client::Body::from(bytes.to_vec()));
    };
    null_omitted(&live["status"], &mut applied["status"]);
    let bytes = serde_json::to_vec(&applied).expect("json");
    http::Request::from_parts(parts, kube::client::Body::from(bytes))
}

/// Sets to `null` in `applied` every field of `live` it leaves out, at any depth of
/// objects present in both.
fn null_omitted(live: &serde_json::Value, applied: &mut serde_json::Value) {
    let (Some(live), Some(applied)) = (live.as_object(), applied.as_object_mut()) else {
        return;
    };
    for (key, value) in live {
        match applied.get_mut(key) {
            Some(inner) => null_omitted(value, inner),
            None => {
                applied.insert(key.clone(), serde_json::Value::Null);
            }
        }
    }
}

/// The request with its JSON body passed through [`apiserver_normalise`], and that body.
async fn normalised(
    request: http::Request<kube::client::Body>,
) -> (http::Request<kube::client::Body>, serde_json::Value) {
    use http_body_util::BodyExt;
    if !matches!(request.method().as_str(), "POST" | "PUT" | "PATCH") {
        return (request, serde_json::Value::Null);
    }
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.expect("request body").to_bytes();
    let (bytes, value) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut value) => {
            apiserver_normalise(&mut value);
            (serde_json::to_vec(&value).expect("json"), value)
        }
        Err(_) => (bytes.to_vec(), serde_json::Value::Null),
    };
    (
        http::Request::from_parts(parts, kube::client::Body::from(bytes)),
        value,
    )
}

/// All the API features on.
pub fn full_apis() -> ClusterApis {
    ClusterApis {
        gateway_api: true,
        service_monitors: true,
    }
}

pub fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The sample custom resources from manifests/samples.
pub fn sample_model() -> ImageModel {
    let text =
        std::fs::read_to_string(repo("manifests/samples/imagemodel-cpu.yaml")).expect("sample");
    serde_yaml::from_str(&text).expect("ImageModel")
}

pub fn sample_pipeline() -> RecognitionPipeline {
    let text = std::fs::read_to_string(repo("manifests/samples/recognitionpipeline.yaml"))
        .expect("sample");
    serde_yaml::from_str(&text).expect("RecognitionPipeline")
}

/// The sample RecognitionJob (the last document of its file; the claims come before).
pub fn sample_job() -> sightline_operator::crd::RecognitionJob {
    let text =
        std::fs::read_to_string(repo("manifests/samples/recognitionjob.yaml")).expect("sample");
    let inputs = sightline_operator::render::parse(&text).expect("sample parses");
    inputs.jobs.into_iter().next().expect("a RecognitionJob")
}

/// The namespace of the samples.
pub const NS: &str = "sightline-demo";

/// The Secrets the sample pipeline references (API keys, database URL), as a user creates
/// them before applying it.
pub async fn sample_secrets(cluster: &Cluster) {
    use k8s_openapi::api::core::v1::Secret;
    let api = kube::Api::<Secret>::namespaced(cluster.admin.clone(), NS);
    for (name, key, value) in [
        ("photos-api-keys", "keys", "a2V5LTEK"),
        ("photos-db", "url", "cG9zdGdyZXM6Ly9kYi9waG90b3M="),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NS}, "data": {key: value}}))
        .expect("secret");
        api.create(&Default::default(), &secret)
            .await
            .expect("create secret");
    }
}

/// A clock the test moves forward.
pub struct TestClock(Mutex<Timestamp>);

impl TestClock {
    pub fn new() -> Arc<TestClock> {
        Arc::new(TestClock(Mutex::new(
            Timestamp::from_second(1_800_000_000).expect("time"),
        )))
    }

    pub fn advance(&self, seconds: i64) {
        let mut now = self.0.lock().expect("clock");
        *now += k8s_openapi::jiff::SignedDuration::from_secs(seconds);
    }
}

impl sightline_operator::status::Clock for TestClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().expect("clock")
    }
}

/// Reads of what the operator left, for scenario tests.
impl Cluster {
    /// The `ImageModel` `name` as it is now.
    pub async fn model(&self, name: &str) -> ImageModel {
        kube::Api::<ImageModel>::namespaced(self.admin.clone(), NS)
            .get(name)
            .await
            .expect("get the model")
    }

    /// The `ImageModel` `name`'s status, as JSON.
    pub async fn model_status(&self, name: &str) -> serde_json::Value {
        serde_json::to_value(self.model(name).await.status).expect("json")
    }

    /// The condition `type_` of the `ImageModel` `name`, as JSON.
    pub async fn model_condition(&self, name: &str, type_: &str) -> serde_json::Value {
        let status = self.model_status(name).await;
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or_else(|| panic!("no {type_} in {status:#}"))
    }

    /// Deployment `name`'s pod template, as JSON, when the Deployment exists.
    pub async fn template(&self, name: &str) -> Option<serde_json::Value> {
        kube::Api::<Deployment>::namespaced(self.admin.clone(), NS)
            .get_opt(name)
            .await
            .expect("get the Deployment")
            .map(|d| serde_json::to_value(d.spec.expect("spec").template).expect("json"))
    }
}
