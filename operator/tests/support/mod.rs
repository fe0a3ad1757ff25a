//! An in-memory Kubernetes API (kube-fake-client) behind a recording layer: every request
//! the operator sends is kept as (verb, group, resource), so tests can assert what was
//! written and the RBAC test can compare it with the ClusterRole.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use gateway_api::apis::standard::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sightline_operator::build::monitoring::ServiceMonitor;
use sightline_operator::build::pod::Images;
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
}

impl Cluster {
    pub async fn new() -> Cluster {
        let fake = kube_fake_client::ClientBuilder::new()
            .with_resource::<ImageModel>()
            .with_resource::<RecognitionPipeline>()
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
        let answer = proxied.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let fake = fake.clone();
            let log = log.clone();
            let answer = answer.clone();
            async move {
                if let Some(call) = classify(request.method(), request.uri()) {
                    log.lock().expect("log").push(call);
                }
                if request.uri().path().contains("/proxy/") {
                    // The fake has no pods behind its Services: answer as the pod would.
                    let body = answer.lock().expect("answer").clone();
                    let (status, body) = match body {
                        Some(body) => (200, body),
                        None => (503, r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"no endpoints available","reason":"ServiceUnavailable","code":503}"#.to_string()),
                    };
                    return Ok(http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(body.into_bytes()))
                        .expect("response"));
                }
                fake.send(request).await
            }
        });
        Cluster {
            client: Client::new(service, "default"),
            admin,
            calls,
            proxied,
        }
    }

    /// A reconcile context over this cluster, at a fixed time.
    pub fn context(&self, apis: ClusterApis) -> Arc<Context> {
        Arc::new(Context::new(
            self.client.clone(),
            Images::default(),
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

/// The namespace of the samples.
pub const NS: &str = "sightline-demo";

/// What the Deployment controller and kubelet would report once the pods are up.
pub async fn mark_available(cluster: &Cluster, name: &str) {
    let api = Api::<Deployment>::namespaced(cluster.admin.clone(), NS);
    let d = api.get(name).await.expect("deployment");
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "observedGeneration": d.metadata.generation,
            "replicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas, "updatedReplicas": replicas,
        }})),
    )
    .await
    .expect("deployment status");
}

/// A recognize pod of `model` whose fetch init containers exited with `code`.
pub async fn pod_with_fetch(cluster: &Cluster, model: &ImageModel, code: i32, message: &str) {
    let labels = sightline_operator::build::meta::selector_labels(
        &model.name_any(),
        sightline_operator::build::model::COMPONENT,
    );
    let terminated = |name: &str| {
        json!({"name": name, "ready": false, "restartCount": 0, "image": "x", "imageID": "",
               "state": {"terminated": {"exitCode": code, "message": message}}})
    };
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{}-pod", model.name_any()), "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "server", "image": "x"}]},
        "status": {"initContainerStatuses": [terminated("fetch-model"), terminated("fetch-labels")]},
    }))
    .expect("pod");
    Api::<Pod>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod");
}
