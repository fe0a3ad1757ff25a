//! The reads that tell the reconcilers what the cluster actually runs: a Deployment's
//! ReplicaSets and pods (for [`crate::rollout`]), the Secrets a spec references (their
//! digest rolls the pods when they change) and the nodes a device can run on. A pod's own
//! HTTP answers are read in [`super::pods`].

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::ListParams;
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{Error, label_selector};
use crate::rollout::{self, Rollout};

/// The rollout of `d`, whose pods carry `selector`.
pub async fn rollout(
    client: &Client,
    ns: &str,
    d: &Deployment,
    selector: &std::collections::BTreeMap<String, String>,
) -> Result<Rollout, Error> {
    let params = ListParams::default().labels(&label_selector(selector));
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&params)
        .await
        .map_err(|source| Error::Fetch {
            what: "ReplicaSets",
            source,
        })?;
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&params)
        .await
        .map_err(|source| Error::Fetch {
            what: "Pods",
            source,
        })?;
    Ok(rollout::assess(d, &replica_sets.items, &pods.items))
}

/// The object of kind `K` (`what`, for the error) called `name` in `ns`, if it exists.
pub async fn named<K>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &'static str,
) -> Result<Option<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::Fetch { what, source })
}

/// The Secret `name` in `ns`, if it exists.
pub async fn secret(client: &Client, ns: &str, name: &str) -> Result<Option<Secret>, Error> {
    named(client, ns, name, "Secret").await
}

/// What the Secrets `rolling` hold, as one digest (a change of any of them changes it),
/// and the names among `rolling` and `present` (Secrets that need only exist) that do not
/// exist.
pub async fn secrets_digest(
    client: &Client,
    ns: &str,
    rolling: &[String],
    present: &[String],
) -> Result<(String, Vec<String>), Error> {
    let mut names = rolling.to_vec();
    names.extend(present.iter().cloned());
    names.sort();
    names.dedup();
    let mut hasher = Sha256::new();
    let mut missing = Vec::new();
    for name in &names {
        let secret = secret(client, ns, name).await?;
        if secret.is_none() {
            missing.push(name.clone());
        }
        if !rolling.contains(name) {
            continue;
        }
        hasher.update(name.as_bytes());
        hasher.update([0]);
        match secret {
            Some(secret) => {
                for (key, value) in secret.data.iter().flatten() {
                    hasher.update(key.as_bytes());
                    hasher.update([0]);
                    hasher.update(&value.0);
                    hasher.update([0]);
                }
            }
            None => hasher.update(b"\x01absent"),
        }
    }
    Ok((hex::encode(hasher.finalize()), missing))
}

/// The nodes with allocatable units of `resource` (for `device: auto`).
pub async fn gpu_nodes(client: &Client, resource: &str) -> Result<Vec<String>, Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Fetch {
            what: "Nodes",
            source,
        })?;
    Ok(nodes
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get(resource))
                .and_then(|q| crate::quantity::parse(&q.0))
                .is_some_and(|v| v > 0)
        })
        .map(kube::ResourceExt::name_any)
        .collect())
}
