//! Reconciling a `RecognitionJob`: the referenced `ImageModel` (missing: `Failed` stays
//! false, `Stalled` says `ModelNotFound` until it appears) and, with `output.pipeline`,
//! the pipeline and the key its store wants (`PipelineNotFound`, `StoreKeyMissing`,
//! `SecretNotFound` until they are there) → the Indexed Job (server-side
//! apply; created once, and not re-created once the job finished) → its shards' own words
//! ([`super::job_progress`]): finished shards' summaries, running shards' `/metrics`
//! through the pods reader ([`super::pods`]) → status, conditions and events at start and
//! end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::job_progress::{self as progress, Counts, Totals};
use super::{Context, Error, RESYNC, instrumented, label_selector};
use crate::build::meta::selector_labels;
use crate::build::recognition_job::{self as build, COMPONENT, TEMPLATE_ANNOTATION};
use crate::crd::{ImageModel, RecognitionJob, RecognitionJobStatus, RecognitionPipeline};
use crate::status::{Cond, merge, reasons, types};

/// Condition types and reasons of a RecognitionJob.
pub mod conditions {
    /// Every shard finished: every image is in the output (a bad one as a recorded error).
    pub const COMPLETE: &str = "Complete";
    /// A shard failed for good (out of attempts, or an error no retry fixes).
    pub const FAILED: &str = "Failed";
    pub const COMPLETED: &str = "Completed";
    pub const RUNNING: &str = "Running";
    pub const NOT_FAILED: &str = "NotFailed";
    pub const PENDING: &str = "Pending";
}
use conditions::*;

/// How often a running job's progress is read.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How often a job whose ImageModel, output pipeline or store key does not exist looks
/// again.
const MODEL_WAIT: Duration = Duration::from_secs(30);

pub async fn reconcile(job: Arc<RecognitionJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    instrumented(job.as_ref(), &ctx, Box::pin(reconcile_job(&job, &ctx))).await
}

async fn reconcile_job(rjob: &RecognitionJob, ctx: &Context) -> Result<Action, Error> {
    let ns = rjob
        .namespace()
        .ok_or_else(|| Error::Incomplete(rjob.name_any()))?;
    rjob.uid()
        .ok_or_else(|| Error::Incomplete(rjob.name_any()))?;
    if let Err(invalid) = build::validate(rjob) {
        let stalled = Cond::yes(types::STALLED, reasons::INVALID_SPEC, invalid.to_string());
        write_status(rjob, ctx, not_started(stalled), None).await?;
        return Err(invalid.into());
    }
    let model_name = &rjob.spec.model_ref.name;
    let model =
        super::observe::named::<ImageModel>(&ctx.client, &ns, model_name, "ImageModel").await?;
    let live =
        super::observe::named::<Job>(&ctx.client, &ns, &build::job_name(rjob), "Job").await?;
    let previous = rjob.status.clone().unwrap_or_default();
    let finished = crate::status::is_true(&previous.conditions, COMPLETE)
        || crate::status::is_true(&previous.conditions, FAILED);
    let Some(model) = model else {
        if live.is_none() {
            let stalled = Cond::yes(
                types::STALLED,
                reasons::MODEL_NOT_FOUND,
                format!("ImageModel {model_name:?} does not exist in namespace {ns:?}"),
            );
            write_status(rjob, ctx, not_started(stalled), None).await?;
            return Ok(Action::requeue(MODEL_WAIT));
        }
        // Already running: the Job keeps the pod template it was created with.
        return observe(rjob, ctx, &ns, live, None).await;
    };
    let desired = build::job(rjob, &model, &ctx.platform);
    let mut note = None;
    let live = match live {
        // A finished job whose Job was deleted stays finished (create another
        // RecognitionJob to run again: finished shards are not redone).
        None if finished => None,
        None => {
            if let Some(stalled) = output_problem(rjob, ctx, &ns).await? {
                write_status(rjob, ctx, not_started(stalled), None).await?;
                return Ok(Action::requeue(MODEL_WAIT));
            }
            let mut changes = Vec::new();
            let created = ctx.apply(&desired, &mut changes).await?;
            let shards = rjob.spec.shards;
            ctx.event(
                rjob,
                EventType::Normal,
                "Started",
                format!(
                    "Job {} runs {shards} shard(s) of ImageModel {model_name:?}, {} at a time",
                    created.name_any(),
                    rjob.spec.parallelism.unwrap_or(1).min(shards)
                ),
            )
            .await;
            Some(created)
        }
        Some(live) if digest(&live) == digest(&desired) => {
            let mut changes = Vec::new();
            Some(ctx.apply(&desired, &mut changes).await?)
        }
        // A Job's pod template cannot change: it runs the model as it was when it started.
        Some(live) => {
            note = Some(format!(
                "the ImageModel or this spec changed since Job {} started; it runs the pod \
                 template it started with (delete the Job to restart on the new one: \
                 shards resume from their output, and refuse one of another model)",
                live.name_any()
            ));
            Some(live)
        }
    };
    observe(rjob, ctx, &ns, live, note).await
}

/// Why the results cannot reach `output.pipeline`'s store yet, checked before the Job
/// starts (a shard would otherwise fail on its first image, or wait in
/// `CreateContainerConfigError`): the pipeline does not exist, it checks API keys and the
/// job gives none, or the key's Secret (or its key) is missing. `None`: nothing stands in
/// the way (or the job writes to no pipeline).
async fn output_problem(
    rjob: &RecognitionJob,
    ctx: &Context,
    ns: &str,
) -> Result<Option<Cond>, Error> {
    let Some(out) = &rjob.spec.output.pipeline else {
        return Ok(None);
    };
    let pipeline = super::observe::named::<RecognitionPipeline>(
        &ctx.client,
        ns,
        &out.name,
        "RecognitionPipeline",
    )
    .await?;
    let Some(pipeline) = pipeline else {
        return Ok(Some(Cond::yes(
            types::STALLED,
            reasons::PIPELINE_NOT_FOUND,
            format!(
                "RecognitionPipeline {:?} (output.pipeline) does not exist in namespace {ns:?}",
                out.name
            ),
        )));
    };
    let Some(secret) = &out.api_key_secret else {
        return Ok(pipeline.spec.gateway.api_keys_secret.as_ref().map(|_| {
            Cond::yes(
                types::STALLED,
                reasons::STORE_KEY_MISSING,
                format!(
                    "RecognitionPipeline {:?} checks API keys: set output.pipeline.apiKeySecret \
                     to a Secret key holding one of them",
                    out.name
                ),
            )
        }));
    };
    // As the API server returns a Secret: its keys in `data` (it folds `stringData` in).
    let message = match super::observe::secret(&ctx.client, ns, &secret.name).await? {
        None => format!(
            "Secret {:?} (output.pipeline.apiKeySecret) does not exist in namespace {ns:?}",
            secret.name
        ),
        Some(s) if s.data.as_ref().is_some_and(|d| d.contains_key(&secret.key)) => return Ok(None),
        Some(_) => format!(
            "Secret {:?} (output.pipeline.apiKeySecret) has no key {:?}",
            secret.name, secret.key
        ),
    };
    Ok(Some(Cond::yes(
        types::STALLED,
        reasons::SECRET_NOT_FOUND,
        message,
    )))
}

fn digest(job: &Job) -> Option<&String> {
    job.annotations().get(TEMPLATE_ANNOTATION)
}

/// Conditions of a job that has not started, with `stalled` saying why.
fn not_started(stalled: Cond) -> Vec<Cond> {
    let why = format!("not started: {}", stalled.message);
    vec![
        Cond::no(COMPLETE, PENDING, why.clone()),
        Cond::no(FAILED, NOT_FAILED, "no shard has failed"),
        Cond::no(types::PROGRESSING, stalled.reason.clone(), why),
        Cond::no(types::RECONCILING, "Stalled", "stuck: see Stalled"),
        stalled,
    ]
}

/// Reads the Job's shards and writes what they say.
async fn observe(
    rjob: &RecognitionJob,
    ctx: &Context,
    ns: &str,
    live: Option<Job>,
    note: Option<String>,
) -> Result<Action, Error> {
    let Some(live) = live else {
        // Finished, and its Job deleted since: the status keeps what it said.
        return Ok(Action::await_change());
    };
    let selector = label_selector(&selector_labels(&rjob.name_any(), COMPONENT));
    let pods: Vec<Pod> = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Fetch {
            what: "Pods",
            source,
        })?
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == live.uid().as_ref())
        })
        .collect();
    let now = ctx.clock.now();
    // Every running shard's `/metrics` at once: a slow pod delays the others by nothing.
    let job_name = rjob.name_any();
    let seen = progress::deciding_pods(&pods)
        .into_iter()
        .map(|(index, pod)| {
            let job_name = &job_name;
            async move {
                let seen = match progress::phase(pod) {
                    "Running" => {
                        let seconds = progress::started_at(pod)
                            .map(|t| now.duration_since(t).as_secs_f64().max(0.0));
                        match ctx.pod_get(ns, &pod.name_any(), "/metrics").await {
                            Ok((200, text)) => {
                                Some(progress::from_metrics(&text, job_name, seconds))
                            }
                            _ => None,
                        }
                    }
                    _ => progress::summary(pod).map(Counts::from),
                };
                seen.map(|c| (index, c))
            }
        });
    let counts: BTreeMap<i32, Counts> = futures::future::join_all(seen)
        .await
        .into_iter()
        .flatten()
        .collect();
    let totals = progress::totals(rjob.spec.shards, &counts);
    let wanted = job_conditions(rjob, &live, &pods, &totals, note);
    let previous = rjob.status.clone().unwrap_or_default();
    let done = wanted
        .iter()
        .any(|c| (c.type_ == COMPLETE || c.type_ == FAILED) && c.status);
    announce_end(rjob, ctx, &previous.conditions, &wanted).await;
    write_status(rjob, ctx, wanted, Some((&live, &totals))).await?;
    Ok(if done {
        Action::requeue(RESYNC)
    } else {
        Action::requeue(PROGRESS_EVERY)
    })
}

/// `Complete`, `Failed`, `Progressing`, `Reconciling` and `Stalled` from the Job and its
/// pods.
fn job_conditions(
    rjob: &RecognitionJob,
    job: &Job,
    pods: &[Pod],
    totals: &Totals,
    note: Option<String>,
) -> Vec<Cond> {
    let shards = progress::shard_counts(job);
    let figures = format!(
        "{} recognized, {} already done before, {} failed images",
        totals.recognized, totals.skipped, totals.failed
    );
    let name = job.name_any();
    if progress::job_condition(job, "Complete").is_some() {
        let said = format!(
            "all {} shard(s) of Job {name} finished: {figures}",
            rjob.spec.shards
        );
        return vec![
            Cond::yes(COMPLETE, COMPLETED, said.clone()),
            Cond::no(FAILED, NOT_FAILED, "no shard failed"),
            Cond::no(types::PROGRESSING, COMPLETED, said),
            Cond::no(
                types::RECONCILING,
                reasons::RECONCILED,
                "the job is complete",
            ),
            Cond::no(
                types::STALLED,
                reasons::NOT_STALLED,
                "nothing needs a change",
            ),
        ];
    }
    if let Some((reason, message)) = progress::job_condition(job, "Failed") {
        let attempts = progress::failed_attempts(pods);
        let mut said = format!(
            "Job {name} failed ({reason}: {message}); shards failed: {}, succeeded: {}",
            shards.failed, shards.succeeded
        );
        if !attempts.is_empty() {
            said.push_str(&format!("; {}", attempts.join("; ")));
        }
        return vec![
            Cond::no(COMPLETE, reason.clone(), said.clone()),
            Cond::yes(FAILED, reason.clone(), said.clone()),
            Cond::no(types::PROGRESSING, reason.clone(), said.clone()),
            Cond::no(types::RECONCILING, "Stalled", "stuck: see Stalled"),
            Cond::yes(types::STALLED, reason, said),
        ];
    }
    let mut moving = format!(
        "{} of {} shard(s) finished, {} running; {figures}",
        shards.succeeded, rjob.spec.shards, shards.running
    );
    if let Some(note) = note {
        moving.push_str(&format!("; {note}"));
    }
    let stuck = progress::stuck_pods(pods);
    let (reason, message) = match stuck.first() {
        // Named at once, whether or not retrying may cure it (a node may be added, a
        // registry may answer again).
        Some(f) => (f.reason.clone(), format!("{}; {moving}", f.message)),
        None => (RUNNING.to_string(), moving),
    };
    let lasting = stuck.iter().find(|f| f.lasting);
    let stalled = match lasting {
        Some(f) => Cond::yes(types::STALLED, f.reason.clone(), f.message.clone()),
        None => Cond::no(
            types::STALLED,
            reasons::NOT_STALLED,
            "nothing needs a change",
        ),
    };
    vec![
        Cond::no(COMPLETE, reason.clone(), message.clone()),
        Cond::no(FAILED, NOT_FAILED, "no shard has failed for good"),
        Cond::yes(types::PROGRESSING, reason.clone(), message.clone()),
        Cond::yes(types::RECONCILING, reason, message),
        stalled,
    ]
}

/// A Normal event when the job completes, a Warning when it fails (once: when the
/// condition turns true).
async fn announce_end(
    rjob: &RecognitionJob,
    ctx: &Context,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    wanted: &[Cond],
) {
    for (type_, kind) in [(COMPLETE, EventType::Normal), (FAILED, EventType::Warning)] {
        let now = wanted.iter().find(|c| c.type_ == type_ && c.status);
        if let Some(c) = now.filter(|_| !crate::status::is_true(previous, type_)) {
            let reason = if type_ == COMPLETE { COMPLETED } else { FAILED };
            ctx.event(rjob, kind, reason, c.message.clone()).await;
        }
    }
}

async fn write_status(
    rjob: &RecognitionJob,
    ctx: &Context,
    wanted: Vec<Cond>,
    observed: Option<(&Job, &Totals)>,
) -> Result<(), Error> {
    let previous = rjob.status.clone().unwrap_or_default();
    let generation = rjob.meta().generation;
    let conditions = merge(
        &previous.conditions,
        &wanted,
        generation,
        ctx.clock.as_ref(),
    );
    let status = match observed {
        None => RecognitionJobStatus {
            observed_generation: generation,
            conditions,
            ..previous.clone()
        },
        Some((job, t)) => {
            let complete = crate::status::is_true(&conditions, COMPLETE);
            RecognitionJobStatus {
                observed_generation: generation,
                conditions,
                job_name: Some(job.name_any()),
                total: t.total,
                recognized: t.recognized,
                skipped: t.skipped,
                failed: t.failed,
                progress: if complete {
                    Some("100%".into())
                } else {
                    t.percent()
                },
                first_errors: t.first_errors.clone(),
                images_per_second: t.images_per_second.filter(|_| !complete),
                eta: t
                    .eta_seconds
                    .filter(|_| !complete)
                    .map(progress::duration_text),
                shards: progress::shard_counts(job),
                model_sha256: t.model_sha256.clone().or(previous.model_sha256.clone()),
                evaluation: t.evaluation.clone(),
            }
        }
    };
    if rjob.status.as_ref() != Some(&status) {
        ctx.patch_status(rjob, &status).await?;
    }
    Ok(())
}
