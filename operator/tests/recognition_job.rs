//! The RecognitionJob reconciler over the in-memory API: the Job is created once with an
//! event, a shard pod that waits on the scheduler or on an image pull is named in the
//! status at once, and a failed Job says which shard failed and why (its summary's error,
//! as the kubelet copies it into the termination message). The pods here are written as
//! the Job controller, the scheduler and the kubelet write them (labels, index annotation,
//! owner, container states); the shards' real processes run in
//! e2e/tests/recognition_job.rs.

mod support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sightline_operator::crd::{ImageModel, RecognitionJob};
use support::drive::reconcile_job;
use support::{Cluster, NS, full_apis, sample_job, sample_model};

const JOB: &str = "archive-2024";

type Ctx = std::sync::Arc<sightline_operator::controller::Context>;

/// The in-memory cluster with the sample model, and the operator's context.
async fn with_model() -> (Cluster, Ctx) {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &sample_model())
        .await
        .expect("model");
    (cluster, ctx)
}

/// [`with_model`] and the sample job.
async fn setup() -> (Cluster, Ctx) {
    let (cluster, ctx) = with_model().await;
    Api::<RecognitionJob>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &sample_job())
        .await
        .expect("job");
    (cluster, ctx)
}

async fn status(cluster: &Cluster) -> Value {
    let j = Api::<RecognitionJob>::namespaced(cluster.admin.clone(), NS)
        .get(JOB)
        .await
        .expect("job");
    serde_json::to_value(j.status).expect("json")
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or_else(|| panic!("no {type_} in {status:#}"))
}

/// A pod of index `index` of the Job, as the Job controller creates it, with `status` as
/// the scheduler or kubelet reports it.
async fn shard_pod(cluster: &Cluster, index: i32, attempt: u32, status: Value) -> String {
    let job = Api::<Job>::namespaced(cluster.admin.clone(), NS)
        .get(JOB)
        .await
        .expect("the Job");
    let template = serde_json::to_value(&job.spec.as_ref().expect("spec").template).expect("json");
    let name = format!("{JOB}-{index}-a{attempt}");
    let mut labels = template["metadata"]["labels"].clone();
    labels["batch.kubernetes.io/job-name"] = json!(JOB);
    labels["batch.kubernetes.io/job-completion-index"] = json!(index.to_string());
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels,
            "annotations": {"batch.kubernetes.io/job-completion-index": index.to_string()},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": JOB,
                "uid": job.uid(), "controller": true}]},
        "spec": template["spec"].clone(),
        "status": status,
    }))
    .expect("pod");
    Api::<Pod>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    name
}

async fn job_status(cluster: &Cluster, status: Value) {
    Api::<Job>::namespaced(cluster.admin.clone(), NS)
        .patch_status(
            JOB,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .expect("job status");
}

#[tokio::test]
async fn the_job_is_created_once_and_a_pod_that_cannot_be_scheduled_is_named() {
    let (cluster, ctx) = setup().await;
    cluster.take_writes();
    reconcile_job(&cluster, &ctx, JOB).await.expect("reconcile");
    let writes = cluster.take_writes();
    assert!(
        writes.iter().any(|w| w.resource == "events"),
        "a Started event: {writes:?}"
    );
    let job = Api::<Job>::namespaced(cluster.admin.clone(), NS)
        .get(JOB)
        .await
        .expect("the operator created the Job");
    let spec = job.spec.as_ref().expect("spec");
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!(spec.completions, Some(16));
    let first = status(&cluster).await;
    assert_eq!(condition(&first, "Complete")["status"], "False");
    assert_eq!(condition(&first, "Reconciling")["status"], "True");
    assert_eq!(first["jobName"], JOB);
    assert!(
        first["total"].is_null(),
        "no shard has said its size: {first:#}"
    );

    let waiting = shard_pod(
        &cluster,
        0,
        1,
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
    )
    .await;
    job_status(&cluster, json!({"active": 1})).await;
    reconcile_job(&cluster, &ctx, JOB).await.expect("reconcile");
    let now = status(&cluster).await;
    let progressing = condition(&now, "Progressing");
    assert_eq!(progressing["reason"], "Unschedulable", "{now:#}");
    let message = progressing["message"].as_str().expect("message");
    assert!(message.contains(&waiting), "{message}");
    assert!(message.contains("Insufficient cpu"), "{message}");
    // Transient (a node may be added): not stalled.
    assert_eq!(condition(&now, "Stalled")["status"], "False");
    assert_eq!(now["shards"]["running"], 1);

    // An image that cannot be pulled is named the same way.
    Api::<Pod>::namespaced(cluster.admin.clone(), NS)
        .delete(&waiting, &Default::default())
        .await
        .expect("delete");
    let pulling = shard_pod(
        &cluster,
        0,
        2,
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "batch", "ready": false, "restartCount": 0,
                "image": "x", "imageID": "", "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"ghcr.io/sightline/sightline-server:0.1.0\""}}}]}),
    )
    .await;
    reconcile_job(&cluster, &ctx, JOB).await.expect("reconcile");
    let now = status(&cluster).await;
    let progressing = condition(&now, "Progressing");
    assert_eq!(progressing["reason"], "ImagePullBackOff", "{now:#}");
    assert!(
        progressing["message"]
            .as_str()
            .expect("message")
            .contains(&pulling)
    );
}

#[tokio::test]
async fn a_failed_shard_is_named_with_what_it_said_and_the_counts_come_from_summaries() {
    let (cluster, ctx) = setup().await;
    Api::<RecognitionJob>::namespaced(cluster.admin.clone(), NS)
        .patch(
            JOB,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"shards": 2, "parallelism": 2}})),
        )
        .await
        .expect("two shards");
    reconcile_job(&cluster, &ctx, JOB).await.expect("reconcile");
    let summary = |shard: u32, error: Option<&str>| {
        let mut s = json!({"shard": shard, "shards": 2, "total": 50,
            "recognized": if error.is_some() { 0 } else { 49 }, "skipped": 0,
            "failed": if error.is_some() { 0 } else { 1 },
            "errors": if error.is_some() { json!([]) } else {
                json!([{"image": "a/broken.png", "error": "not an image"}]) },
            "seconds": 5.0, "images_per_second": 10.0, "model_sha256": "ab",
            "complete": error.is_none()});
        if let Some(e) = error {
            s["error"] = json!(e);
        }
        s.to_string()
    };
    let terminated = |code: i32, message: String| {
        json!({"phase": if code == 0 { "Succeeded" } else { "Failed" },
            "containerStatuses": [{"name": "batch", "ready": false, "restartCount": 0,
                "image": "x", "imageID": "", "state": {"terminated": {"exitCode": code,
                "message": message}}}]})
    };
    shard_pod(&cluster, 0, 1, terminated(0, summary(0, None))).await;
    let bad = shard_pod(
        &cluster,
        1,
        1,
        terminated(
            2,
            summary(
                1,
                Some("the model's SHA-256 is 12…, not ab… (--model-sha256)"),
            ),
        ),
    )
    .await;
    job_status(
        &cluster,
        json!({"completedIndexes": "0", "failedIndexes": "1", "succeeded": 1, "failed": 1,
            "conditions": [{"type": "Failed", "status": "True", "reason": "FailedIndexes",
                "message": "Job has failed indexes"}]}),
    )
    .await;
    reconcile_job(&cluster, &ctx, JOB).await.expect("reconcile");
    let now = status(&cluster).await;
    let failed = condition(&now, "Failed");
    assert_eq!(failed["status"], "True", "{now:#}");
    assert_eq!(failed["reason"], "FailedIndexes");
    let message = failed["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("shard 1 (pod {bad}, exit code 2)")),
        "{message}"
    );
    assert!(message.contains("--model-sha256"), "{message}");
    assert_eq!(condition(&now, "Stalled")["status"], "True");
    assert_eq!(condition(&now, "Complete")["status"], "False");
    assert_eq!(now["total"], 100, "{now:#}");
    assert_eq!(now["recognized"], 49);
    assert_eq!(now["failed"], 1);
    assert_eq!(now["firstErrors"][0]["image"], "a/broken.png");
    assert_eq!(now["shards"]["failed"], 1);
    assert_eq!(now["shards"]["succeeded"], 1);
    // A second look writes nothing new.
    cluster.take_writes();
    reconcile_job(&cluster, &ctx, JOB).await.expect("reconcile");
    let writes = cluster.take_writes();
    assert!(
        writes
            .iter()
            .all(|w| w.resource != "recognitionjobs/status"),
        "{writes:?}"
    );
}

#[tokio::test]
async fn a_changed_model_leaves_the_running_job_alone_and_a_finished_job_is_not_run_again() {
    let (cluster, ctx) = setup().await;
    reconcile_job(&cluster, &ctx, JOB).await.expect("reconcile");
    let jobs = Api::<Job>::namespaced(cluster.admin.clone(), NS);
    let before = jobs.get(JOB).await.expect("the Job");
    // The ImageModel changes while the job runs: a Job's pod template cannot change.
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .patch(
            "efficientnet-lite0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"preprocess": {"size": 256}}})),
        )
        .await
        .expect("model change");
    cluster.take_writes();
    reconcile_job(&cluster, &ctx, JOB).await.expect("reconcile");
    let writes = cluster.take_writes();
    assert!(
        writes.iter().all(|w| w.resource != "jobs"),
        "the Job is left as it is: {writes:?}"
    );
    let after = jobs.get(JOB).await.expect("the Job");
    assert_eq!(before.spec, after.spec);
    let now = status(&cluster).await;
    let message = condition(&now, "Progressing")["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(
        message.contains("changed since Job archive-2024 started"),
        "{message}"
    );

    // It completes; its Job deleted afterwards is not created again.
    job_status(
        &cluster,
        json!({"completedIndexes": "0-15", "succeeded": 16,
            "conditions": [{"type": "Complete", "status": "True"}]}),
    )
    .await;
    cluster.take_writes();
    reconcile_job(&cluster, &ctx, JOB).await.expect("reconcile");
    assert!(
        cluster.take_writes().iter().any(|w| w.resource == "events"),
        "a Completed event"
    );
    let done = status(&cluster).await;
    assert_eq!(condition(&done, "Complete")["status"], "True", "{done:#}");
    assert_eq!(condition(&done, "Reconciling")["status"], "False");
    assert_eq!(done["shards"]["succeeded"], 16);
    jobs.delete(JOB, &Default::default()).await.expect("delete");
    reconcile_job(&cluster, &ctx, JOB).await.expect("reconcile");
    assert!(
        jobs.get_opt(JOB).await.expect("get").is_none(),
        "a finished job is not run again"
    );
    assert_eq!(
        condition(&status(&cluster).await, "Complete")["status"],
        "True"
    );
}

/// The sample job renamed `name`, writing into pipeline `photos`'s store with `key`.
fn job_into_photos(name: &str, key: Option<Value>) -> RecognitionJob {
    let mut job = sample_job();
    job.metadata.name = Some(name.into());
    let mut pipeline = json!({"name": "photos"});
    if let Some(key) = key {
        pipeline["apiKeySecret"] = key;
    }
    job.spec.output.pipeline = Some(serde_json::from_value(pipeline).expect("pipeline"));
    job
}

async fn stalled_reason(cluster: &Cluster, name: &str) -> (Value, bool) {
    let j = Api::<RecognitionJob>::namespaced(cluster.admin.clone(), NS)
        .get(name)
        .await
        .expect("job");
    let status = serde_json::to_value(j.status).expect("json");
    let stalled = condition(&status, "Stalled");
    let job = Api::<Job>::namespaced(cluster.admin.clone(), NS)
        .get_opt(name)
        .await
        .expect("get");
    (stalled, job.is_some())
}

/// `output.pipeline`: the Job starts only once the pipeline exists and the shards can
/// present a key its store accepts; until then `Stalled` says which is missing.
#[tokio::test]
async fn a_job_into_a_pipeline_waits_for_the_pipeline_and_for_its_key() {
    let (cluster, ctx) = with_model().await;
    let post = PostParams::default();
    let jobs = Api::<RecognitionJob>::namespaced(cluster.admin.clone(), NS);
    jobs.create(&post, &job_into_photos("no-key", None))
        .await
        .expect("job");
    reconcile_job(&cluster, &ctx, "no-key")
        .await
        .expect("reconcile");
    let (stalled, started) = stalled_reason(&cluster, "no-key").await;
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "PipelineNotFound", "{stalled}");
    assert!(!started, "no Job before the pipeline exists");

    // The sample pipeline checks API keys: a job that gives none cannot write.
    Api::<sightline_operator::crd::RecognitionPipeline>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &support::sample_pipeline())
        .await
        .expect("pipeline");
    reconcile_job(&cluster, &ctx, "no-key")
        .await
        .expect("reconcile");
    let (stalled, started) = stalled_reason(&cluster, "no-key").await;
    assert_eq!(stalled["reason"], "StoreKeyMissing", "{stalled}");
    assert!(
        stalled["message"]
            .as_str()
            .is_some_and(|m| m.contains("apiKeySecret")),
        "{stalled}"
    );
    assert!(!started);

    // A job that names a Secret that is not there yet waits for it, then starts.
    let key = json!({"name": "tagging-key", "key": "key"});
    jobs.create(&post, &job_into_photos("with-key", Some(key)))
        .await
        .expect("job");
    reconcile_job(&cluster, &ctx, "with-key")
        .await
        .expect("reconcile");
    let (stalled, started) = stalled_reason(&cluster, "with-key").await;
    assert_eq!(stalled["reason"], "SecretNotFound", "{stalled}");
    assert!(!started);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tagging-key", "namespace": NS},
        "data": {"key": "Y2hhbmdlLW1lLWV4YW1wbGUta2V5"}
    }))
    .expect("secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &secret)
        .await
        .expect("secret");
    reconcile_job(&cluster, &ctx, "with-key")
        .await
        .expect("reconcile");
    let (stalled, started) = stalled_reason(&cluster, "with-key").await;
    assert_eq!(stalled["status"], "False", "{stalled}");
    assert!(started, "the Job runs once the key is there");
}
