//! The one place object metadata is made: namespace, controller owner reference and the
//! `app.kubernetes.io/*` labels. No builder sets metadata by hand.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

pub const NAME: &str = "sightline";
pub const MANAGED_BY: &str = "sightline-operator";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The component of a RecognitionJob's shard pods.
pub const JOB_COMPONENT: &str = "recognition-job";
/// On a RecognitionJob's shard pod: the pipeline whose store it writes to (that store's
/// NetworkPolicy admits the pods that carry it).
pub const LABEL_RESULTS_FOR: &str = "sightline.io/results-for";

/// Owner uid used when rendering objects with no cluster (`sightline-operator render`).
pub const RENDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Labels that select the pods of one component of one owner.
pub fn selector_labels(instance: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), NAME.to_string()),
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_COMPONENT.to_string(), component.to_string()),
    ])
}

/// All labels of a child: the selector labels plus part-of and managed-by.
pub fn labels(instance: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(instance, component);
    labels.insert(LABEL_PART_OF.to_string(), NAME.to_string());
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
    labels
}

/// The controller owner reference to `owner` (garbage collection of every child).
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner
            .meta()
            .uid
            .clone()
            .unwrap_or_else(|| RENDER_UID.to_string()),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of a child named `name` belonging to `owner`, for `component`.
pub fn object_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    component: &str,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: owner.meta().namespace.clone(),
        labels: Some(labels(&owner.name_any(), component)),
        owner_references: Some(vec![owner_reference(owner)]),
        ..ObjectMeta::default()
    }
}
