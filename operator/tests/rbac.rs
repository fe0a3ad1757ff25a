//! The operator's RBAC is exactly what its code uses: every request the reconcilers and
//! the leader election send (recorded against the in-memory API, through every path that
//! writes or deletes), plus list+watch on what the controllers watch, must be granted by
//! manifests/install/rbac.yaml — and, in the namespaced mode (`--namespaces`), by the
//! Roles of manifests/install-namespaced; and the manifests grant nothing else.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use sightline_operator::build::monitoring::ServiceMonitor;
use sightline_operator::controller::{model, pipeline, run};
use sightline_operator::crd::{ImageModel, RecognitionPipeline};
use sightline_operator::leader::LeaseLock;
use support::sim::{Deadline, Pods, roll};
use support::{Cluster, NS, full_apis, repo, sample_model, sample_pipeline};

type Grant = (String, String, String); // (group, resource, verb)

async fn patch<K>(cluster: &Cluster, name: &str, body: serde_json::Value)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(cluster.admin.clone(), NS)
        .patch(name, &PatchParams::default(), &Patch::Merge(body))
        .await
        .expect("edit");
}

async fn reconcile_both(cluster: &Cluster, ctx: &Arc<sightline_operator::controller::Context>) {
    let models = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS);
    let pipelines = Api::<RecognitionPipeline>::namespaced(cluster.admin.clone(), NS);
    let m = models.get("efficientnet-lite0").await.expect("model");
    model::reconcile(Arc::new(m), ctx.clone())
        .await
        .expect("model reconcile");
    let p = pipelines.get("photos").await.expect("pipeline");
    pipeline::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("pipeline reconcile");
}

/// Drives every path that talks to the API and returns what was sent, as RBAC grants;
/// `namespaced`: as the operator runs with `--namespaces` (no Node is read).
async fn exercised(namespaced: bool) -> BTreeSet<Grant> {
    let cluster = Cluster::new().await;
    let mut ctx = cluster.context(full_apis());
    if namespaced {
        ctx = Arc::new(Arc::try_unwrap(ctx).ok().expect("context").without_nodes());
    }
    let post = PostParams::default();
    // A pipeline before its model, then both: creates, status writes, events.
    Api::<RecognitionPipeline>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &sample_pipeline())
        .await
        .expect("pipeline");
    let p = Api::<RecognitionPipeline>::namespaced(cluster.admin.clone(), NS)
        .get("photos")
        .await
        .expect("pipeline");
    pipeline::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("no model yet");
    let mut m = sample_model();
    m.spec.runtime.replicas = None;
    m.spec.runtime.autoscaling =
        serde_json::from_value(json!({"minReplicas": 2, "maxReplicas": 4})).expect("autoscaling");
    let created = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &m)
        .await
        .expect("model");
    // A ServiceMonitor an older version named after the model alone: pruned.
    let old_monitor: ServiceMonitor = serde_json::from_value(json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": "efficientnet-lite0", "namespace": NS,
            "labels": {"app.kubernetes.io/instance": "efficientnet-lite0",
                "app.kubernetes.io/managed-by": "sightline-operator"},
            "ownerReferences": [{"apiVersion": "sightline.io/v1alpha1", "kind": "ImageModel",
                "name": "efficientnet-lite0", "uid": created.uid(), "controller": true}]},
        "spec": {"selector": {}, "endpoints": []}}))
    .expect("monitor");
    let monitors = Api::<ServiceMonitor>::namespaced(cluster.admin.clone(), NS);
    monitors
        .create(&post, &old_monitor)
        .await
        .expect("old monitor");
    reconcile_both(&cluster, &ctx).await;
    assert!(
        monitors
            .get_opt("efficientnet-lite0")
            .await
            .expect("get")
            .is_none(),
        "the old-named monitor would scrape the model twice"
    );
    // The model serves: its pods' /readyz and start-up evaluation are read through
    // pods/proxy.
    roll(
        &cluster,
        "efficientnet-lite0-recognize",
        Pods::Serving,
        Deadline::Within,
    )
    .await;
    reconcile_both(&cluster, &ctx).await;
    // A RecognitionJob: its Job is created (get, apply), its pods listed, its status and
    // events written.
    Api::<sightline_operator::crd::RecognitionJob>::namespaced(cluster.admin.clone(), NS)
        .create(&post, &support::sample_job())
        .await
        .expect("recognition job");
    support::drive::reconcile_job(&cluster, &ctx, "archive-2024")
        .await
        .expect("recognition job reconcile");
    // A canary: the candidate's objects are created, then removed by a rollback.
    patch::<ImageModel>(
        &cluster,
        &m.name_any(),
        json!({"spec": {"rollout": {"strategy": "Canary"}, "runtime": {"threads": 3}}}),
    )
    .await;
    reconcile_both(&cluster, &ctx).await;
    roll(
        &cluster,
        "efficientnet-lite0-recognize-canary",
        Pods::CrashLoopBackOff,
        Deadline::Within,
    )
    .await;
    reconcile_both(&cluster, &ctx).await;
    // device: auto asks which nodes offer the GPU resource.
    patch::<ImageModel>(
        &cluster,
        &m.name_any(),
        json!({"spec": {"runtime": {"device": "auto"}}}),
    )
    .await;
    reconcile_both(&cluster, &ctx).await;
    // Every optional child removed again: HPA, PDB, HTTPRoute, then the Ingress.
    patch::<ImageModel>(
        &cluster,
        &m.name_any(),
        json!({"spec": {"runtime": {"autoscaling": null, "replicas": 1}}}),
    )
    .await;
    patch::<RecognitionPipeline>(
        &cluster,
        "photos",
        json!({"spec": {"gateway": {"parentRefs": [], "ingress": {"className": "nginx"}}}}),
    )
    .await;
    reconcile_both(&cluster, &ctx).await;
    patch::<RecognitionPipeline>(
        &cluster,
        "photos",
        json!({"spec": {"gateway": {"ingress": null}}}),
    )
    .await;
    reconcile_both(&cluster, &ctx).await;

    // Leader election: take, renew, lose to expiry, release.
    let lease = |who: &str| {
        LeaseLock::new(
            cluster.client.clone(),
            "sightline-system",
            "sightline-operator",
            who,
            Duration::from_secs(15),
        )
    };
    let (a, b) = (lease("a"), lease("b"));
    let t0 = Timestamp::from_second(1_800_000_000).expect("time");
    assert!(
        a.try_acquire(t0).await.expect("a"),
        "a takes the free lease"
    );
    assert!(
        !b.try_acquire(t0).await.expect("b"),
        "b waits while a holds it"
    );
    assert!(
        a.try_acquire(t0 + SignedDuration::from_secs(5))
            .await
            .expect("a renews")
    );
    let seen = t0 + SignedDuration::from_secs(21);
    assert!(
        !b.try_acquire(seen).await.expect("b"),
        "b sees a's renewal (its own clock times the lease from here)"
    );
    let later = seen + SignedDuration::from_secs(16);
    assert!(
        b.try_acquire(later).await.expect("b"),
        "b takes it a lease duration after it last saw a change"
    );
    assert!(!a.try_acquire(later).await.expect("a"), "a lost it");
    b.release().await.expect("release");
    assert!(
        a.try_acquire(later).await.expect("a"),
        "a released lease is free at once"
    );

    let mut grants: BTreeSet<Grant> = cluster
        .distinct_calls()
        .into_iter()
        .map(|c| (c.group, c.resource, c.verb))
        .collect();
    // Server-side apply that creates an object is authorized as create as well as patch.
    let applies: Vec<Grant> = grants
        .iter()
        .filter(|(_, resource, verb)| verb == "patch" && !resource.contains('/'))
        .cloned()
        .collect();
    for (group, resource, _) in applies {
        grants.insert((group, resource, "create".into()));
    }
    // Not sent by the code, required by the API server: setting blockOwnerDeletion on an
    // owner reference needs `update` on the owner's finalizers where the
    // OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift).
    for resource in [
        "imagemodels/finalizers",
        "recognitionpipelines/finalizers",
        "recognitionjobs/finalizers",
    ] {
        grants.insert(("sightline.io".into(), resource.into(), "update".into()));
    }
    for (group, resource) in run::watched() {
        grants.insert((group.clone(), resource.clone(), "list".into()));
        grants.insert((group, resource, "watch".into()));
    }
    grants
}

fn expand(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none(),
            "no resourceNames rules expected"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "no wildcard verbs");
                    assert_ne!(resource, "*", "no wildcard resources");
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// The grants of every ClusterRole, and of the Roles by namespace, in `text` (YAML
/// documents).
fn roles_in(text: &str) -> (BTreeSet<Grant>, BTreeMap<String, BTreeSet<Grant>>) {
    let (mut cluster, mut namespaced) = (BTreeSet::new(), BTreeMap::new());
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("yaml");
        match value["kind"].as_str() {
            Some("ClusterRole") => {
                let role: ClusterRole = serde_json::from_value(value).expect("ClusterRole");
                cluster.extend(expand(&role.rules.unwrap_or_default()));
            }
            Some("Role") => {
                let role: Role = serde_json::from_value(value).expect("Role");
                namespaced
                    .entry(role.namespace().unwrap_or_default())
                    .or_insert_with(BTreeSet::new)
                    .extend(expand(&role.rules.unwrap_or_default()));
            }
            _ => {}
        }
    }
    (cluster, namespaced)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (ClusterRole grants, Role grants) from manifests/install/rbac.yaml.
fn granted() -> (BTreeSet<Grant>, BTreeSet<Grant>) {
    let (cluster, namespaced) = roles_in(&read("manifests/install/rbac.yaml"));
    (cluster, namespaced.into_values().flatten().collect())
}

/// The Lease grants apart from the rest.
fn split_leases(used: BTreeSet<Grant>) -> (BTreeSet<Grant>, BTreeSet<Grant>) {
    used.into_iter()
        .partition(|(group, _, _)| group == "coordination.k8s.io")
}

#[tokio::test]
async fn the_namespaced_install_grants_exactly_what_the_code_uses_in_its_namespaces() {
    let used = exercised(true).await;
    let (leases, rest) = split_leases(used);
    // What `kubectl apply -k manifests/install-namespaced` creates: built by kustomize
    // when kubectl is here, else its files (the base's Lease Role, the overlay's Roles).
    let built = std::process::Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo("manifests/install-namespaced"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let text = match built {
        Some(text) => text,
        None => {
            assert!(std::env::var_os("CI").is_none(), "kubectl is missing");
            let overlay = read("manifests/install-namespaced/kustomization.yaml");
            for kind in ["ClusterRole", "ClusterRoleBinding"] {
                assert!(
                    overlay.contains(&format!("$patch: delete\n      apiVersion: rbac.authorization.k8s.io/v1\n      kind: {kind}\n")),
                    "the overlay must delete the {kind}"
                );
            }
            let base = read("manifests/install/rbac.yaml");
            let leader_role = base
                .split("---")
                .filter(|doc| doc.contains("kind: Role\n"))
                .collect::<Vec<_>>()
                .join("---");
            format!(
                "{leader_role}\n---\n{}",
                read("manifests/install-namespaced/rbac.yaml")
            )
        }
    };
    let (cluster, namespaced) = roles_in(&text);
    assert!(
        cluster.is_empty(),
        "no ClusterRole in the namespaced mode: {cluster:#?}"
    );
    assert_eq!(
        namespaced.get(NS),
        Some(&rest),
        "the Role in a watched namespace must grant exactly what the code uses"
    );
    assert_eq!(namespaced.get("sightline-system"), Some(&leases));
    assert!(
        !rest.iter().any(|(_, resource, _)| resource == "nodes"),
        "no Node is read in the namespaced mode"
    );
}

#[tokio::test]
async fn the_roles_grant_exactly_what_the_code_uses() {
    let used = exercised(false).await;
    let (cluster, namespaced) = granted();
    // Leases live in the operator's own namespace: a Role there, not cluster-wide.
    let (leases, rest) = split_leases(used);
    let missing: Vec<_> = rest.difference(&cluster).collect();
    let unused: Vec<_> = cluster.difference(&rest).collect();
    assert!(
        missing.is_empty(),
        "the code uses, the ClusterRole lacks: {missing:#?}"
    );
    assert!(
        unused.is_empty(),
        "the ClusterRole grants, the code never uses: {unused:#?}"
    );
    assert_eq!(
        leases, namespaced,
        "the Role must grant exactly the Lease verbs used"
    );
}
