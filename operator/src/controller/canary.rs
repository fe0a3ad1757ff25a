//! A canary rollout of a model, one reconcile at a time (docs/rollouts.md). The stable
//! Deployment keeps its revision; the candidate runs in its own Deployment and Service;
//! the front doors split and mirror traffic as the model's traffic ConfigMap says. Each
//! reconcile reads the revisions' and the front doors' own `/metrics` through
//! `pods/proxy`, computes the checks over the step's window ([`crate::canary`]) and
//! advances, promotes or rolls back.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::{Context, Error, label_selector, observe};
use crate::apply::ApplyError;
use crate::build::canary::{self as build, Traffic};
use crate::build::meta::{self, LABEL_COMPONENT, LABEL_NAME, NAME};
use crate::build::model::{self as model_build, ModelChildren};
use crate::canary::{self, Check, Counters, Decision, Mirrored, Position, Thresholds, Window};
use crate::crd::{Baseline, ImageModel, RolloutRecord, RolloutSpec, RolloutStatus};
use crate::rollout::Phase;
use crate::status::{Cond, reasons, types};

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
    pub steps: Vec<u32>,
    pub step_seconds: u64,
    pub min_requests: u64,
    pub mirror: u32,
    pub paused: bool,
    pub thresholds: Thresholds,
}

impl Settings {
    pub fn of(spec: &RolloutSpec) -> Settings {
        let a = &spec.analysis;
        Settings {
            steps: if spec.steps.is_empty() {
                vec![10, 50, 100]
            } else {
                spec.steps.clone()
            },
            step_seconds: spec
                .step_duration
                .as_deref()
                .and_then(canary::parse_duration)
                .unwrap_or(300),
            min_requests: spec.min_requests_per_step.unwrap_or(200),
            mirror: spec.mirror_percent.unwrap_or(0),
            paused: spec.paused,
            thresholds: Thresholds {
                max_top1_drop: a.max_top1_drop.unwrap_or(0.01),
                min_agreement: a.min_agreement.unwrap_or(0.95),
                max_error_rate: a.max_error_rate.unwrap_or(0.01),
                max_p99_latency_ratio: a.max_p99_latency_ratio.unwrap_or(1.5),
            },
        }
    }

    fn requeue(&self) -> std::time::Duration {
        std::time::Duration::from_secs((self.step_seconds / 4).clamp(1, 15))
    }
}

fn now_text(ctx: &Context) -> String {
    ctx.clock.now().to_string()
}

fn seconds_since(ctx: &Context, since: Option<&str>) -> u64 {
    let Some(since) = since.and_then(|s| s.parse::<Timestamp>().ok()) else {
        return 0;
    };
    let elapsed = ctx.clock.now().as_second() - since.as_second();
    u64::try_from(elapsed).unwrap_or(0)
}

/// Sums `/metrics` of the running pods selected by `labels`, with `parse`.
async fn scrape<T: Default>(
    ctx: &Context,
    ns: &str,
    labels: &std::collections::BTreeMap<String, String>,
    parse: impl Fn(&str) -> T,
    add: impl Fn(&mut T, &T),
) -> Result<T, Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&label_selector(labels)))
        .await
        .map_err(|source| Error::Fetch {
            what: "Pods",
            source,
        })?;
    let mut total = T::default();
    for pod in pods
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    {
        if let Ok((200, text)) =
            observe::pod_get(&ctx.client, ns, &pod.name_any(), "/metrics").await
        {
            add(&mut total, &parse(&text));
        }
    }
    Ok(total)
}

/// The counters now: the stable pods', the candidate pods' and the front doors'.
async fn counters(ctx: &Context, ns: &str, m: &ImageModel) -> Result<Baseline, Error> {
    let instance = m.name_any();
    let stable = scrape(
        ctx,
        ns,
        &meta::selector_labels(&instance, model_build::COMPONENT),
        canary::parse_counters,
        Counters::add,
    )
    .await?;
    let candidate = scrape(
        ctx,
        ns,
        &meta::selector_labels(&instance, build::COMPONENT),
        canary::parse_counters,
        Counters::add,
    )
    .await?;
    let front_doors = std::collections::BTreeMap::from([
        (LABEL_NAME.to_string(), NAME.to_string()),
        (
            LABEL_COMPONENT.to_string(),
            crate::build::pipeline::UPLOAD.to_string(),
        ),
    ]);
    let name = instance.clone();
    let mirrored = scrape(
        ctx,
        ns,
        &front_doors,
        move |text| canary::parse_mirrored(text, &name),
        Mirrored::add,
    )
    .await?;
    Ok(Baseline {
        stable,
        candidate,
        mirrored,
    })
}

/// The candidate's top-1 accuracy on the labelled set, once its start-up evaluation
/// finished (read from one of its ready pods).
async fn candidate_top1(ctx: &Context, ns: &str, pods: &[Pod]) -> Option<f64> {
    let pod = pods.iter().find(|p| crate::rollout::pod_ready(p))?;
    let path = "/api/v1/evaluations/startup";
    match observe::pod_get(&ctx.client, ns, &pod.name_any(), path).await {
        Ok((200, text)) => super::model::parse_evaluation(&text, 0)
            .ok()
            .flatten()
            .map(|e| e.accuracy),
        _ => None,
    }
}

/// Deletes the candidate's Deployment, Service and NetworkPolicy (when they exist).
pub async fn remove_candidate(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    uid: &str,
) -> Result<(), ApplyError> {
    let mut changes = Vec::new();
    let keep = [model_build::name(m)];
    let name = m.name_any();
    ctx.prune::<Deployment>(ns, &name, uid, &keep, &mut changes)
        .await?;
    ctx.prune::<Service>(ns, &name, uid, &keep, &mut changes)
        .await?;
    ctx.prune::<NetworkPolicy>(ns, &name, uid, &keep, &mut changes)
        .await?;
    if !changes.is_empty() {
        ctx.event(m, EventType::Normal, "Applied", changes.join(", "))
            .await;
    }
    Ok(())
}

/// Adds a finished rollout to `status.history` (newest first, at most [`HISTORY`]).
pub(super) fn record(status: &mut RolloutStatus, outcome: &str, at: String, message: String) {
    status.history.insert(
        0,
        RolloutRecord {
            revision: status.revision.clone(),
            outcome: outcome.into(),
            at,
            message,
        },
    );
    status.history.truncate(HISTORY);
}

/// The stable revision's name in messages.
fn stable_words(stable: &Deployment) -> String {
    match build::live_revision(stable) {
        Some(rev) => format!("revision {rev}"),
        None => "the stable revision".into(),
    }
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
    let settings = Settings::of(spec);
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
    let stable_name = stable_words(stable);

    // Rolled back: stay on the stable revision until the spec changes again.
    if status.phase == "RolledBack" {
        remove_candidate(ctx, ns, m, uid).await?;
        let why = status
            .history
            .first()
            .map(|h| h.message.clone())
            .unwrap_or_default();
        let message =
            format!("revision {rev} was rolled back: {why}; {stable_name} serves all traffic");
        return Ok(Step {
            ready: Cond::no(types::READY, reasons::ROLLED_BACK, message.clone()),
            progressing: Cond::no(types::PROGRESSING, reasons::ROLLED_BACK, message),
            traffic: Traffic::stable_only(m),
            rollout: status,
            rolled_back: false,
            requeue: super::RESYNC,
        });
    }

    // The candidate's objects, from the desired revision.
    let replicas = model_build::candidate_replicas(stable, &mut status);
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

    let rollback = |status: &mut RolloutStatus, why: String| {
        let message =
            format!("revision {rev} rolled back: {why}; {stable_name} serves all traffic");
        status.phase = "RolledBack".into();
        status.candidate_weight = 0;
        status.mirror_percent = 0;
        status.baseline = None;
        record(status, "RolledBack", now_text(ctx), why);
        message
    };

    let failure = match &rollout.phase {
        Phase::Failed { reason, message } => {
            Some(format!("the candidate cannot serve: {reason}: {message}"))
        }
        _ => None,
    };
    if let Some(why) = failure {
        let message = rollback(&mut status, why);
        return rolled_back(ctx, ns, m, uid, status, message).await;
    }
    if rollout.phase != Phase::Complete {
        // Never traffic to a candidate that is not ready.
        status.candidate_weight = 0;
        status.mirror_percent = 0;
        status.baseline = None;
        status.step_started_at = None;
        let words = match &rollout.phase {
            Phase::Progressing(w) => w.clone(),
            _ => String::new(),
        };
        let message = format!(
            "revision {rev} (candidate) is starting: {words}; {stable_name} serves all traffic"
        );
        return Ok(Step {
            ready: Cond::no(types::READY, reasons::CANARY, message.clone()),
            progressing: Cond::yes(types::PROGRESSING, reasons::CANARY, message),
            traffic: Traffic::stable_only(m),
            rollout: status,
            rolled_back: false,
            requeue: settings.requeue(),
        });
    }

    // Promoting: the stable Deployment takes the new revision; the candidate keeps its
    // traffic until the stable pods serve it (the model reconciler finishes this).
    if status.phase == "Promoting" {
        ctx.apply(&children.deployment, &mut Vec::new()).await?;
        let traffic = Traffic::split(m, rev, status.candidate_weight, 0);
        let message =
            format!("revision {rev} passed every step; the stable Deployment is taking it");
        return Ok(Step {
            ready: Cond::no(types::READY, reasons::CANARY, message.clone()),
            progressing: Cond::yes(types::PROGRESSING, reasons::CANARY, message),
            traffic,
            rollout: status,
            rolled_back: false,
            requeue: settings.requeue(),
        });
    }

    let now = counters(ctx, ns, m).await?;
    let step_index = usize::try_from(status.step)
        .unwrap_or(0)
        .min(settings.steps.len().saturating_sub(1));
    let Some(base) = status.baseline.clone() else {
        // The candidate just became ready: open the first (or current) step's window.
        status.baseline = Some(now);
        status.step_started_at = Some(now_text(ctx));
        status.candidate_weight = settings.steps[step_index];
        status.mirror_percent = settings.mirror;
        status.checks.clear();
        return Ok(running(m, rev, &stable_name, &settings, status, false));
    };
    let evaluating = m.spec.evaluation.is_some();
    let window = Window {
        stable: now.stable.since(&base.stable),
        candidate: now.candidate.since(&base.candidate),
        mirrored: now.mirrored.since(&base.mirrored),
        stable_top1: m
            .status
            .as_ref()
            .and_then(|s| s.evaluation.as_ref())
            .map(|e| e.accuracy),
        candidate_top1: if evaluating {
            candidate_top1(ctx, ns, &rollout.current).await
        } else {
            None
        },
    };
    let checks: Vec<Check> = canary::checks(
        &settings.thresholds,
        &window,
        settings.mirror > 0,
        evaluating,
    );
    let position = Position {
        step: step_index,
        elapsed: seconds_since(ctx, status.step_started_at.as_deref()),
        paused: settings.paused,
    };
    let decision = canary::decide(
        &settings.steps,
        settings.step_seconds,
        settings.min_requests,
        &position,
        &checks,
        window.candidate.requests,
    );
    status.checks = checks;
    match decision {
        Decision::RollBack(why) => {
            let message = rollback(&mut status, why);
            rolled_back(ctx, ns, m, uid, status, message).await
        }
        Decision::Advance(next) => {
            status.step = u32::try_from(next).unwrap_or(u32::MAX);
            status.baseline = Some(now);
            status.step_started_at = Some(now_text(ctx));
            status.candidate_weight = settings.steps[next];
            Ok(running(m, rev, &stable_name, &settings, status, false))
        }
        Decision::Promote => {
            status.phase = "Promoting".into();
            ctx.apply(&children.deployment, &mut Vec::new()).await?;
            Ok(running(m, rev, &stable_name, &settings, status, false))
        }
        Decision::Hold => {
            status.phase = if settings.paused {
                "Paused"
            } else {
                "Progressing"
            }
            .into();
            Ok(running(m, rev, &stable_name, &settings, status, false))
        }
    }
}

fn running(
    m: &ImageModel,
    rev: &str,
    stable_name: &str,
    settings: &Settings,
    status: RolloutStatus,
    rolled_back: bool,
) -> Step {
    let total = settings.steps.len();
    let message = format!(
        "revision {rev} takes {}% of traffic (step {} of {total}{}); {stable_name} serves the rest",
        status.candidate_weight,
        status.step + 1,
        if status.mirror_percent > 0 {
            format!(", {}% of the rest mirrored to it", status.mirror_percent)
        } else {
            String::new()
        }
    );
    let traffic = Traffic::split(m, rev, status.candidate_weight, status.mirror_percent);
    Step {
        ready: Cond::no(types::READY, reasons::CANARY, message.clone()),
        progressing: Cond::yes(types::PROGRESSING, reasons::CANARY, message),
        traffic,
        rollout: status,
        rolled_back,
        requeue: settings.requeue(),
    }
}

/// Traffic back to the stable revision at once, then the candidate removed.
async fn rolled_back(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    uid: &str,
    status: RolloutStatus,
    message: String,
) -> Result<Step, Error> {
    let traffic = Traffic::stable_only(m);
    ctx.apply(&build::traffic_config(m, &traffic), &mut Vec::new())
        .await?;
    remove_candidate(ctx, ns, m, uid).await?;
    ctx.metrics.rollout_ended("RolledBack");
    Ok(Step {
        ready: Cond::no(types::READY, reasons::ROLLED_BACK, message.clone()),
        progressing: Cond::no(types::PROGRESSING, reasons::ROLLED_BACK, message),
        traffic,
        rollout: status,
        rolled_back: true,
        requeue: super::RESYNC,
    })
}
