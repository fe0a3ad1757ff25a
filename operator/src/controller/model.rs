//! Reconciling an `ImageModel`: validate → the pipelines that use it (their image URL
//! prefixes are the model's fetch allowlist) → build → apply the recognize Service,
//! Deployment, HPA, PDB and NetworkPolicy (pruning the optional ones no longer wanted) →
//! status from the Deployment and its pods.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::{Context, Error, RESYNC, deployment_condition, instrumented, label_selector};
use crate::apply::patch_status;
use crate::build::{meta, model, pipeline};
use crate::crd::{EvaluationStatus, ImageModel, ImageModelStatus, RecognitionPipeline};
use crate::status::{Cond, merge, ready_from, reasons, types};
use crate::validate;

/// Requeue while something is still rolling out (pod changes also arrive by watch).
const PENDING: Duration = Duration::from_secs(15);

pub async fn reconcile(m: Arc<ImageModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    instrumented(m.as_ref(), &ctx, reconcile_model(&m, &ctx)).await
}

async fn reconcile_model(m: &ImageModel, ctx: &Context) -> Result<Action, Error> {
    let ns = m
        .namespace()
        .ok_or_else(|| Error::Incomplete(m.name_any()))?;
    let uid = m.uid().ok_or_else(|| Error::Incomplete(m.name_any()))?;
    if let Err(invalid) = validate::model(m) {
        let invalid_cond = Cond::no(types::READY, reasons::INVALID_SPEC, invalid.to_string());
        write_status(m, ctx, vec![invalid_cond], None, None).await?;
        return Err(invalid.into());
    }

    let pipelines: Api<RecognitionPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let pipelines = pipelines
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Fetch {
            what: "RecognitionPipelines",
            source,
        })?;
    let mut prefixes: Vec<String> = pipelines
        .items
        .iter()
        .filter(|p| p.spec.model_ref.name == m.name_any())
        .map(pipeline::image_prefix)
        .collect();
    prefixes.sort();
    prefixes.dedup();

    let children = model::children(m, &ctx.images, &prefixes);
    let mut changes = Vec::new();
    let mut kinds = vec!["Service", "Deployment", "NetworkPolicy"];
    ctx.apply(&children.service, &mut changes).await?;
    let deployment = ctx.apply(&children.deployment, &mut changes).await?;
    match &children.hpa {
        Some(hpa) => {
            ctx.apply(hpa, &mut changes).await?;
            kinds.push("HorizontalPodAutoscaler");
        }
        None => {
            ctx.prune::<HorizontalPodAutoscaler>(&ns, &m.name_any(), &uid, &[], &mut changes)
                .await?
        }
    }
    match &children.pdb {
        Some(pdb) => {
            ctx.apply(pdb, &mut changes).await?;
            kinds.push("PodDisruptionBudget");
        }
        None => {
            ctx.prune::<PodDisruptionBudget>(&ns, &m.name_any(), &uid, &[], &mut changes)
                .await?
        }
    }
    ctx.apply(&children.network_policy, &mut changes).await?;
    ctx.metrics.owns(&uid, "ImageModel", &kinds);
    if !changes.is_empty() {
        ctx.event(m, EventType::Normal, "Applied", changes.join(", "))
            .await;
    }

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = label_selector(&meta::selector_labels(&m.name_any(), model::COMPONENT));
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Fetch {
            what: "Pods",
            source,
        })?;
    let fetched = fetched_condition(m, &pods.items);
    let available = deployment_condition(types::AVAILABLE, &deployment);
    let ready = ready_from(&[fetched.clone(), available.clone()]);
    let is_ready = ready.status;
    let mut wanted = vec![ready, available, fetched];
    let mut evaluation = None;
    if m.spec.evaluation.is_some() {
        let generation = m.meta().generation.unwrap_or(0);
        let known = m
            .status
            .as_ref()
            .and_then(|s| s.evaluation.clone())
            .filter(|e| e.observed_generation == generation);
        let (cond, figures) = match known {
            Some(figures) => (evaluated(&figures), Some(figures)),
            None if is_ready => read_evaluation(m, ctx, &ns, generation).await,
            None => (
                Cond::no(
                    types::EVALUATED,
                    reasons::EVALUATION_PENDING,
                    "waiting for the model to serve",
                ),
                None,
            ),
        };
        evaluation = figures;
        wanted.push(cond);
    }
    let settled = wanted.iter().all(|c| c.status);
    write_status(m, ctx, wanted, deployment_ready(&deployment), evaluation).await?;
    Ok(Action::requeue(if is_ready && settled {
        RESYNC
    } else {
        PENDING
    }))
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

/// Reads the start-up evaluation from a serving pod, through the API server's proxy to
/// the recognize Service (`services/proxy`, so no NetworkPolicy has to admit the operator).
/// Not finished, not reachable or failed: a false `Evaluated` condition saying so.
async fn read_evaluation(
    m: &ImageModel,
    ctx: &Context,
    ns: &str,
    generation: i64,
) -> (Cond, Option<EvaluationStatus>) {
    let path = format!(
        "/api/v1/namespaces/{ns}/services/{}:{}/proxy/api/v1/evaluations/startup",
        model::name(m),
        crate::build::pod::PORT_NAME
    );
    let pending = |message: String| {
        let cond = Cond::no(types::EVALUATED, reasons::EVALUATION_PENDING, message);
        (cond, None)
    };
    let request = match http::Request::get(&path).body(Vec::new()) {
        Ok(request) => request,
        Err(e) => return pending(format!("cannot build the request: {e}")),
    };
    let text = match ctx.client.request_text(request).await {
        Ok(text) => text,
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

fn deployment_ready(d: &k8s_openapi::api::apps::v1::Deployment) -> Option<i32> {
    Some(
        d.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    )
}

/// `ModelFetched` from the pods' fetch init containers: true once every one of them in
/// some pod finished cleanly; false with the container's own message when one failed.
pub fn fetched_condition(m: &ImageModel, pods: &[Pod]) -> Cond {
    let fetches_something = !m.spec.source.model.uri.starts_with("pvc://")
        || !m.spec.source.labels.uri.starts_with("pvc://");
    if !fetches_something {
        return Cond::yes(
            types::MODEL_FETCHED,
            reasons::FETCHED,
            "mounted from a PersistentVolumeClaim",
        );
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
            "waiting for a pod to download the model",
        ),
    }
}

async fn write_status(
    m: &ImageModel,
    ctx: &Context,
    wanted: Vec<Cond>,
    ready_replicas: Option<i32>,
    evaluation: Option<EvaluationStatus>,
) -> Result<(), Error> {
    let previous = m.status.clone().unwrap_or_default();
    let generation = m.meta().generation;
    let status = ImageModelStatus {
        observed_generation: generation,
        conditions: merge(
            &previous.conditions,
            &wanted,
            generation,
            ctx.clock.as_ref(),
        ),
        digest: m.spec.source.model.sha256.clone(),
        endpoint: Some(model::endpoint(m)),
        evaluation,
        ready_replicas: ready_replicas.or(previous.ready_replicas),
    };
    if m.status.as_ref() != Some(&status) {
        patch_status(&ctx.client, m, &status).await?;
    }
    Ok(())
}
