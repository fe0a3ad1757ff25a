//! What a pipeline's pods read besides their spec — the ConfigMap through `envFrom`, and
//! Secrets — and which of it must roll them when it changes (docs/status.md,
//! "Configuration changes roll the pods").

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;

use crate::crd::RecognitionPipeline;

/// The Secrets whose change must roll the pods: those read through the environment
/// (database URL, S3 credentials), which a running process never re-reads. The API keys
/// are a mounted file the server re-reads, so rotating them restarts nothing.
pub fn rolling_secrets(p: &RecognitionPipeline) -> Vec<String> {
    let spec = &p.spec;
    let mut names: Vec<String> = [
        spec.storage.url_secret.as_ref().map(|s| s.name.clone()),
        spec.upload
            .s3
            .as_ref()
            .map(|s| s.credentials_secret.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    names.sort();
    names.dedup();
    names
}

/// The names of the Secrets a pipeline's pods read (API keys, database URL, S3
/// credentials): each must exist for the pods to start.
pub fn secret_names(p: &RecognitionPipeline) -> Vec<String> {
    let mut names = rolling_secrets(p);
    names.extend(
        p.spec
            .gateway
            .api_keys_secret
            .iter()
            .map(|s| s.name.clone()),
    );
    names.sort();
    names.dedup();
    names
}

/// Digest of what the pods read besides their own spec: the ConfigMap's data (reached
/// through `envFrom`, which a running pod never re-reads) and `secrets_digest` (of the
/// [`rolling_secrets`]).
pub fn inputs_digest(config: &ConfigMap, secrets_digest: &str) -> String {
    use sha2::{Digest, Sha256};
    let data = serde_json::to_string(&config.data).unwrap_or_default();
    hex::encode(Sha256::digest(
        format!("{data}\n{secrets_digest}").as_bytes(),
    ))
}

/// Puts the inputs digest on the pod template, so a change of it rolls the pods.
pub fn with_inputs(mut d: Deployment, digest: &str) -> Deployment {
    if let Some(meta) = d.spec.as_mut().and_then(|s| s.template.metadata.as_mut()) {
        meta.annotations.get_or_insert_with(BTreeMap::new).insert(
            super::model::identity::INPUTS_ANNOTATION.to_string(),
            digest.to_string(),
        );
    }
    d
}
