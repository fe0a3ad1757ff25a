//! A model's canary objects: the candidate revision's Deployment, Service and
//! NetworkPolicy (the stable ones relabelled, so neither selects the other's pods), and
//! the traffic ConfigMap the front doors read (weights and mirroring, re-read without a
//! restart).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::meta::{LABEL_COMPONENT, object_meta};
use super::pod::PORT;
use crate::crd::ImageModel;

/// The candidate pods' component label (the stable ones are `recognize`).
pub const COMPONENT: &str = "recognize-canary";
/// The traffic ConfigMap's component label.
pub const TRAFFIC: &str = "traffic";
/// The file in the traffic ConfigMap, mounted into every front door of the namespace.
pub const TRAFFIC_FILE: &str = "traffic.json";
/// On a model's Deployments: the revision (digest of the pod template) they run.
pub const REVISION_ANNOTATION: &str = "sightline.io/revision";

pub fn name(model: &ImageModel) -> String {
    format!("{}-canary", super::model::identity::name(model))
}

pub fn traffic_name(model: &ImageModel) -> String {
    format!("{}-traffic", model.name_any())
}

/// In-cluster URL of the candidate's Service.
pub fn endpoint(model: &ImageModel) -> String {
    let ns = model.namespace().unwrap_or_else(|| "default".into());
    format!("http://{}.{ns}.svc:{PORT}", name(model))
}

/// The revision a Deployment's pod template makes: the first 12 hex digits of its
/// digest (ignoring the inputs that do not change what is served would be cleverer;
/// every template change is a new revision).
pub fn revision(d: &Deployment) -> String {
    let template = serde_json::to_string(&d.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
    hex::encode(Sha256::digest(template.as_bytes()))[..12].to_string()
}

/// `d` with its revision annotated on the object (not the template).
pub fn with_revision(mut d: Deployment) -> Deployment {
    let rev = revision(&d);
    d.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_ANNOTATION.into(), rev);
    d
}

/// The revision a live Deployment says it runs.
pub fn live_revision(d: &Deployment) -> Option<String> {
    d.annotations().get(REVISION_ANNOTATION).cloned()
}

fn relabel(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == LABEL_COMPONENT && v == super::model::identity::COMPONENT {
                    *v = serde_json::Value::String(COMPONENT.into());
                } else {
                    relabel(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(relabel),
        _ => {}
    }
}

/// `object` renamed to `new_name` with every `component: recognize` label (metadata,
/// selectors, pod template) turned into the candidate's.
fn as_candidate<K: Serialize + serde::de::DeserializeOwned>(object: &K, new_name: &str) -> K {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    relabel(&mut value);
    value["metadata"]["name"] = serde_json::Value::String(new_name.into());
    // Serialising a typed object and reading it back cannot fail.
    serde_json::from_value(value).unwrap_or_else(|_| unreachable_object())
}

#[allow(clippy::panic)]
fn unreachable_object<K>() -> K {
    panic!("a relabelled child no longer deserialises")
}

/// The candidate Deployment: the desired (new) revision under the candidate's name and
/// labels, with `replicas` pods.
pub fn deployment(desired: &Deployment, model: &ImageModel, replicas: i32) -> Deployment {
    let mut d = as_candidate(desired, &name(model));
    if let Some(spec) = d.spec.as_mut() {
        spec.replicas = Some(replicas);
    }
    d
}

pub fn service(stable: &Service, model: &ImageModel) -> Service {
    as_candidate(stable, &name(model))
}

pub fn network_policy(stable: &NetworkPolicy, model: &ImageModel) -> NetworkPolicy {
    as_candidate(stable, &name(model))
}

/// What the front doors read (the traffic file, [`sightline_api::TrafficFile`]).
pub use sightline_api::TrafficFile as Traffic;

/// The traffic files the operator writes for a model.
pub trait TrafficFor {
    /// Everything to the stable revision.
    fn stable_only(model: &ImageModel) -> Traffic;
    /// `weight` percent to the candidate revision `revision`, `mirror` percent of the
    /// rest mirrored to it.
    fn split(model: &ImageModel, revision: &str, weight: u32, mirror: u32) -> Traffic;
}

impl TrafficFor for Traffic {
    fn stable_only(model: &ImageModel) -> Traffic {
        Traffic {
            model: model.name_any(),
            stable: super::model::identity::endpoint(model),
            candidate: None,
            candidate_weight: 0.into(),
            mirror_percent: 0.into(),
            revision: None,
            generation: 0,
        }
    }

    fn split(model: &ImageModel, revision: &str, weight: u32, mirror: u32) -> Traffic {
        Traffic {
            candidate: Some(endpoint(model)),
            candidate_weight: weight.min(100).into(),
            mirror_percent: mirror.min(100).into(),
            revision: Some(revision.into()),
            ..Traffic::stable_only(model)
        }
    }
}

/// The traffic file in a live traffic ConfigMap, when it holds one.
pub fn traffic_of(config: &ConfigMap) -> Option<Traffic> {
    Traffic::parse(config.data.as_ref()?.get(TRAFFIC_FILE)?)
}

/// The traffic ConfigMap (owned by the model; the namespace's front doors mount it).
pub fn traffic_config(model: &ImageModel, traffic: &Traffic) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(model, &traffic_name(model), TRAFFIC),
        data: Some(BTreeMap::from([(
            TRAFFIC_FILE.to_string(),
            traffic.to_text(),
        )])),
        ..ConfigMap::default()
    }
}
