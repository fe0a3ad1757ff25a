//! The two formats the operator and the front doors share about a canary's traffic: the
//! traffic file the operator writes into the model's ConfigMap (a front door checks it
//! further: `sightline_server::pipeline::traffic::file`), and the part of a front door's
//! `/readyz` that says which traffic file it applies.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A percentage of requests. The operator writes whole numbers; a front door also takes
/// fractions (to a hundredth of a percent). Written as an integer when it is one.
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl From<u32> for Percent {
    fn from(percent: u32) -> Percent {
        Percent(f64::from(percent))
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        let whole = self.0.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&self.0);
        if whole {
            out.serialize_u32(self.0 as u32)
        } else {
            out.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(input: D) -> Result<Percent, D::Error> {
        f64::deserialize(input).map(Percent)
    }
}

/// The traffic file (`traffic.json`): where the stable and candidate revisions answer,
/// the share of recognitions the candidate takes, the share of the stable ones mirrored
/// to it, and the generation of this routing (raised by one whenever the routing
/// changes), which the front doors report back. Every field may be absent when read
/// (unknown ones are ignored): a front door refuses what it cannot route, not what it
/// does not need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficFile {
    /// The model's name (empty: none named).
    pub model: String,
    /// Base URL of the stable revision (empty: the front door's `--recognize-url`).
    pub stable: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// Share of recognitions sent to the candidate.
    pub candidate_weight: Percent,
    /// Share of the stable recognitions also sent to the candidate.
    pub mirror_percent: Percent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// 0 until the operator publishes it.
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

    /// A file's bytes, or why they are not one.
    pub fn from_slice(bytes: &[u8]) -> Result<TrafficFile, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The text the operator writes.
    pub fn to_text(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// What a front door's `/readyz` says about the traffic file it applies:
/// `{"status": "ready", "traffic": {"model": "…", "generation": 7, …}}`. The operator
/// waits for every front door to report a routing change's generation before it opens a
/// canary step's window or removes a candidate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AppliedTraffic {
    /// The model the file is for (empty while no file applies).
    pub model: String,
    /// The file's generation (0 while none applies, or one written before generations).
    pub generation: u64,
    pub candidate_weight: Percent,
    pub mirror_percent: Percent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// The traffic a front door applies, from its `/readyz` body; `None` when the body says
/// nothing about traffic (a front door without a traffic file, or another server).
pub fn applied_traffic(readyz: &str) -> Option<AppliedTraffic> {
    serde_json::from_str::<crate::Readiness>(readyz)
        .ok()?
        .traffic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> TrafficFile {
        TrafficFile {
            model: "m".into(),
            stable: "http://m-recognize.ns.svc:8080".into(),
            candidate: Some("http://m-recognize-canary.ns.svc:8080".into()),
            candidate_weight: 10.into(),
            mirror_percent: 5.into(),
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
            candidate_weight: Percent::default(),
            mirror_percent: Percent::default(),
            ..file()
        };
        let text = stable_only.to_text();
        assert!(!text.contains("candidate\""), "{text}");
        assert_eq!(TrafficFile::parse(&text), Some(stable_only));
        // A file from before generations reads as generation 0.
        let old = r#"{"model":"m","stable":"http://s","candidateWeight":0,"mirrorPercent":0}"#;
        assert_eq!(TrafficFile::parse(old).map(|f| f.generation), Some(0));
        assert_eq!(TrafficFile::parse("not json"), None);
        // Fractions are kept; whole numbers are written as integers.
        let half = TrafficFile::parse(r#"{"candidateWeight": 12.5}"#).expect("file");
        assert_eq!(half.candidate_weight, Percent(12.5));
        assert!(half.to_text().contains("\"candidateWeight\": 12.5"));
        assert_eq!(TrafficFile::parse("{}"), Some(TrafficFile::default()));
    }

    #[test]
    fn routing_ignores_the_generation_only() {
        let a = file();
        assert!(a.routes_as(&TrafficFile {
            generation: 9,
            ..file()
        }));
        assert!(!a.routes_as(&TrafficFile {
            candidate_weight: 50.into(),
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
                generation: 7,
                candidate_weight: 10.into(),
                ..AppliedTraffic::default()
            })
        );
        assert_eq!(applied_traffic(r#"{"status":"ready"}"#), None);
        assert_eq!(applied_traffic("<html>"), None);
        assert_eq!(
            applied_traffic(r#"{"traffic":{}}"#),
            Some(AppliedTraffic::default())
        );
    }
}
