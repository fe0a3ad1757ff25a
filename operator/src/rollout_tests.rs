//! The rules of [`crate::rollout`], each on objects shaped as the deployment controller,
//! the scheduler and the kubelet write them (a moment of a real rollout each).

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;

const UID: &str = "d-uid";

fn template(threads: u32) -> Value {
    json!({"metadata": {"labels": {"app": "m"}},
        "spec": {"containers": [{"name": "server", "image": "s", "args": [threads.to_string()]}]}})
}

/// Deployment `m` (uid [`UID`]) of generation 2 running `threads`, with the controller's
/// status (`replicas`, `updated`, `available`) and its `Progressing` reason.
fn deployment(threads: u32, wanted: i32, counts: (i32, i32, i32), progress: &str) -> Deployment {
    let (replicas, updated, available) = counts;
    serde_json::from_value(json!({
        "metadata": {"name": "m", "namespace": "ns", "uid": UID, "generation": 2},
        "spec": {"replicas": wanted, "selector": {"matchLabels": {"app": "m"}},
            "template": template(threads)},
        "status": {"observedGeneration": 2, "replicas": replicas, "updatedReplicas": updated,
            "availableReplicas": available, "readyReplicas": available,
            "conditions": [{"type": "Progressing", "status": "True", "reason": progress}]}}))
    .expect("deployment")
}

/// The ReplicaSet of `threads` with its revision, controlled by `owner` (`controller`).
fn replica_set(threads: u32, revision: i64, owner: &str, controller: bool) -> ReplicaSet {
    let mut t = template(threads);
    t["metadata"]["labels"][HASH_LABEL] = json!(format!("h{threads}"));
    serde_json::from_value(json!({
        "metadata": {"name": format!("m-h{threads}"), "namespace": "ns",
            "labels": {"app": "m", HASH_LABEL: format!("h{threads}")},
            "annotations": {REVISION_ANNOTATION: revision.to_string()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "m",
                "uid": owner, "controller": controller}]},
        "spec": {"selector": {"matchLabels": {"app": "m"}}, "template": t}}))
    .expect("replica set")
}

/// A pod of the ReplicaSet of `threads`: its conditions and container statuses.
fn pod(name: &str, threads: u32, conditions: Value, containers: Value, inits: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns",
            "labels": {"app": "m", HASH_LABEL: format!("h{threads}")}},
        "status": {"phase": "Running", "conditions": conditions,
            "containerStatuses": containers, "initContainerStatuses": inits}}))
    .expect("pod")
}

fn conditions(scheduled: bool, ready: bool) -> Value {
    let word = |b: bool| if b { "True" } else { "False" };
    json!([{"type": "PodScheduled", "status": word(scheduled)},
        {"type": "Ready", "status": word(ready)}])
}

fn running(name: &str, restarts: i32, last: Value) -> Value {
    json!({"name": name, "ready": true, "restartCount": restarts, "image": "s", "imageID": "",
        "state": {"running": {}}, "lastState": last})
}

fn waiting(name: &str, reason: &str, restarts: i32, last: Value) -> Value {
    json!({"name": name, "ready": false, "restartCount": restarts, "image": "s", "imageID": "",
        "state": {"waiting": {"reason": reason, "message": format!("{reason} said so")}},
        "lastState": last})
}

fn terminated(exit: i32, reason: &str, message: &str) -> Value {
    json!({"terminated": {"exitCode": exit, "reason": reason, "message": message}})
}

fn serving(name: &str, threads: u32) -> Pod {
    pod(
        name,
        threads,
        conditions(true, true),
        json!([running("server", 0, json!({}))]),
        json!([{"name": "fetch-model", "ready": true, "restartCount": 0, "image": "s",
            "imageID": "", "state": terminated(0, "Completed", "")}]),
    )
}

#[test]
fn the_newest_replica_set_is_the_deployments_own_template_among_its_own() {
    let d = deployment(2, 2, (2, 2, 2), "NewReplicaSetAvailable");
    // A revert: revision 1 has the template again, revision 2 is numbered higher.
    let ours = [replica_set(2, 1, UID, true), replica_set(3, 2, UID, true)];
    assert_eq!(
        newest_replica_set(&d, &ours).map(revision),
        Some(1),
        "the template decides, not the number"
    );
    // Another Deployment's ReplicaSet with the same template and a higher number, and
    // one of ours that it merely references without controlling it, are not ours.
    let mixed = [
        replica_set(2, 1, UID, true),
        replica_set(2, 9, "other-uid", true),
        replica_set(2, 8, UID, false),
    ];
    assert_eq!(newest_replica_set(&d, &mixed).map(revision), Some(1));
    // Nothing with the template yet (the controller has not created it): the highest.
    let before = [replica_set(3, 2, UID, true), replica_set(4, 5, UID, true)];
    assert_eq!(newest_replica_set(&d, &before).map(revision), Some(5));
    assert!(newest_replica_set(&d, &[replica_set(2, 1, "x", true)]).is_none());
}

#[test]
fn assess_splits_the_pods_by_revision_and_names_the_one_before() {
    let d = deployment(3, 2, (3, 1, 2), "ReplicaSetUpdated");
    let sets = [
        replica_set(1, 1, UID, true),
        replica_set(2, 2, UID, true),
        replica_set(3, 3, UID, true),
    ];
    let loading = pod(
        "new",
        3,
        conditions(true, false),
        json!([running("server", 0, json!({}))]),
        json!([]),
    );
    let pods = [serving("old-a", 2), serving("old-b", 2), loading];
    let r = assess(&d, &sets, &pods);
    assert_eq!((r.revision, r.previous_revision), (3, Some(2)));
    assert_eq!(r.current.len(), 1);
    assert_eq!(r.previous_ready, 2);
    assert_eq!(r.ready_current().count(), 0);
    assert_eq!(
        r.phase,
        Phase::Progressing("1 of 2 pods run the current revision".into())
    );
    assert_eq!(r.wanted, Some(2));
    assert_eq!(r.deadline_seconds, 600, "Kubernetes' default");
    // No ReplicaSet yet: revision 0, nothing current.
    let none = assess(&d, &[], &pods);
    assert_eq!((none.revision, none.current.len()), (0, 0));
    assert_eq!(
        none.phase,
        Phase::Progressing("waiting for the deployment controller".into())
    );
}

#[test]
fn ready_means_the_ready_condition_alone() {
    let both = serving("a", 1);
    let scheduled_only = pod("b", 1, conditions(true, false), json!([]), json!([]));
    let unconditioned: Pod = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    assert!(pod_ready(&both));
    assert!(!pod_ready(&scheduled_only));
    assert!(!pod_ready(&unconditioned));
    let d = deployment(1, 3, (3, 3, 2), "ReplicaSetUpdated");
    let r = assess(
        &d,
        &[replica_set(1, 1, UID, true)],
        &[serving("a", 1), serving("b", 1), scheduled_only],
    );
    assert_eq!(r.ready_current().count(), 2);
}

#[test]
fn counts_decide_completion_as_rollout_status_does() {
    let sets = [replica_set(1, 1, UID, true)];
    let pods = [serving("a", 1), serving("b", 1)];
    let phase = |counts| assess(&deployment(1, 2, counts, "ReplicaSetUpdated"), &sets, &pods).phase;
    assert_eq!(phase((2, 2, 2)), Phase::Complete);
    assert_eq!(
        phase((3, 2, 2)),
        Phase::Progressing("1 old pods are still terminating".into())
    );
    assert_eq!(
        phase((2, 2, 1)),
        Phase::Progressing("1 of 2 pods of the current revision are available".into())
    );
    assert_eq!(
        phase((3, 3, 3)),
        Phase::Complete,
        "more updated than wanted (scaling down) is done once none is old"
    );
    let mut unobserved = deployment(1, 2, (2, 2, 2), "NewReplicaSetAvailable");
    unobserved.metadata.generation = Some(3);
    assert_eq!(
        assess(&unobserved, &sets, &pods).phase,
        Phase::Progressing("waiting for the Deployment's new spec to be observed".into())
    );
    let zero = deployment(1, 0, (0, 0, 0), "NewReplicaSetAvailable");
    assert_eq!(
        assess(&zero, &sets, &[]).phase,
        Phase::Progressing("scaled to zero replicas".into())
    );
}

#[test]
fn the_progress_deadline_fails_what_kubernetes_gave_up_on_and_keeps_the_cause() {
    let d = deployment(1, 1, (1, 1, 0), "ProgressDeadlineExceeded");
    let unscheduled: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "labels": {"app": "m", HASH_LABEL: "h1"}},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]}}))
    .unwrap();
    let r = assess(
        &d,
        &[replica_set(1, 1, UID, true)],
        std::slice::from_ref(&unscheduled),
    );
    let Phase::Failed { reason, message } = r.phase else {
        panic!("{:?}", r.phase)
    };
    assert_eq!(reason, "ProgressDeadlineExceeded");
    assert!(message.contains("Unschedulable: pod p cannot be scheduled: 0/3 nodes"));
    // Within the deadline it is named and waited for.
    let d = deployment(1, 1, (1, 1, 0), "ReplicaSetUpdated");
    let r = assess(&d, &[replica_set(1, 1, UID, true)], &[unscheduled]);
    assert!(matches!(&r.phase, Phase::Progressing(m) if m.starts_with("waiting: Unschedulable")));
    assert_eq!(r.waiting.map(|w| w.reason), Some("Unschedulable".into()));
    // A scheduling verdict other than Unschedulable (gated, say) is no failure.
    let gated: Pod = serde_json::from_value(json!({"metadata": {"name": "g"}, "status": {
        "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "SchedulingGated"}]}}))
    .unwrap();
    assert_eq!(pod_failure(&gated), None);
}

fn failure(containers: Value, inits: Value) -> Option<PodFailure> {
    pod_failure(&pod("p", 1, conditions(true, false), containers, inits))
}

#[test]
fn a_container_that_keeps_dying_fails_at_the_third_restart() {
    let crashed = terminated(1, "Error", "cannot open the database");
    let crash = |restarts| {
        failure(
            json!([waiting(
                "server",
                "CrashLoopBackOff",
                restarts,
                crashed.clone()
            )]),
            json!([]),
        )
        .expect("named")
    };
    let once = crash(1);
    assert_eq!(once.reason, "CrashLoopBackOff");
    assert!(!once.lasting);
    assert_eq!(
        once.message,
        "pod p, container server: CrashLoopBackOff said so; last exit code 1: cannot open \
         the database"
    );
    assert!(crash(RESTARTS_TO_FAIL).lasting);
    assert!(!crash(RESTARTS_TO_FAIL - 1).lasting);
    // OOM kills: lasting when repeated, history once it runs again.
    let oom = terminated(137, "OOMKilled", "");
    let killed = failure(
        json!([waiting("server", "CrashLoopBackOff", 4, oom.clone())]),
        json!([]),
    )
    .expect("named");
    assert_eq!(
        (killed.reason.as_str(), killed.lasting),
        ("OOMKilled", true)
    );
    assert!(killed.message.contains("exit code 137, 4 restarts"));
    assert_eq!(failure(json!([running("server", 1, oom)]), json!([])), None);
    // A main container's crash is never a fetch failure.
    let main = failure(
        json!([waiting("fetch-like", "CrashLoopBackOff", 3, crashed)]),
        json!([]),
    )
    .expect("named");
    assert_eq!(main.reason, "CrashLoopBackOff");
}

#[test]
fn fetches_fail_by_their_exit_code_and_only_when_not_retrying() {
    let mismatch = terminated(1, "Error", "digest mismatch");
    let fetch = |state: Value, restarts: i32, last: Value| {
        json!([{"name": "fetch-model", "ready": false, "restartCount": restarts, "image": "s",
            "imageID": "", "state": state, "lastState": last}])
    };
    let failed = failure(
        json!([waiting("server", "PodInitializing", 0, json!({}))]),
        fetch(
            json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            3,
            mismatch.clone(),
        ),
    )
    .expect("named");
    assert_eq!(
        (failed.reason.as_str(), failed.lasting),
        ("FetchFailed", true)
    );
    assert_eq!(
        failed.message,
        "pod p, init container fetch-model: digest mismatch"
    );
    // Retrying now (running again): not a failure while it runs.
    assert_eq!(
        failure(
            json!([]),
            fetch(json!({"running": {}}), 1, mismatch.clone())
        ),
        None
    );
    // Done: exit code 0 is success.
    assert_eq!(
        failure(
            json!([]),
            fetch(terminated(0, "Completed", ""), 0, json!({}))
        ),
        None
    );
    // An init container of another name is not a fetch.
    let other = json!([{"name": "setup", "ready": false, "restartCount": 0, "image": "s",
        "imageID": "", "state": terminated(1, "Error", "x"), "lastState": {}}]);
    assert_eq!(failure(json!([]), other), None);
}

#[test]
fn pulls_and_bad_references_are_transient_and_lasting() {
    let pull = failure(
        json!([waiting("server", "ErrImagePull", 0, json!({}))]),
        json!([]),
    )
    .expect("named");
    assert_eq!(
        (pull.reason.as_str(), pull.lasting),
        ("ErrImagePull", false)
    );
    let bad = failure(
        json!([waiting("server", "InvalidImageName", 0, json!({}))]),
        json!([]),
    )
    .expect("named");
    assert!(bad.lasting);
    assert_eq!(
        failure(
            json!([waiting("server", "ContainerCreating", 0, json!({}))]),
            json!([])
        ),
        None,
        "starting is not failing"
    );
    // A lasting problem of one container outranks a transient one of another.
    let both = failure(
        json!([
            waiting("a", "ImagePullBackOff", 0, json!({})),
            waiting("b", "CreateContainerConfigError", 0, json!({}))
        ]),
        json!([]),
    )
    .expect("named");
    assert_eq!(both.reason, "CreateContainerConfigError");
    assert_eq!(
        said(Some(&"  \n".to_string())),
        "",
        "an empty message adds nothing"
    );
}
