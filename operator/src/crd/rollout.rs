//! How a new revision of a model replaces the serving one: the strategy, a canary's spec
//! and checks, and where a rollout stands (`status.rollout`).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a new revision of the model replaces the serving one.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The Deployment's rolling update (the new revision takes all traffic as its pods
    /// become ready).
    #[default]
    Rolling,
    /// The new revision runs beside the stable one and takes traffic step by step while
    /// every check passes; the first failed check rolls it back.
    Canary,
}

/// A canary rollout (docs/rollouts.md).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = kube::core::Rule::new("!has(self.steps) || self.steps.all(s, s >= 1 && s <= 100)").message("steps are percentages from 1 to 100"))]
pub struct RolloutSpec {
    /// `Rolling` (default) or `Canary`.
    #[serde(default)]
    pub strategy: Strategy,
    /// Percent of traffic to the candidate at each step (default `[10, 50, 100]`);
    /// after the last step the candidate is promoted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(validation = kube::core::Rule::new("size(self) == 0 || self[0] < 100").message("the first step must leave the stable revision some traffic (below 100): the checks compare the candidate with it"))]
    pub steps: Vec<u32>,
    /// How long each step's window lasts at least (`30s`, `5m`, `1h`; default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_duration: Option<String>,
    /// How long a step may take to conclude, counted from when its traffic was written
    /// (`30s`, `5m`, `1h`; default three `stepDuration`s, at least `10m`). A step that has
    /// not concluded by then — front doors not applying its traffic, too few requests, a
    /// check still pending — rolls back (`CanaryDeadlineExceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_deadline: Option<String>,
    /// Candidate requests a step's window needs before it may advance (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000000))]
    pub min_requests_per_step: Option<u64>,
    /// Percent of the stable revision's traffic also sent to the candidate, whose answer
    /// is compared (top-1 agreement) and never returned (default 0: no mirroring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub mirror_percent: Option<u32>,
    /// Hold the current step (checks still run; a failed one still rolls back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// The checks and their thresholds.
    #[serde(default)]
    pub analysis: Analysis,
}

/// The checks of a canary step; each figure is measured over the step's window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Most the candidate's top-1 accuracy on `spec.evaluation` may fall below the stable
    /// revision's (default 0.01; only with `spec.evaluation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_top1_drop: Option<f64>,
    /// Least share of mirrored requests whose top-1 label equals the stable answer's
    /// (default 0.95; only with `mirrorPercent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agreement: Option<f64>,
    /// Most share of the candidate's recognitions answered 5xx (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Most the candidate's p99 latency may be, as a multiple of the stable's (default 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_latency_ratio: Option<f64>,
    /// Least live top-1 accuracy of the candidate's model on the users' feedback (the
    /// store's `GET /api/v1/quality` for its digest, over `spec.monitoring.qualityWindow`);
    /// judged once it has `spec.monitoring.minFeedbackSamples` answers. Unset: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0.0 && self <= 1.0").message("minLiveAccuracy is a share, from 0 to 1"))]
    pub min_live_accuracy: Option<f64>,
    /// Most the candidate's live accuracy may fall below the stable model's (both on
    /// feedback, each with at least `spec.monitoring.minFeedbackSamples` answers). Unset:
    /// not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0.0 && self <= 1.0").message("maxLiveAccuracyDrop is a share, from 0 to 1"))]
    pub max_live_accuracy_drop: Option<f64>,
}

/// Where a canary rollout stands (`status.rollout`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `Progressing`, `Paused`, `Promoting`, `Promoted`, `RolledBack` or `Superseded`.
    pub phase: String,
    /// The candidate's revision (a digest of the pod template it runs).
    pub revision: String,
    /// The current step (index into `spec.rollout.steps`).
    pub step: u32,
    /// Percent of traffic the candidate takes now.
    pub candidate_weight: u32,
    /// Percent of the stable traffic mirrored to the candidate now.
    pub mirror_percent: u32,
    /// When the current step's traffic was written (RFC 3339; its deadline counts from
    /// here), or, after a promotion or rollback, the stable-only traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_entered_at: Option<String>,
    /// When the current step's window opened (RFC 3339): every front door applied its
    /// traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<String>,
    /// The traffic generation the operator waits for every front door to apply, before it
    /// opens the step's window or deletes the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_generation: Option<u64>,
    /// Each pod's counters in the current window (the checks use what each served since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// The stable revision's recognitions in the last window where it served at least
    /// 100: the stable p99 a step of 100 % is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::canary::Counters>,
    /// Each check over the current window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::canary::Check>,
    /// The last rollouts, newest first (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RolloutRecord>,
    // --- sizing (issue 23) ---
    /// The stable Deployment's replicas when this rollout began. The candidate runs that
    /// many, and with autoscaling the stable HorizontalPodAutoscaler keeps at least that
    /// many until the rollout ends: neither revision is scaled down as traffic moves, and
    /// a rollback lands on a stable revision sized for all the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_replicas: Option<i32>,
}

/// A window's counters, per pod (docs/rollouts.md, "Windows").
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    pub stable: crate::canary::Tally<crate::canary::Counters>,
    pub candidate: crate::canary::Tally<crate::canary::Counters>,
    /// The front doors' mirrored comparisons.
    pub mirrored: crate::canary::Tally<crate::canary::Mirrored>,
}

/// One finished rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    pub revision: String,
    /// `Promoted` or `RolledBack`.
    pub outcome: String,
    /// Why it rolled back: `CheckFailed`, `CanaryDeadlineExceeded` or `CandidateFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339.
    pub at: String,
    pub message: String,
}
