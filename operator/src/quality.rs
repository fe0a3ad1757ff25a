//! Whether the serving model is still right, pure (docs/quality.md, "In the cluster"): a
//! recognize pod's drift as its `/metrics` reports it, the serving pods' drift combined,
//! the `Drifting` condition from it, the live accuracy in a store's quality answer, the
//! operator's own API key in a pipeline's keys file, and `status.quality` written only
//! when a reading found something new. The controller ([`crate::controller`]) reads.

use crate::canary::Feedback;
use crate::canary::figures::sample_line;
use crate::crd::{DriftFigures, QualityStatus};
use crate::status::{Cond, reasons, types};

/// The name of the API key the operator presents to a pipeline's front door
/// (`sightline-operator:<key>` in the pipeline's keys Secret): a key of its own, so its
/// reads are told apart in the logs and rate-limited on their own.
pub const OPERATOR_KEY_NAME: &str = "sightline-operator";

/// The drift gauge (Jensen–Shannon divergence, by `signal`).
const DRIFT: &str = "sightline_model_drift";
/// Answers counted, by `window` (`baseline` or `live`).
const DRIFT_SAMPLES: &str = "sightline_model_drift_samples";

/// One pod's drift for one model digest, as its `/metrics` says: each figure absent when
/// the pod does not report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodDrift {
    pub class: Option<f64>,
    pub confidence: Option<f64>,
    /// Answers in the baseline so far.
    pub baseline: Option<u64>,
    /// Answers in the live window.
    pub live: Option<u64>,
}

impl PodDrift {
    fn reported(&self) -> bool {
        self.class.is_some() || self.confidence.is_some()
    }
}

/// The drift of model `model` with digest `digest` in one pod's `/metrics`. A divergence
/// outside `[0, 1]` or not a number is no figure.
pub fn parse_drift(text: &str, model: &str, digest: &str) -> PodDrift {
    let mut out = PodDrift::default();
    for (name, labels, value) in text.lines().filter_map(sample_line) {
        if labels.get("model") != Some(&model) || labels.get("sha256") != Some(&digest) {
            continue;
        }
        let divergence = Some(value).filter(|v| (0.0..=1.0).contains(v));
        let count = Some(value)
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| v.round() as u64);
        match (name, labels.get("signal"), labels.get("window")) {
            (DRIFT, Some(&"class"), _) => out.class = divergence,
            (DRIFT, Some(&"confidence"), _) => out.confidence = divergence,
            (DRIFT_SAMPLES, _, Some(&"baseline")) => out.baseline = count,
            (DRIFT_SAMPLES, _, Some(&"live")) => out.live = count,
            _ => {}
        }
    }
    out
}

/// One serving pod's reading: its drift, or why its `/metrics` could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct PodReading {
    pub pod: String,
    pub read: Result<PodDrift, String>,
}

/// The serving pods' drift combined: each signal the largest any pod reports, the sample
/// the fewest live answers among the pods that report a figure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drift {
    /// Absent when no pod reports a figure.
    pub figures: Option<DriftFigures>,
    pub samples: Option<u64>,
    /// Pods whose figures were used.
    pub used: usize,
}

pub fn combine(pods: &[PodReading]) -> Drift {
    let reporting: Vec<&PodDrift> = pods
        .iter()
        .filter_map(|p| p.read.as_ref().ok())
        .filter(|d| d.reported())
        .collect();
    let largest = |signal: fn(&PodDrift) -> Option<f64>| {
        reporting
            .iter()
            .filter_map(|d| signal(d))
            .fold(None, |max: Option<f64>, v| {
                Some(max.map_or(v, |m| m.max(v)))
            })
    };
    if reporting.is_empty() {
        return Drift::default();
    }
    Drift {
        figures: Some(DriftFigures {
            class: largest(|d| d.class),
            confidence: largest(|d| d.confidence),
        }),
        samples: reporting.iter().filter_map(|d| d.live).min(),
        used: reporting.len(),
    }
}

/// `Drifting` from the serving pods' readings (`pods` empty: nothing serves) against
/// `max` (`spec.monitoring.maxDrift`): True when a signal is above it, False when both
/// are known and within it, Unknown otherwise — with why. Never about `Ready`.
pub fn drifting(pods: &[PodReading], max: f64) -> Cond {
    let t = types::DRIFTING;
    let drift = combine(pods);
    let Some(figures) = &drift.figures else {
        return Cond::unknown(t, reasons::DRIFT_UNKNOWN, unknown_why(pods));
    };
    let signals = [("class", figures.class), ("confidence", figures.confidence)];
    let shown = |(name, value): &(&str, Option<f64>)| {
        value.map_or_else(|| format!("{name} unknown"), |v| format!("{name} {v:.4}"))
    };
    let sample = format!(
        "{} live answers (the fewest among the {} of {} serving pods that report it)",
        drift
            .samples
            .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        drift.used,
        pods.len()
    );
    let above: Vec<String> = signals
        .iter()
        .filter(|(_, v)| v.is_some_and(|v| v > max))
        .map(shown)
        .collect();
    if !above.is_empty() {
        let all: Vec<String> = signals.iter().map(shown).collect();
        return Cond::yes(
            t,
            reasons::DRIFT_ABOVE_THRESHOLD,
            format!(
                "{} above maxDrift {max:.4} (drift {}; {sample}): the answers moved away \
                 from the baseline; see docs/quality.md",
                above.join(" and "),
                all.join(", ")
            ),
        );
    }
    let all: Vec<String> = signals.iter().map(shown).collect();
    if signals.iter().all(|(_, v)| v.is_some()) {
        return Cond::no(
            t,
            reasons::DRIFT_WITHIN_THRESHOLD,
            format!(
                "drift {} within maxDrift {max:.4}; {sample}",
                all.join(", ")
            ),
        );
    }
    Cond::unknown(
        t,
        reasons::DRIFT_UNKNOWN,
        format!(
            "only part of the drift is reported ({}), within maxDrift {max:.4}; {sample}",
            all.join(", ")
        ),
    )
}

/// Why no serving pod reports a drift figure.
fn unknown_why(pods: &[PodReading]) -> String {
    if pods.is_empty() {
        return "no pod serves the model, so nothing reports its drift".into();
    }
    let answered: Vec<(&str, &PodDrift)> = pods
        .iter()
        .filter_map(|p| p.read.as_ref().ok().map(|d| (p.pod.as_str(), d)))
        .collect();
    if answered.is_empty() {
        let failed: Vec<String> = pods
            .iter()
            .filter_map(|p| p.read.as_ref().err().map(|e| format!("{} ({e})", p.pod)))
            .collect();
        return format!("no serving pod answered /metrics: {}", failed.join(", "));
    }
    let counted: Vec<String> = answered
        .iter()
        .filter_map(|(pod, d)| {
            let n = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |n| n.to_string());
            (d.baseline.is_some() || d.live.is_some()).then(|| {
                format!(
                    "{pod}: baseline {}, live window {}",
                    n(d.baseline),
                    n(d.live)
                )
            })
        })
        .collect();
    if counted.is_empty() {
        return format!(
            "the serving pods report no {DRIFT_SAMPLES} for this model's digest: a server \
             without drift tracking, or one that has answered nothing yet"
        );
    }
    format!(
        "no serving pod reports a drift yet: its baseline (the first answers after the \
         model loaded) is not complete or its live window holds too few answers ({})",
        counted.join("; ")
    )
}

/// The feedback on `digest` in a store's `GET /api/v1/quality` answer (forwarded as is
/// by a front door): its `samples` and `correct`, none when the digest has no entry; an
/// error with the server's words when the answer is not a quality report.
pub fn parse_quality(body: &str, digest: &str) -> Result<Feedback, String> {
    let view: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not a quality report: {e}"))?;
    if let Some(error) = view["error"].as_str() {
        return Err(error.to_string());
    }
    let digests = view["digests"]
        .as_array()
        .ok_or_else(|| "not a quality report: no digests".to_string())?;
    let Some(entry) = digests.iter().find(|d| d["model_sha256"] == digest) else {
        return Ok(Feedback::default());
    };
    let number = |field: &str| {
        entry[field]
            .as_u64()
            .ok_or_else(|| format!("the quality report of {digest} has no {field}"))
    };
    let feedback = Feedback {
        samples: number("samples")?,
        correct: number("correct")?,
    };
    if feedback.correct > feedback.samples {
        return Err(format!(
            "the quality report of {digest} counts {} right of {} answers",
            feedback.correct, feedback.samples
        ));
    }
    Ok(feedback)
}

/// The key named [`OPERATOR_KEY_NAME`] in a keys file (one `key` or `name:key` a line,
/// blank lines and `#` comments skipped: the server's format).
pub fn operator_key(keys_file: &str) -> Option<String> {
    keys_file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim() == OPERATOR_KEY_NAME)
        .map(|(_, key)| key.trim().to_string())
}

/// `status.quality` as read now, each reading's time kept from `previous` when it found
/// the same figures (an unchanged world writes nothing; a reading that failed has no
/// time).
pub fn settle(previous: Option<&QualityStatus>, mut now: QualityStatus) -> QualityStatus {
    let Some(before) = previous.filter(|p| p.digest == now.digest) else {
        return now;
    };
    let same_accuracy = (
        &before.window,
        before.accuracy,
        before.samples,
        &before.accuracy_note,
    ) == (&now.window, now.accuracy, now.samples, &now.accuracy_note);
    if same_accuracy && before.accuracy_read_at.is_some() && now.accuracy_read_at.is_some() {
        now.accuracy_read_at = before.accuracy_read_at.clone();
    }
    let same_drift = (&before.drift, before.drift_samples) == (&now.drift, now.drift_samples);
    if same_drift && before.drift_read_at.is_some() && now.drift_read_at.is_some() {
        now.drift_read_at = before.drift_read_at.clone();
    }
    now
}

#[cfg(test)]
mod tests;
