//! "Routes, policies and pods fit for a real cluster", read from the rendered objects and
//! the reconcilers: one front door that checks keys, routes that work under any prefix,
//! fences around the pods that check none, data that outlives the resource, a GPU path
//! that can become ready, the escape hatches real clusters need, autoscaling on what
//! limits inference, monitoring that is selected, and a rate limit that is the pipeline's.

mod support;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sightline_operator::build::pod::Platform;
use sightline_operator::controller::{model, pipeline};
use sightline_operator::crd::{ImageModel, RecognitionPipeline};
use sightline_operator::render::{self, Inputs};
use support::{Cluster, NS, full_apis, repo, sample_model, sample_pipeline};

fn inputs(models: Vec<ImageModel>, pipelines: Vec<RecognitionPipeline>) -> Inputs {
    Inputs {
        models,
        pipelines,
        jobs: Vec::new(),
    }
}

fn render_with(models: Vec<ImageModel>, pipelines: Vec<RecognitionPipeline>) -> Vec<Value> {
    render::children(&inputs(models, pipelines), &Platform::default()).expect("render")
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The paths the server declares (its OpenAPI document), with parameters filled in.
fn declared_paths() -> Vec<String> {
    let text = std::fs::read_to_string(repo("inference-server/src/http/openapi.json"))
        .expect("openapi.json");
    let doc: Value = serde_json::from_str(&text).expect("json");
    doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(|p| {
            p.split('/')
                .map(|seg| if seg.starts_with('{') { "x" } else { seg })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

/// Where a Gateway sends `path` by `route`: the backend Service and the path it sees
/// (Gateway API `PathPrefix` matching on whole segments, then `ReplacePrefixMatch`).
fn through(route: &Value, path: &str) -> Option<(String, String)> {
    let mut best: Option<(usize, &Value)> = None;
    for rule in route["spec"]["rules"].as_array()? {
        for m in rule["matches"].as_array()? {
            let value = m["path"]["value"].as_str()?;
            let prefix = value.trim_end_matches('/');
            let matches = prefix.is_empty()
                || path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|r| r.starts_with('/'));
            if matches && best.is_none_or(|(len, _)| prefix.len() > len) {
                best = Some((prefix.len(), rule));
            }
        }
    }
    let (len, rule) = best?;
    let mut seen = path.to_string();
    for filter in rule["filters"].as_array().into_iter().flatten() {
        if filter["type"] == "URLRewrite"
            && filter["urlRewrite"]["path"]["type"] == "ReplacePrefixMatch"
        {
            let with = filter["urlRewrite"]["path"]["replacePrefixMatch"]
                .as_str()
                .unwrap_or("/");
            let rest = &path[len..];
            seen = format!("{}{}", with.trim_end_matches('/'), rest);
            if seen.is_empty() {
                seen = "/".into();
            }
        }
    }
    let backend = rule["backendRefs"][0]["name"].as_str()?.to_string();
    Some((backend, seen))
}

fn pipeline_under(prefix: &str) -> RecognitionPipeline {
    let mut p = sample_pipeline();
    p.spec.gateway.path_prefix = Some(prefix.into());
    p
}

#[test]
fn every_declared_route_enters_through_the_front_door_under_any_prefix() {
    for prefix in ["/", "/vision", "/teams/photos/"] {
        let objects = render_with(vec![sample_model()], vec![pipeline_under(prefix)]);
        let route = find(&objects, "HTTPRoute", "photos");
        let upload = find(&objects, "Deployment", "photos-upload");
        assert_eq!(
            upload["spec"]["template"]["spec"]["containers"][0]["args"][0],
            "upload"
        );
        let base = prefix.trim_end_matches('/');
        for path in declared_paths() {
            let outside = format!("{base}{path}");
            let (backend, seen) =
                through(route, &outside).unwrap_or_else(|| panic!("{outside} is not routed"));
            assert_eq!(
                backend, "photos-upload",
                "{outside} must reach the front door"
            );
            assert_eq!(seen, path, "{outside} must reach the server as {path}");
        }
        assert!(
            declared_paths().iter().any(|p| p.starts_with("/v2/")),
            "the Open Inference Protocol is declared and so routed"
        );
    }
}

#[test]
fn no_route_reaches_a_pod_that_does_not_check_keys() {
    let mut ingress = sample_pipeline();
    ingress.spec.gateway.parent_refs.clear();
    ingress.spec.gateway.ingress = Some(Default::default());
    for p in [sample_pipeline(), ingress] {
        let objects = render_with(vec![sample_model()], vec![p]);
        let mut backends = Vec::new();
        for o in &objects {
            match o["kind"].as_str() {
                Some("HTTPRoute") => {
                    for rule in o["spec"]["rules"].as_array().expect("rules") {
                        for b in rule["backendRefs"].as_array().expect("backends") {
                            backends.push(b["name"].as_str().expect("name").to_string());
                        }
                    }
                }
                Some("Ingress") => {
                    for rule in o["spec"]["rules"].as_array().expect("rules") {
                        for path in rule["http"]["paths"].as_array().expect("paths") {
                            let name = &path["backend"]["service"]["name"];
                            backends.push(name.as_str().expect("name").to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        assert!(!backends.is_empty());
        for backend in &backends {
            assert_eq!(backend, "photos-upload", "a route bypasses the keys");
        }
        // The front door is the role that checks them: from a file it re-reads, the
        // Secret mounted as a whole volume (a `subPath` mount is never updated).
        let d = find(&objects, "Deployment", "photos-upload");
        let server = &d["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = server["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let at = args
            .iter()
            .position(|a| *a == "--api-keys-file")
            .expect("--api-keys-file");
        assert_eq!(args[at + 1], "/etc/sightline/keys/keys");
        let mount = server["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == "api-keys")
            .expect("the keys are mounted");
        assert_eq!(mount["mountPath"], "/etc/sightline/keys");
        assert!(mount["subPath"].is_null(), "{mount}");
    }
}

#[test]
fn an_ingress_under_a_prefix_it_cannot_rewrite_is_refused() {
    let mut p = pipeline_under("/vision");
    p.spec.gateway.parent_refs.clear();
    p.spec.gateway.ingress = Some(Default::default());
    let error = render::children(&inputs(vec![sample_model()], vec![p]), &Platform::default())
        .expect_err("refused");
    assert!(error.to_string().contains("pathPrefix"), "{error}");
}

/// The `from` peers of the only ingress rule of the NetworkPolicy `name`.
fn ingress_peers(objects: &[Value], name: &str) -> Vec<Value> {
    let policy = find(objects, "NetworkPolicy", name);
    let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
    assert_eq!(rules.len(), 1, "{name}: {rules:?}");
    rules[0]["from"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} admits anyone: {policy:#}"))
        .clone()
}

#[test]
fn model_and_store_pods_admit_only_the_front_door_the_jobs_writing_to_it_and_the_scraper() {
    let objects = render_with(vec![sample_model()], vec![sample_pipeline()]);
    let scraper = json!({"namespaceSelector": {"matchLabels":
        {"kubernetes.io/metadata.name": "monitoring"}}});
    let model = ingress_peers(&objects, "efficientnet-lite0-recognize");
    assert_eq!(
        model,
        vec![
            json!({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sightline",
                "app.kubernetes.io/component": "upload"}}}),
            scraper.clone()
        ]
    );
    let store = ingress_peers(&objects, "photos-store");
    assert_eq!(
        store,
        vec![
            json!({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sightline",
                "app.kubernetes.io/instance": "photos", "app.kubernetes.io/component": "upload"}}}),
            json!({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sightline",
                "app.kubernetes.io/component": "recognition-job",
                "sightline.io/results-for": "photos"}}}),
            scraper
        ]
    );
    // The model no longer reaches out to the pipelines (the front door sends the bytes).
    let egress = &find(&objects, "NetworkPolicy", "efficientnet-lite0-recognize")["spec"]["egress"];
    assert!(
        !egress.to_string().contains("upload"),
        "model egress to upload pods: {egress}"
    );
}

#[test]
fn the_data_outlives_the_pipeline_unless_the_spec_says_otherwise() {
    let mut sqlite = sample_pipeline();
    sqlite.spec.storage = Default::default();
    let objects = render_with(vec![sample_model()], vec![sqlite.clone()]);
    for claim in ["photos-images", "photos-results"] {
        let pvc = find(&objects, "PersistentVolumeClaim", claim);
        assert!(
            pvc["metadata"]["ownerReferences"].is_null(),
            "{claim} would be garbage-collected with the pipeline"
        );
    }
    sqlite.spec.storage.retain_on_delete = false;
    let objects = render_with(vec![sample_model()], vec![sqlite]);
    for claim in ["photos-images", "photos-results"] {
        let pvc = find(&objects, "PersistentVolumeClaim", claim);
        assert_eq!(
            pvc["metadata"]["ownerReferences"][0]["kind"],
            "RecognitionPipeline"
        );
    }
}

#[tokio::test]
async fn a_pipeline_created_again_uses_its_retained_volumes() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    support::sample_secrets(&cluster).await;
    let models = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS);
    let pipelines = Api::<RecognitionPipeline>::namespaced(cluster.admin.clone(), NS);
    models
        .create(&PostParams::default(), &sample_model())
        .await
        .expect("model");
    let p = pipelines
        .create(&PostParams::default(), &sample_pipeline())
        .await
        .expect("pipeline");
    pipeline::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("first");
    let status = pipelines
        .get("photos")
        .await
        .expect("p")
        .status
        .expect("status");
    assert_eq!(status.retained_volumes, vec!["photos-images".to_string()]);
    // Deleted (the fake runs no garbage collector; the claim has no owner anyway), then
    // created again: a new uid, the same name.
    pipelines
        .delete("photos", &DeleteParams::default())
        .await
        .expect("delete");
    let again = pipelines
        .create(&PostParams::default(), &sample_pipeline())
        .await
        .expect("again");
    pipeline::reconcile(Arc::new(again), ctx.clone())
        .await
        .expect("the retained claim is ours again, not a conflict");
    let claim = Api::<PersistentVolumeClaim>::namespaced(cluster.admin.clone(), NS)
        .get("photos-images")
        .await
        .expect("claim");
    assert!(claim.owner_references().is_empty());
}

async fn node(cluster: &Cluster, name: &str, gpus: Option<&str>) {
    let mut allocatable = json!({"cpu": "8", "memory": "32Gi"});
    if let Some(n) = gpus {
        allocatable["nvidia.com/gpu"] = json!(n);
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"allocatable": allocatable}}))
    .expect("node");
    Api::<Node>::all(cluster.admin.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
}

fn gpu_sample() -> ImageModel {
    let text =
        std::fs::read_to_string(repo("manifests/samples/imagemodel-gpu.yaml")).expect("sample");
    serde_yaml::from_str(&text).expect("ImageModel")
}

async fn model_deployment(cluster: &Cluster, name: &str) -> Value {
    let d = Api::<Deployment>::namespaced(cluster.admin.clone(), NS)
        .get(&format!("{name}-recognize"))
        .await
        .expect("deployment");
    serde_json::to_value(d).expect("json")
}

#[tokio::test]
async fn device_auto_takes_a_gpu_where_a_node_offers_one_and_says_why() {
    for (gpus, resolved, image) in [
        (None, "cpu", "ghcr.io/sightline/sightline-server:0.1.0"),
        (
            Some("2"),
            "gpu",
            "ghcr.io/sightline/sightline-server-gpu:0.1.0",
        ),
    ] {
        let cluster = Cluster::new().await;
        let ctx = cluster.context(full_apis());
        node(&cluster, "cpu-node", None).await;
        if let Some(n) = gpus {
            node(&cluster, "gpu-node", Some(n)).await;
        }
        let m = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
            .create(&PostParams::default(), &gpu_sample())
            .await
            .expect("model");
        model::reconcile(Arc::new(m.clone()), ctx.clone())
            .await
            .expect("reconcile");
        let status = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
            .get(&m.name_any())
            .await
            .expect("model")
            .status
            .expect("status");
        let device = status.device.expect("status.device");
        assert_eq!(
            (device.requested.as_str(), device.resolved.as_str()),
            ("auto", resolved)
        );
        assert!(
            device.reason.contains(if gpus.is_some() {
                "gpu-node"
            } else {
                "no node"
            }),
            "{}",
            device.reason
        );
        let d = model_deployment(&cluster, &m.name_any()).await;
        let server = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(server["image"], image);
        let limits = &server["resources"]["limits"]["nvidia.com/gpu"];
        assert_eq!(limits.is_null(), gpus.is_none(), "{limits}");
        let hpa = serde_json::to_value(
            Api::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>::namespaced(
                cluster.admin.clone(),
                NS,
            )
            .get(&format!("{}-recognize", m.name_any()))
            .await
            .expect("hpa"),
        )
        .expect("json");
        assert_eq!(
            hpa["spec"]["metrics"][0]["pods"]["metric"]["name"],
            "sightline_inference_queue_depth"
        );
    }
}

#[test]
fn a_models_own_image_wins_and_gpu_models_roll_without_an_outage() {
    let mut m = gpu_sample();
    m.spec.runtime.device = sightline_operator::crd::Device::Gpu;
    let objects = render_with(vec![m.clone()], vec![]);
    let d = find(&objects, "Deployment", "efficientnet-lite0-gpu-recognize");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/sightline/sightline-server-gpu:0.1.0"
    );
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": 1, "maxUnavailable": 0}),
        "as few as one replica: replacing it first would be an outage"
    );
    let mut several = m.clone();
    several.spec.runtime.autoscaling = None;
    several.spec.runtime.replicas = Some(3);
    let objects = render_with(vec![several], vec![]);
    let d = find(&objects, "Deployment", "efficientnet-lite0-gpu-recognize");
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": 0, "maxUnavailable": 1}),
        "three replicas replace one at a time within their GPUs"
    );
    let mut chosen = m.clone();
    chosen.spec.runtime.rolling_update =
        serde_json::from_value(json!({"maxSurge": 0, "maxUnavailable": 1})).expect("update");
    let objects = render_with(vec![chosen.clone()], vec![]);
    let d = find(&objects, "Deployment", "efficientnet-lite0-gpu-recognize");
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": 0, "maxUnavailable": 1}),
        "the user may choose the outage"
    );
    chosen.spec.runtime.rolling_update =
        serde_json::from_value(json!({"maxSurge": 0, "maxUnavailable": "0%"})).expect("update");
    let refused = render::children(&inputs(vec![chosen], vec![]), &Platform::default());
    assert!(
        refused.is_err_and(|e| e.to_string().contains("cannot both be 0")),
        "a strategy that can replace nothing is refused"
    );
    m.spec.runtime.image = Some("registry.example.com/sightline-server-gpu:cuda12".into());
    let objects = render_with(vec![m], vec![]);
    let d = find(&objects, "Deployment", "efficientnet-lite0-gpu-recognize");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/sightline-server-gpu:cuda12"
    );
}

#[test]
fn pod_overrides_are_merged_and_replicas_spread_across_nodes() {
    let mut m = sample_model();
    m.spec.runtime.pod_overrides = serde_json::from_value(json!({
        "imagePullSecrets": ["regcred"], "serviceAccountName": "model-reader",
        "priorityClassName": "inference", "runtimeClassName": "nvidia",
        "annotations": {"example.com/team": "vision"},
        "labels": {"team": "vision", "app.kubernetes.io/instance": "hijack"}}))
    .expect("overrides");
    let objects = render_with(vec![m, sample_model()], vec![]);
    let d = find(&objects, "Deployment", "efficientnet-lite0-recognize");
    let pod = &d["spec"]["template"];
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "model-reader");
    assert_eq!(pod["spec"]["priorityClassName"], "inference");
    assert_eq!(pod["spec"]["runtimeClassName"], "nvidia");
    assert_eq!(pod["metadata"]["annotations"]["example.com/team"], "vision");
    assert_eq!(pod["metadata"]["labels"]["team"], "vision");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/instance"], "efficientnet-lite0",
        "the selector labels stay the operator's"
    );
    let spread = &pod["spec"]["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
    let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
    for v in volumes.iter().filter(|v| v["emptyDir"].is_object()) {
        assert!(
            v["emptyDir"]["sizeLimit"].is_string(),
            "an emptyDir without a sizeLimit: {v}"
        );
    }
    // The pipeline's pods take theirs too.
    let mut p = sample_pipeline();
    p.spec.pod_overrides =
        serde_json::from_value(json!({"imagePullSecrets": ["regcred"]})).expect("overrides");
    let objects = render_with(vec![sample_model()], vec![p]);
    for name in ["photos-upload", "photos-store"] {
        let d = find(&objects, "Deployment", name);
        assert_eq!(
            d["spec"]["template"]["spec"]["imagePullSecrets"],
            json!([{"name": "regcred"}])
        );
    }
}

#[test]
fn the_adapter_rule_serves_the_metric_the_hpa_reads_and_the_server_exports() {
    let text = std::fs::read_to_string(repo("manifests/monitoring/prometheus-adapter-rules.yaml"))
        .expect("rules");
    let rules: Value = serde_yaml::from_str(&text).expect("yaml");
    let rule = &rules["rules"]["custom"][0];
    assert_eq!(
        rule["name"]["as"],
        sightline_operator::build::model::QUEUE_METRIC
    );
    assert!(
        rule["seriesQuery"]
            .as_str()
            .is_some_and(|q| q.starts_with(sightline_operator::build::model::QUEUE_METRIC))
    );
    let server = std::fs::read_to_string(repo("crates/model/src/metrics.rs")).expect("metrics");
    assert!(
        server.contains("\"inference_queue_depth\""),
        "the server exports sightline_inference_queue_depth"
    );
}

#[test]
fn adding_a_pipeline_never_changes_a_model() {
    let alone = render_with(vec![sample_model()], vec![]);
    let mut other = sample_pipeline();
    other.metadata.name = Some("more-photos".into());
    other.spec.gateway.hostnames = vec!["more.example.com".into()];
    let shared = render_with(vec![sample_model()], vec![sample_pipeline(), other]);
    for kind in ["Deployment", "Service", "NetworkPolicy", "ServiceMonitor"] {
        let name = "efficientnet-lite0-recognize";
        assert_eq!(
            find(&alone, kind, name),
            find(&shared, kind, name),
            "{kind} {name} changes when pipelines come and go"
        );
    }
}

#[test]
fn every_workload_has_a_service_monitor_the_clusters_prometheus_selects() {
    let objects = render_with(vec![sample_model()], vec![sample_pipeline()]);
    let monitors: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ServiceMonitor")
        .collect();
    assert_eq!(monitors.len(), 2, "one for the model, one for the pipeline");
    for m in &monitors {
        assert_eq!(m["metadata"]["labels"]["release"], "kube-prometheus-stack");
    }
    let model = find(&objects, "ServiceMonitor", "efficientnet-lite0-recognize");
    assert_eq!(
        model["spec"]["selector"]["matchExpressions"][0]["values"],
        json!(["recognize", "recognize-canary"])
    );
    let pipeline = find(&objects, "ServiceMonitor", "photos-pipeline");
    assert_eq!(
        pipeline["spec"]["selector"]["matchExpressions"][0]["values"],
        json!(["upload", "store"])
    );
    let platform = Platform {
        monitor_labels: [("prometheus".to_string(), "main".to_string())].into(),
        ..Platform::default()
    };
    let objects = render::children(
        &inputs(vec![sample_model()], vec![sample_pipeline()]),
        &platform,
    )
    .expect("render");
    assert_eq!(
        find(&objects, "ServiceMonitor", "photos-pipeline")["metadata"]["labels"]["prometheus"],
        "main"
    );
}

#[test]
fn the_rate_limit_is_the_pipelines_shared_by_its_front_doors() {
    let mut p = sample_pipeline();
    p.spec.upload.replicas = Some(3);
    p.spec.upload.volume = None;
    p.spec.upload.s3 =
        serde_json::from_value(json!({"bucket": "photos", "credentialsSecret": "photos-s3"}))
            .expect("s3");
    let objects = render_with(vec![sample_model()], vec![p]);
    let config = find(&objects, "ConfigMap", "photos-config");
    // 20 requests/s and a burst of 40 for the pipeline, over three front doors.
    assert_eq!(config["data"]["SIGHTLINE_RATE_LIMIT_RPS"], "7");
    assert_eq!(config["data"]["SIGHTLINE_RATE_LIMIT_BURST"], "14");
}

#[test]
fn openshift_assigns_the_user_itself() {
    let platform = Platform {
        fixed_user: false,
        ..Platform::default()
    };
    let objects = render::children(
        &inputs(vec![sample_model()], vec![sample_pipeline()]),
        &platform,
    )
    .expect("render");
    let text = serde_json::to_string(&objects).expect("json");
    for field in ["runAsUser", "runAsGroup", "fsGroup"] {
        assert!(!text.contains(field), "{field} set: OpenShift refuses it");
    }
    assert!(text.contains("\"runAsNonRoot\":true"));
}

#[test]
fn the_samples_bring_their_namespace_and_secrets() {
    let text = std::fs::read_to_string(repo("manifests/samples/kustomization.yaml"))
        .expect("kustomization");
    let k: Value = serde_yaml::from_str(&text).expect("yaml");
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert_eq!(resources[0], "namespace.yaml", "the namespace comes first");
    for file in &resources {
        assert!(repo("manifests/samples").join(file).exists(), "{file}");
    }
    // Every Secret the pipeline sample names is in secrets.yaml.
    let secrets = std::fs::read_to_string(repo("manifests/samples/secrets.yaml")).expect("s");
    for name in sightline_operator::build::pipeline::secret_names(&sample_pipeline()) {
        assert!(secrets.contains(&format!("name: {name}")), "{name}");
    }
}

/// `--NAME VALUE` among a container's arguments.
fn flag_value(container: &Value, name: &str) -> Option<i64> {
    let args: Vec<&str> = container["args"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = args.iter().position(|a| *a == name)?;
    args.get(at + 1)?.parse().ok()
}

#[test]
fn the_progress_deadline_outlasts_scheduling_the_fetch_and_the_startup_probe() {
    let objects = render_with(vec![sample_model()], vec![sample_pipeline()]);
    for name in [
        "efficientnet-lite0-recognize",
        "photos-upload",
        "photos-store",
    ] {
        let d = find(&objects, "Deployment", name);
        let pod = &d["spec"]["template"]["spec"];
        let probe = &pod["containers"][0]["startupProbe"];
        let startup = probe["failureThreshold"].as_i64().expect("failures")
            * probe["periodSeconds"].as_i64().expect("period");
        // Init containers run one after the other, each up to attempts × timeout.
        let fetch: i64 = pod["initContainers"]
            .as_array()
            .map(|inits| {
                inits
                    .iter()
                    .map(|c| {
                        flag_value(c, "--attempts").expect("bounded attempts")
                            * flag_value(c, "--timeout-secs").expect("bounded attempts")
                    })
                    .sum()
            })
            .unwrap_or(0);
        let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
        // At least five minutes for scheduling (a node a cluster autoscaler adds) and
        // the image pull, beyond what the pod itself may take.
        assert!(
            deadline >= startup + fetch + 300,
            "{name}: progressDeadlineSeconds {deadline} < startup {startup} s + fetch \
             {fetch} s + 300 s"
        );
    }
}

#[test]
fn a_budget_guards_every_model_that_may_run_more_than_one_pod() {
    let mut m = sample_model();
    m.spec.runtime.replicas = None;
    m.spec.runtime.autoscaling =
        serde_json::from_value(json!({"minReplicas": 1, "maxReplicas": 4})).expect("auto");
    let objects = render_with(vec![m.clone()], vec![]);
    let pdb = find(
        &objects,
        "PodDisruptionBudget",
        "efficientnet-lite0-recognize",
    );
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{pdb}");
    m.spec.runtime.autoscaling = None;
    m.spec.runtime.replicas = Some(1);
    let objects = render_with(vec![m], vec![]);
    assert!(
        !objects.iter().any(|o| o["kind"] == "PodDisruptionBudget"),
        "one replica: a budget could only block drains"
    );
}

#[test]
fn no_two_owners_share_a_childs_name_whatever_their_names() {
    // Names chosen to collide: a model and a pipeline of one name, and owners whose names
    // end in another owner's suffixes.
    let names = [
        "photos",
        "photos-recognize",
        "photos-canary",
        "photos-recognize-canary",
        "photos-upload",
        "photos-store",
        "photos-pipeline",
        "photos-traffic",
        "photos-config",
    ];
    let models: Vec<ImageModel> = names
        .iter()
        .map(|name| {
            let mut m = sample_model();
            m.metadata.name = Some(name.to_string());
            // In mid-canary, so the candidate's objects are rendered too.
            m.spec.rollout =
                serde_json::from_value(json!({"strategy": "Canary"})).expect("rollout");
            m.status = serde_json::from_value(json!({"rollout": {"phase": "Progressing",
                "revision": "3f9a1c77e2b0", "step": 0, "candidateWeight": 10,
                "mirrorPercent": 0}}))
            .expect("status");
            m
        })
        .collect();
    let pipelines: Vec<RecognitionPipeline> = names
        .iter()
        .map(|name| {
            let mut p = sample_pipeline();
            p.metadata.name = Some(name.to_string());
            p.spec.model_ref.name = name.to_string();
            p
        })
        .collect();
    let objects = render_with(models, pipelines);
    let mut seen = std::collections::BTreeMap::new();
    for o in &objects {
        let key = (
            o["kind"].as_str().unwrap_or_default().to_string(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let owner = format!(
            "{} {}",
            o["metadata"]["ownerReferences"][0]["kind"],
            o["metadata"]["labels"]["app.kubernetes.io/instance"]
        );
        if let Some(first) = seen.insert(key.clone(), owner.clone()) {
            panic!("{key:?} belongs to both {first} and {owner}");
        }
    }
}

#[tokio::test]
async fn device_auto_is_decided_once_per_generation_and_kept() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    node(&cluster, "cpu-node", None).await;
    node(&cluster, "gpu-node", Some("1")).await;
    let models = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS);
    let m = models
        .create(&PostParams::default(), &gpu_sample())
        .await
        .expect("model");
    let name = m.name_any();
    let reconcile = |ctx: Arc<sightline_operator::controller::Context>| {
        let models = models.clone();
        let name = name.clone();
        async move {
            let m = models.get(&name).await.expect("model");
            model::reconcile(Arc::new(m), ctx).await.expect("reconcile");
            models.get(&name).await.expect("model")
        }
    };
    let decided = reconcile(ctx.clone()).await;
    let device = decided.status.and_then(|s| s.device).expect("device");
    assert_eq!(
        (device.resolved.as_str(), device.generation),
        ("gpu", Some(1))
    );
    let template = model_deployment(&cluster, &name).await["spec"]["template"].clone();

    // The GPU pool is scaled to zero (its only node goes); the same generation keeps GPU,
    // and no Node is listed to find that out.
    Api::<Node>::all(cluster.admin.clone())
        .delete("gpu-node", &DeleteParams::default())
        .await
        .expect("node gone");
    cluster.take_calls();
    let kept = reconcile(ctx.clone()).await;
    assert_eq!(
        kept.status.and_then(|s| s.device).map(|d| d.resolved),
        Some("gpu".into())
    );
    assert_eq!(
        model_deployment(&cluster, &name).await["spec"]["template"],
        template,
        "no rollout to the CPU"
    );
    let listed: Vec<_> = cluster
        .take_calls()
        .into_iter()
        .filter(|c| c.resource == "nodes")
        .collect();
    assert!(listed.is_empty(), "{listed:?}");

    // A new generation is decided anew, from one read of the nodes.
    models
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"runtime": {"batching": {"maxDelayMs": 3}}}})),
        )
        .await
        .expect("edit");
    let again = reconcile(ctx.clone()).await;
    let device = again.status.and_then(|s| s.device).expect("device");
    assert_eq!(
        (device.resolved.as_str(), device.generation),
        ("cpu", Some(2))
    );
    let listed = cluster
        .take_calls()
        .into_iter()
        .filter(|c| c.resource == "nodes")
        .count();
    assert_eq!(listed, 1);

    // Watching only some namespaces, the operator reads no Node at all.
    let namespaced = Arc::new(
        Arc::try_unwrap(cluster.context(full_apis()))
            .ok()
            .expect("context")
            .without_nodes(),
    );
    models
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"runtime": {"batching": {"maxDelayMs": 4}}}})),
        )
        .await
        .expect("edit");
    let scoped = reconcile(namespaced).await;
    let device = scoped.status.and_then(|s| s.device).expect("device");
    assert_eq!(device.resolved, "cpu");
    assert!(device.reason.contains("reads no Node"), "{}", device.reason);
    assert!(!cluster.take_calls().iter().any(|c| c.resource == "nodes"));
}
