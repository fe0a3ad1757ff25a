//! SIMULATION of one rule of server-side apply that kube-fake-client does not run (it
//! merges an apply into the live object and only records ownership): a field that an
//! apply no longer sets is **removed** when no other field manager owns it, and the API
//! server's defaulting fills it in again (kubernetes.io/docs/reference/using-api/
//! server-side-apply, "Field management": "If the applier removes a field it was the only
//! owner of, the field is removed"; "Transferring ownership" shows the consequence for
//! `replicas` and an HPA). Only `spec.replicas` of a Deployment is modelled — the one
//! field the operator stops applying while the object lives (autoscaling turned on) —
//! with Kubernetes' default of 1 (pkg/apis/apps/v1/defaults.go).

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

/// `/apis/apps/v1/namespaces/{ns}/deployments/{name}` → (ns, name); `None` for any other
/// path (subresources included).
pub fn deployment_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/apis/apps/v1/namespaces/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [ns, "deployments", name] => Some((ns.to_string(), name.to_string())),
        _ => None,
    }
}

/// After a server-side apply of `body` to Deployment `ns/name`: when it does not set
/// `spec.replicas` and no manager owns that field any more, the field is removed and
/// defaulted to 1.
pub async fn after_apply(fake: &Client, ns: &str, name: &str, body: &Value) {
    if !body["spec"]["replicas"].is_null() {
        return;
    }
    let api = Api::<Deployment>::namespaced(fake.clone(), ns);
    let Ok(live) = api.get(name).await else {
        return;
    };
    let owned = live.managed_fields().iter().any(|entry| {
        entry
            .fields_v1
            .as_ref()
            .is_some_and(|f| !f.0["f:spec"]["f:replicas"].is_null())
    });
    let replicas = live.spec.as_ref().and_then(|s| s.replicas);
    if !owned && replicas != Some(1) {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("default replicas");
    }
}

/// The HorizontalPodAutoscaler sets the Deployment's replicas (through the scale
/// subresource, which makes it an owner of `spec.replicas`; modelled as an apply by its
/// own field manager).
pub async fn hpa_scales(fake: &Client, ns: &str, name: &str, replicas: i32) {
    let body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns}, "spec": {"replicas": replicas}});
    Api::<Deployment>::namespaced(fake.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("horizontal-pod-autoscaler").force(),
            &Patch::Apply(&body),
        )
        .await
        .expect("the HPA scales");
}
