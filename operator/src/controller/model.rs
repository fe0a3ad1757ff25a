//! Reconciling an `ImageModel`: validate → the Secrets it reads → build → apply the
//! recognize Service, Deployment, HPA, PDB and NetworkPolicy (pruning the optional ones no
//! longer wanted) → observe what serves → status.
//!
//! Status is read, never assumed: the rollout from the newest ReplicaSet and its pods
//! ([`crate::rollout`]), `ModelValidated` and `status.served` from those pods' own
//! `/readyz` ([`crate::served`]), the evaluation from one of them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::build::monitoring::ServiceMonitor;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::model_status::{
    available_condition, evaluated, served_failure, served_now, wrong_digest,
};
pub use super::model_status::{fetched_condition, parse_evaluation, validated_condition};
use super::{Context, Error, RESYNC, instrumented, observe};
use crate::apply::ApplyError;
use crate::build::canary::TrafficFor;
use crate::build::{canary as build_canary, meta, model};
use crate::crd::{EvaluationStatus, ImageModel, ImageModelStatus, Strategy};
use crate::rollout::{Rollout, pod_ready};
use crate::served::{Readyz, Served, parse_readyz};
use crate::status::{Cond, kstatus, merge, reasons, types};
use crate::validate;
use crate::verdict::{missing_secrets, verdict};
use k8s_openapi::api::apps::v1::Deployment;

/// Requeue while something is still rolling out (pod changes also arrive by watch).
const PENDING: Duration = Duration::from_secs(15);
/// Newest-revision pods asked for their `/readyz` in one reconcile.
const PODS_ASKED: usize = 3;

pub async fn reconcile(m: Arc<ImageModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Boxed: the reconcile future is large, and lives on the heap, not the task stack.
    instrumented(m.as_ref(), &ctx, Box::pin(reconcile_model(&m, &ctx))).await
}

/// What a reconcile observed, for the status.
struct Observed {
    conditions: Vec<Cond>,
    served: Option<Served>,
    ready_replicas: Option<i32>,
    evaluation: Option<EvaluationStatus>,
    device: Option<crate::crd::DeviceStatus>,
    rollout: Option<crate::crd::RolloutStatus>,
    quality: Option<crate::crd::QualityStatus>,
}

fn gpu_resource(m: &ImageModel) -> &str {
    m.spec
        .runtime
        .gpu_resource
        .as_deref()
        .unwrap_or("nvidia.com/gpu")
}

/// Where the model runs. `auto` is decided once per spec generation — from one read of
/// the nodes — and kept in `status.device`: a GPU pool scaled to zero, or GPU nodes coming
/// and going, neither flips the pod template nor costs a Node list per reconcile.
async fn device(m: &ImageModel, ctx: &Context) -> Result<crate::crd::DeviceStatus, Error> {
    if m.spec.runtime.device != crate::crd::Device::Auto {
        return Ok(model::resolve_device(m, None));
    }
    if let Some(decided) = model::decided_device(m) {
        return Ok(decided);
    }
    if !ctx.read_nodes {
        return Ok(model::device_without_nodes(m));
    }
    let nodes = observe::gpu_nodes(&ctx.client, gpu_resource(m)).await?;
    Ok(model::resolve_device(m, Some(&nodes)))
}

async fn reconcile_model(m: &ImageModel, ctx: &Context) -> Result<Action, Error> {
    let ns = m
        .namespace()
        .ok_or_else(|| Error::Incomplete(m.name_any()))?;
    let uid = m.uid().ok_or_else(|| Error::Incomplete(m.name_any()))?;
    if let Err(invalid) = validate::model(m) {
        let invalid_cond = Cond::no(types::READY, reasons::INVALID_SPEC, invalid.to_string());
        write_status(m, ctx, unchanged(m, vec![invalid_cond])).await?;
        return Err(invalid.into());
    }

    let (secrets, missing) =
        observe::secrets_digest(&ctx.client, &ns, &model::secret_names(m), &[]).await?;

    let inputs = model::ModelInputs {
        digest: secrets,
        device: device(m, ctx).await?,
    };
    let children = model::children(m, &ctx.platform, &inputs);

    // A canary holds the stable Deployment at its revision while the candidate runs.
    let rev = build_canary::revision(&children.deployment);
    let stable_live =
        super::observe::named::<Deployment>(&ctx.client, &ns, &model::name(m), "Deployment")
            .await?;
    // Autoscaling turned on: the Deployment's replicas stay as they are until the HPA
    // scales (instead of server-side apply dropping them to one).
    let unmanaged = children
        .deployment
        .spec
        .as_ref()
        .is_some_and(|s| s.replicas.is_none());
    if let Some(live) = stable_live.as_ref().filter(|live| {
        unmanaged
            && crate::apply::owns_field(*live, crate::apply::FIELD_MANAGER, &["spec", "replicas"])
    }) {
        ctx.hand_over_replicas(live).await?;
    }
    let canary_spec = m
        .spec
        .rollout
        .as_ref()
        .filter(|r| r.strategy == Strategy::Canary);
    let hold = stable_live.as_ref().filter(|live| {
        canary_spec.is_some()
            && build_canary::live_revision(live).is_some_and(|live_rev| live_rev != rev)
    });
    let deployment = match apply_children(m, ctx, &ns, &uid, &children, hold).await {
        Ok(deployment) => deployment,
        Err(error) => {
            let cond = |type_| Cond::no(type_, error.reason(), error.to_string());
            let conds = vec![cond(types::READY), cond(types::PROGRESSING)];
            let mut observed = unchanged(m, conds);
            observed.device = Some(inputs.device.clone());
            write_status(m, ctx, observed).await?;
            return Err(error.into());
        }
    };
    let canary_step = match (canary_spec, hold) {
        (Some(spec), Some(stable)) => {
            Some(super::canary::step(ctx, &ns, &uid, m, spec, &children, stable, &rev).await?)
        }
        _ => None,
    };

    let selector = meta::selector_labels(&m.name_any(), model::COMPONENT);
    let rollout = observe::rollout(&ctx.client, &ns, &deployment, &selector).await?;
    let answers = ask_readyz(ctx, &ns, &rollout).await;
    let validated = validated_condition(m, &rollout, &answers);
    let failure = missing_secrets(&missing)
        .or_else(|| served_failure(&answers))
        .or_else(|| wrong_digest(&validated));
    let mut v = verdict(types::READY, reasons::READY, &rollout, failure);
    let (traffic, rollout_status, requeue_canary) = match &canary_step {
        Some(step) => {
            v.ready = step.ready.clone();
            v.progressing = step.progressing.clone();
            v.failed = step.rolled_back;
            (
                step.traffic.clone(),
                Some(step.rollout.clone()),
                Some(step.requeue),
            )
        }
        None => {
            let (traffic, status) = after_canary(ctx, &ns, &uid, m, &rev, &rollout.phase).await?;
            (traffic, status, None)
        }
    };
    super::canary::traffic::publish(ctx, &ns, m, &traffic).await?;
    let available = available_condition(&deployment);
    let fetched = fetched_condition(m, &rollout.current);
    let served = served_now(m, &rollout, &answers);
    let is_ready = v.ready.status;

    let mut conditions = vec![
        v.ready.clone(),
        v.progressing,
        available,
        fetched,
        validated,
    ];
    let mut evaluation = None;
    if canary_step.is_some() {
        // The stable pods run the previous revision: their figures stay the stable
        // revision's (the canary's labelled-set check compares the candidate's with them).
        evaluation = m.status.as_ref().and_then(|s| s.evaluation.clone());
        if m.spec.evaluation.is_some() {
            conditions.push(Cond::no(
                types::EVALUATED,
                reasons::EVALUATION_PENDING,
                "the new revision is evaluated as a canary candidate; status.evaluation keeps \
                 the stable revision's figures until it is promoted",
            ));
        }
    } else if m.spec.evaluation.is_some() {
        let (cond, figures) = evaluation_now(m, ctx, &ns, &rollout, is_ready).await;
        evaluation = figures;
        conditions.push(cond);
    }
    let settled = conditions.iter().all(|c| c.status);
    // Drifting is about the answers, not the rollout: it never gates `Ready` or a resync.
    let digest = served.as_ref().map(|s| s.digest.as_str());
    let (quality, drifting) = super::quality::observe(ctx, &ns, m, digest).await?;
    conditions.push(drifting);
    let candidate_pending = rollout_status
        .as_ref()
        .is_some_and(|r| r.pending_generation.is_some());
    let previous = m.status.clone().unwrap_or_default();
    super::warn_on_new_failure(m, ctx, &previous.conditions, &v.ready, v.failed).await;
    let ready_replicas = deployment
        .status
        .as_ref()
        .map(|s| s.ready_replicas.unwrap_or(0));
    write_status(
        m,
        ctx,
        Observed {
            conditions,
            served,
            ready_replicas,
            evaluation,
            device: Some(inputs.device),
            rollout: rollout_status,
            quality: Some(quality),
        },
    )
    .await?;
    if let Some(every) = requeue_canary {
        return Ok(Action::requeue(every));
    }
    if candidate_pending {
        // A candidate waits for the front doors to apply the traffic without it.
        return Ok(Action::requeue(PENDING));
    }
    Ok(Action::requeue(if v.failed {
        ctx.stalled(&super::key(m))
    } else {
        ctx.unstalled(&super::key(m));
        if is_ready && settled { RESYNC } else { PENDING }
    }))
}

/// Outside a canary: finishes a promotion (the candidate keeps its traffic until the
/// stable Deployment serves the promoted revision, then goes), and removes a candidate
/// whose rollout the spec no longer wants. The traffic and `status.rollout` to write.
async fn after_canary(
    ctx: &Context,
    ns: &str,
    uid: &str,
    m: &ImageModel,
    rev: &str,
    stable: &crate::rollout::Phase,
) -> Result<(build_canary::Traffic, Option<crate::crd::RolloutStatus>), Error> {
    let Some(mut status) = m.status.as_ref().and_then(|s| s.rollout.clone()) else {
        return Ok((build_canary::Traffic::stable_only(m), None));
    };
    let live = matches!(
        status.phase.as_str(),
        "Progressing" | "Paused" | "Promoting"
    );
    if status.phase == "Promoting" && status.revision == rev {
        if *stable != crate::rollout::Phase::Complete {
            let traffic = build_canary::Traffic::split(m, rev, status.candidate_weight, 0);
            return Ok((traffic, Some(status)));
        }
        status.phase = "Promoted".into();
        ctx.metrics.rollout_ended("Promoted");
        let message = "every step passed; the stable Deployment serves it".to_string();
        super::canary::record(
            &mut status,
            "Promoted",
            None,
            ctx.clock.now().to_string(),
            message,
        );
    } else if live {
        // The spec moved on (or back) before the rollout finished.
        status.phase = "Superseded".into();
    }
    // The candidate goes once every front door applies the traffic without it.
    super::canary::finish(ctx, ns, uid, m, &mut status, live).await?;
    Ok((build_canary::Traffic::stable_only(m), Some(status)))
}

/// The status as it was, with `conditions` replacing the conditions (when nothing could
/// be observed).
fn unchanged(m: &ImageModel, conditions: Vec<Cond>) -> Observed {
    let previous = m.status.clone().unwrap_or_default();
    Observed {
        conditions,
        served: previous.served,
        ready_replicas: previous.ready_replicas,
        evaluation: previous.evaluation,
        device: previous.device,
        rollout: previous.rollout,
        quality: previous.quality,
    }
}

/// The least the stable HPA may scale to while a rollout is under way: the stable count
/// when it began (recorded in `status.rollout`, or the live count as it begins), from the
/// first canary step through a rollback (the stable Deployment held) and a promotion.
fn stable_floor(m: &ImageModel, rev: &str, hold: Option<&Deployment>) -> Option<i32> {
    let rollout = m
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .filter(|r| r.revision == rev);
    let promoting = rollout.is_some_and(|r| r.phase == "Promoting");
    if hold.is_none() && !promoting {
        return None;
    }
    rollout
        .and_then(|r| r.stable_replicas)
        .or_else(|| hold.and_then(|d| d.spec.as_ref().and_then(|s| s.replicas)))
}

/// Applies the children in dependency order; the live Deployment back. `hold` is the
/// live stable Deployment while a canary runs: it keeps its revision (not applied).
async fn apply_children(
    m: &ImageModel,
    ctx: &Context,
    ns: &str,
    uid: &str,
    children: &model::ModelChildren,
    hold: Option<&Deployment>,
) -> Result<Deployment, ApplyError> {
    let mut changes = Vec::new();
    let mut kinds = vec!["Service", "Deployment", "NetworkPolicy", "ConfigMap"];
    ctx.apply(&children.service, &mut changes).await?;
    let deployment = match hold {
        Some(live) => live.clone(),
        None => ctx.apply(&children.deployment, &mut changes).await?,
    };
    match &children.hpa {
        Some(hpa) => {
            let rev = build_canary::revision(&children.deployment);
            let hpa = model::hpa_with_floor(hpa.clone(), stable_floor(m, &rev, hold));
            ctx.apply(&hpa, &mut changes).await?;
            kinds.push("HorizontalPodAutoscaler");
        }
        None => {
            ctx.prune::<HorizontalPodAutoscaler>(ns, &m.name_any(), uid, &[], &mut changes)
                .await?
        }
    }
    match &children.pdb {
        Some(pdb) => {
            ctx.apply(pdb, &mut changes).await?;
            kinds.push("PodDisruptionBudget");
        }
        None => {
            ctx.prune::<PodDisruptionBudget>(ns, &m.name_any(), uid, &[], &mut changes)
                .await?
        }
    }
    ctx.apply(&children.network_policy, &mut changes).await?;
    if ctx.service_monitors {
        ctx.apply(&children.monitor, &mut changes).await?;
        kinds.push("ServiceMonitor");
        // Monitors of older versions (named after the model alone) would scrape twice.
        let keep = [model::name(m)];
        ctx.prune::<ServiceMonitor>(ns, &m.name_any(), uid, &keep, &mut changes)
            .await?;
    }
    ctx.metrics.owns(uid, "ImageModel", &kinds);
    if !changes.is_empty() {
        ctx.event(m, EventType::Normal, "Applied", changes.join(", "))
            .await;
    }
    Ok(deployment)
}

/// `/readyz` of up to [`PODS_ASKED`] running pods of the newest revision, by pod name.
async fn ask_readyz(ctx: &Context, ns: &str, rollout: &Rollout) -> Vec<(String, Readyz)> {
    let running = rollout.current.iter().filter(|p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.metadata.deletion_timestamp.is_none()
    });
    let mut answers = Vec::new();
    for pod in running.take(PODS_ASKED) {
        let name = pod.name_any();
        let answer = match ctx.pod_get(ns, &name, "/readyz").await {
            Ok((code, body)) => parse_readyz(code, &body),
            Err(e) => Readyz::Unreachable(e),
        };
        answers.push((name, answer));
    }
    answers
}

/// The evaluation condition and figures: known for this generation, read from a ready
/// pod of the newest revision once the model is ready, or pending.
async fn evaluation_now(
    m: &ImageModel,
    ctx: &Context,
    ns: &str,
    rollout: &Rollout,
    is_ready: bool,
) -> (Cond, Option<EvaluationStatus>) {
    let generation = m.meta().generation.unwrap_or(0);
    let known = m
        .status
        .as_ref()
        .and_then(|s| s.evaluation.clone())
        .filter(|e| e.observed_generation == generation);
    if let Some(figures) = known {
        return (evaluated(&figures), Some(figures));
    }
    let pending = |message: String| {
        let cond = Cond::no(types::EVALUATED, reasons::EVALUATION_PENDING, message);
        (cond, None)
    };
    let pod = rollout.current.iter().find(|p| pod_ready(p));
    let (true, Some(pod)) = (is_ready, pod) else {
        return pending("waiting for the model to serve".into());
    };
    let path = "/api/v1/evaluations/startup";
    let text = match ctx.pod_get(ns, &pod.name_any(), path).await {
        Ok((200, text)) => text,
        Ok((code, _)) => {
            return pending(format!("the evaluation is not readable yet (HTTP {code})"));
        }
        Err(e) => return pending(format!("the evaluation is not readable yet: {e}")),
    };
    match parse_evaluation(&text, generation) {
        Ok(Some(figures)) => (evaluated(&figures), Some(figures)),
        Ok(None) => pending("the evaluation is running".into()),
        Err(message) => (
            Cond::no(types::EVALUATED, reasons::EVALUATION_FAILED, message),
            None,
        ),
    }
}

async fn write_status(m: &ImageModel, ctx: &Context, observed: Observed) -> Result<(), Error> {
    let previous = m.status.clone().unwrap_or_default();
    let generation = m.meta().generation;
    let mut conditions = observed.conditions;
    conditions.extend(kstatus(&conditions));
    let status = ImageModelStatus {
        observed_generation: generation,
        conditions: merge(
            &previous.conditions,
            &conditions,
            generation,
            ctx.clock.as_ref(),
        ),
        digest: observed.served.as_ref().map(|s| s.digest.clone()),
        served: observed.served,
        endpoint: Some(model::endpoint(m)),
        evaluation: observed.evaluation,
        ready_replicas: observed.ready_replicas,
        device: observed.device,
        rollout: observed.rollout,
        quality: observed.quality,
    };
    if m.status.as_ref() != Some(&status) {
        ctx.patch_status(m, &status).await?;
    }
    Ok(())
}
