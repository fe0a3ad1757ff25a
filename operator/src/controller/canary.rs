//! A canary rollout of a model, one reconcile at a time (docs/rollouts.md). The stable
//! Deployment keeps its revision; the candidate runs in its own Deployment and Service;
//! the front doors split and mirror traffic as the model's traffic ConfigMap says, and
//! report the generation of it they apply. A step's window opens once every front door
//! applies the step's generation; each reconcile then reads every pod's own `/metrics`
//! ([`read`]), takes the window per pod and computes the checks ([`crate::canary`]), and
//! holds, advances, promotes or rolls back — at the latest at the step's deadline. The
//! candidate goes once the front doors apply the traffic without it ([`traffic`]).

mod clock;
pub(super) mod read;
pub(super) mod traffic;
mod window;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::{Context, Error, observe};
use crate::build::canary::{self as build, Traffic, TrafficFor};
use crate::build::meta;
use crate::build::model::ModelChildren;
use crate::canary::{self, Decision, Plan, Position, Thresholds, outcomes};
use crate::crd::{ImageModel, RolloutRecord, RolloutSpec, RolloutStatus};
use crate::rollout::Phase;
use crate::status::{Cond, reasons, types};
use clock::{now_text, seconds_since};

/// Rollouts kept in `status.rollout.history`.
const HISTORY: usize = 5;

/// What a canary reconcile leaves for the status.
pub struct Step {
    /// `Ready` and `Progressing` while the canary runs (or after it rolled back).
    pub ready: Cond,
    pub progressing: Cond,
    pub rollout: RolloutStatus,
    pub traffic: Traffic,
    /// A rollback happened in this reconcile (a Warning follows).
    pub rolled_back: bool,
    /// How soon to look again.
    pub requeue: std::time::Duration,
}

/// The rollout settings with their defaults.
pub struct Settings {
    pub plan: Plan,
    pub mirror: u32,
    pub paused: bool,
    pub thresholds: Thresholds,
}

impl Settings {
    pub fn of(spec: &RolloutSpec) -> Settings {
        let a = &spec.analysis;
        let step_seconds = spec
            .step_duration
            .as_deref()
            .and_then(canary::parse_duration)
            .unwrap_or(300);
        let deadline_seconds = spec
            .step_deadline
            .as_deref()
            .and_then(canary::parse_duration)
            .unwrap_or_else(|| step_seconds.saturating_mul(3).max(600));
        Settings {
            plan: Plan {
                steps: if spec.steps.is_empty() {
                    vec![10, 50, 100]
                } else {
                    spec.steps.clone()
                },
                step_seconds,
                min_requests: spec.min_requests_per_step.unwrap_or(200),
                deadline_seconds,
            },
            mirror: spec.mirror_percent.unwrap_or(0),
            paused: spec.paused,
            thresholds: Thresholds {
                max_top1_drop: a.max_top1_drop.unwrap_or(0.01),
                min_agreement: a.min_agreement.unwrap_or(0.95),
                max_error_rate: a.max_error_rate.unwrap_or(0.01),
                max_p99_latency_ratio: a.max_p99_latency_ratio.unwrap_or(1.5),
                min_live_accuracy: a.min_live_accuracy,
                max_live_accuracy_drop: a.max_live_accuracy_drop,
            },
        }
    }

    fn requeue(&self) -> std::time::Duration {
        std::time::Duration::from_secs((self.plan.step_seconds / 4).clamp(1, 15))
    }

    fn weight(&self, step: usize) -> u32 {
        self.plan.steps.get(step).copied().unwrap_or(100)
    }
}

/// Adds a finished rollout to `status.history` (newest first, at most [`HISTORY`]).
pub(super) fn record(
    status: &mut RolloutStatus,
    outcome: &str,
    reason: Option<&str>,
    at: String,
    message: String,
) {
    status.history.insert(
        0,
        RolloutRecord {
            revision: status.revision.clone(),
            outcome: outcome.into(),
            reason: reason.map(str::to_string),
            at,
            message,
        },
    );
    status.history.truncate(HISTORY);
}

/// The canary ended; the candidate goes once the front doors no longer send it anything
/// (see [`traffic::retire`]). Whether nothing is left to wait for.
pub(super) async fn finish(
    ctx: &Context,
    ns: &str,
    uid: &str,
    m: &ImageModel,
    status: &mut RolloutStatus,
    ended_now: bool,
) -> Result<bool, Error> {
    if ended_now {
        traffic::hand_back(ctx, ns, m, status).await?;
    }
    traffic::retire(ctx, ns, m, uid, status).await
}

/// The stable revision's name in messages.
fn stable_words(stable: &Deployment) -> String {
    match build::live_revision(stable) {
        Some(rev) => format!("revision {rev}"),
        None => "the stable revision".into(),
    }
}

/// One canary reconcile: what it works on.
struct Run<'a> {
    ctx: &'a Context,
    ns: &'a str,
    uid: &'a str,
    m: &'a ImageModel,
    /// The candidate's revision.
    rev: &'a str,
    stable_name: String,
    settings: Settings,
}

/// One canary reconcile for the desired revision `rev` (built in `children`), while the
/// stable Deployment `stable` runs another.
#[allow(clippy::too_many_arguments)]
pub async fn step(
    ctx: &Context,
    ns: &str,
    uid: &str,
    m: &ImageModel,
    spec: &RolloutSpec,
    children: &ModelChildren,
    stable: &Deployment,
    rev: &str,
) -> Result<Step, Error> {
    let run = Run {
        ctx,
        ns,
        uid,
        m,
        rev,
        stable_name: stable_words(stable),
        settings: Settings::of(spec),
    };
    let previous = m.status.as_ref().and_then(|s| s.rollout.clone());
    let history = previous
        .as_ref()
        .map(|r| r.history.clone())
        .unwrap_or_default();
    let mut status = match previous {
        Some(r) if r.revision == rev => r,
        _ => RolloutStatus {
            phase: "Progressing".into(),
            revision: rev.into(),
            history,
            ..RolloutStatus::default()
        },
    };

    // Rolled back: stay on the stable revision until the spec changes again.
    if status.phase == "RolledBack" {
        let done = finish(ctx, ns, uid, m, &mut status, false).await?;
        return Ok(run.after_rollback(status, done, false));
    }

    // The candidate's objects, from the desired revision.
    let replicas = crate::build::model::candidate_replicas(stable, &mut status);
    let mut changes = Vec::new();
    ctx.apply(&build::service(&children.service, m), &mut changes)
        .await?;
    ctx.apply(
        &build::network_policy(&children.network_policy, m),
        &mut changes,
    )
    .await?;
    let candidate = ctx
        .apply(
            &build::deployment(&children.deployment, m, replicas),
            &mut changes,
        )
        .await?;
    if !changes.is_empty() {
        ctx.event(m, EventType::Normal, "Applied", changes.join(", "))
            .await;
    }
    let selector = meta::selector_labels(&m.name_any(), build::COMPONENT);
    let rollout = observe::rollout(&ctx.client, ns, &candidate, &selector).await?;

    if let Phase::Failed { reason, message } = &rollout.phase {
        let why = format!("the candidate cannot serve: {reason}: {message}");
        return run.roll_back(status, outcomes::CANDIDATE_FAILED, why).await;
    }
    if rollout.phase != Phase::Complete {
        // Never traffic to a candidate that is not ready.
        status.candidate_weight = 0;
        status.mirror_percent = 0;
        status.baseline = None;
        status.step_started_at = None;
        status.step_entered_at = None;
        status.pending_generation = None;
        let words = match &rollout.phase {
            Phase::Progressing(w) => w.clone(),
            _ => String::new(),
        };
        let message = format!(
            "revision {rev} (candidate) is starting: {words}; {} serves all traffic",
            run.stable_name
        );
        return Ok(run.step(status, Traffic::stable_only(m), message));
    }

    // Promoting: the stable Deployment takes the new revision; the candidate keeps its
    // traffic until the stable pods serve it (the model reconciler finishes this).
    if status.phase == "Promoting" {
        ctx.apply(&children.deployment, &mut Vec::new()).await?;
        let traffic = Traffic::split(m, rev, status.candidate_weight, 0);
        let message =
            format!("revision {rev} passed every step; the stable Deployment is taking it");
        return Ok(run.step(status, traffic, message));
    }

    if status.step_entered_at.is_none() {
        // The candidate is ready: the current step's traffic is written.
        let index = run.step_index(&status);
        return run.enter(status, index).await;
    }
    let decision = match status.baseline.take() {
        None => run.open_window(&mut status).await?,
        Some(base) => run.judge(&mut status, base, &rollout.current).await?,
    };
    match decision {
        Decision::RollBack { reason, message } => run.roll_back(status, reason, message).await,
        Decision::Advance(next) => run.enter(status, next).await,
        Decision::Promote => {
            status.phase = "Promoting".into();
            ctx.apply(&children.deployment, &mut Vec::new()).await?;
            Ok(run.running(status, "promoting"))
        }
        Decision::Hold(why) => {
            status.phase = if run.settings.paused {
                "Paused"
            } else {
                "Progressing"
            }
            .into();
            Ok(run.running(status, &why))
        }
    }
}

impl Run<'_> {
    fn step_index(&self, status: &RolloutStatus) -> usize {
        usize::try_from(status.step)
            .unwrap_or(0)
            .min(self.settings.plan.steps.len().saturating_sub(1))
    }

    fn position(&self, status: &RolloutStatus) -> Position {
        Position {
            step: self.step_index(status),
            elapsed: seconds_since(self.ctx, status.step_started_at.as_deref()),
            entered: seconds_since(self.ctx, status.step_entered_at.as_deref()),
            paused: self.settings.paused,
        }
    }

    /// A canary under way: `Ready=False` and `Progressing=True` say `message`.
    fn step(&self, status: RolloutStatus, traffic: Traffic, message: String) -> Step {
        Step {
            ready: Cond::no(types::READY, reasons::CANARY, message.clone()),
            progressing: Cond::yes(types::PROGRESSING, reasons::CANARY, message),
            traffic,
            rollout: status,
            rolled_back: false,
            requeue: self.settings.requeue(),
        }
    }

    /// Writes step `index`'s traffic; its window opens once the front doors apply it.
    async fn enter(&self, mut status: RolloutStatus, index: usize) -> Result<Step, Error> {
        status.phase = "Progressing".into();
        status.step = u32::try_from(index).unwrap_or(u32::MAX);
        status.candidate_weight = self.settings.weight(index);
        status.mirror_percent = if status.candidate_weight < 100 {
            self.settings.mirror
        } else {
            0
        };
        status.baseline = None;
        status.step_started_at = None;
        let traffic = Traffic::split(
            self.m,
            self.rev,
            status.candidate_weight,
            status.mirror_percent,
        );
        let generation = traffic::publish(self.ctx, self.ns, self.m, &traffic).await?;
        status.pending_generation = Some(generation);
        status.step_entered_at = Some(now_text(self.ctx));
        let why = format!("waiting for every front door to apply traffic generation {generation}");
        Ok(self.running(status, &why))
    }

    fn running(&self, status: RolloutStatus, waiting: &str) -> Step {
        let total = self.settings.plan.steps.len();
        let mut message = format!(
            "revision {} takes {}% of traffic (step {} of {total}{}); {} serves the rest",
            self.rev,
            status.candidate_weight,
            status.step + 1,
            if status.mirror_percent > 0 {
                format!(", {}% of the rest mirrored to it", status.mirror_percent)
            } else {
                String::new()
            },
            self.stable_name
        );
        if !waiting.is_empty() {
            message.push_str(&format!("; {waiting}"));
        }
        let traffic = Traffic::split(
            self.m,
            self.rev,
            status.candidate_weight,
            status.mirror_percent,
        );
        self.step(status, traffic, message)
    }

    /// Traffic back to the stable revision at once; the candidate goes once the front
    /// doors apply that.
    async fn roll_back(
        &self,
        mut status: RolloutStatus,
        reason: &str,
        why: String,
    ) -> Result<Step, Error> {
        status.phase = "RolledBack".into();
        record(
            &mut status,
            "RolledBack",
            Some(reason),
            now_text(self.ctx),
            why,
        );
        let done = finish(self.ctx, self.ns, self.uid, self.m, &mut status, true).await?;
        self.ctx.metrics.rollout_ended("RolledBack");
        Ok(self.after_rollback(status, done, true))
    }

    fn after_rollback(&self, status: RolloutStatus, done: bool, rolled_back: bool) -> Step {
        let last = status.history.first();
        let why = last.map(|h| h.message.clone()).unwrap_or_default();
        let reason = last
            .and_then(|h| h.reason.clone())
            .unwrap_or_else(|| reasons::ROLLED_BACK.to_string());
        let mut message = format!(
            "revision {} was rolled back: {why}; {} serves all traffic",
            self.rev, self.stable_name
        );
        if let Some(generation) = status.pending_generation {
            message.push_str(&format!(
                "; the candidate is removed once every front door applies traffic \
                 generation {generation}"
            ));
        }
        Step {
            ready: Cond::no(types::READY, reasons::ROLLED_BACK, message.clone()),
            progressing: Cond::no(types::PROGRESSING, reason, message),
            traffic: Traffic::stable_only(self.m),
            rollout: status,
            rolled_back,
            requeue: if done {
                super::RESYNC
            } else {
                self.settings.requeue()
            },
        }
    }
}
