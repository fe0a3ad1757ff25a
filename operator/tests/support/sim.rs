//! SIMULATION of the parts of a cluster that kube-fake-client does not run, small and
//! named as such, so the real reconcilers can be driven through a rollout:
//!
//! - the deployment controller: one ReplicaSet per pod template (labelled with a
//!   `pod-template-hash`, numbered by `deployment.kubernetes.io/revision`; a template seen
//!   before reuses its ReplicaSet, which gets the next revision — [`bump_revision`]), the
//!   Deployment's own strategy (`Recreate`, or `RollingUpdate` with its `maxSurge` /
//!   `maxUnavailable` — [`Strategy`]), and the Deployment's status as the controller
//!   writes it — `observedGeneration`, replica counts, `Available` and `Progressing`
//!   (including `ProgressDeadlineExceeded`);
//! - the scheduler and the kubelet: pods whose state each test chooses, lasting or
//!   transient ([`Pods`]);
//! - the server in each pod: what `/readyz` answers through `pods/proxy`.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Cluster, NS};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

/// How the pods of the newest revision behave.
#[derive(Debug, Clone)]
pub enum Pods {
    /// Scheduled, started, and `/readyz` answers 200 for the model they were given.
    Serving,
    /// Running, but `/readyz` answers 503 with the server's own reason.
    NotReady {
        reason: &'static str,
        message: &'static str,
    },
    /// The kubelet cannot pull the image.
    ImagePullBackOff,
    /// The server exits at once, again and again.
    CrashLoopBackOff,
    /// No node has what the pod requests (e.g. no GPU node). Transient: the scheduler
    /// retries, and a cluster autoscaler may be adding the node (`PodScheduled=False`,
    /// reason `Unschedulable`: kubernetes.io/docs/concepts/scheduling-eviction/
    /// pod-scheduling-readiness and the cluster-autoscaler FAQ, "scale-up").
    Unschedulable,
    /// The first pull of the image failed (`waiting.reason: ErrImagePull`, restart count
    /// 0): the kubelet retries with back-off (kubernetes.io/docs/concepts/containers/
    /// images, "ImagePullBackOff"), so one failed pull is transient.
    ImagePullFailedOnce,
    /// Serving again after one OOM kill: `state.running`, ready, `restartCount: 1`, and
    /// the kill kept in `lastState.terminated` (reason `OOMKilled`), as the kubelet reports
    /// a container it restarted (kubernetes.io/docs/concepts/workloads/pods/
    /// pod-lifecycle, "Container restarts").
    RecoveredFromOomKill,
    /// The `fetch-model` init container exits 1 with this termination message (its
    /// download failed, or the digest did not match), and is restarted with back-off.
    FetchFailed(&'static str),
}

/// What the deployment controller is told about time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    Within,
    /// `progressDeadlineSeconds` passed without progress.
    Exceeded,
}

fn template_hash(template: &Value) -> String {
    hex::encode(Sha256::digest(template.to_string().as_bytes()))[..10].to_string()
}

fn args_of(template: &Value) -> Vec<String> {
    template["spec"]["containers"][0]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// What a serving pod's `/readyz` says (`sightline-server`'s body), for a model pod; the
/// other roles answer `{"status":"ready"}`.
pub fn ready_body(template: &Value) -> String {
    let args = args_of(template);
    if args.first().map(String::as_str) != Some("recognize") {
        return json!({"status": "ready"}).to_string();
    }
    let digest = flag(&args, "--model-sha256").unwrap_or_else(|| "f".repeat(64));
    let device = flag(&args, "--device").unwrap_or_else(|| "cpu".into());
    let size: i64 = flag(&args, "--input-size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(224);
    json!({"status": "ready", "model": {
        "name": flag(&args, "--model-name").unwrap_or_default(),
        "sha256": digest, "device": device, "classes": 1000,
        "input_shape": [-1, 3, size, size], "load_seconds": 0.4}})
    .to_string()
}

fn container_statuses(template: &Value, key: &str, state: &Value, ready: bool) -> Value {
    let names: Vec<String> = template["spec"][key]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Value::Array(
        names
            .iter()
            .map(|name| {
                json!({"name": name, "ready": ready, "restartCount": 0, "image": "x",
                       "imageID": "", "state": state})
            })
            .collect(),
    )
}

/// A pod whose image pull fails as `waiting` says: the first container to start (an
/// init container, when there is one) waits on it, the others wait for it.
fn pull_failing(template: &Value, waiting: Value) -> Value {
    let condition = |type_: &str, status: bool| json!({"type": type_, "status": if status { "True" } else { "False" }});
    let (init, main) = if template["spec"]["initContainers"].is_array() {
        (waiting, json!({"waiting": {"reason": "PodInitializing"}}))
    } else {
        (Value::Null, waiting)
    };
    json!({
        "phase": "Pending",
        "conditions": [condition("PodScheduled", true), condition("Ready", false)],
        "initContainerStatuses": container_statuses(template, "initContainers", &init, false),
        "containerStatuses": container_statuses(template, "containers", &main, false),
    })
}

/// The status the kubelet (or the scheduler) reports for a pod behaving as `pods`.
fn pod_status(template: &Value, pods: &Pods) -> Value {
    let done = json!({"terminated": {"exitCode": 0, "reason": "Completed"}});
    let running = json!({"running": {"startedAt": "2027-01-01T00:00:00Z"}});
    let condition = |type_: &str, status: bool| json!({"type": type_, "status": if status { "True" } else { "False" }});
    match pods {
        Pods::Serving => json!({
            "phase": "Running",
            "conditions": [condition("PodScheduled", true), condition("Ready", true)],
            "initContainerStatuses": container_statuses(template, "initContainers", &done, true),
            "containerStatuses": container_statuses(template, "containers", &running, true),
        }),
        Pods::NotReady { .. } => json!({
            "phase": "Running",
            "conditions": [condition("PodScheduled", true), condition("Ready", false)],
            "initContainerStatuses": container_statuses(template, "initContainers", &done, true),
            "containerStatuses": container_statuses(template, "containers", &running, false),
        }),
        Pods::ImagePullBackOff => {
            let image = template["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default();
            pull_failing(
                template,
                json!({"waiting": {"reason": "ImagePullBackOff",
                "message": format!("Back-off pulling image \"{image}\": ErrImagePull: \
                    failed to pull and unpack image \"{image}\": not found")}}),
            )
        }
        Pods::CrashLoopBackOff => {
            let mut statuses = container_statuses(
                template,
                "containers",
                &json!({"waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 5m0s restarting failed container=server"}}),
                false,
            );
            if let Some(first) = statuses.get_mut(0) {
                first["restartCount"] = json!(6);
                first["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "error: cannot open the database: permission denied"}});
            }
            json!({
                "phase": "Running",
                "conditions": [condition("PodScheduled", true), condition("Ready", false)],
                "initContainerStatuses": container_statuses(template, "initContainers", &done, true),
                "containerStatuses": statuses,
            })
        }
        Pods::FetchFailed(message) => {
            let mut init = container_statuses(
                template,
                "initContainers",
                &json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": "back-off 40s restarting failed container=fetch-model"}}),
                false,
            );
            if let Some(first) = init.get_mut(0) {
                first["restartCount"] = json!(3);
                first["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error",
                    "message": message}});
            }
            json!({
                "phase": "Pending",
                "conditions": [condition("PodScheduled", true), condition("Ready", false)],
                "initContainerStatuses": init,
                "containerStatuses": container_statuses(template, "containers",
                    &json!({"waiting": {"reason": "PodInitializing"}}), false),
            })
        }
        Pods::ImagePullFailedOnce => {
            let image = template["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default();
            pull_failing(
                template,
                json!({"waiting": {"reason": "ErrImagePull",
                "message": format!("failed to pull and unpack image \"{image}\": \
                    failed to resolve reference: 503 Service Unavailable")}}),
            )
        }
        Pods::RecoveredFromOomKill => {
            let mut statuses = container_statuses(template, "containers", &running, true);
            if let Some(first) = statuses.get_mut(0) {
                first["restartCount"] = json!(1);
                first["lastState"] = json!({"terminated": {"exitCode": 137,
                    "reason": "OOMKilled", "startedAt": "2027-01-01T00:00:00Z",
                    "finishedAt": "2027-01-01T00:05:00Z"}});
            }
            json!({
                "phase": "Running",
                "conditions": [condition("PodScheduled", true), condition("Ready", true)],
                "initContainerStatuses": container_statuses(template, "initContainers", &done, true),
                "containerStatuses": statuses,
            })
        }
        Pods::Unschedulable => json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. \
                    preemption: 0/3 nodes are available: 3 No preemption victims found for \
                    incoming pod."}],
        }),
    }
}

fn ready(pods: &Pods) -> bool {
    matches!(pods, Pods::Serving | Pods::RecoveredFromOomKill)
}

/// How the deployment controller replaces pods (kubernetes.io/docs/concepts/workloads/
/// controllers/deployment, "Strategy"; pkg/controller/deployment/rolling.go and
/// recreate.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Every old pod is killed before a new one is created.
    Recreate,
    /// New pods are added up to `wanted + max_surge` in all, old ones removed while at
    /// least `wanted - max_unavailable` are available.
    RollingUpdate {
        max_surge: i64,
        max_unavailable: i64,
    },
}

/// `maxSurge`/`maxUnavailable` as absolute numbers for `wanted` replicas: a percentage
/// rounds up for the surge and down for unavailability, and both zero means one may be
/// unavailable (the deployment controller's `ResolveFenceposts`); unset is 25 % each.
fn fencepost(value: &Value, wanted: i64, round_up: bool) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(p) => {
            let percent: i64 = p.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = wanted * percent;
            if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }
        }
        _ => fencepost(&json!("25%"), wanted, round_up),
    }
}

/// The Deployment's strategy, resolved for `wanted` replicas.
pub fn strategy(deployment: &Value, wanted: i64) -> Strategy {
    let spec = &deployment["spec"]["strategy"];
    if spec["type"] == "Recreate" {
        return Strategy::Recreate;
    }
    let rolling = &spec["rollingUpdate"];
    let max_surge = fencepost(&rolling["maxSurge"], wanted, true);
    let mut max_unavailable = fencepost(&rolling["maxUnavailable"], wanted, false);
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    Strategy::RollingUpdate {
        max_surge,
        max_unavailable,
    }
}

/// Where the deployment controller settles when the new revision's pods never become
/// available: `(old pods kept, new pods)`. Recreate kills every old pod first; a rolling
/// update keeps `wanted - maxUnavailable` old pods and adds new ones up to
/// `wanted + maxSurge` in all.
fn stalled_counts(strategy: Strategy, wanted: i64, old: i64) -> (i64, i64) {
    match strategy {
        Strategy::Recreate => (0, wanted),
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => {
            let kept = old.min((wanted - max_unavailable).max(0));
            (kept, wanted.min(wanted + max_surge - kept).max(0))
        }
    }
}

/// A ReplicaSet reused for a template seen before becomes the newest revision: the
/// deployment controller sets its `deployment.kubernetes.io/revision` to one more than
/// the highest of its siblings (`SetNewReplicaSetAnnotations` in
/// pkg/controller/deployment/util/deployment_util.go) — `kubectl rollout undo` relies on
/// it.
async fn bump_revision(cluster: &Cluster, rs: &ReplicaSet, newest: i64) {
    let current: i64 = rs
        .annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    if current >= newest {
        return;
    }
    Api::<ReplicaSet>::namespaced(cluster.admin.clone(), NS)
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations":
                {REVISION: (newest + 1).to_string()}}})),
        )
        .await
        .expect("bump the reused ReplicaSet's revision");
}

/// Brings Deployment `name` to where the deployment controller, the scheduler and the
/// kubelets would leave it when the pods of its current template behave as `pods`.
pub async fn roll(cluster: &Cluster, name: &str, pods: Pods, deadline: Deadline) {
    let deployments = Api::<Deployment>::namespaced(cluster.admin.clone(), NS);
    let replica_sets = Api::<ReplicaSet>::namespaced(cluster.admin.clone(), NS);
    let pod_api = Api::<Pod>::namespaced(cluster.admin.clone(), NS);
    let d = deployments.get(name).await.expect("deployment");
    let d_json = serde_json::to_value(&d).expect("json");
    let template = d_json["spec"]["template"].clone();
    let hash = template_hash(&template);
    let selector: Vec<String> = d_json["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let selector = selector.join(",");
    let uid = d.uid().expect("uid");

    let owned: Vec<ReplicaSet> = replica_sets
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("replica sets")
        .items
        .into_iter()
        .filter(|rs| rs.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    let revision = |rs: &ReplicaSet| -> i64 {
        rs.annotations()
            .get(REVISION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    };
    let newest = owned.iter().map(revision).max().unwrap_or(0);
    let rs_name = format!("{name}-{hash}");
    if let Some(reused) = owned.iter().find(|rs| rs.name_any() == rs_name) {
        bump_revision(cluster, reused, newest).await;
    } else {
        let mut labels = template["metadata"]["labels"].clone();
        labels[HASH_LABEL] = json!(hash);
        let mut rs_template = template.clone();
        rs_template["metadata"]["labels"] = labels.clone();
        let rs: ReplicaSet = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs_name, "namespace": NS, "labels": labels,
                "annotations": {REVISION: (newest + 1).to_string()},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                    "name": name, "uid": uid, "controller": true}]},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                "template": rs_template},
        }))
        .expect("replica set");
        replica_sets
            .create(&PostParams::default(), &rs)
            .await
            .expect("create replica set");
    }

    let all: Vec<Pod> = pod_api
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("pods")
        .items;
    let (current, old): (Vec<Pod>, Vec<Pod>) = all
        .into_iter()
        .partition(|p| p.labels().get(HASH_LABEL) == Some(&hash));
    let wanted = d_json["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let is_ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    // Old pods go ready ones last (the controller scales down unavailable pods first).
    let mut old = old;
    old.sort_by_key(|p| is_ready(p));
    let (kept, new_count) = if ready(&pods) {
        (0, wanted)
    } else {
        stalled_counts(strategy(&d_json, wanted), wanted, old.len() as i64)
    };
    for p in &current {
        pod_api
            .delete(&p.name_any(), &DeleteParams::default())
            .await
            .expect("delete pod");
    }
    let gone = old.len().saturating_sub(usize::try_from(kept).unwrap_or(0));
    for p in old.drain(..gone) {
        pod_api
            .delete(&p.name_any(), &DeleteParams::default())
            .await
            .expect("delete old pod");
    }
    let old_ready: Vec<Pod> = old.iter().filter(|p| is_ready(p)).cloned().collect();
    let keep_old = !old.is_empty();
    let status = pod_status(&template, &pods);
    let mut pod_labels = template["metadata"]["labels"].clone();
    pod_labels[HASH_LABEL] = json!(hash);
    for i in 0..new_count {
        let pod_name = format!("{rs_name}-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": NS, "labels": pod_labels,
                "annotations": template["metadata"]["annotations"].clone(),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": rs_name, "uid": "rs-uid", "controller": true}]},
            "spec": template["spec"].clone(),
            "status": status,
        }))
        .expect("pod");
        pod_api
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
        match &pods {
            Pods::Serving | Pods::RecoveredFromOomKill => {
                cluster.answer_pod(&pod_name, "/readyz", 200, ready_body(&template))
            }
            Pods::NotReady { reason, message } => cluster.answer_pod(
                &pod_name,
                "/readyz",
                503,
                json!({"status": "not ready", "reason": reason, "message": message}).to_string(),
            ),
            _ => {}
        }
    }

    let ready_new = if ready(&pods) { new_count } else { 0 };
    let ready_old = if keep_old { old_ready.len() as i64 } else { 0 };
    let total = new_count + if keep_old { old.len() as i64 } else { 0 };
    let available = ready_new + ready_old;
    let complete = ready_new == wanted && !keep_old;
    let progressing = match (deadline, complete) {
        (_, true) => json!({"type": "Progressing", "status": "True",
            "reason": "NewReplicaSetAvailable",
            "message": format!("ReplicaSet \"{rs_name}\" has successfully progressed.")}),
        (Deadline::Exceeded, false) => json!({"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": format!("ReplicaSet \"{rs_name}\" has timed out progressing.")}),
        (Deadline::Within, false) => json!({"type": "Progressing", "status": "True",
            "reason": "ReplicaSetUpdated",
            "message": format!("ReplicaSet \"{rs_name}\" is progressing.")}),
    };
    // Available: at least `wanted - maxUnavailable` pods are (the controller's
    // `DeploymentAvailable` rule; Recreate counts none as allowed to be unavailable).
    let may_lack = match strategy(&d_json, wanted) {
        Strategy::Recreate => 0,
        Strategy::RollingUpdate {
            max_unavailable, ..
        } => max_unavailable,
    };
    let available_cond = if available >= wanted - may_lack {
        json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
               "message": "Deployment has minimum availability."})
    } else {
        json!({"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
               "message": "Deployment does not have minimum availability."})
    };
    deployments
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "observedGeneration": d.metadata.generation,
                "replicas": total, "updatedReplicas": new_count,
                "readyReplicas": available, "availableReplicas": available,
                "unavailableReplicas": total - available,
                "conditions": [available_cond, progressing],
            }})),
        )
        .await
        .expect("deployment status");
}

/// Makes every pod that exists now answer `path` with `code` and `body` (the server's API
/// as the pods would serve it).
pub async fn answer_every_pod(cluster: &Cluster, path: &str, code: u16, body: String) {
    let pods = Api::<Pod>::namespaced(cluster.admin.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("pods");
    for pod in pods.items {
        cluster.answer_pod(&pod.name_any(), path, code, body.clone());
    }
}
