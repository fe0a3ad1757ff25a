//! A `RecognitionJob` end to end, as the "done when" asks: the operator's own
//! reconciler over the in-memory Kubernetes API of the operator's tests
//! (operator/tests/support, included below) creates the Indexed Job; a simulated Job
//! controller and kubelet (`recognition_job/indexed_job.rs`, its rules cited there) run
//! each pod as a real `sightline-server batch` process over a folder of generated images
//! standing for the input claim. One shard is killed with SIGKILL half-way (its index is
//! retried and resumes), the whole Job is deleted while shards run (the operator creates
//! it again and every shard resumes), and at the end every image is in the shards'
//! outputs exactly once, and the RecognitionJob's status says the total, the counts and
//! `Complete` — having shown progress while it ran — and, the job having true labels,
//! the evaluation summed over the shards.
//!
//! Needs `target/debug/sightline-server` (`make test` builds it first) and `make models`.

#[path = "recognition_job/indexed_job.rs"]
mod indexed_job;
mod loopback;
#[path = "../../operator/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indexed_job::IndexedJob;
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use loopback::LoopbackPods;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sightline_e2e::process::{ScratchDir, require_server_binary};
use sightline_e2e::split::unique_png;
use sightline_e2e::{models, ort_lib, require};
use sightline_operator::controller::Context;
use sightline_operator::crd::{ImageModel, RecognitionJob, RecognitionPipeline};
use support::{Cluster, NS};

const JOB: &str = "archive";
const SHARDS: i32 = 3;
const IMAGES: u64 = 3000;
const LIMIT: Duration = Duration::from_secs(240);

fn lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// The end of each pod's output, for failure messages.
fn pod_logs(pods: &Path) -> String {
    let mut out = String::new();
    let mut dirs: Vec<_> = std::fs::read_dir(pods)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let text = std::fs::read_to_string(dir.join("output.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        out.push_str(&format!("--- {}\n", dir.display()));
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn model(sha256: &str) -> ImageModel {
    serde_json::from_value(json!({
        "apiVersion": "sightline.io/v1alpha1", "kind": "ImageModel",
        "metadata": {"name": "test-classifier", "namespace": NS},
        "spec": {"source": {"uri": "pvc://models/test-classifier.onnx", "sha256": sha256,
            "labels": {"uri": "pvc://models/test-classifier.labels.txt"}},
            "runtime": {"threads": 1}}
    }))
    .expect("model")
}

fn recognition_job() -> RecognitionJob {
    serde_json::from_value(json!({
        "apiVersion": "sightline.io/v1alpha1", "kind": "RecognitionJob",
        "metadata": {"name": JOB, "namespace": NS},
        "spec": {"modelRef": {"name": "test-classifier"},
            "input": {"pvc": {"claimName": "photos", "path": "2024"}},
            "output": {"pvc": {"claimName": "results", "path": "test-classifier"},
                "csv": true},
            "labels": {"csv": "truth.csv"},
            "shards": SHARDS, "parallelism": 2, "backoffLimitPerIndex": 2}
    }))
    .expect("recognition job")
}

/// The operator's context, its `pods/proxy` reaching the simulated pods, and the
/// simulated Job controller of RecognitionJob `name` (pod folders under `scratch/pods`).
fn simulation(
    cluster: &Cluster,
    name: &str,
    binary: PathBuf,
    scratch: &Path,
) -> (Arc<Context>, IndexedJob) {
    let pods = Arc::new(LoopbackPods::new(reqwest::Client::new()));
    let ctx = loopback::context(cluster.client.clone(), pods.clone());
    // The server image's ONNX Runtime is this machine's.
    let image = vec![(
        "/opt/onnxruntime/lib/libonnxruntime.so".to_string(),
        ort_lib(),
    )];
    let sim = IndexedJob::new(
        cluster.admin.clone(),
        NS,
        name,
        binary,
        image,
        scratch.join("pods"),
        pods,
    );
    (ctx, sim)
}

async fn status(cluster: &Cluster) -> Value {
    status_of(cluster, JOB).await
}

async fn status_of(cluster: &Cluster, name: &str) -> Value {
    let j = Api::<RecognitionJob>::namespaced(cluster.admin.clone(), NS)
        .get(name)
        .await
        .expect("recognition job");
    serde_json::to_value(j.status).expect("json")
}

fn condition(status: &Value, type_: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_job_of_real_shards_survives_a_kill_and_a_restart_without_duplicates() {
    let classifier = models().join("test-classifier.onnx");
    if !require(&[ort_lib(), classifier.clone()]) {
        return;
    }
    let Some(binary) = require_server_binary() else {
        return;
    };
    let scratch = ScratchDir::new("rjob").expect("scratch dir");
    // The claims: `photos` with the archive, `results` empty, `models` the model store.
    let claims = scratch.path().join("claims");
    let input = claims.join("photos/2024");
    // The true labels: the test classifier's class of each image, except every fifth,
    // labelled with the next colour (wrong at top-1, in its top five).
    let mut truth = String::from("path,label\n");
    for n in 0..IMAGES {
        let name = format!("{:02}/{n:05}.png", n % 13);
        let path = input.join(&name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, unique_png(n)).expect("write image");
        let label = ["red", "green", "blue"][((n + u64::from(n % 5 == 0)) % 3) as usize];
        truth.push_str(&format!("{name},{label}\n"));
    }
    std::fs::write(input.join("truth.csv"), truth).expect("write truth");
    std::fs::write(input.join("broken.png"), b"not an image").expect("write");
    let total = IMAGES + 1;
    std::fs::create_dir_all(claims.join("results/test-classifier")).expect("results");
    std::os::unix::fs::symlink(models(), claims.join("models")).expect("model claim");
    let outputs = claims.join("results/test-classifier");
    let shard_out = |i: i32| outputs.join(format!("shard-{i}.jsonl"));

    let cluster = Cluster::new().await;
    let sha = hex::encode(Sha256::digest(std::fs::read(&classifier).expect("model")));
    let post = PostParams::default();
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &model(&sha))
        .await
        .expect("model");
    Api::<RecognitionJob>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &recognition_job())
        .await
        .expect("recognition job");
    let (ctx, mut sim) = simulation(&cluster, JOB, binary, scratch.path());

    let started = Instant::now();
    let mut killed_at = None;
    let mut restarted_at = None;
    let mut progress_seen: Vec<Value> = Vec::new();
    let jobs = Api::<Job>::namespaced(cluster.admin.clone(), NS);
    loop {
        support::drive::reconcile_job(&cluster, &ctx, JOB)
            .await
            .expect("reconcile");
        let now = status(&cluster).await;
        if condition(&now, "Complete").is_some_and(|c| c["status"] == "True") {
            break;
        }
        assert!(
            condition(&now, "Failed").is_none_or(|c| c["status"] != "True"),
            "the job failed: {now:#}\n{}",
            pod_logs(&scratch.path().join("pods"))
        );
        assert!(
            started.elapsed() < LIMIT,
            "not complete in {LIMIT:?}: {now:#}"
        );
        if now["shards"]["running"].as_i64() > Some(0) && now["recognized"].as_u64() > Some(0) {
            progress_seen.push(now.clone());
        }
        sim.step(&claims).await;
        // Shard 0 killed once it wrote some of its third of the archive.
        if killed_at.is_none() && lines(&shard_out(0)) >= 60 {
            assert!(sim.kill(0), "shard 0 runs");
            killed_at = Some(lines(&shard_out(0)));
        }
        // The Job deleted (as `kubectl delete job` would) once the killed shard's retry
        // is under way and while the archive is not done yet.
        let written: usize = (0..SHARDS).map(|i| lines(&shard_out(i))).sum();
        if restarted_at.is_none()
            && sim.attempts.get(&0).copied().unwrap_or(0) >= 2
            && written >= (total as usize) / 2
        {
            assert!(written < total as usize, "the restart should land mid-way");
            jobs.delete(JOB, &DeleteParams::default())
                .await
                .expect("delete the Job");
            restarted_at = Some(written);
            sim.step(&claims).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_kill = killed_at.expect("shard 0 was killed");
    assert!(
        at_kill < (IMAGES as usize) / SHARDS as usize,
        "the kill should land half-way: {at_kill} lines"
    );
    assert!(
        restarted_at.is_some(),
        "the Job was deleted and created again"
    );
    assert!(
        jobs.get_opt(JOB).await.expect("get").is_some(),
        "the operator created the Job again"
    );

    // Every image exactly once over the shards' outputs.
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    for i in 0..SHARDS {
        let text = std::fs::read_to_string(shard_out(i)).expect("shard output");
        for line in text.lines() {
            let value: Value = serde_json::from_str(line).expect("a JSON line");
            let image = value["image"].as_str().expect("image").to_string();
            assert!(seen.insert(image.clone(), value).is_none(), "{image} twice");
        }
    }
    assert_eq!(seen.len() as u64, total, "every image once");
    // And as CSV beside them, one row per image (a header each).
    let rows: usize = (0..SHARDS)
        .map(|i| lines(&outputs.join(format!("shard-{i}.csv"))).saturating_sub(1))
        .sum();
    assert_eq!(rows as u64, total, "every image once in the CSVs");
    assert!(seen["broken.png"]["error"].is_string());

    // The status says what happened, and said how far it was while it ran.
    let done = status(&cluster).await;
    let mut logs = pod_logs(&scratch.path().join("pods"));
    for p in Api::<k8s_openapi::api::core::v1::Pod>::namespaced(cluster.admin.clone(), NS)
        .list(&Default::default())
        .await
        .expect("pods")
        .items
    {
        logs.push_str(&format!(
            "{}\n",
            serde_json::to_string(&p.status).expect("json")
        ));
    }
    assert_eq!(done["total"], total, "{done:#}\n{logs}");
    let counted = done["recognized"].as_u64().unwrap_or(0)
        + done["skipped"].as_u64().unwrap_or(0)
        + done["failed"].as_u64().unwrap_or(0);
    assert_eq!(counted, total, "{done:#}");
    assert_eq!(done["progress"], "100%", "{done:#}");
    // After the restart, what the first Job's pods wrote was skipped, not done again.
    assert!(done["skipped"].as_u64() > Some(0), "{done:#}");
    assert!(
        sim.attempts.get(&0).copied() >= Some(3),
        "shard 0: killed, retried, and run again by the new Job: {:?}",
        sim.attempts
    );
    assert_eq!(done["shards"]["succeeded"], SHARDS, "{done:#}");
    assert_eq!(done["modelSha256"], sha, "{done:#}");
    // The evaluation: every shard's own images of the CSV, summed over the three.
    let wrong = IMAGES.div_ceil(5);
    assert_eq!(
        done["evaluation"],
        json!({"images": IMAGES, "evaluated": IMAGES,
            "accuracy": (IMAGES - wrong) as f64 / IMAGES as f64, "top5Accuracy": 1.0,
            "shards": SHARDS}),
        "{done:#}"
    );
    assert_eq!(
        condition(&done, "Stalled").expect("Stalled")["status"],
        "False"
    );
    assert!(
        !progress_seen.is_empty(),
        "progress was reported while shards ran"
    );
    // Below 100 %, with a running shard recognizing (a shard that has just started, its
    // model still loading, has a rate of 0 and gives no ETA): the rate and the ETA.
    let mid = progress_seen
        .iter()
        .find(|s| {
            s["progress"].as_str().is_some_and(|p| p != "100%")
                && s["imagesPerSecond"].as_f64().is_some_and(|r| r > 0.0)
        })
        .unwrap_or_else(|| {
            panic!("a percentage below 100% with a rate while running: {progress_seen:#?}")
        });
    assert!(mid["eta"].is_string(), "{mid:#}");
}

const INTO_STORE: &str = "tagging";
const STORE_KEY: &str = "batch-store-key-0001";

/// A job whose results go only into pipeline `photos`'s store: no output claim.
fn job_into_store() -> RecognitionJob {
    serde_json::from_value(json!({
        "apiVersion": "sightline.io/v1alpha1", "kind": "RecognitionJob",
        "metadata": {"name": INTO_STORE, "namespace": NS},
        "spec": {"modelRef": {"name": "test-classifier"},
            "input": {"pvc": {"claimName": "photos", "path": "2025"}},
            "output": {"pipeline": {"name": "photos",
                "apiKeySecret": {"name": "tagging-store-key", "key": "key"}}},
            "shards": 2, "parallelism": 2, "backoffLimitPerIndex": 2}
    }))
    .expect("recognition job")
}

/// `output.pipeline`: the shards write every result into a real store process standing
/// for the pipeline's store Service (its API key from the Secret the job names), with no
/// output claim. One shard is killed half-way; its replacement starts with an empty
/// `emptyDir` and learns from the store what is done: at the end the store holds every
/// image once, named by the job, and the status counts the stored ones as skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_into_a_pipelines_store_resumes_from_the_store_after_a_kill() {
    const COUNT: u64 = 600;
    let classifier = models().join("test-classifier.onnx");
    if !require(&[ort_lib(), classifier.clone()]) {
        return;
    }
    let Some(binary) = require_server_binary() else {
        return;
    };
    let scratch = ScratchDir::new("rjob-store").expect("scratch dir");
    let claims = scratch.path().join("claims");
    let input = claims.join("photos/2025");
    std::fs::create_dir_all(&input).expect("mkdir");
    for n in 0..COUNT {
        std::fs::write(input.join(format!("{n:04}.png")), unique_png(n)).expect("write");
    }
    std::fs::write(input.join("broken.png"), b"not an image").expect("write");
    std::os::unix::fs::symlink(models(), claims.join("models")).expect("model claim");
    let store =
        sightline_e2e::process::ServerProcess::keyed_store(&binary, scratch.path(), STORE_KEY)
            .expect("the store starts");

    let cluster = Cluster::new().await;
    let sha = hex::encode(Sha256::digest(std::fs::read(&classifier).expect("model")));
    let post = PostParams::default();
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &model(&sha))
        .await
        .expect("model");
    // The pipeline checks keys; the job's Secret holds one of them, as `kubectl create
    // secret generic --from-file` stores it (a newline at the end), in `data`.
    Api::<RecognitionPipeline>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &support::sample_pipeline())
        .await
        .expect("pipeline");
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("tagging-store-key".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "key".to_string(),
            ByteString(format!("{STORE_KEY}\n").into_bytes()),
        )])),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &secret)
        .await
        .expect("secret");
    Api::<RecognitionJob>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &job_into_store())
        .await
        .expect("recognition job");
    let (ctx, mut sim) = simulation(&cluster, INTO_STORE, binary, scratch.path());
    sim.serve(
        &format!("http://photos-store.{NS}.svc:8080"),
        &store.url(""),
    );

    let started = Instant::now();
    let mut killed_at = None;
    loop {
        support::drive::reconcile_job(&cluster, &ctx, INTO_STORE)
            .await
            .expect("reconcile");
        let now = status_of(&cluster, INTO_STORE).await;
        if condition(&now, "Complete").is_some_and(|c| c["status"] == "True") {
            break;
        }
        assert!(
            condition(&now, "Failed").is_none_or(|c| c["status"] != "True")
                && condition(&now, "Stalled").is_none_or(|c| c["status"] != "True"),
            "{now:#}\n{}\n{}",
            pod_logs(&scratch.path().join("pods")),
            store.log_tail()
        );
        assert!(
            started.elapsed() < LIMIT,
            "not complete in {LIMIT:?}: {now:#}"
        );
        sim.step(&claims).await;
        if killed_at.is_none()
            && let Some(pod) = sim.pod_dir(0)
        {
            let written = lines(&pod.join("volumes/scratch/shard-0.jsonl"));
            if written >= 60 {
                assert!(sim.kill(0), "shard 0 runs");
                killed_at = Some(written);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_kill = killed_at.expect("shard 0 was killed");
    assert!(at_kill < (COUNT / 2) as usize, "half-way: {at_kill}");
    assert!(
        sim.attempts.get(&0).copied() >= Some(2),
        "{:?}",
        sim.attempts
    );

    // The store holds every image once, as this job's.
    let response = reqwest::Client::new()
        .get(store.url(&format!("/api/v1/results?limit=1000&job={INTO_STORE}")))
        .header("x-api-key", STORE_KEY)
        .send()
        .await
        .expect("GET results");
    assert!(response.status().is_success(), "{}", response.status());
    let stored: Value = response.json().await.expect("JSON");
    let items = stored["items"].as_array().expect("items");
    let images: std::collections::BTreeSet<&str> = items
        .iter()
        .map(|i| {
            i["image_id"]
                .as_str()
                .expect("image_id: the image's SHA-256")
        })
        .collect();
    assert_eq!(items.len() as u64, COUNT, "one result per image: {stored}");
    assert_eq!(images.len() as u64, COUNT, "every image: {stored}");
    assert!(items.iter().all(|i| i["job"] == INTO_STORE));

    // The retried shard skipped what its killed attempt had stored.
    let done = status_of(&cluster, INTO_STORE).await;
    assert_eq!(done["total"], COUNT + 1, "{done:#}");
    assert!(
        done["skipped"].as_u64() >= Some(at_kill as u64 - 1),
        "the killed attempt's stored results were skipped: {done:#}"
    );
    let counted = done["recognized"].as_u64().unwrap_or(0)
        + done["skipped"].as_u64().unwrap_or(0)
        + done["failed"].as_u64().unwrap_or(0);
    assert_eq!(counted, COUNT + 1, "{done:#}");
    assert_eq!(done["failed"], 1, "broken.png: {done:#}");
}
