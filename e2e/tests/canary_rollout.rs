//! The canary with real traffic. Real `sightline-server` processes — a front door, a stable
//! and a candidate recognize — take a steady load of photos through the front door, while
//! the operator's own model reconciler (and canary controller) runs against the in-memory
//! Kubernetes API of the operator's tests (operator/tests/support, included below):
//!
//! - it writes the traffic ConfigMap with its own code; a simulated kubelet projects it
//!   into the front door's traffic file a moment later, through simulated cluster DNS
//!   (`e2e/src/canary/traffic_file.rs`: [`Projection`], [`route_services`]);
//! - it reads the processes' real `/metrics` and `/readyz` (pods/proxy's place is taken by
//!   plain HTTP to each pod's process, [`LoopbackPods`]); no counter is injected anywhere;
//! - it steps through `[10, 50, 100]` and promotes a candidate equal to stable (the same
//!   model file), and rolls back a random-weights ResNet-50 (another model, and slower).
//!
//! Windows open only once the front door reports the step's traffic generation, and the
//! candidate is removed only once it reports the stable-only one: both checked here.
//!
//! Needs `target/debug/sightline-server` (`make test` builds it first) and `make models`.

mod loopback;
#[path = "../../operator/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use loopback::LoopbackPods;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sightline_e2e::canary::{
    Call, Canary, Projection, Shot, drive, failures, lite0, photo_tiles, random_resnet,
};
use sightline_e2e::models;
use sightline_e2e::split::client;
use sightline_operator::controller::{Context, model, pipeline};
use sightline_operator::crd::{ImageModel, RecognitionPipeline};
use support::sim::{Deadline, Pods, roll};
use support::{Cluster, NS, sample_model, sample_pipeline};

/// The processes of one test at a time: they share two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MODEL: &str = "efficientnet-lite0";
const STABLE: &str = "efficientnet-lite0-recognize";
const CANDIDATE: &str = "efficientnet-lite0-recognize-canary";
const FRONT_DOOR: &str = "photos-upload";
const STABLE_SERVICE: &str = "http://efficientnet-lite0-recognize.sightline-demo.svc:8080";
const CANDIDATE_SERVICE: &str =
    "http://efficientnet-lite0-recognize-canary.sightline-demo.svc:8080";
/// How long the simulated kubelet takes to project a ConfigMap change.
const PROJECTION: Duration = Duration::from_millis(1500);
/// How long one rollout may take before the test gives up.
const LIMIT: Duration = Duration::from_secs(150);

/// A model's processes, the operator over the in-memory API, and the simulated kubelet.
struct Rig {
    canary: Canary,
    cluster: Cluster,
    ctx: Arc<Context>,
    pods: Arc<LoopbackPods>,
    /// Service URL → process URL (cluster DNS and kube-proxy).
    services: BTreeMap<String, String>,
    kubelet: Projection,
    /// When each traffic generation reached the front door's file.
    projected: BTreeMap<u64, Instant>,
    /// What happened, for failure messages.
    journal: Vec<String>,
    started: Instant,
}

/// A recognize process's flags: one ONNX Runtime thread, no result cache (every request
/// runs the model, so both revisions' latencies are the model's).
fn no_cache(mut flags: Vec<String>) -> Vec<String> {
    flags.extend(["--cache-bytes".to_string(), "0".to_string()]);
    flags
}

fn sha256_of(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read the model")))
}

impl Rig {
    /// Stable (Lite0) serving, the pipeline's front door serving, then a spec change whose
    /// candidate runs `candidate`: everything up to the candidate's pods serving.
    async fn start(candidate: Vec<String>) -> Option<Rig> {
        let canary = Canary::start(&no_cache(lite0()), &[no_cache(candidate)])?;
        let cluster = Cluster::new().await;
        let pods = Arc::new(LoopbackPods::new(client()));
        let ctx = loopback::context(cluster.client.clone(), pods.clone());
        let services = BTreeMap::from([
            (STABLE_SERVICE.to_string(), canary.stable.url("")),
            (CANDIDATE_SERVICE.to_string(), canary.candidates[0].url("")),
        ]);
        let mut rig = Rig {
            canary,
            cluster,
            ctx,
            pods,
            services,
            kubelet: Projection::new(PROJECTION),
            projected: BTreeMap::new(),
            journal: Vec::new(),
            started: Instant::now(),
        };
        rig.serving_model().await;
        rig.serving_front_door().await;
        rig.new_revision().await;
        Some(rig)
    }

    fn note(&mut self, what: String) {
        let at = self.started.elapsed().as_secs_f64();
        self.journal.push(format!("{at:6.1}s {what}"));
    }

    fn failure(&self) -> String {
        format!(
            "journal:\n{}\n{}",
            self.journal.join("\n"),
            self.canary.logs()
        )
    }

    /// The processes behind the pods of Deployment `name`'s newest ReplicaSet.
    async fn run_pods(&self, name: &str, process: String) {
        roll(&self.cluster, name, Pods::Serving, Deadline::Within).await;
        let pods =
            Api::<k8s_openapi::api::core::v1::Pod>::namespaced(self.cluster.admin.clone(), NS)
                .list(&ListParams::default())
                .await
                .expect("pods");
        let mut map = self.pods.pods.lock().expect("pods");
        for pod in pods.items {
            let pod_name = pod.metadata.name.unwrap_or_default();
            let of_this = pod_name.starts_with(&format!("{name}-"))
                && (name == CANDIDATE || !pod_name.starts_with(CANDIDATE));
            if of_this && !map.contains_key(&pod_name) {
                map.insert(pod_name, process.clone());
            }
        }
    }

    async fn reconcile(&self) {
        let m = self.cluster.model(MODEL).await;
        if let Err(e) = model::reconcile(Arc::new(m), self.ctx.clone()).await {
            panic!("reconcile: {e}\n{}", self.failure());
        }
    }

    async fn status(&self) -> Value {
        self.cluster.model_status(MODEL).await
    }

    async fn deployment(&self, name: &str) -> Option<Value> {
        self.cluster.template(name).await
    }

    async fn condition(&self, type_: &str) -> Value {
        let status = self.status().await;
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or(Value::Null)
    }

    /// The traffic file the operator wrote into the ConfigMap.
    async fn written(&self) -> Option<String> {
        Api::<ConfigMap>::namespaced(self.cluster.admin.clone(), NS)
            .get_opt("efficientnet-lite0-traffic")
            .await
            .expect("get the ConfigMap")
            .and_then(|c| c.data)
            .and_then(|d| d.get("traffic.json").cloned())
    }

    /// The simulated kubelet's turn: projects the ConfigMap once its delay has passed.
    async fn kubelet(&mut self) {
        let written = self.written().await;
        let wrote = self
            .kubelet
            .sync(written.as_deref(), &mut self.canary.traffic, &self.services)
            .unwrap_or_else(|e| panic!("projecting the traffic file: {e:#}"));
        if wrote {
            let file: Value =
                serde_json::from_str(written.as_deref().unwrap_or("{}")).expect("traffic.json");
            let generation = file["generation"].as_u64().expect("a generation");
            self.projected.insert(generation, Instant::now());
            self.note(format!(
                "kubelet: projected generation {generation} (candidate {}%, mirror {}%)",
                file["candidateWeight"], file["mirrorPercent"]
            ));
        }
    }

    /// The front door's own account of the traffic file it applies.
    async fn front_door_generation(&self) -> Option<u64> {
        let body: Value = reqwest::get(self.canary.front.url("/readyz"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["traffic"]["generation"].as_u64()
    }

    async fn serving_model(&mut self) {
        let mut m = sample_model();
        m.spec.runtime.replicas = Some(1);
        m.spec.evaluation = None;
        m.spec.source.model.sha256 = Some(sha256_of(&models().join("efficientnet-lite0.onnx")));
        m.spec.rollout = serde_json::from_value(json!({
            "strategy": "Canary", "steps": [10, 50, 100], "stepDuration": "3s",
            "stepDeadline": "100s", "minRequestsPerStep": 30, "mirrorPercent": 20}))
        .expect("rollout");
        Api::<ImageModel>::namespaced(self.cluster.admin.clone(), NS)
            .create(&PostParams::default(), &m)
            .await
            .expect("create the model");
        self.reconcile().await;
        self.run_pods(STABLE, self.canary.stable.url("")).await;
        self.reconcile().await;
        let ready = self.condition("Ready").await;
        assert_eq!(ready["status"], "True", "{ready:#}\n{}", self.failure());
        // What the stable process itself said about its model, through /readyz.
        let validated = self.condition("ModelValidated").await;
        assert_eq!(validated["reason"], "Validated", "{validated:#}");
    }

    async fn serving_front_door(&mut self) {
        support::sample_secrets(&self.cluster).await;
        let mut p = sample_pipeline();
        p.spec.upload.replicas = Some(1);
        let p = Api::<RecognitionPipeline>::namespaced(self.cluster.admin.clone(), NS)
            .create(&PostParams::default(), &p)
            .await
            .expect("create the pipeline");
        pipeline::reconcile(Arc::new(p), self.ctx.clone())
            .await
            .expect("pipeline");
        self.run_pods(FRONT_DOOR, self.canary.front.url("")).await;
        // The pod mounts the ConfigMap as it is when it starts.
        let deadline = Instant::now() + PROJECTION * 4;
        while self.projected.is_empty() {
            assert!(Instant::now() < deadline, "{}", self.failure());
            self.kubelet().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn new_revision(&mut self) {
        Api::<ImageModel>::namespaced(self.cluster.admin.clone(), NS)
            .patch(
                MODEL,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"runtime": {"batching": {"maxBatchSize": 4}}}})),
            )
            .await
            .expect("edit");
        self.reconcile().await;
        assert!(
            self.deployment(CANDIDATE).await.is_some(),
            "{}",
            self.failure()
        );
        self.run_pods(CANDIDATE, self.canary.candidates[0].url(""))
            .await;
    }

    /// Reconciles every 400 ms, with the kubelet's turn before each, until `done` says so
    /// of the status (or [`LIMIT`]); checks on the way that no window opened, and no
    /// candidate went, before the front door could apply the generation that allows it.
    async fn run_until(&mut self, done: impl Fn(&Value) -> bool) {
        loop {
            self.kubelet().await;
            let before = self.status().await["rollout"].clone();
            let candidate_before = self.deployment(CANDIDATE).await.is_some();
            self.reconcile().await;
            let status = self.status().await;
            let after = status["rollout"].clone();
            let door = self.front_door_generation().await;
            if after["candidateWeight"] != before["candidateWeight"]
                || after["phase"] != before["phase"]
            {
                self.note(format!(
                    "operator: {} step {} at {}%, waits for generation {} (front door applies {door:?})",
                    after["phase"], after["step"], after["candidateWeight"], after["pendingGeneration"]
                ));
            }
            if let (Some(pending), true) = (
                before["pendingGeneration"].as_u64(),
                after["pendingGeneration"].is_null(),
            ) {
                let what = if after["phase"] == "Progressing" {
                    "window opened"
                } else {
                    "candidate removed"
                };
                self.note(format!(
                    "operator: {what} once generation {pending} applied"
                ));
                assert!(
                    self.projected.contains_key(&pending) && door >= Some(pending),
                    "{what} before the front door applied generation {pending}\n{}",
                    self.failure()
                );
            }
            if candidate_before && self.deployment(CANDIDATE).await.is_none() {
                let wanted = after["history"][0].clone();
                self.note(format!(
                    "operator: candidate removed after {}",
                    wanted["outcome"]
                ));
            }
            if done(&status) {
                return;
            }
            assert!(
                self.started.elapsed() < LIMIT,
                "no end within {LIMIT:?}: {:#}\n{}",
                status["rollout"],
                self.failure()
            );
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
}

/// Photos through the front door, two at a time, until `stop`; every answer.
fn load(front: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Shot>> {
    let tiles = photo_tiles(96, 60).expect("photo tiles");
    let calls: Arc<Vec<Call>> = Arc::new(
        tiles
            .into_iter()
            .map(|t| Call::Bytes(Bytes::from(t)))
            .collect(),
    );
    tokio::spawn(async move {
        let client = client();
        let mut shots = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            shots.extend(drive(&client, &front, calls.clone(), 12, 2, Arc::default()).await);
        }
        shots
    })
}

fn all_answered(shots: &[Shot], rig: &Rig) {
    if let Some(failed) = failures(shots) {
        panic!("{failed}\n{}", rig.failure());
    }
}

fn weights(rig: &Rig) -> Vec<u64> {
    let mut seen: Vec<u64> = Vec::new();
    for line in &rig.journal {
        let Some(rest) = line.split(" at ").nth(1) else {
            continue;
        };
        if let Some(w) = rest.split('%').next().and_then(|w| w.parse().ok())
            && seen.last() != Some(&w)
        {
            seen.push(w);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_equal_to_stable_is_promoted_through_10_50_and_100_percent() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut rig) = Rig::start(lite0()).await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(rig.canary.front.url(""), stop.clone());

    rig.run_until(|s| s["rollout"]["phase"] == "Promoting")
        .await;
    let rollout = rig.status().await["rollout"].clone();
    let checks = rollout["checks"].as_array().cloned().unwrap_or_default();
    let verdict = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].clone())
    };
    assert_eq!(verdict("errorRate"), Some(json!("Passed")), "{rollout:#}");
    assert_eq!(
        verdict("p99LatencyRatio"),
        Some(json!("Passed")),
        "at 100 %, against the stable figures of an earlier step: {rollout:#}"
    );
    assert_eq!(verdict("agreement"), Some(json!("Skipped")), "{rollout:#}");
    assert!(rollout["reference"].is_object(), "{rollout:#}");

    // The stable Deployment takes the new revision: its new pod runs what the candidate
    // ran, and the stable Service leads there.
    let promoted = rig.canary.candidates[0].url("");
    rig.run_pods(STABLE, promoted.clone()).await;
    rig.services.insert(STABLE_SERVICE.to_string(), promoted);
    rig.run_until(|s| {
        s["rollout"]["phase"] == "Promoted" && s["rollout"]["pendingGeneration"].is_null()
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let shots = traffic.await.expect("the load ran");

    let status = rig.status().await;
    assert_eq!(status["rollout"]["history"][0]["outcome"], "Promoted");
    assert!(
        rig.deployment(CANDIDATE).await.is_none(),
        "{}",
        rig.failure()
    );
    assert_eq!(weights(&rig), [10, 50, 100, 0], "{}", rig.failure());
    let ready = rig.condition("Ready").await;
    assert_eq!(ready["status"], "True", "{ready:#}\n{}", rig.failure());
    all_answered(&shots, &rig);
    eprintln!(
        "promoted through 10/50/100 % in {:.1?} with {} calls through the front door:\n{}",
        rig.started.elapsed(),
        shots.len(),
        rig.journal.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_weights_candidate_is_rolled_back() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut rig) = Rig::start(random_resnet()).await else {
        return;
    };
    let stable = rig.deployment(STABLE).await.expect("stable");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(rig.canary.front.url(""), stop.clone());

    rig.run_until(|s| s["rollout"]["phase"] == "RolledBack")
        .await;
    let rollout = rig.status().await["rollout"].clone();
    assert_eq!(
        rollout["history"][0]["reason"], "CheckFailed",
        "{rollout:#}"
    );
    let why = rollout["history"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("agreement") || why.contains("p99LatencyRatio"),
        "another model, and slower: {why}"
    );
    assert_eq!(rig.condition("Progressing").await["reason"], "CheckFailed");
    rig.run_until(|s| s["rollout"]["pendingGeneration"].is_null())
        .await;
    stop.store(true, Ordering::SeqCst);
    let shots = traffic.await.expect("the load ran");
    assert!(
        rig.deployment(CANDIDATE).await.is_none(),
        "{}",
        rig.failure()
    );
    assert_eq!(
        rig.deployment(STABLE).await,
        Some(stable),
        "stable never disturbed"
    );
    all_answered(&shots, &rig);
    eprintln!(
        "rolled back ({why}) in {:.1?} with {} calls through the front door:\n{}",
        rig.started.elapsed(),
        shots.len(),
        rig.journal.join("\n")
    );
}
