//! What a serving pod says about itself: its `/readyz` answer (the format is
//! [`sightline_api::Readiness`], read through the API server's `pods/proxy`), parsed into
//! what `status.served` and `ModelValidated` report. Pure; the reconciler does the request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sightline_api::readiness::{self, Readiness};

/// The model as the serving pods report it (`status.served`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Served {
    /// SHA-256 of the model file the pods loaded.
    pub digest: String,
    /// SHA-256 of the preprocessing the pods apply (`spec.preprocess` with its defaults
    /// filled in, and the decoder's version): with `digest`, what a stored result's
    /// `model.preprocess_sha256` must match to be this model's answer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preprocess_digest: String,
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
    /// How the first of those pods runs the model on its CPU, and the warm-up trial that
    /// chose it (each pod tries on the node it landed on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<ServedRuntime>,
}

/// A pod's sessions as its warm-up chose them (`/readyz`'s `model.layout`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServedRuntime {
    /// `auto` (tried under load at warm-up) or `fixed` (the spec's, or no trial).
    pub tuning: String,
    /// Sessions side by side.
    pub instances: u64,
    /// Intra-op threads of each.
    pub threads: u64,
    /// Whether those threads spin between operators.
    pub spinning: bool,
    /// Threads of the lone session that takes a request arriving alone, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lone_threads: Option<u64>,
    /// Whether the lone session's threads spin between operators (its own trial chose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lone_spinning: Option<bool>,
    /// Where a request's image is decoded: `pool` (beside the instances) or `worker` (by
    /// the instance that runs it; the decode trial chose it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<String>,
    /// Most images in one model run.
    pub max_batch_size: u64,
    /// How long the trial took.
    pub trial_seconds: f64,
    /// Every candidate's images per second in the trial (decoding beside it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trials: Vec<ServedTrial>,
}

/// One candidate of the warm-up trial.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServedTrial {
    pub instances: u64,
    pub threads: u64,
    pub spinning: bool,
    pub rows: u64,
    /// Rounded to 0.1.
    pub images_per_second: f64,
}

/// `model.layout` and `model.batching` of a `/readyz` answer; `None` from a server that
/// reports no layout.
fn runtime_of(m: &readiness::ReadyModel) -> Option<ServedRuntime> {
    let l = &m.layout;
    let number = |v: &serde_json::Value| v.as_u64();
    let trials = l["trials"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    Some(ServedTrial {
                        instances: number(&t["instances"])?,
                        threads: number(&t["threads"])?,
                        spinning: t["spinning"].as_bool()?,
                        rows: number(&t["rows"])?,
                        images_per_second: (t["images_per_second"].as_f64()? * 10.0).round() / 10.0,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(ServedRuntime {
        tuning: l["mode"].as_str()?.to_string(),
        instances: number(&l["instances"])?,
        threads: number(&l["threads"])?,
        spinning: l["spinning"].as_bool()?,
        lone_threads: number(&l["lone_threads"]),
        lone_spinning: l["lone_spinning"].as_bool(),
        decode: l["decode"].as_str().map(str::to_string),
        max_batch_size: number(&m.batching["max_batch_size"]).unwrap_or(1),
        trial_seconds: (l["seconds"].as_f64().unwrap_or(0.0) * 10.0).round() / 10.0,
        trials,
    })
}

/// One pod's `/readyz` answer.
#[derive(Debug, Clone, PartialEq)]
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
                runtime: runtime_of(&m),
                digest: m.sha256,
                preprocess_digest: m.preprocess_sha256,
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
            r#"{"status":"ready","model":{"name":"m","sha256":"ab","preprocess_sha256":"cd","device":"gpu","classes":1000,"input_shape":[-1,3,224,224]}}"#,
        );
        let Readyz::Ready(served) = ready else {
            panic!("{ready:?}")
        };
        assert_eq!(served.preprocess_digest, "cd");
        assert_eq!(
            (
                served.digest.as_str(),
                served.device.as_str(),
                served.classes
            ),
            ("ab", "gpu", 1000)
        );
        assert_eq!(served.input_shape, vec![-1, 3, 224, 224]);
        assert_eq!(served.runtime, None, "an older server reports no layout");
        // The layout and its trial, as a server reports them.
        let tuned = parse_readyz(
            200,
            r#"{"status":"ready","model":{"sha256":"ab","device":"cpu","batching":{"max_batch_size":2},
                "layout":{"mode":"auto","instances":2,"threads":1,"spinning":false,"lone_threads":2,"lone_spinning":true,"decode":"worker",
                "trials":[{"instances":2,"threads":1,"spinning":false,"rows":2,"images_per_second":123.456}],
                "rounds":3,"seconds":20.04,"budget_seconds":20.0}}}"#,
        );
        let Readyz::Ready(Served {
            runtime: Some(runtime),
            ..
        }) = tuned
        else {
            panic!("{tuned:?}")
        };
        assert_eq!(
            (runtime.tuning.as_str(), runtime.instances, runtime.threads),
            ("auto", 2, 1)
        );
        assert_eq!((runtime.lone_threads, runtime.max_batch_size), (Some(2), 2));
        assert_eq!(runtime.lone_spinning, Some(true));
        assert_eq!(runtime.decode.as_deref(), Some("worker"));
        assert_eq!(runtime.trial_seconds, 20.0);
        assert_eq!(runtime.trials[0].images_per_second, 123.5);
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
