//! Argo CD's health of the custom resources (manifests/argocd/health.lua, embedded in
//! manifests/argocd/argocd-cm.yaml) reads Healthy / Progressing / Degraded from the
//! statuses the real reconcilers write through the simulated cluster. The script runs in
//! Debian's `lua5.1` (Argo CD's gopher-lua speaks Lua 5.1).

mod support;

use std::process::Command;
use std::sync::Arc;

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sightline_operator::controller::model;
use sightline_operator::crd::ImageModel;
use support::sim::{Deadline, Pods, roll};
use support::{Cluster, NS, full_apis, repo, sample_model};

const DEPLOYMENT: &str = "efficientnet-lite0-recognize";

fn script() -> String {
    std::fs::read_to_string(repo("manifests/argocd/health.lua")).expect("health.lua")
}

/// A Lua table literal of `value` (what Argo CD hands the script as `obj`).
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The health Argo CD would show for `object`, or `None` when no Lua 5.1 is installed
/// (outside CI only).
fn health(object: &Value) -> Option<(String, String)> {
    health_by(&script(), object)
}

/// The health `script` gives `object` (see [`health`]).
fn health_by(script: &str, object: &Value) -> Option<(String, String)> {
    let program = format!(
        "obj = {}\nlocal function check()\n{}\nend\nlocal hs = check()\nio.write(hs.status, \"\\n\", hs.message or \"\")",
        lua(object),
        script
    );
    let output = match Command::new("lua5.1").arg("-e").arg(&program).output() {
        Ok(output) => output,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "\n*** SKIPPED: lua5.1 is not installed ({e}); `make deps` installs it ***\n"
            );
            return None;
        }
        Err(e) => panic!("lua5.1 is required in CI: {e}"),
    };
    assert!(
        output.status.success(),
        "lua failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    Some((status.to_string(), message.to_string()))
}

#[test]
fn the_configmap_embeds_the_script_verbatim_for_both_kinds() {
    let text = std::fs::read_to_string(repo("manifests/argocd/argocd-cm.yaml")).expect("cm");
    let cm: Value = serde_yaml::from_str(&text).expect("yaml");
    for kind in ["ImageModel", "RecognitionPipeline", "RecognitionJob"] {
        let key = format!("resource.customizations.health.sightline.io_{kind}");
        assert_eq!(
            cm["data"][&key].as_str(),
            Some(script().as_str()),
            "{key} must be manifests/argocd/health.lua"
        );
    }
}

/// What kstatus reads from `object` (its generic rule for custom resources: the
/// generation, then `Reconciling=True` → InProgress, `Stalled=True` → Failed, else
/// Current), in Argo CD's words, so the two can be compared.
fn kstatus(object: &Value) -> &'static str {
    let observed = object["status"]["observedGeneration"].as_i64();
    if observed != object["metadata"]["generation"].as_i64() {
        return "Progressing";
    }
    let is_true = |t: &str| {
        object["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
    };
    if is_true("Reconciling") {
        "Progressing"
    } else if is_true("Stalled") {
        "Degraded"
    } else {
        "Healthy"
    }
}

/// Argo CD's health of `object`, checked against kstatus' reading.
fn health_agreed(object: &Value) -> (String, String) {
    agreed(health(object).expect("lua"), object)
}

fn agreed((status, message): (String, String), object: &Value) -> (String, String) {
    assert_eq!(
        kstatus(object),
        status,
        "Argo CD and kstatus disagree ({message}): {:#}",
        object["status"]
    );
    (status, message)
}

async fn model_object(cluster: &Cluster) -> Value {
    let m = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .get("efficientnet-lite0")
        .await
        .expect("model");
    serde_json::to_value(m).expect("json")
}

async fn reconcile(cluster: &Cluster, ctx: &Arc<sightline_operator::controller::Context>) {
    let m = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .get("efficientnet-lite0")
        .await
        .expect("model");
    let _ = model::reconcile(Arc::new(m), ctx.clone()).await;
}

#[tokio::test]
async fn argo_cd_reads_healthy_progressing_and_degraded_from_the_status() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let mut m = sample_model();
    m.spec.evaluation = None;
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &m)
        .await
        .expect("create");

    let mut fresh = model_object(&cluster).await;
    fresh["status"] = Value::Null;
    let Some((status, _)) = health(&fresh) else {
        return;
    };
    assert_eq!(status, "Progressing", "no status yet");

    reconcile(&cluster, &ctx).await;
    let (status, message) = health_agreed(&model_object(&cluster).await);
    assert_eq!(status, "Progressing", "pods starting: {message}");

    roll(&cluster, DEPLOYMENT, Pods::Serving, Deadline::Within).await;
    reconcile(&cluster, &ctx).await;
    let (status, message) = health_agreed(&model_object(&cluster).await);
    assert_eq!(status, "Healthy", "{message}");

    // A spec change the operator has not observed yet is not Healthy.
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"source": {"sha256": "0".repeat(64)}}})),
        )
        .await
        .expect("edit");
    let (status, _) = health(&model_object(&cluster).await).expect("lua");
    assert_eq!(status, "Progressing", "generation 2 not observed");

    reconcile(&cluster, &ctx).await;
    roll(
        &cluster,
        DEPLOYMENT,
        Pods::FetchFailed("digest mismatch: expected 0000…, got 8a25…"),
        Deadline::Within,
    )
    .await;
    reconcile(&cluster, &ctx).await;
    let (status, message) = health_agreed(&model_object(&cluster).await);
    assert_eq!(status, "Degraded", "{message}");
    assert!(message.starts_with("RolloutFailed"), "{message}");

    // Back to the serving spec; then a canary whose candidate waits for a node (a
    // transient cause: still progressing), then crash-loops (rolled back: degraded).
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"source": {"sha256": m.spec.source.model.sha256}}})),
        )
        .await
        .expect("edit");
    reconcile(&cluster, &ctx).await;
    roll(&cluster, DEPLOYMENT, Pods::Serving, Deadline::Within).await;
    reconcile(&cluster, &ctx).await;
    let (status, message) = health_agreed(&model_object(&cluster).await);
    assert_eq!(status, "Healthy", "{message}");
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runtime": {"threads": 3},
                "rollout": {"strategy": "Canary"}}})),
        )
        .await
        .expect("edit");
    reconcile(&cluster, &ctx).await;
    let candidate = format!("{DEPLOYMENT}-canary");
    roll(&cluster, &candidate, Pods::Unschedulable, Deadline::Within).await;
    reconcile(&cluster, &ctx).await;
    let (status, message) = health_agreed(&model_object(&cluster).await);
    assert_eq!(status, "Progressing", "{message}");
    roll(
        &cluster,
        &candidate,
        Pods::CrashLoopBackOff,
        Deadline::Within,
    )
    .await;
    reconcile(&cluster, &ctx).await;
    let (status, message) = health_agreed(&model_object(&cluster).await);
    assert_eq!(status, "Degraded", "{message}");
    assert!(message.starts_with("RolledBack"), "{message}");
}

/// A RecognitionJob's health (the same script) from the statuses its reconciler writes, agreeing with kstatus: running,
/// complete, failed.
#[tokio::test]
async fn argo_cd_reads_a_recognition_jobs_health_from_its_status() {
    use k8s_openapi::api::batch::v1::Job;
    use sightline_operator::crd::RecognitionJob;
    let script = script();
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let jobs = Api::<RecognitionJob>::namespaced(cluster.admin.clone(), NS);
    jobs.create(&PostParams::default(), &support::sample_job())
        .await
        .expect("create");
    let object = || async {
        serde_json::to_value(jobs.get("archive-2024").await.expect("get")).expect("json")
    };
    let check = |object: Value| {
        let said = health_by(&script, &object).map(|h| agreed(h, &object));
        said.map(|(status, _)| status)
    };
    // No model yet: stalled, so Degraded.
    support::drive::reconcile_job(&cluster, &ctx, "archive-2024")
        .await
        .expect("reconcile");
    let Some(status) = check(object().await) else {
        return;
    };
    assert_eq!(status, "Degraded", "ModelNotFound");
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &sample_model())
        .await
        .expect("model");
    support::drive::reconcile_job(&cluster, &ctx, "archive-2024")
        .await
        .expect("reconcile");
    assert_eq!(check(object().await).as_deref(), Some("Progressing"));
    let job_api = Api::<Job>::namespaced(cluster.admin.clone(), NS);
    let job_status = |status: Value| {
        let job_api = job_api.clone();
        async move {
            job_api
                .patch_status(
                    "archive-2024",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
                .expect("job status");
        }
    };
    job_status(json!({"conditions": [{"type": "Failed", "status": "True",
        "reason": "FailedIndexes", "message": "Job has failed indexes"}]}))
    .await;
    support::drive::reconcile_job(&cluster, &ctx, "archive-2024")
        .await
        .expect("reconcile");
    assert_eq!(check(object().await).as_deref(), Some("Degraded"));
    job_status(json!({"conditions": [{"type": "Complete", "status": "True"}]})).await;
    support::drive::reconcile_job(&cluster, &ctx, "archive-2024")
        .await
        .expect("reconcile");
    assert_eq!(check(object().await).as_deref(), Some("Healthy"));
}
