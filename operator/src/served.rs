//! What a serving pod says about itself: its `/readyz` answer (the format is
//! [`sightline_api::Readiness`], read through the API server's `pods/proxy`), parsed into
//! what `status.served` and `ModelValidated` report. Pure; the reconciler does the request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sightline_api::readiness::{self, Readiness};

/// The model as the serving pods report it (`status.served`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Served {
    /// SHA-256 of the model file the pods loaded.
    pub digest: String,
    /// `cpu` or `gpu`: where inference actually runs (a GPU model that fell back to the
    /// CPU says `cpu`).
    pub device: String,
    /// The model's input shape as it declares it (-1 for a dynamic dimension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_shape: Vec<i64>,
    /// Output classes (equal to the labels file's lines).
    pub classes: u64,
    /// The Deployment revision these pods belong to.
    pub revision: i64,
    /// Pods of that revision that answered ready.
    pub pods: u32,
}

/// One pod's `/readyz` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readyz {
    /// 200: the model is loaded, validated and warmed up.
    Ready(Served),
    /// 503 with the server's own reason (`ModelLoading`, `DigestMismatch`, …).
    NotReady { reason: String, message: String },
    /// No answer a server gave (the pod is not reachable, or the body is not ours).
    Unreachable(String),
}

impl Readyz {
    /// Still coming up, not broken.
    pub fn is_loading(&self) -> bool {
        matches!(self, Readyz::NotReady { reason, .. } if reason == readiness::MODEL_LOADING)
    }
}

/// Reads a `/readyz` answer: `code` is the HTTP status the pod (through the proxy) gave.
pub fn parse_readyz(code: u16, body: &str) -> Readyz {
    let Ok(view) = serde_json::from_str::<serde_json::Value>(body) else {
        let short: String = body.chars().take(200).collect();
        return Readyz::Unreachable(format!("HTTP {code}: {short}"));
    };
    // The API server's own failure (no endpoints, pod not running): a `Status`.
    if view["kind"] == "Status" {
        let said = view["message"].as_str().unwrap_or("no message");
        return Readyz::Unreachable(format!("HTTP {code}: {said}"));
    }
    let answer = serde_json::from_value::<Readiness>(view).unwrap_or_default();
    match (code, answer.status.as_str()) {
        (200, readiness::READY) => {
            let m = answer.model.unwrap_or_default();
            Readyz::Ready(Served {
                digest: m.sha256,
                device: m.device,
                input_shape: m.input_shape,
                classes: m.classes,
                revision: 0,
                pods: 1,
            })
        }
        (_, readiness::NOT_READY) => Readyz::NotReady {
            reason: answer.reason.unwrap_or_else(|| "NotReady".to_string()),
            message: answer.message.unwrap_or_default(),
        },
        _ => Readyz::Unreachable(format!("HTTP {code}: not a readiness answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_answers_are_read_strictly() {
        let ready = parse_readyz(
            200,
            r#"{"status":"ready","model":{"name":"m","sha256":"ab","device":"gpu","classes":1000,"input_shape":[-1,3,224,224]}}"#,
        );
        let Readyz::Ready(served) = ready else {
            panic!("{ready:?}")
        };
        assert_eq!(
            (
                served.digest.as_str(),
                served.device.as_str(),
                served.classes
            ),
            ("ab", "gpu", 1000)
        );
        assert_eq!(served.input_shape, vec![-1, 3, 224, 224]);
        assert_eq!(
            parse_readyz(
                503,
                r#"{"status":"not ready","reason":"DigestMismatch","message":"expected 00"}"#
            ),
            Readyz::NotReady {
                reason: "DigestMismatch".into(),
                message: "expected 00".into()
            }
        );
        assert!(matches!(
            parse_readyz(503, r#"{"kind":"Status","message":"no endpoints available","code":503}"#),
            Readyz::Unreachable(m) if m.contains("no endpoints")
        ));
        assert!(matches!(
            parse_readyz(502, "<html>"),
            Readyz::Unreachable(_)
        ));
        assert!(
            parse_readyz(503, r#"{"status":"not ready","reason":"ModelLoading"}"#).is_loading()
        );
    }
}
