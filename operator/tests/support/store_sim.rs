//! SIMULATION of a pipeline's store answering the live quality through its front door, as
//! `sightline-server` does: `GET /api/v1/quality?model=&window=&digest=` forwarded by the
//! front door (inference-server/src/front_door.rs) to the store, which answers
//! `{model, window, since, until, digests: [{model_sha256, …figures}]}`
//! (inference-server/src/store/quality.rs), the figures computed by
//! `sightline_quality::Quality::from_pairs` as the store computes them; and the front door
//! checking the operator's API key (see [`super::Cluster::require_key`]).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use sightline_quality::{Pair, Quality};

use super::{Cluster, NS};

/// The key the operator is given in the sample pipeline's keys Secret.
pub const OPERATOR_KEY: &str = "operator-key-0123456789";

/// The path the operator asks for `model`'s figures on `digest` over 24 hours.
pub fn quality_path(model: &str, digest: &str) -> String {
    format!("/api/v1/quality?model={model}&window=24h&digest={digest}")
}

/// The store's answer for `model`: per digest, `right` of `answers` answers right.
pub fn quality_answer(model: &str, digests: &[(&str, u64, u64)]) -> String {
    let pair = |predicted: &str, truth: &str, count| Pair {
        predicted: predicted.into(),
        truth: truth.into(),
        count,
    };
    let digests: Vec<serde_json::Value> = digests
        .iter()
        .map(|(sha, answers, right)| {
            let pairs = vec![
                pair("tabby", "tabby", *right),
                pair("tabby", "Egyptian cat", answers - right),
            ];
            let mut figures = serde_json::to_value(Quality::from_pairs(pairs)).expect("json");
            figures["model_sha256"] = json!(sha);
            figures
        })
        .collect();
    json!({"model": model, "window": "24h", "since": "2027-01-14T08:00:00.000Z",
        "until": "2027-01-15T08:00:00.000Z", "digests": digests})
    .to_string()
}

/// Front door `door` answers `path` with `body`, to [`OPERATOR_KEY`] only.
pub fn store_answers(cluster: &Cluster, door: &str, path: &str, body: String) {
    cluster.answer_pod(door, path, 200, body);
    cluster.require_key(door, path, OPERATOR_KEY);
}

/// The sample pipeline's keys Secret holds the keys file `file`.
pub async fn keys_file(cluster: &Cluster, file: &str) {
    Api::<Secret>::namespaced(cluster.admin.clone(), NS)
        .patch(
            "photos-api-keys",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"keys": ByteString(file.as_bytes().to_vec())}})),
        )
        .await
        .expect("keys");
}

/// A user's key and the operator's own in the keys Secret.
pub async fn give_operator_key(cluster: &Cluster) {
    keys_file(
        cluster,
        &format!("key-1-for-users\nsightline-operator:{OPERATOR_KEY}\n"),
    )
    .await;
}
