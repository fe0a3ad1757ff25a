//! What a model's children are called, labelled and reached by, and what they depend on
//! besides the spec: the leaf the other builders (canary, sizing, network, monitoring,
//! inputs) name a model through, without reaching all of its children.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::build::meta::labels;
use crate::build::pod::PORT;
use crate::crd::{DeviceStatus, ImageModel};

pub const COMPONENT: &str = "recognize";

/// The recognize Deployment and Service name of a model.
pub fn name(model: &ImageModel) -> String {
    format!("{}-recognize", model.name_any())
}

/// In-cluster URL of a model's recognize Service.
pub fn endpoint(model: &ImageModel) -> String {
    let ns = model.namespace().unwrap_or_else(|| "default".into());
    format!("http://{}.{ns}.svc:{PORT}", name(model))
}

/// The pod-template annotation holding the digest of what the pods read besides their
/// spec (the rendered config and the referenced Secrets); a change rolls the pods.
pub const INPUTS_ANNOTATION: &str = "sightline.io/inputs-digest";

/// The names of the Secrets a model's pods read.
pub fn secret_names(model: &ImageModel) -> Vec<String> {
    model
        .spec
        .source
        .credentials_secret
        .iter()
        .cloned()
        .collect()
}

/// All labels a model's children carry (for pruning by label).
pub fn child_labels(model: &ImageModel) -> BTreeMap<String, String> {
    labels(&model.name_any(), COMPONENT)
}

/// What the model's children depend on besides its spec, found by the reconciler.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelInputs {
    /// Digest of the referenced Secrets (empty when unknown, as in `render`).
    pub digest: String,
    /// Where the model runs ([`resolve_device`]).
    pub device: DeviceStatus,
}
