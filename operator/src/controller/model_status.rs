//! A model's conditions from what a reconcile observed — the newest revision's pods, their
//! `/readyz` answers, the Deployment — and `status.served`. Pure; the model reconciler
//! ([`super::model`]) does the reads.

use k8s_openapi::api::core::v1::Pod;

use crate::crd::{EvaluationStatus, ImageModel};
use crate::rollout::Rollout;
use crate::served::{Readyz, Served};
use crate::status::{Cond, reasons, types};
use crate::verdict::Failure;

/// A pod of the newest revision whose server says it cannot serve (not merely loading).
pub fn served_failure(answers: &[(String, Readyz)]) -> Option<Failure> {
    answers.iter().find_map(|(pod, answer)| match answer {
        Readyz::NotReady { reason, message } if !answer.is_loading() => Some(Failure {
            reason: reason.clone(),
            message: format!("pod {pod}: {message}"),
        }),
        _ => None,
    })
}

/// The newest revision serves another model file than the spec names: it cannot be the
/// spec's revision serving, whatever its pods' readiness says.
pub fn wrong_digest(validated: &Cond) -> Option<Failure> {
    (!validated.status && validated.reason == reasons::DIGEST_MISMATCH).then(|| Failure {
        reason: validated.reason.clone(),
        message: validated.message.clone(),
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
                reasons::DIGEST_MISMATCH,
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
                 read through the API server's pods/proxy ({why}); where NetworkPolicies \
                 are enforced, give the operator --api-server-sources (docs/install.md)"
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
pub fn served_now(
    m: &ImageModel,
    rollout: &Rollout,
    answers: &[(String, Readyz)],
) -> Option<Served> {
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
pub fn available_condition(d: &k8s_openapi::api::apps::v1::Deployment) -> Cond {
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

pub fn evaluated(figures: &EvaluationStatus) -> Cond {
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
