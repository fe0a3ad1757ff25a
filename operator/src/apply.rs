//! The thin layer that writes: server-side apply with one field manager, pruning of the
//! optional children a spec no longer wants, and status patches.
//!
//! Idempotence: each applied object carries the SHA-256 of what was applied in the
//! annotation [`HASH_ANNOTATION`]. When the live object has the same hash and still holds
//! every field we would apply, nothing is sent; so reconciling an unchanged resource makes
//! no write at all (and GitOps tools see no churn). "Holds" is read after the API server's
//! normalisation: it drops empty lists and maps (`ingress: []`) and writes quantities in
//! canonical form (`0.5` → `500m`), so those differences are not changes. A spec change
//! changes the hash and so applies, and server-side apply then drops the fields we no
//! longer set; a hand edit of a field we manage breaks the subset check and is reverted.
//!
//! Ownership: an existing object with a child's name that this resource does not control
//! (no controller owner reference with its uid) is never taken over:
//! [`ApplyError::NotOurs`].

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::build::pipeline::OWNER_ANNOTATION;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "sightline-operator";
/// Digest of the applied configuration.
pub const HASH_ANNOTATION: &str = "sightline.io/applied-hash";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot serialise {kind} {name}: {source}")]
    Serialize {
        kind: String,
        name: String,
        source: serde_json::Error,
    },
    #[error("{kind} {name} has no name or namespace")]
    Incomplete { kind: String, name: String },
    #[error(
        "{kind} {name} already exists and is not controlled by this resource ({holder}); \
         rename or delete it, then the operator creates its own"
    )]
    NotOurs {
        kind: String,
        name: String,
        holder: String,
    },
    #[error("{kind} {name} not written: this replica lost the leader Lease")]
    NotLeading { kind: String, name: String },
    #[error("{verb} {kind} {name}: {source}")]
    Api {
        verb: &'static str,
        kind: String,
        name: String,
        source: kube::Error,
    },
}

impl ApplyError {
    /// The condition reason and event reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::NotOurs { .. } => crate::status::reasons::CONFLICTING_OBJECT,
            ApplyError::NotLeading { .. } => crate::status::reasons::LEASE_LOST,
            _ => crate::status::reasons::APPLY_FAILED,
        }
    }
}

/// A namespaced object kind the operator creates.
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Child for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// Whether the API server would store `value` as nothing at all: `null`, `[]` or `{}`
/// (Go's `omitempty` drops empty lists and maps).
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// `true` when every field of `want` is in `have` with the same value, as the API server
/// stores it: objects may have more keys (defaults); a field that is empty in `want` may
/// be absent from `have`; quantities that are equal in value are equal (`0.5` = `500m`);
/// lists must have the same length and match element by element.
pub fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| match h.get(k) {
            Some(hv) => is_subset(v, hv),
            None => is_empty(v),
        }),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b))
        }
        (Value::String(w), Value::String(h)) if w != h => {
            crate::quantity::parse(w).is_some_and(|q| crate::quantity::parse(h) == Some(q))
        }
        (w, h) => w == h,
    }
}

/// The uid of the controller owner reference `desired` carries.
fn controller_uid<K: Child>(desired: &K) -> Option<String> {
    desired
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// Whether `live` belongs to the owner of `desired`: controlled by the same uid, or — for
/// an object that outlives its owner and so has no owner reference (a retained claim) —
/// marked with the same [`OWNER_ANNOTATION`], or still controlled by an owner of that
/// kind and name (from before it was retained).
fn is_ours<K: Child>(desired: &K, live: &K) -> bool {
    let live_controller = live
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    if let Some(uid) = controller_uid(desired) {
        return live_controller.is_some_and(|o| o.uid == uid);
    }
    let Some(owner) = desired.annotations().get(OWNER_ANNOTATION) else {
        return false;
    };
    live.annotations().get(OWNER_ANNOTATION) == Some(owner)
        || live_controller.is_some_and(|o| &format!("{}/{}", o.kind, o.name) == owner)
}

/// Who controls `live`, in words (for [`ApplyError::NotOurs`]).
fn holder<K: Child>(live: &K) -> String {
    match live
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    {
        Some(o) => format!("controlled by {} {}", o.kind, o.name),
        None => "it has no controller".into(),
    }
}

fn hash(value: &Value) -> String {
    hex::encode(Sha256::digest(value.to_string().as_bytes()))
}

fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

/// Applies `desired` (unless the live object already matches) and returns the live object.
pub async fn apply<K: Child>(client: &Client, desired: &K) -> Result<(Outcome, K), ApplyError> {
    let kind = kind_of::<K>();
    let name = desired.meta().name.clone().unwrap_or_default();
    let Some(ns) = desired
        .meta()
        .namespace
        .clone()
        .filter(|_| !name.is_empty())
    else {
        return Err(ApplyError::Incomplete { kind, name });
    };
    let serialize = |source| ApplyError::Serialize {
        kind: kind.clone(),
        name: name.clone(),
        source,
    };
    let mut object = desired.clone();
    let digest = hash(&serde_json::to_value(&object).map_err(serialize)?);
    object
        .annotations_mut()
        .insert(HASH_ANNOTATION.into(), digest.clone());
    let want = serde_json::to_value(&object).map_err(serialize)?;

    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let api_err = |verb, source| ApplyError::Api {
        verb,
        kind: kind.clone(),
        name: name.clone(),
        source,
    };
    let live = api.get_opt(&name).await.map_err(|e| api_err("get", e))?;
    if let Some(live) = &live {
        if !is_ours(desired, live) {
            return Err(ApplyError::NotOurs {
                kind,
                name,
                holder: holder(live),
            });
        }
        let same_hash = live.annotations().get(HASH_ANNOTATION) == Some(&digest);
        if same_hash && is_subset(&want, &serde_json::to_value(live).map_err(serialize)?) {
            return Ok((Outcome::Unchanged, live.clone()));
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(&name, &params, &Patch::Apply(&want))
        .await
        .map_err(|e| api_err("apply", e))?;
    let outcome = if live.is_some() {
        Outcome::Updated
    } else {
        Outcome::Created
    };
    Ok((outcome, applied))
}

/// The field manager that keeps a Deployment's `spec.replicas` when the operator stops
/// applying it ([`hand_over_replicas`]).
pub const HANDOVER_MANAGER: &str = "sightline-operator-handover";

/// Whether `manager`'s server-side apply owns the field at `path` (`["spec", "replicas"]`)
/// of `object`, as its `metadata.managedFields` say.
pub fn owns_field<K: Resource>(object: &K, manager: &str, path: &[&str]) -> bool {
    object.meta().managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(manager)
            && entry.operation.as_deref() == Some("Apply")
            && entry.subresource.as_deref().unwrap_or("").is_empty()
            && entry.fields_v1.as_ref().is_some_and(|fields| {
                path.iter()
                    .try_fold(&fields.0, |node, key| node.get(format!("f:{key}")))
                    .is_some()
            })
    })
}

/// Hands `spec.replicas` of the live Deployment `live` over before the operator stops
/// applying it (autoscaling turned on): a field the only manager stops applying is
/// removed, and defaulting would set it to 1 — every pod but one gone before the HPA
/// acts. So another manager first applies the live value, as the Kubernetes docs'
/// "Transferring ownership" recipe does (kubernetes.io/docs/reference/using-api/
/// server-side-apply); the HPA's next scale then takes the field over.
pub async fn hand_over_replicas(
    client: &Client,
    live: &k8s_openapi::api::apps::v1::Deployment,
) -> Result<(), ApplyError> {
    let name = live.name_any();
    let replicas = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(ns) = live.namespace() else {
        return Err(ApplyError::Incomplete {
            kind: "Deployment".into(),
            name,
        });
    };
    let body = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas},
    });
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply(HANDOVER_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| ApplyError::Api {
            verb: "hand over replicas of",
            kind: "Deployment".into(),
            name,
            source,
        })?;
    Ok(())
}

/// Deletes the `K` objects controlled by `owner_uid` in `ns` that match `selector` and are
/// not named in `keep`. Returns the names deleted.
pub async fn prune<K: Child>(
    client: &Client,
    ns: &str,
    selector: &str,
    owner_uid: &str,
    keep: &[String],
) -> Result<Vec<String>, ApplyError> {
    let kind = kind_of::<K>();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| ApplyError::Api {
            verb: "list",
            kind: kind.clone(),
            name: selector.to_string(),
            source,
        })?;
    let mut deleted = Vec::new();
    for object in list.items {
        let name = object.name_any();
        let owned = object
            .owner_references()
            .iter()
            .any(|o| o.uid == owner_uid && o.controller == Some(true));
        if !owned || keep.contains(&name) {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(name),
            // Already gone: what we wanted.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(ApplyError::Api {
                    verb: "delete",
                    kind,
                    name,
                    source,
                });
            }
        }
    }
    Ok(deleted)
}

/// Writes `status` (server-side apply on the status subresource) of the custom resource
/// `owner`.
pub async fn patch_status<K, S>(client: &Client, owner: &K, status: &S) -> Result<(), ApplyError>
where
    K: Child,
    S: Serialize,
{
    let kind = kind_of::<K>();
    let name = owner.name_any();
    let Some(ns) = owner.namespace() else {
        return Err(ApplyError::Incomplete { kind, name });
    };
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": kind,
        "status": status,
    });
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| ApplyError::Api {
        verb: "patch status",
        kind,
        name,
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_allows_server_defaults_but_not_changed_values() {
        let want = json!({"spec": {"replicas": 2, "containers": [{"name": "a"}]}});
        let have = json!({"spec": {"replicas": 2, "paused": false,
            "containers": [{"name": "a", "terminationMessagePath": "/dev/termination-log"}]}});
        assert!(is_subset(&want, &have));
        assert!(!is_subset(
            &json!({"spec": {"replicas": 3}}),
            &json!({"spec": {"replicas": 2}})
        ));
        assert!(!is_subset(
            &json!({"spec": {"containers": [{"name": "a"}]}}),
            &json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}})
        ));
        assert!(!is_subset(&json!({"a": 1}), &json!({})));
    }

    #[test]
    fn subset_reads_the_api_servers_normal_form() {
        // Empty lists and maps are dropped by the API server.
        let want = json!({"spec": {"ingress": [], "podSelector": {"matchLabels": {}}}});
        assert!(is_subset(&want, &json!({"spec": {"podSelector": {}}})));
        // Quantities come back canonical.
        let want = json!({"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}});
        let have = json!({"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}});
        assert!(is_subset(&want, &have));
        assert!(!is_subset(
            &json!({"requests": {"cpu": "0.5"}}),
            &json!({"requests": {"cpu": "501m"}})
        ));
        // A list we want non-empty must be there.
        assert!(!is_subset(&json!({"ports": [1]}), &json!({})));
        // Words are not quantities.
        assert!(!is_subset(&json!({"image": "a"}), &json!({"image": "b"})));
    }
}
