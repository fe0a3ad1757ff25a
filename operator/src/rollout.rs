//! Rollout truth: where a Deployment's rollout stands, read as `kubectl rollout status`
//! reads it — from the newest ReplicaSet (the one whose pod template is the Deployment's),
//! `observedGeneration`, the updated/ready/available counts and the `Progressing`
//! condition — plus what the newest revision's pods say about themselves (waiting and
//! terminated reasons, the scheduler's verdict). Pure: the reconcilers list the objects
//! and pass them in.
//!
//! A pod problem is either **lasting** (it fails the rollout at once: no retry the kubelet
//! makes can fix it) or **transient** (named at once, but a failure only once Kubernetes
//! itself gives up on the rollout: the Deployment's `Progressing` condition turns
//! `ProgressDeadlineExceeded` after `progressDeadlineSeconds` without progress). The rules
//! are in [`pod_failure`] and docs/status.md.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;

/// The annotation the deployment controller numbers ReplicaSets with.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The label that ties a pod to its ReplicaSet's template.
pub const HASH_LABEL: &str = "pod-template-hash";

/// Container waiting reasons that no retry can fix: the image reference does not parse,
/// or a ConfigMap/Secret key the container needs is missing.
const LASTING_WAITING: [&str; 2] = ["InvalidImageName", "CreateContainerConfigError"];
/// Container waiting reasons the kubelet retries with back-off (a registry that
/// hiccups, a rate limit, a node still pulling): transient until the progress deadline.
const PULL_WAITING: [&str; 2] = ["ErrImagePull", "ImagePullBackOff"];
/// Container waiting reasons of a container that starts and dies: lasting once it has
/// been restarted [`RESTARTS_TO_FAIL`] times.
const CRASH_WAITING: [&str; 3] = [
    "CrashLoopBackOff",
    "RunContainerError",
    "CreateContainerError",
];
/// Restarts after which a container that keeps dying (crash loop, OOM kill, failed fetch)
/// fails the rollout: the kubelet's back-off is then 40 s and growing, about a minute
/// after the first start, and three identical deaths are not a passing hiccup.
pub const RESTARTS_TO_FAIL: i32 = 3;

/// Why a pod of the newest revision cannot serve, in the kubelet's or scheduler's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    /// `ImagePullBackOff`, `CrashLoopBackOff`, `OOMKilled`, `Unschedulable`, `FetchFailed`, …
    pub reason: String,
    /// The pod, the container, and what Kubernetes said.
    pub message: String,
    /// No retry fixes it: the rollout fails now. `false`: Kubernetes retries (the
    /// scheduler, the kubelet's back-off); it fails at the progress deadline.
    pub lasting: bool,
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Every replica runs the current template and is available; nothing old is left.
    Complete,
    /// Still moving (pods starting, old ones draining, or waiting on a transient cause:
    /// [`Rollout::waiting`]).
    Progressing(String),
    /// The current template cannot roll out: `reason` names why.
    Failed { reason: String, message: String },
}

/// A Deployment's rollout, with the pods of its newest revision.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub phase: Phase,
    /// The newest revision's number (0 when no ReplicaSet exists yet).
    pub revision: i64,
    /// Pods of the newest revision.
    pub current: Vec<Pod>,
    /// Ready pods of older revisions (they still serve traffic).
    pub previous_ready: usize,
    /// The newest revision before this one that had pods (for "revision N still serves").
    pub previous_revision: Option<i64>,
    pub wanted: Option<i32>,
    /// While [`Phase::Progressing`]: a transient cause the newest pods wait on (no node
    /// yet, an image pull being retried), named but not yet a failure.
    pub waiting: Option<PodFailure>,
    /// The Deployment's `progressDeadlineSeconds` (Kubernetes' default 600 when unset).
    pub deadline_seconds: i32,
}

impl Rollout {
    /// Pods of the newest revision that are ready.
    pub fn ready_current(&self) -> impl Iterator<Item = &Pod> {
        self.current.iter().filter(|p| pod_ready(p))
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The template with the `pod-template-hash` label taken out, as JSON (the deployment
/// controller's `EqualIgnoreHash`).
fn template_without_hash(
    template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> serde_json::Value {
    let mut value = serde_json::to_value(template).unwrap_or_default();
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(|l| l.as_object_mut())
    {
        labels.remove(HASH_LABEL);
    }
    value
}

/// The Deployment's newest ReplicaSet among `replica_sets` (those it controls): the one
/// whose template equals the Deployment's, else the highest revision.
pub fn newest_replica_set<'a>(
    d: &Deployment,
    replica_sets: &'a [ReplicaSet],
) -> Option<&'a ReplicaSet> {
    let uid = d.uid();
    let owned: Vec<&ReplicaSet> = replica_sets
        .iter()
        .filter(|rs| {
            rs.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true))
        })
        .collect();
    let wanted = template_without_hash(d.spec.as_ref().map(|s| &s.template));
    owned
        .iter()
        .copied()
        .filter(|rs| {
            template_without_hash(rs.spec.as_ref().and_then(|s| s.template.as_ref())) == wanted
        })
        .max_by_key(|rs| revision(rs))
        .or_else(|| owned.iter().copied().max_by_key(|rs| revision(rs)))
}

/// Whether the pod's `Ready` condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn said(message: Option<&String>) -> String {
    message
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {m}"))
        .unwrap_or_default()
}

/// What a container's state says is wrong, if anything.
fn container_failure(pod: &str, s: &ContainerStatus, init: bool) -> Option<PodFailure> {
    let kind = if init { "init container" } else { "container" };
    let last = s.last_state.as_ref().and_then(|st| st.terminated.as_ref());
    let now = s.state.as_ref().and_then(|st| st.terminated.as_ref());
    let running = s.state.as_ref().is_some_and(|st| st.running.is_some());
    let repeated = s.restart_count >= RESTARTS_TO_FAIL;
    // A fetch init container that failed: its termination message is the reason.
    if init
        && s.name.starts_with("fetch-")
        && !running
        && let Some(t) = now.or(last).filter(|t| t.exit_code != 0)
    {
        return Some(PodFailure {
            reason: "FetchFailed".into(),
            message: format!("pod {pod}, {kind} {}{}", s.name, said(t.message.as_ref())),
            lasting: repeated,
        });
    }
    // Killed for memory and not running again yet (a container that runs again after an
    // OOM kill in `lastState` has recovered: nothing is wrong now).
    if !running
        && let Some(t) = now
            .or(last)
            .filter(|t| t.reason.as_deref() == Some("OOMKilled"))
    {
        return Some(PodFailure {
            reason: "OOMKilled".into(),
            message: format!(
                "pod {pod}, {kind} {} was killed for using more memory than its limit \
                 (exit code {}, {} restarts)",
                s.name, t.exit_code, s.restart_count
            ),
            lasting: repeated,
        });
    }
    let waiting = s.state.as_ref().and_then(|st| st.waiting.as_ref())?;
    let reason = waiting.reason.clone().unwrap_or_default();
    let lasting = if LASTING_WAITING.contains(&reason.as_str()) {
        true
    } else if CRASH_WAITING.contains(&reason.as_str()) {
        repeated
    } else if PULL_WAITING.contains(&reason.as_str()) {
        false
    } else {
        return None;
    };
    let mut message = format!(
        "pod {pod}, {kind} {}{}",
        s.name,
        said(waiting.message.as_ref())
    );
    if let Some(t) = last {
        message.push_str(&format!(
            "; last exit code {}{}",
            t.exit_code,
            said(t.message.as_ref())
        ));
    }
    Some(PodFailure {
        reason,
        message,
        lasting,
    })
}

/// Why `pod` cannot serve, when Kubernetes says so (not merely "still starting"), and
/// whether that lasts. `Unschedulable` is transient: a cluster autoscaler may be adding
/// the node it needs.
pub fn pod_failure(pod: &Pod) -> Option<PodFailure> {
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    let scheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled");
    if let Some(c) =
        scheduled.filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
    {
        return Some(PodFailure {
            reason: "Unschedulable".into(),
            message: format!("pod {name} cannot be scheduled{}", said(c.message.as_ref())),
            lasting: false,
        });
    }
    let init = status
        .init_container_statuses
        .iter()
        .flatten()
        .map(|s| (s, true));
    let main = status
        .container_statuses
        .iter()
        .flatten()
        .map(|s| (s, false));
    let found: Vec<PodFailure> = init
        .chain(main)
        .filter_map(|(s, is_init)| container_failure(&name, s, is_init))
        .collect();
    // A lasting problem outranks a transient one of the same pod.
    found
        .iter()
        .find(|f| f.lasting)
        .or_else(|| found.first())
        .cloned()
}

/// Kubernetes' default `progressDeadlineSeconds`.
const DEFAULT_DEADLINE: i32 = 600;

/// Reads the rollout of `d` from its ReplicaSets and the pods its selector matches.
pub fn assess(d: &Deployment, replica_sets: &[ReplicaSet], pods: &[Pod]) -> Rollout {
    let wanted = d.spec.as_ref().and_then(|s| s.replicas);
    let newest = newest_replica_set(d, replica_sets);
    let hash = newest.and_then(|rs| rs.labels().get(HASH_LABEL).cloned());
    let revision = newest.map(revision).unwrap_or(0);
    let (current, older): (Vec<&Pod>, Vec<&Pod>) = pods
        .iter()
        .partition(|p| hash.is_some() && p.labels().get(HASH_LABEL) == hash.as_ref());
    let previous_ready = older.iter().filter(|p| pod_ready(p)).count();
    let previous_revision = replica_sets
        .iter()
        .map(self::revision)
        .filter(|r| *r < revision)
        .max();
    let current: Vec<Pod> = current.into_iter().cloned().collect();
    let problems: Vec<PodFailure> = current.iter().filter_map(pod_failure).collect();
    let phase = phase(d, newest.is_some(), &problems);
    let waiting = match phase {
        Phase::Progressing(_) => problems.into_iter().find(|p| !p.lasting),
        _ => None,
    };
    Rollout {
        phase,
        revision,
        current,
        previous_ready,
        previous_revision,
        wanted,
        waiting,
        deadline_seconds: d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(DEFAULT_DEADLINE),
    }
}

fn phase(d: &Deployment, has_newest: bool, problems: &[PodFailure]) -> Phase {
    let status = d.status.clone().unwrap_or_default();
    let observed = match (status.observed_generation, d.metadata.generation) {
        (Some(seen), Some(generation)) => seen >= generation,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    if !observed {
        return Phase::Progressing("waiting for the Deployment's new spec to be observed".into());
    }
    // A pod that no retry can fix is a failure now, not after the deadline.
    if let Some(failure) = problems.iter().find(|p| p.lasting) {
        return Phase::Failed {
            reason: failure.reason.clone(),
            message: failure.message.clone(),
        };
    }
    let deadline = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = deadline {
        let said = c
            .message
            .clone()
            .unwrap_or_else(|| "the rollout made no progress within its deadline".into());
        let message = match problems.first() {
            Some(p) => format!("{said} ({}: {})", p.reason, p.message),
            None => said,
        };
        return Phase::Failed {
            reason: "ProgressDeadlineExceeded".into(),
            message,
        };
    }
    let wanted = d.spec.as_ref().and_then(|s| s.replicas);
    let replicas = status.replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if wanted == Some(0) {
        return Phase::Progressing("scaled to zero replicas".into());
    }
    if !has_newest {
        return Phase::Progressing("waiting for the deployment controller".into());
    }
    if let Some(p) = problems.first() {
        return Phase::Progressing(format!("waiting: {}: {}", p.reason, p.message));
    }
    let want = wanted.unwrap_or(updated.max(1));
    if updated < want {
        return Phase::Progressing(format!("{updated} of {want} pods run the current revision"));
    }
    if replicas > updated {
        return Phase::Progressing(format!(
            "{} old pods are still terminating",
            replicas - updated
        ));
    }
    if available < updated {
        return Phase::Progressing(format!(
            "{available} of {updated} pods of the current revision are available"
        ));
    }
    Phase::Complete
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
