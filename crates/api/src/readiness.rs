//! The `/readyz` document every `sightline-server` role answers and the operator reads
//! (through the API server's `pods/proxy`):
//!
//! - `200 {"status": "ready", "model": {…}}` from a role serving a model (recognize, all);
//! - `200 {"status": "ready", "traffic": {…}}` from a front door applying a traffic file;
//! - `200 {"status": "ready"}` from any other role;
//! - `503 {"status": "not ready", "reason": "ModelLoading", "message": "…"}`: `reason` is a
//!   stable CamelCase word (`ModelLoading`, `DigestMismatch`, `DatabaseUnreachable`, …).

use serde::{Deserialize, Serialize};

use crate::AppliedTraffic;

/// `status` when every part the role serves can serve.
pub const READY: &str = "ready";
/// `status` when a part cannot, with a `reason`.
pub const NOT_READY: &str = "not ready";
/// The `reason` while the model is still loading (coming up, not broken).
pub const MODEL_LOADING: &str = "ModelLoading";

/// A `/readyz` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// [`READY`] or [`NOT_READY`].
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ReadyModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<AppliedTraffic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Readiness {
    /// Ready, with nothing more to say.
    pub fn ready() -> Readiness {
        Readiness {
            status: READY.to_string(),
            ..Readiness::default()
        }
    }

    /// Not ready, for `reason` (stable) with a `message` for people.
    pub fn not_ready(reason: &str, message: &str) -> Readiness {
        Readiness {
            status: NOT_READY.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            ..Readiness::default()
        }
    }

    pub fn is_ready(&self) -> bool {
        self.status == READY
    }
}

/// The model a ready role serves. Every field may be absent when read (the operator
/// reports what it finds, as it did when it picked the fields out one by one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReadyModel {
    pub name: String,
    /// SHA-256 of the model file loaded.
    pub sha256: String,
    /// SHA-256 of its preprocessing settings (`sightline_model::model_config::Preprocess::digest`):
    /// with `sha256`, what a kept answer must match to be this model's.
    pub preprocess_sha256: String,
    /// `cpu` or `gpu`: where inference really runs (a GPU model that fell back says `cpu`).
    pub device: String,
    /// Output classes.
    pub classes: u64,
    /// The input shape the model declares (-1 for a dynamic dimension).
    pub input_shape: Vec<i64>,
    pub load_seconds: f64,
    /// How the batch size was decided (`sightline_model::batch_tuning::Tuning`).
    pub batching: serde_json::Value,
    /// Sessions of the model (`--instances`, or the warm-up trial's choice).
    pub instances: u64,
    /// How the sessions run and the warm-up trial that chose it
    /// (`sightline_model::tuned::LayoutTuning`): instances, threads, spinning, the lone
    /// session's threads, every candidate's images per second, the rounds and seconds.
    pub layout: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_answer_round_trips() {
        let model = Readiness {
            model: Some(ReadyModel {
                name: "m".into(),
                sha256: "ab".into(),
                preprocess_sha256: "cd".into(),
                device: "gpu".into(),
                classes: 1000,
                input_shape: vec![-1, 3, 224, 224],
                load_seconds: 1.5,
                batching: serde_json::json!({"max_batch_size": 8}),
                instances: 1,
                layout: serde_json::json!({"mode": "auto", "instances": 1}),
            }),
            ..Readiness::ready()
        };
        let text = serde_json::to_string(&model).expect("json");
        assert!(
            text.starts_with(r#"{"status":"ready","model":{"name":"m","sha256":"ab""#),
            "{text}"
        );
        assert!(text.contains(r#""input_shape":[-1,3,224,224]"#), "{text}");
        assert_eq!(serde_json::from_str::<Readiness>(&text).ok(), Some(model));

        let failed = Readiness::not_ready("DigestMismatch", "expected 00");
        let text = serde_json::to_string(&failed).expect("json");
        assert_eq!(
            text,
            r#"{"status":"not ready","reason":"DigestMismatch","message":"expected 00"}"#
        );
        assert!(
            !serde_json::from_str::<Readiness>(&text)
                .expect("doc")
                .is_ready()
        );

        let door = Readiness {
            traffic: Some(AppliedTraffic {
                model: "m".into(),
                generation: 7,
                ..AppliedTraffic::default()
            }),
            ..Readiness::ready()
        };
        let text = serde_json::to_string(&door).expect("json");
        assert!(
            text.contains(r#""traffic":{"model":"m","generation":7"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Readiness>(&text).ok(), Some(door));
        assert_eq!(
            serde_json::to_string(&Readiness::ready()).ok().as_deref(),
            Some(r#"{"status":"ready"}"#)
        );
    }
}
