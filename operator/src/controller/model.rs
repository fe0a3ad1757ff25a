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
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::{Context, Error, RESYNC, instrumented, observe};
use crate::apply::{ApplyError, patch_status};
use crate::build::{canary as build_canary, meta, model};
use crate::crd::{EvaluationStatus, ImageModel, ImageModelStatus, Strategy};
use crate::rollout::{Rollout, pod_ready};
use crate::served::{Readyz, Served, parse_readyz};
use crate::status::{Cond, merge, reasons, types};
use crate::validate;
use crate::verdict::{Failure, missing_secrets, verdict};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

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
}

fn gpu_resource(m: &ImageModel) -> &str {
    m.spec
        .runtime
        .gpu_resource
        .as_deref()
        .unwrap_or("nvidia.com/gpu")
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
        observe::secrets_digest(&ctx.client, &ns, &model::secret_names(m)).await?;

    let gpu_nodes = match m.spec.runtime.device {
        crate::crd::Device::Auto => Some(observe::gpu_nodes(&ctx.client, gpu_resource(m)).await?),
        _ => None,
    };
    let inputs = model::ModelInputs {
        digest: secrets,
        device: model::resolve_device(m, gpu_nodes.as_deref()),
    };
    let children = model::children(m, &ctx.platform, &inputs);

    // A canary holds the stable Deployment at its revision while the candidate runs.
    let rev = build_canary::revision(&children.deployment);
    let stable_live = Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&model::name(m))
        .await
        .map_err(|source| Error::Fetch {
            what: "Deployment",
            source,
        })?;
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
    let failure = missing_secrets(&missing).or_else(|| served_failure(&answers));
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
    }
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
            ctx.apply(hpa, &mut changes).await?;
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

/// A pod of the newest revision whose server says it cannot serve (not merely loading).
fn served_failure(answers: &[(String, Readyz)]) -> Option<Failure> {
    answers.iter().find_map(|(pod, answer)| match answer {
        Readyz::NotReady { reason, message } if !answer.is_loading() => Some(Failure {
            reason: reason.clone(),
            message: format!("pod {pod}: {message}"),
        }),
        _ => None,
    })
}

/// `ModelValidated`: what the newest revision's servers say about the model they loaded.
pub fn validated_condition(
    m: &ImageModel,
    rollout: &Rollout,
    answers: &[(String, Readyz)],
) -> Cond {
    let t = types::MODEL_VALIDATED;
    if let Some(f) = served_failure(answers) {
        return Cond::no(t, f.reason, f.message);
    }
    let ready: Vec<&Served> = answers
        .iter()
        .filter_map(|(_, a)| match a {
            Readyz::Ready(s) => Some(s),
            _ => None,
        })
        .collect();
    if let Some(s) = ready.first() {
        if let Some(expected) = &m.spec.source.model.sha256
            && !expected.eq_ignore_ascii_case(&s.digest)
        {
            return Cond::no(
                t,
                "DigestMismatch",
                format!(
                    "the pods serve sha256 {}, the spec asks for {expected}",
                    s.digest
                ),
            );
        }
        let mut message = format!(
            "revision {} serves sha256 {} on {} ({} classes, input {:?})",
            rollout.revision, s.digest, s.device, s.classes, s.input_shape
        );
        if m.spec.runtime.device != crate::crd::Device::Cpu
            && s.device == "cpu"
            && m.spec.runtime.allow_cpu_fallback
        {
            message.push_str("; the GPU was not usable and the pods fell back to the CPU");
        }
        return Cond::yes(t, reasons::VALIDATED, message);
    }
    if answers.iter().any(|(_, a)| a.is_loading()) {
        return Cond::no(
            t,
            reasons::MODEL_LOADING,
            "the newest revision's pods are loading the model",
        );
    }
    let probed = rollout.ready_current().count();
    if probed > 0 {
        let why = answers
            .iter()
            .find_map(|(_, a)| match a {
                Readyz::Unreachable(e) => Some(e.clone()),
                _ => None,
            })
            .unwrap_or_default();
        return Cond::yes(
            t,
            reasons::READINESS_PROBE_PASSED,
            format!(
                "{probed} pods passed the kubelet's /readyz probe; their answer could not be \
                 read through the API server's pods/proxy ({why})"
            ),
        );
    }
    Cond::no(
        t,
        reasons::WAITING_FOR_PODS,
        "no pod of the newest revision runs yet",
    )
}

/// `status.served`: what the newest revision's ready pods report; while they do not serve
/// but an older revision does, what was reported before; nothing when nothing serves.
fn served_now(m: &ImageModel, rollout: &Rollout, answers: &[(String, Readyz)]) -> Option<Served> {
    let mut ready = answers.iter().filter_map(|(_, a)| match a {
        Readyz::Ready(s) => Some(s.clone()),
        _ => None,
    });
    if let Some(mut served) = ready.next() {
        served.revision = rollout.revision;
        served.pods = u32::try_from(rollout.ready_current().count()).unwrap_or(u32::MAX);
        return Some(served);
    }
    if rollout.previous_ready > 0 {
        return m.status.as_ref().and_then(|s| s.served.clone());
    }
    None
}

/// `Available`: at least one pod, of any revision, serves traffic.
fn available_condition(d: &k8s_openapi::api::apps::v1::Deployment) -> Cond {
    let status = d.status.clone().unwrap_or_default();
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if available > 0 {
        Cond::yes(
            types::AVAILABLE,
            reasons::AVAILABLE,
            format!("{available} of {total} pods serve traffic"),
        )
    } else {
        Cond::no(
            types::AVAILABLE,
            reasons::NOT_READY,
            "no pod serves traffic",
        )
    }
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

fn evaluated(figures: &EvaluationStatus) -> Cond {
    Cond::yes(
        types::EVALUATED,
        reasons::EVALUATED,
        format!(
            "top-1 accuracy {:.4}, top-5 {:.4}, macro F1 {:.4} on {} images",
            figures.accuracy, figures.top5_accuracy, figures.macro_f1, figures.images
        ),
    )
}

/// The figures of a finished evaluation (`GET /api/v1/evaluations/startup`), `None` while
/// it runs, `Err` with the server's words when it failed or the answer is not a report.
pub fn parse_evaluation(text: &str, generation: i64) -> Result<Option<EvaluationStatus>, String> {
    let view: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not an evaluation: {e}"))?;
    match view["status"].as_str() {
        Some("running") => Ok(None),
        Some("succeeded") => {
            let r = &view["report"];
            let number = |v: &serde_json::Value, what: &str| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("the report has no {what}"))
            };
            Ok(Some(EvaluationStatus {
                observed_generation: generation,
                images: r["images"]
                    .as_u64()
                    .ok_or_else(|| "the report has no image count".to_string())?,
                accuracy: number(&r["accuracy"], "accuracy")?,
                top5_accuracy: number(&r["top5_accuracy"], "top-5 accuracy")?,
                macro_precision: number(&r["macro"]["precision"], "macro precision")?,
                macro_recall: number(&r["macro"]["recall"], "macro recall")?,
                macro_f1: number(&r["macro"]["f1"], "macro F1")?,
            }))
        }
        Some("failed") => Err(format!(
            "the evaluation failed: {}",
            view["error"].as_str().unwrap_or("no reason given")
        )),
        _ => Err("not an evaluation".into()),
    }
}

/// `ModelFetched` from the newest revision's pods' fetch init containers: true once every
/// one of them in some pod finished cleanly; false with the container's own message when
/// one failed.
pub fn fetched_condition(m: &ImageModel, pods: &[Pod]) -> Cond {
    let mounted = |uri: &str| uri.starts_with("pvc://") || uri.starts_with("oci://");
    let fetches_something =
        !mounted(&m.spec.source.model.uri) || !mounted(&m.spec.source.labels.uri);
    if !fetches_something {
        let from = if m.spec.source.model.uri.starts_with("oci://") {
            "mounted from the model image (its digest pinned by the reference)"
        } else {
            "mounted from a PersistentVolumeClaim"
        };
        return Cond::yes(types::MODEL_FETCHED, reasons::FETCHED, from);
    }
    let mut failure: Option<String> = None;
    for pod in pods {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.clone())
            .unwrap_or_default();
        let fetches: Vec<_> = statuses
            .iter()
            .filter(|s| s.name.starts_with("fetch-"))
            .collect();
        let done = |s: &&k8s_openapi::api::core::v1::ContainerStatus| {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0)
        };
        if !fetches.is_empty() && fetches.iter().all(done) {
            return Cond::yes(
                types::MODEL_FETCHED,
                reasons::FETCHED,
                "the model was downloaded and its SHA-256 verified",
            );
        }
        for s in &fetches {
            let last = s.last_state.as_ref().and_then(|st| st.terminated.as_ref());
            let now = s.state.as_ref().and_then(|st| st.terminated.as_ref());
            if let Some(t) = now.or(last).filter(|t| t.exit_code != 0) {
                let said = t.message.clone().unwrap_or_default();
                failure = Some(format!("{}: {}", s.name, said.trim()));
            }
        }
    }
    match failure {
        Some(message) => Cond::no(types::MODEL_FETCHED, reasons::FETCH_FAILED, message),
        None => Cond::no(
            types::MODEL_FETCHED,
            reasons::FETCHING,
            "waiting for a pod of the newest revision to download the model",
        ),
    }
}

async fn write_status(m: &ImageModel, ctx: &Context, observed: Observed) -> Result<(), Error> {
    let previous = m.status.clone().unwrap_or_default();
    let generation = m.meta().generation;
    let status = ImageModelStatus {
        observed_generation: generation,
        conditions: merge(
            &previous.conditions,
            &observed.conditions,
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
    };
    if m.status.as_ref() != Some(&status) {
        patch_status(&ctx.client, m, &status).await?;
    }
    Ok(())
}
