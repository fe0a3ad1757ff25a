//! What a canary reconcile reads from the pods themselves (through
//! [`Context::pod_get`]): each running pod's `/metrics` for the window, the front doors'
//! `/readyz` for the traffic generation they apply, and the candidate's start-up
//! evaluation.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::super::{Context, Error, label_selector};
use crate::build::{meta, pipeline::UPLOAD};
use crate::canary::{PodRead, Reading};
use crate::crd::{ImageModel, RecognitionPipeline};
use crate::rollout::pod_ready;
use sightline_api::applied_traffic;

/// The pods of the namespace that carry `labels`.
pub async fn pods(
    ctx: &Context,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<Pod>, Error> {
    let list = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&label_selector(labels)))
        .await
        .map_err(|source| Error::Fetch {
            what: "Pods",
            source,
        })?;
    Ok(list.items)
}

fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Ready and not being deleted: its Service sends it traffic.
pub fn serving(pod: &Pod) -> bool {
    pod_ready(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// The running pods of one revision (`component` is the stable's or the candidate's).
pub async fn revision_pods(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    component: &str,
) -> Result<Vec<Pod>, Error> {
    let labels = meta::selector_labels(&m.name_any(), component);
    Ok(pods(ctx, ns, &labels)
        .await?
        .into_iter()
        .filter(running)
        .collect())
}

/// The pipelines of the namespace whose `modelRef` names `m`.
pub async fn pipelines_of(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
) -> Result<Vec<RecognitionPipeline>, Error> {
    let all = Api::<RecognitionPipeline>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Fetch {
            what: "RecognitionPipelines",
            source,
        })?;
    Ok(all
        .items
        .into_iter()
        .filter(|p| p.spec.model_ref.name == m.name_any())
        .collect())
}

/// The running front doors that read `m`'s traffic file: the upload pods of every
/// pipeline of the namespace whose `modelRef` names it.
pub async fn front_doors(ctx: &Context, ns: &str, m: &ImageModel) -> Result<Vec<Pod>, Error> {
    let mut out = Vec::new();
    for p in &pipelines_of(ctx, ns, m).await? {
        let labels = meta::selector_labels(&p.name_any(), UPLOAD);
        out.extend(pods(ctx, ns, &labels).await?.into_iter().filter(running));
    }
    Ok(out)
}

/// Each pod's `/metrics`, read with `parse`.
pub async fn metrics<T>(
    ctx: &Context,
    ns: &str,
    pods: &[Pod],
    parse: impl Fn(&str) -> T,
) -> Vec<PodRead<T>> {
    let mut out = Vec::new();
    for pod in pods {
        let name = pod.name_any();
        let read = match ctx.pod_get(ns, &name, "/metrics").await {
            Ok((200, text)) => Ok(Reading {
                started: crate::canary::parse_started(&text),
                figures: parse(&text),
            }),
            Ok((code, _)) => Err(format!("HTTP {code}")),
            Err(e) => Err(e),
        };
        out.push(PodRead {
            pod: name,
            uid: pod.uid().unwrap_or_default(),
            ready: serving(pod),
            read,
        });
    }
    out
}

/// The serving front doors among `doors` that do not report applying `m`'s traffic
/// generation `generation` (or a later one), each as `pod (what it reports)`.
pub async fn lagging(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    doors: &[Pod],
    generation: u64,
) -> Vec<String> {
    let mut out = Vec::new();
    for pod in doors.iter().filter(|p| serving(p)) {
        let name = pod.name_any();
        let said = match ctx.pod_get(ns, &name, "/readyz").await {
            Ok((200, body)) => match applied_traffic(&body) {
                Some(t) if t.model == m.name_any() && t.generation >= generation => continue,
                Some(t) if t.model == m.name_any() => {
                    format!("applies generation {}", t.generation)
                }
                Some(t) => format!("applies the traffic file of model {:?}", t.model),
                None => "names no traffic file in its /readyz".into(),
            },
            Ok((code, _)) => format!("/readyz answered HTTP {code}"),
            Err(e) => format!("unreachable: {e}"),
        };
        out.push(format!("{name} ({said})"));
    }
    out
}

/// The candidate's top-1 accuracy on the labelled set, once its start-up evaluation
/// finished (read from one of its ready pods).
pub async fn candidate_top1(ctx: &Context, ns: &str, pods: &[Pod]) -> Option<f64> {
    let pod = pods.iter().find(|p| pod_ready(p))?;
    let path = "/api/v1/evaluations/startup";
    match ctx.pod_get(ns, &pod.name_any(), path).await {
        Ok((200, text)) => super::super::model_status::parse_evaluation(&text, 0)
            .ok()
            .flatten()
            .map(|e| e.accuracy),
        _ => None,
    }
}

/// The digest of the model the candidate serves, as one of its ready pods reports it on
/// `/readyz`.
pub async fn candidate_digest(ctx: &Context, ns: &str, pods: &[Pod]) -> Option<String> {
    let pod = pods.iter().find(|p| pod_ready(p))?;
    match ctx.pod_get(ns, &pod.name_any(), "/readyz").await {
        Ok((code, body)) => match crate::served::parse_readyz(code, &body) {
            crate::served::Readyz::Ready(served) => Some(served.digest),
            _ => None,
        },
        Err(_) => None,
    }
}
