//! The traffic file the operator writes per model (a ConfigMap mounted into every front
//! door), read into a checked [`TrafficConfig`]:
//!
//! ```json
//! {"model": "efficientnet-lite0",
//!  "stable": "http://efficientnet-lite0-recognize.ns.svc:8080",
//!  "candidate": "http://efficientnet-lite0-recognize-canary.ns.svc:8080",
//!  "candidateWeight": 10, "mirrorPercent": 10, "revision": "abc123def456",
//!  "generation": 7}
//! ```
//!
//! Weights are percents, clamped to 0–100 (fractions kept to a hundredth of a percent).
//! `candidate` and `revision` are absent when there is no canary; `stable` falls back to
//! `--recognize-url`. A weight above 0 without a candidate, a URL that is not http(s), a
//! file that is not such JSON or is larger than [`MAX_FILE_BYTES`] is refused whole (the
//! caller keeps the last good one). Unknown fields are ignored. `generation` (0 when
//! absent) is the operator's count of routing changes; the front door reports the one it
//! applies (`/readyz`, a metric), so the operator knows when a change took effect.

use std::path::{Path, PathBuf};

use sightline_api::TrafficFile;
use tokio::io::AsyncReadExt;

/// Largest traffic file read (the operator writes about 300 bytes).
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Longest model name taken (a Kubernetes object name; it becomes a metric label).
const MAX_MODEL_NAME: usize = 253;

/// A share of requests in hundredths of a percent: 0 ..= 10 000.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Share(u32);

impl Share {
    /// The whole: 100 %.
    pub const WHOLE: u32 = 10_000;
    pub const NONE: Share = Share(0);

    /// `percent` clamped to 0–100, to the nearest hundredth of a percent.
    pub fn from_percent(percent: f64) -> Share {
        if percent.is_nan() || percent <= 0.0 {
            return Share(0);
        }
        // Clamped first, so the cast cannot overflow.
        Share((percent.min(100.0) * 100.0).round() as u32)
    }

    /// Hundredths of a percent (0 ..= [`Share::WHOLE`]).
    pub fn hundredths(self) -> u32 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

/// A checked traffic file.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficConfig {
    /// The model's name (the metrics' `model` label); empty without a file.
    pub model: String,
    /// Where the stable revision answers; `None`: `--recognize-url`.
    pub stable: Option<String>,
    /// Where the candidate revision answers, when there is one.
    pub candidate: Option<String>,
    /// Share of recognitions sent to the candidate (0 without one).
    pub candidate_weight: Share,
    /// Share of the stable recognitions also sent to the candidate (0 without one).
    pub mirror_percent: Share,
    /// The candidate's revision (for logs).
    pub revision: Option<String>,
    /// The operator's generation of this routing (0 without one).
    pub generation: u64,
}

impl TrafficConfig {
    /// No file: everything to `--recognize-url`.
    pub fn stable_only() -> TrafficConfig {
        TrafficConfig {
            model: String::new(),
            stable: None,
            candidate: None,
            candidate_weight: Share::NONE,
            mirror_percent: Share::NONE,
            revision: None,
            generation: 0,
        }
    }

    /// The file's contents, checked.
    pub fn parse(bytes: &[u8]) -> Result<TrafficConfig, TrafficFileError> {
        let raw = TrafficFile::from_slice(bytes)?;
        let model = raw.model;
        if model.len() > MAX_MODEL_NAME || model.chars().any(char::is_control) {
            return Err(TrafficFileError::ModelName);
        }
        let stable = url_of("stable", Some(raw.stable))?;
        let candidate = url_of("candidate", raw.candidate)?;
        let candidate_weight = Share::from_percent(raw.candidate_weight.0);
        let mirror_percent = Share::from_percent(raw.mirror_percent.0);
        if candidate.is_none() && !(candidate_weight.is_none() && mirror_percent.is_none()) {
            return Err(TrafficFileError::NoCandidate);
        }
        Ok(TrafficConfig {
            model,
            stable,
            candidate,
            candidate_weight,
            mirror_percent,
            revision: raw.revision.filter(|r| !r.is_empty()),
            generation: raw.generation,
        })
    }
}

/// `value` as an http(s) base URL without a trailing slash; empty is `None`.
fn url_of(field: &'static str, value: Option<String>) -> Result<Option<String>, TrafficFileError> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let bad = || TrafficFileError::Url {
        field,
        value: value.chars().take(200).collect(),
    };
    let parsed = url::Url::parse(value.trim()).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad());
    }
    Ok(Some(parsed.as_str().trim_end_matches('/').to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum TrafficFileError {
    #[error("cannot read the traffic file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the traffic file {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("not a traffic file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{field} is not an http(s) URL with a host: {value:?}")]
    Url { field: &'static str, value: String },
    #[error("candidateWeight or mirrorPercent is above 0 but no candidate is named")]
    NoCandidate,
    #[error("the model name is longer than {MAX_MODEL_NAME} characters or has control characters")]
    ModelName,
    #[error("{field} names a host the front door may not send to: {value:?} (see --traffic-hosts)")]
    HostNotAllowed { field: &'static str, value: String },
}

/// The file's contents, read by path (a ConfigMap update swaps a symlink: nothing is held
/// open between reads); `None` when there is no file.
pub async fn read(path: &Path) -> Result<Option<Vec<u8>>, TrafficFileError> {
    let error = |source| TrafficFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(TrafficFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"model": "efficientnet-lite0",
        "stable": "http://efficientnet-lite0-recognize.ns.svc:8080",
        "candidate": "http://efficientnet-lite0-recognize-canary.ns.svc:8080/",
        "candidateWeight": 10, "mirrorPercent": 12.5, "revision": "abc123def456",
        "generation": 7, "somethingNew": true}"#;

    #[test]
    fn the_operators_file_parses() {
        let c = TrafficConfig::parse(FULL.as_bytes()).expect("parses");
        assert_eq!(c.model, "efficientnet-lite0");
        assert_eq!(
            c.stable.as_deref(),
            Some("http://efficientnet-lite0-recognize.ns.svc:8080")
        );
        assert_eq!(
            c.candidate.as_deref(),
            Some("http://efficientnet-lite0-recognize-canary.ns.svc:8080"),
            "the trailing slash is dropped"
        );
        assert_eq!(c.candidate_weight.hundredths(), 1000);
        assert_eq!(c.mirror_percent.percent(), 12.5);
        assert_eq!(c.revision.as_deref(), Some("abc123def456"));
        assert_eq!(c.generation, 7);
    }

    #[test]
    fn without_a_canary_everything_is_stable() {
        let c = TrafficConfig::parse(
            br#"{"model":"m","stable":"http://s:8080","candidateWeight":0,"mirrorPercent":0}"#,
        )
        .expect("parses");
        assert_eq!(c.candidate, None);
        assert!(c.candidate_weight.is_none() && c.mirror_percent.is_none());
        let empty = TrafficConfig::parse(b"{}").expect("an empty object");
        assert_eq!(empty, TrafficConfig::stable_only());
    }

    #[test]
    fn weights_are_clamped_to_percents() {
        let parse = |w: &str, m: &str| {
            TrafficConfig::parse(
                format!(
                    r#"{{"candidate":"http://c:1","candidateWeight":{w},"mirrorPercent":{m}}}"#
                )
                .as_bytes(),
            )
            .expect("parses")
        };
        let c = parse("250", "-5");
        assert_eq!(c.candidate_weight.hundredths(), Share::WHOLE);
        assert_eq!(c.mirror_percent, Share::NONE);
        let c = parse("0.004", "99.999");
        assert_eq!(c.candidate_weight.hundredths(), 0);
        assert_eq!(c.mirror_percent.hundredths(), Share::WHOLE);
        assert_eq!(Share::from_percent(f64::NAN), Share::NONE);
        assert_eq!(
            Share::from_percent(f64::INFINITY).hundredths(),
            Share::WHOLE
        );
    }

    #[test]
    fn malformed_files_are_refused_whole() {
        for bad in [
            &b""[..],
            b"not json",
            b"[1,2]",
            br#"{"candidateWeight": "10", "candidate": "http://c:1"}"#,
            br#"{"candidateWeight": 10}"#,
            br#"{"mirrorPercent": 5, "candidate": ""}"#,
            br#"{"candidate": "ftp://c/x", "candidateWeight": 10}"#,
            br#"{"stable": "not a url"}"#,
            br#"{"stable": "http://"}"#,
            br#"{"model": 7}"#,
            br#"{"model": "a\nb"}"#,
            br#"{"generation": -1}"#,
            br#"{"generation": 1.5}"#,
            br#"{"generation": "7"}"#,
        ] {
            assert!(
                TrafficConfig::parse(bad).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(300));
        assert!(matches!(
            TrafficConfig::parse(long.as_bytes()),
            Err(TrafficFileError::ModelName)
        ));
    }

    #[tokio::test]
    async fn an_absent_file_is_none_and_a_huge_one_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("traffic.json");
        assert!(read(&path).await.expect("absent is fine").is_none());
        std::fs::write(&path, FULL).expect("write");
        assert_eq!(
            read(&path).await.expect("reads").as_deref(),
            Some(FULL.as_bytes())
        );
        std::fs::write(&path, vec![b' '; MAX_FILE_BYTES as usize + 1]).expect("write");
        assert!(matches!(
            read(&path).await,
            Err(TrafficFileError::TooLarge { .. })
        ));
        let err = read(dir.path()).await.expect_err("a directory");
        assert!(err.to_string().contains("traffic file"), "{err}");
    }
}
