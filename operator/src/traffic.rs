//! The two formats the operator and the front doors share about a canary's traffic, each
//! defined once here (they move to the shared API crate with issue 19): the traffic file
//! the operator writes into the model's ConfigMap, and the part of a front door's
//! `/readyz` that says which traffic file it applies. Plain data and serde only.

use serde::{Deserialize, Serialize};

/// The traffic file (`traffic.json`): where the stable and candidate revisions answer,
/// the share of recognitions the candidate takes, the share of the stable ones mirrored
/// to it, and the generation of this routing (raised by one whenever the routing
/// changes), which the front doors report back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficFile {
    pub model: String,
    pub stable: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    pub candidate_weight: u32,
    pub mirror_percent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// 0 until the operator publishes it.
    #[serde(default)]
    pub generation: u64,
}

impl TrafficFile {
    /// Whether `other` routes as this one does (everything but the generation is equal).
    pub fn routes_as(&self, other: &TrafficFile) -> bool {
        TrafficFile {
            generation: other.generation,
            ..self.clone()
        } == *other
    }

    /// A file's text, when it is one.
    pub fn parse(text: &str) -> Option<TrafficFile> {
        serde_json::from_str(text).ok()
    }

    /// The text the operator writes.
    pub fn to_text(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// What a front door's `/readyz` says about the traffic file it applies:
/// `{"status": "ready", "traffic": {"model": "…", "generation": 7, …}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedTraffic {
    /// The model the file is for (empty while no file applies).
    #[serde(default)]
    pub model: String,
    /// The file's generation (0 while none applies, or one written before generations).
    #[serde(default)]
    pub generation: u64,
}

/// The traffic a front door applies, from its `/readyz` body; `None` when the body says
/// nothing about traffic (a front door without a traffic file, or another server).
pub fn applied_traffic(readyz: &str) -> Option<AppliedTraffic> {
    let body: serde_json::Value = serde_json::from_str(readyz).ok()?;
    serde_json::from_value(body.get("traffic")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> TrafficFile {
        TrafficFile {
            model: "m".into(),
            stable: "http://m-recognize.ns.svc:8080".into(),
            candidate: Some("http://m-recognize-canary.ns.svc:8080".into()),
            candidate_weight: 10,
            mirror_percent: 5,
            revision: Some("abc".into()),
            generation: 3,
        }
    }

    #[test]
    fn the_file_round_trips_in_camel_case() {
        let text = file().to_text();
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["candidateWeight"], 10);
        assert_eq!(json["mirrorPercent"], 5);
        assert_eq!(json["generation"], 3);
        assert_eq!(TrafficFile::parse(&text), Some(file()));
        let stable_only = TrafficFile {
            candidate: None,
            revision: None,
            candidate_weight: 0,
            mirror_percent: 0,
            ..file()
        };
        let text = stable_only.to_text();
        assert!(!text.contains("candidate\""), "{text}");
        assert_eq!(TrafficFile::parse(&text), Some(stable_only));
        // A file from before generations reads as generation 0.
        let old = r#"{"model":"m","stable":"http://s","candidateWeight":0,"mirrorPercent":0}"#;
        assert_eq!(TrafficFile::parse(old).map(|f| f.generation), Some(0));
        assert_eq!(TrafficFile::parse("not json"), None);
    }

    #[test]
    fn routing_ignores_the_generation_only() {
        let a = file();
        assert!(a.routes_as(&TrafficFile {
            generation: 9,
            ..file()
        }));
        assert!(!a.routes_as(&TrafficFile {
            candidate_weight: 50,
            ..file()
        }));
        assert!(!a.routes_as(&TrafficFile {
            candidate: None,
            ..file()
        }));
    }

    #[test]
    fn a_front_doors_readyz_names_its_generation() {
        let ready =
            r#"{"status":"ready","traffic":{"model":"m","generation":7,"candidateWeight":10}}"#;
        assert_eq!(
            applied_traffic(ready),
            Some(AppliedTraffic {
                model: "m".into(),
                generation: 7
            })
        );
        assert_eq!(applied_traffic(r#"{"status":"ready"}"#), None);
        assert_eq!(applied_traffic("<html>"), None);
        assert_eq!(
            applied_traffic(r#"{"traffic":{}}"#),
            Some(AppliedTraffic {
                model: String::new(),
                generation: 0
            })
        );
    }
}
