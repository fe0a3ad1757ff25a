//! Whether a serving model is still right (docs/quality.md, "In the cluster"): what
//! `spec.monitoring` asks, and what `status.quality` reports — the live accuracy from the
//! users' feedback (the store's `GET /api/v1/quality`) and the drift of the answers from
//! the recognize pods' own `/metrics` (`sightline_model_drift`).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `spec.monitoring.maxDrift` when unset.
pub const DEFAULT_MAX_DRIFT: f64 = 0.2;
/// `spec.monitoring.qualityWindow` when unset.
pub const DEFAULT_QUALITY_WINDOW: &str = "24h";
/// `spec.monitoring.minFeedbackSamples` when unset.
pub const DEFAULT_MIN_FEEDBACK_SAMPLES: u64 = 100;
/// The windows the store counts live quality over.
pub const QUALITY_WINDOWS: [&str; 3] = ["1h", "24h", "7d"];

/// How the model's answers are watched once it serves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// The drift above which the model is `Drifting` (default 0.2). The drift is a
    /// Jensen–Shannon divergence (base 2) from 0 (the live answers are distributed as the
    /// baseline's) to 1 (nothing in common), so this is above 0 and below 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self > 0.0 && self < 1.0").message("maxDrift must be above 0 and below 1"))]
    pub max_drift: Option<f64>,
    /// The window the live accuracy is counted over: `1h`, `24h` (default) or `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self in ['1h', '24h', '7d']").message("qualityWindow must be 1h, 24h or 7d"))]
    pub quality_window: Option<String>,
    /// Feedback answers a live figure needs before a canary check judges on it (default
    /// 100): below it `minLiveAccuracy` and `maxLiveAccuracyDrop` are pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000000))]
    pub min_feedback_samples: Option<u64>,
}

impl MonitoringSpec {
    pub fn max_drift(&self) -> f64 {
        self.max_drift.unwrap_or(DEFAULT_MAX_DRIFT)
    }

    pub fn quality_window(&self) -> &str {
        self.quality_window
            .as_deref()
            .unwrap_or(DEFAULT_QUALITY_WINDOW)
    }

    pub fn min_feedback_samples(&self) -> u64 {
        self.min_feedback_samples
            .unwrap_or(DEFAULT_MIN_FEEDBACK_SAMPLES)
    }
}

/// What the operator last read of the serving model's quality (`status.quality`). A
/// figure that is not known is absent — never 0. Each reading's time moves only when
/// what it found changed, so an unchanged world writes nothing.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QualityStatus {
    /// The window `accuracy` is counted over (`spec.monitoring.qualityWindow`).
    pub window: String,
    /// SHA-256 of the model the figures are about: the stable revision's, as its pods
    /// report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Live top-1 accuracy, 0 to 1: answers the users confirmed ÷ answers they gave
    /// feedback on, in the window, over every pipeline using the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Feedback answers behind `accuracy` (0 when the store answered with none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// When the store answered with these figures (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_read_at: Option<String>,
    /// Why `accuracy` is absent, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_note: Option<String>,
    /// The drift of the answers from the baseline, per signal: the largest among the
    /// serving pods that report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftFigures>,
    /// Answers in the live window behind `drift`: the fewest among the pods used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_samples: Option<u64>,
    /// When the pods reported these drift figures (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_read_at: Option<String>,
}

/// Jensen–Shannon divergences (base 2, 0 to 1) of the live answers from the baseline.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DriftFigures {
    /// Of the predicted top-1 classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<f64>,
    /// Of the top-1 confidence (10 equal bins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}
