//! Canary analysis, pure (docs/rollouts.md): the figures the pods report on `/metrics`
//! ([`figures`]), a step's window kept per pod ([`window`]), the checks over a window with
//! the sample rule ([`stats`]: no check fails on a sample too small to say), and the step
//! machine that holds, advances, promotes or rolls back — at the latest at the step's
//! deadline.

pub mod figures;
pub mod live;
pub mod stats;
pub mod window;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use figures::{
    Bucket, Counters, Figures, Mirrored, parse_counters, parse_mirrored, parse_started,
};
pub use live::{Feedback, LiveFeedback};
pub use window::{PodRead, PodTally, Reading, Tally};

use stats::{count, too_many};

/// The stable recognitions a window needs for its p99 to be a p99 (below that it is the
/// slowest request or two).
pub const MIN_STABLE_RECOGNITIONS: f64 = 100.0;
/// The share of requests a p99 lets lie above it.
const P99_TAIL: f64 = 0.01;

/// The thresholds of `spec.rollout.analysis`.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub max_top1_drop: f64,
    pub min_agreement: f64,
    pub max_error_rate: f64,
    pub max_p99_latency_ratio: f64,
    /// `minLiveAccuracy` and `maxLiveAccuracyDrop`: checked only when set.
    pub min_live_accuracy: Option<f64>,
    pub max_live_accuracy_drop: Option<f64>,
}

impl Thresholds {
    /// Whether a check judges on live feedback (the stores must be read).
    pub fn live(&self) -> bool {
        self.min_live_accuracy.is_some() || self.max_live_accuracy_drop.is_some()
    }
}

/// A check's verdicts (`status.rollout.checks[].status`).
pub mod verdicts {
    pub const PASSED: &str = "Passed";
    pub const FAILED: &str = "Failed";
    /// Not enough data yet: the step waits (up to its deadline).
    pub const PENDING: &str = "Pending";
    /// Cannot be measured at all (the note says why): does not hold the step.
    pub const SKIPPED: &str = "Skipped";
}

/// One check's verdict over a window.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// `errorRate`, `p99LatencyRatio`, `agreement`, `top1Drop`, `liveAccuracy`,
    /// `liveAccuracyDrop`.
    pub name: String,
    /// `Passed`, `Failed`, `Pending` (not enough data yet) or `Skipped` (cannot be
    /// measured: the note says why).
    pub status: String,
    /// What was measured (absent without data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<f64>,
    pub threshold: f64,
    /// What a pending check waits for, or why a check is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Check {
    fn new(name: &str, status: &str, measured: Option<f64>, threshold: f64) -> Check {
        Check {
            name: name.into(),
            status: status.into(),
            measured,
            threshold,
            note: None,
        }
    }

    fn noted(mut self, note: impl Into<String>) -> Check {
        self.note = Some(note.into());
        self
    }

    pub fn failed(&self) -> bool {
        self.status == verdicts::FAILED
    }

    /// Passed, or skipped: nothing to wait for.
    pub fn settled(&self) -> bool {
        self.status == verdicts::PASSED || self.status == verdicts::SKIPPED
    }

    /// `name measured (threshold)` for a message.
    pub fn describe(&self) -> String {
        let measured = self
            .measured
            .map_or_else(|| "no data".to_string(), |m| format!("{m:.4}"));
        let bound = match self.name.as_str() {
            "agreement" | "liveAccuracy" => format!("at least {:.4}", self.threshold),
            _ => format!("at most {:.4}", self.threshold),
        };
        format!("{} {measured} ({bound})", self.name)
    }
}

/// What one step's window measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Window {
    /// The stable revision's recognitions: this window's, or — at a step that sends
    /// stable nothing — the reference recorded at an earlier step.
    pub stable: Counters,
    pub candidate: Counters,
    pub mirrored: Mirrored,
    /// Top-1 accuracy on the labelled set: the stable revision's recorded result and the
    /// candidate's start-up evaluation (when the model has `spec.evaluation`).
    pub stable_top1: Option<f64>,
    pub candidate_top1: Option<f64>,
    /// The users' feedback on the two revisions' models, when a live check is asked for.
    pub feedback: Option<LiveFeedback>,
}

/// Which checks run at a step, and the sample a passing one needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// `minRequestsPerStep`.
    pub min_requests: u64,
    /// `mirrorPercent` > 0.
    pub mirroring: bool,
    /// The model has `spec.evaluation`.
    pub evaluating: bool,
    /// The step leaves stable some traffic (its weight is below 100).
    pub stable_serves: bool,
}

/// Every check over `w`.
pub fn checks(t: &Thresholds, w: &Window, scope: &Scope) -> Vec<Check> {
    let mut out = vec![error_rate(t, w, scope), p99_ratio(t, w, scope)];
    if scope.mirroring {
        out.push(agreement(t, w, scope));
    }
    if scope.evaluating {
        out.push(top1_drop(t, w));
    }
    out.extend(live::checks(t, w));
    out
}

/// A measured check by the sample rule: failed when `bad` of `n` are too many for the
/// threshold's rate `rate`; passed when the measure `meets` the threshold on at least
/// `min` observations; pending otherwise, `unproven` saying why when it does not meet it.
struct Sample {
    bad: u64,
    n: u64,
    rate: f64,
    meets: bool,
    min: u64,
}

impl Check {
    fn by_sample(self, s: Sample, unproven: impl FnOnce() -> String) -> Check {
        let status = |status: &str| Check {
            status: status.into(),
            ..self.clone()
        };
        if too_many(s.bad, s.n, s.rate) {
            status(verdicts::FAILED)
        } else if !s.meets {
            status(verdicts::PENDING).noted(unproven())
        } else if s.n < s.min {
            status(verdicts::PENDING).noted(format!("{} of {} requests", s.n, s.min))
        } else {
            status(verdicts::PASSED)
        }
    }
}

fn error_rate(t: &Thresholds, w: &Window, scope: &Scope) -> Check {
    let (name, max) = ("errorRate", t.max_error_rate);
    let (n, k) = (count(w.candidate.requests), count(w.candidate.errors));
    if n == 0 {
        return Check::new(name, verdicts::PENDING, None, max).noted("no candidate requests yet");
    }
    let rate = k as f64 / n as f64;
    let sample = Sample {
        bad: k,
        n,
        rate: max,
        meets: rate <= max,
        min: scope.min_requests,
    };
    Check::new(name, verdicts::PENDING, Some(rate), max).by_sample(sample, || {
        format!("{k} errors in {n} requests: above the threshold, not yet beyond chance")
    })
}

fn p99_ratio(t: &Thresholds, w: &Window, scope: &Scope) -> Check {
    let (name, max) = ("p99LatencyRatio", t.max_p99_latency_ratio);
    let pending = |note: String| Check::new(name, verdicts::PENDING, None, max).noted(note);
    let stable_n = w.stable.observations();
    let stable_p99 = w.stable.quantile(0.99).filter(|s| *s > 0.0);
    let Some(stable_p99) = stable_p99.filter(|_| stable_n >= MIN_STABLE_RECOGNITIONS) else {
        return pending(if stable_n >= MIN_STABLE_RECOGNITIONS {
            "the stable p99 is 0 s: there is no ratio to take".into()
        } else if scope.stable_serves {
            format!("{stable_n} of {MIN_STABLE_RECOGNITIONS} stable recognitions for a stable p99")
        } else {
            "no stable p99 was recorded at an earlier step".into()
        });
    };
    let n = count(w.candidate.observations());
    let Some(ratio) = w.candidate.quantile(0.99).map(|c| c / stable_p99) else {
        return pending("no candidate requests yet".into());
    };
    let slow = count(w.candidate.slower_than(max * stable_p99));
    let sample = Sample {
        bad: slow,
        n,
        rate: P99_TAIL,
        meets: ratio <= max,
        min: scope.min_requests,
    };
    Check::new(name, verdicts::PENDING, Some(ratio), max).by_sample(sample, || {
        format!("{slow} of {n} requests slower than {max} × the stable p99: not yet beyond chance")
    })
}

fn agreement(t: &Thresholds, w: &Window, scope: &Scope) -> Check {
    let (name, min) = ("agreement", t.min_agreement);
    if !scope.stable_serves {
        return Check::new(name, verdicts::SKIPPED, None, min).noted(
            "nothing is mirrored when the candidate takes all traffic: judged at the earlier steps",
        );
    }
    let Some(share) = w.mirrored.agreement() else {
        return Check::new(name, verdicts::PENDING, None, min)
            .noted("no mirrored request compared yet");
    };
    let (n, k) = (count(w.mirrored.compared()), count(w.mirrored.disagree));
    let sample = Sample {
        bad: k,
        n,
        rate: 1.0 - min,
        meets: share >= min,
        min: 0,
    };
    Check::new(name, verdicts::PENDING, Some(share), min).by_sample(sample, || {
        format!("{k} of {n} mirrored answers disagreed: below the threshold, not yet beyond chance")
    })
}

fn top1_drop(t: &Thresholds, w: &Window) -> Check {
    let (name, max) = ("top1Drop", t.max_top1_drop);
    let Some(stable) = w.stable_top1 else {
        return Check::new(name, verdicts::SKIPPED, None, max).noted(
            "the stable revision has no recorded evaluation (status.evaluation) to compare with",
        );
    };
    let Some(candidate) = w.candidate_top1 else {
        return Check::new(name, verdicts::PENDING, None, max)
            .noted("the candidate's start-up evaluation has not finished");
    };
    let drop = stable - candidate;
    let status = if drop <= max {
        verdicts::PASSED
    } else {
        verdicts::FAILED
    };
    Check::new(name, status, Some(drop), max)
}

/// Why a canary rolled back (`Progressing` reason and `status.rollout.history[].reason`).
pub mod outcomes {
    /// A check failed.
    pub const CHECK_FAILED: &str = "CheckFailed";
    /// A step did not conclude within `stepDeadline`.
    pub const DEADLINE_EXCEEDED: &str = "CanaryDeadlineExceeded";
    /// Kubernetes says the candidate's pods cannot serve.
    pub const CANDIDATE_FAILED: &str = "CandidateFailed";
}

/// What the step machine decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep the current step; the message says what it waits for.
    Hold(String),
    /// Move to step `n` (an index into `steps`), opening a new window.
    Advance(usize),
    /// Every step passed: make the candidate the stable revision.
    Promote,
    /// Stop at once: traffic back to stable, candidate removed.
    RollBack {
        /// One of [`outcomes`].
        reason: &'static str,
        message: String,
    },
}

/// The rollout's settings, as the step machine uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<u32>,
    pub step_seconds: u64,
    pub min_requests: u64,
    pub deadline_seconds: u64,
}

/// Where a canary is, as the step machine reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// An index into `steps`.
    pub step: usize,
    /// Seconds since this step's window opened.
    pub elapsed: u64,
    /// Seconds since this step's traffic was written (its deadline counts from there).
    pub entered: u64,
    pub paused: bool,
}

/// The step machine over an open window: roll back at the first failed check; advance
/// (or promote after the last step) once the window lasted `step_seconds`, saw
/// `min_requests` candidate requests, was read whole (`unread` is empty) and every check
/// passed or was skipped; roll back at the deadline; hold otherwise.
pub fn decide(
    plan: &Plan,
    position: &Position,
    checks: &[Check],
    candidate_requests: f64,
    unread: &[String],
) -> Decision {
    if let Some(failed) = checks.iter().find(|c| c.failed()) {
        return Decision::RollBack {
            reason: outcomes::CHECK_FAILED,
            message: format!("check failed: {}", failed.describe()),
        };
    }
    let mut missing = Vec::new();
    if position.elapsed < plan.step_seconds {
        missing.push(format!(
            "the window has run {}s of {}s",
            position.elapsed, plan.step_seconds
        ));
    }
    if candidate_requests < plan.min_requests as f64 {
        missing.push(format!(
            "{candidate_requests:.0} of {} candidate requests",
            plan.min_requests
        ));
    }
    if !unread.is_empty() {
        missing.push(format!(
            "incomplete: /metrics unread from {}",
            unread.join(", ")
        ));
    }
    for c in checks.iter().filter(|c| !c.settled()) {
        let note = c.note.as_deref().unwrap_or("no data yet");
        missing.push(format!("{} pending: {note}", c.name));
    }
    if missing.is_empty() && !position.paused {
        return if position.step + 1 >= plan.steps.len() {
            Decision::Promote
        } else {
            Decision::Advance(position.step + 1)
        };
    }
    wait(plan, position, missing)
}

/// Holds for what is `missing`, or rolls back once the step's deadline passed (never
/// while paused).
pub fn wait(plan: &Plan, position: &Position, missing: Vec<String>) -> Decision {
    let waiting = missing.join("; ");
    if position.paused {
        return Decision::Hold(if waiting.is_empty() {
            "paused".into()
        } else {
            format!("paused; {waiting}")
        });
    }
    if position.entered < plan.deadline_seconds {
        return Decision::Hold(waiting);
    }
    let weight = plan.steps.get(position.step).copied().unwrap_or(0);
    Decision::RollBack {
        reason: outcomes::DEADLINE_EXCEEDED,
        message: format!(
            "step {} of {} ({weight}%) did not conclude within {}: {waiting}",
            position.step + 1,
            plan.steps.len(),
            show_duration(plan.deadline_seconds)
        ),
    }
}

/// `5m`, `30s`, `1h`, `90` (seconds) as seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Seconds as the largest whole unit: `15m`, `90s`, `2h`.
pub fn show_duration(seconds: u64) -> String {
    match seconds {
        s if s >= 3600 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s >= 60 && s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests;
