//! What the model reconciler reads to tell whether the serving model is still right
//! (docs/quality.md, "In the cluster"): the drift from each serving recognize pod's own
//! `/metrics`, and the live accuracy from the store of every pipeline that uses the model
//! — `GET /api/v1/quality` through one of the pipeline's ready front doors, which checks
//! the API key and forwards it to its store (the store's NetworkPolicy admits only its
//! front doors, never the API server's proxy). A canary's live checks read the same.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::canary::read;
use super::pods::Ask;
use super::{Context, Error};
use crate::build::{meta, model as model_build, pipeline::UPLOAD};
use crate::canary::{Feedback, LiveFeedback};
use crate::crd::{DatabaseKind, ImageModel, QualityStatus, RecognitionPipeline};
use crate::quality::{self, OPERATOR_KEY_NAME, PodReading};
use crate::status::Cond;

/// The most of a recognize pod's `/metrics` read for its drift.
const METRICS_LIMIT: usize = 4 * 1024 * 1024;
/// The most of a quality answer read (it lists every class and confusion pair seen).
const QUALITY_LIMIT: usize = 16 * 1024 * 1024;

/// `status.quality` and `Drifting` for `m`, whose stable pods serve the model `digest`
/// (`None`: nothing serves).
pub async fn observe(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    digest: Option<&str>,
) -> Result<(QualityStatus, Cond), Error> {
    let monitoring = m.spec.monitoring.clone().unwrap_or_default();
    let window = monitoring.quality_window();
    let now = ctx.clock.now().to_string();
    let mut status = QualityStatus {
        window: window.to_string(),
        digest: digest.map(str::to_string),
        ..QualityStatus::default()
    };
    let Some(digest) = digest else {
        status.accuracy_note = Some("no pod serves the model yet".into());
        return Ok((status, quality::drifting(&[], monitoring.max_drift())));
    };

    let readings = drift(ctx, ns, m, digest).await?;
    let drift = quality::combine(&readings);
    if drift.figures.is_some() {
        status.drift = drift.figures;
        status.drift_samples = drift.samples;
        status.drift_read_at = Some(now.clone());
    }
    let drifting = quality::drifting(&readings, monitoring.max_drift());

    match feedback(ctx, ns, m, window, digest).await? {
        Ok(found) => {
            status.samples = Some(found.samples);
            status.accuracy = found.accuracy();
            status.accuracy_read_at = Some(now);
            if found.samples == 0 {
                status.accuracy_note =
                    Some(format!("no feedback on this model in the last {window}"));
            }
        }
        Err(why) => status.accuracy_note = Some(why),
    }
    let previous = m.status.as_ref().and_then(|s| s.quality.as_ref());
    Ok((quality::settle(previous, status), drifting))
}

/// Each serving pod of the stable Deployment, and the drift its `/metrics` reports for
/// `digest` (a pod of an older revision, still draining, serves another digest and
/// reports none for this one).
async fn drift(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    digest: &str,
) -> Result<Vec<PodReading>, Error> {
    let pods = read::revision_pods(ctx, ns, m, model_build::COMPONENT).await?;
    let name = m.name_any();
    let ask = Ask {
        key: None,
        limit: METRICS_LIMIT,
    };
    let mut out = Vec::new();
    for pod in pods.iter().filter(|p| read::serving(p)) {
        let pod = pod.name_any();
        let read = match ctx.pod_get_as(ns, &pod, "/metrics", ask).await {
            Ok((200, text)) => Ok(quality::parse_drift(&text, &name, digest)),
            Ok((code, _)) => Err(format!("HTTP {code}")),
            Err(e) => Err(e),
        };
        out.push(PodReading { pod, read });
    }
    Ok(out)
}

/// The pipelines of the namespace whose `modelRef` names `m`, each database counted once
/// (two pipelines naming the same database Secret key share their results).
async fn pipelines(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
) -> Result<Vec<RecognitionPipeline>, Error> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for p in read::pipelines_of(ctx, ns, m).await? {
        let storage = &p.spec.storage;
        if storage.database != DatabaseKind::Sqlite
            && let Some(url) = &storage.url_secret
        {
            let key = (url.name.clone(), url.key.clone());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
        }
        out.push(p);
    }
    Ok(out)
}

/// The users' feedback on model `digest` over `window`, summed over every pipeline that
/// uses `m`; why it is not known when a pipeline's store cannot be read (a partial sum
/// would be a wrong figure, not a smaller one).
pub async fn feedback(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    window: &str,
    digest: &str,
) -> Result<Result<Feedback, String>, Error> {
    let pipelines = pipelines(ctx, ns, m).await?;
    if pipelines.is_empty() {
        return Ok(Err(
            "no RecognitionPipeline uses the model: feedback is kept by a pipeline's store".into(),
        ));
    }
    let mut total = Feedback::default();
    for p in &pipelines {
        match from_store(ctx, ns, m, p, window, digest).await? {
            Ok(found) => total.add(found),
            Err(why) => return Ok(Err(format!("pipeline {}: {why}", p.name_any()))),
        }
    }
    Ok(Ok(total))
}

/// The key the operator presents to `p`'s front door: none when it checks no keys; why
/// not when the keys Secret holds none named [`OPERATOR_KEY_NAME`].
async fn key_for(
    ctx: &Context,
    ns: &str,
    p: &RecognitionPipeline,
) -> Result<Result<Option<String>, String>, Error> {
    let Some(keys) = &p.spec.gateway.api_keys_secret else {
        return Ok(Ok(None));
    };
    let secret = super::observe::secret(&ctx.client, ns, &keys.name).await?;
    let text = secret.and_then(|s| s.data).and_then(|d| {
        d.get(&keys.key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    });
    let Some(text) = text else {
        return Ok(Err(format!(
            "its front door checks API keys and Secret {} has no key {:?}",
            keys.name, keys.key
        )));
    };
    Ok(quality::operator_key(&text).map(Some).ok_or_else(|| {
        format!(
            "its front door checks API keys and Secret {} key {:?} holds none named \
             {OPERATOR_KEY_NAME}: add a line {OPERATOR_KEY_NAME}:<key> (docs/quality.md)",
            keys.name, keys.key
        )
    }))
}

/// The feedback on `digest` in `p`'s store, through one of its ready front doors.
async fn from_store(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    p: &RecognitionPipeline,
    window: &str,
    digest: &str,
) -> Result<Result<Feedback, String>, Error> {
    let key = match key_for(ctx, ns, p).await? {
        Ok(key) => key,
        Err(why) => return Ok(Err(why)),
    };
    let labels = meta::selector_labels(&p.name_any(), UPLOAD);
    let doors = read::pods(ctx, ns, &labels).await?;
    let Some(door) = doors.iter().find(|p| read::serving(p)) else {
        return Ok(Err("no front door of it is ready".into()));
    };
    let path = format!(
        "/api/v1/quality?model={}&window={window}&digest={digest}",
        m.name_any()
    );
    let ask = Ask {
        key: key.as_deref(),
        limit: QUALITY_LIMIT,
    };
    let door = door.name_any();
    Ok(match ctx.pod_get_as(ns, &door, &path, ask).await {
        Ok((200, body)) => quality::parse_quality(&body, digest),
        Ok((code, body)) => {
            let said = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v["error"]
                        .as_str()
                        .or(v["message"].as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| body.chars().take(200).collect());
            Err(format!("front door {door} answered HTTP {code}: {said}"))
        }
        Err(e) => Err(format!("front door {door}: {e}")),
    })
}

/// What a canary's live checks judge on: the stores' feedback on the candidate's model
/// (its digest as its ready pods report it) and on the stable one's.
pub async fn canary_feedback(
    ctx: &Context,
    ns: &str,
    m: &ImageModel,
    candidate_pods: &[Pod],
) -> Result<LiveFeedback, Error> {
    let monitoring = m.spec.monitoring.clone().unwrap_or_default();
    let window = monitoring.quality_window();
    let stable_digest = m.status.as_ref().and_then(|s| s.digest.clone());
    let candidate_digest = read::candidate_digest(ctx, ns, candidate_pods).await;
    let mut live = LiveFeedback {
        candidate: Err("no ready candidate pod reported its model's digest yet".into()),
        stable: Err("the stable revision's model digest is not known (status.digest)".into()),
        same_digest: stable_digest.is_some() && stable_digest == candidate_digest,
        min_samples: monitoring.min_feedback_samples(),
    };
    if live.same_digest {
        return Ok(live);
    }
    if let Some(digest) = &candidate_digest {
        live.candidate = feedback(ctx, ns, m, window, digest).await?;
    }
    if let Some(digest) = &stable_digest {
        live.stable = feedback(ctx, ns, m, window, digest).await?;
    }
    Ok(live)
}
