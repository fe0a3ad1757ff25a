//! `POST /api/v1/evaluations` (recognize role): a labelled set uploaded as a zip file
//! (one folder per class, or a CSV of `path,label` beside the images) is evaluated in the
//! background through the served model; `GET /api/v1/evaluations/{id}` shows the progress
//! and, once done, the same report as `sightline-server eval --json`.
//!
//! Bounded: the body limit of the server; one of [`MAX_RUNNING`] slots taken before
//! anything is unpacked; the archive's limits and confinement ([`super::archive`]); each
//! image read within the body limit and decoded under the recognitions' decode bound; the
//! last [`KEPT`] jobs kept. Nothing is left behind: the unpack folder goes when the
//! evaluation ends, fails, or the request unpacking it goes away.
//!
//! A caller that asks for `application/x-ndjson` gets the job's progress as it runs, one
//! JSON view a line (at least every second), the last one with the report — and the
//! evaluation is stopped when that caller goes away. The front door relays it so into the
//! store role's database, so that every front door answers for every evaluation
//! (the front door's relay).
//!
//! `--evaluate-on-start` runs the same evaluation once the model is ready
//! ([`super::startup`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;

use super::archive::{self, ArchiveError, Cancel, Unpacked};
use super::jobs::{Job, new_id};
use super::runner::evaluate_with;
use crate::http::error::AppError;
use crate::serving::{ModelSlot, ServingModel};

pub use super::archive::{MAX_ENTRIES, MAX_UNPACKED_BYTES};
pub use super::jobs::{Jobs, KEPT, MAX_RUNNING};

/// The media type of a streamed evaluation: one JSON view a line.
pub const NDJSON: &str = "application/x-ndjson";
/// How often a streamed evaluation sends its view.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);

/// The evaluation routes' state: the served model, the server's one [`Jobs`] store, and
/// the most bytes one image of a set may have (the body limit).
#[derive(Clone)]
pub struct EvalState {
    pub model: ModelSlot,
    pub jobs: Jobs,
    pub max_image_bytes: u64,
}

/// The evaluation routes; their jobs are [`EvalState::jobs`].
pub fn router() -> Router<EvalState> {
    Router::new()
        .route("/api/v1/evaluations", post(create))
        .route("/api/v1/evaluations/{id}", get(show))
}

async fn show(
    State(state): State<EvalState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    state
        .jobs
        .get(&id)
        .map(|j| Json(j.view()))
        .ok_or_else(|| AppError::NotFound(format!("no evaluation with id {id:?}")))
}

async fn create(State(state): State<EvalState>, request: Request) -> Result<Response, AppError> {
    let model = state.model.ready().map_err(AppError::unavailable)?;
    let stream = wants_stream(request.headers());
    let (name, zip) = zip_from_body(&state, request).await?;
    let job = start(
        &state.jobs,
        model,
        new_id(),
        name,
        zip,
        state.max_image_bytes,
    )
    .await?;
    if stream {
        return Ok(progress_stream(job));
    }
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/v1/evaluations/{}", job.id))],
        Json(job.view()),
    )
        .into_response())
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON))
}

/// The job's view at once, then every [`STREAM_INTERVAL`] (sooner when it ends) until its
/// last one. Dropping the stream (the caller went away) stops the evaluation.
fn progress_stream(job: Arc<Job>) -> Response {
    /// Stops the job when the stream goes before the job has ended.
    struct Stop(Arc<Job>);
    impl Drop for Stop {
        fn drop(&mut self) {
            if self.0.running() {
                self.0.cancel.set();
            }
        }
    }
    let lines = futures::stream::unfold(Some((Stop(job), true)), |state| async move {
        let (stop, first) = state?;
        let job = &stop.0;
        if !first {
            let started = tokio::time::Instant::now();
            while job.running() && started.elapsed() < STREAM_INTERVAL {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut line = serde_json::to_vec(&job.view()).unwrap_or_default();
        line.push(b'\n');
        let next = job.running().then_some((stop, false));
        Some((Ok::<_, std::io::Error>(Bytes::from(line)), next))
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(NDJSON),
    );
    response
}

impl From<ArchiveError> for AppError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::NotZip => AppError::UnsupportedMediaType(e.to_string()),
            ArchiveError::TooLarge(_) => AppError::PayloadTooLarge(e.to_string()),
            ArchiveError::Outside { .. } => AppError::BadRequest(e.to_string()),
            ArchiveError::Invalid(_) => AppError::Unprocessable(e.to_string()),
            ArchiveError::Cancelled => AppError::unavailable(e.to_string()),
            ArchiveError::Io(_) => AppError::Internal(e.to_string()),
        }
    }
}

/// Admits, unpacks `zip` (a labelled set named `name`) and evaluates it through `model`
/// in the background as the job `id` of `jobs`; returns the job, running. Errors: all
/// [`MAX_RUNNING`] slots taken (503, before anything is unpacked), not a zip (415), over
/// the limits (413), a CSV row outside the archive (400, naming the row), not a labelled
/// set of the model's classes (422).
pub async fn start(
    jobs: &Jobs,
    model: Arc<ServingModel>,
    id: String,
    name: String,
    zip: Bytes,
    max_image_bytes: u64,
) -> Result<Arc<Job>, AppError> {
    let Some(slot) = jobs.try_admit() else {
        return Err(AppError::Unavailable {
            message: format!("{MAX_RUNNING} evaluations are already running; retry later"),
            retry_after: Some(5),
        });
    };
    let labels = model.labels.clone();
    let work = jobs.work_dir().to_path_buf();
    let cancel = Cancel::default();
    // Dropped with this future (a request timeout, a client gone): the unpacking stops,
    // and its folder goes with it on the blocking thread.
    let guard = cancel.on_drop();
    // The slot goes with the unpacking: given back when it (and its clean-up) has ended,
    // not when this future is dropped.
    let (unpacked, slot) =
        tokio::task::spawn_blocking(move || (archive::open(&zip, &labels, &work, &cancel), slot))
            .await
            .map_err(|_| AppError::Internal("the unpacking worker panicked".into()))?;
    let unpacked = unpacked?;
    guard.disarm();
    let job = Arc::new(Job::new(id, name.clone(), unpacked.samples.len() as u64));
    jobs.push(job.clone());
    let running = job.clone();
    tokio::spawn(async move {
        let _slot = slot;
        run(&model, &running, &name, unpacked, max_image_bytes).await;
    });
    Ok(job)
}

/// Evaluates an unpacked set as `job`, then removes its folder (off the async threads).
async fn run(model: &Arc<ServingModel>, job: &Job, name: &str, set: Unpacked, max: u64) {
    let labels = model.labels.clone();
    let mut report = evaluate_with(
        model,
        &labels,
        &set.samples,
        name,
        &job.progress,
        max,
        &job.cancel,
    )
    .await;
    // Paths as they are inside the zip.
    let dir = set.dir().to_path_buf();
    let inside = |p: &mut String| {
        if let Ok(rest) = std::path::Path::new(p.as_str()).strip_prefix(&dir) {
            *p = rest.display().to_string();
        }
    };
    report
        .predictions
        .iter_mut()
        .for_each(|r| inside(&mut r.path));
    report.failed.iter_mut().for_each(|f| inside(&mut f.path));
    let _ = tokio::task::spawn_blocking(move || drop(set)).await;
    if job.cancel.is_set() {
        job.finish(Err(
            "stopped: the caller streaming its progress went away".into()
        ));
    } else {
        job.finish(Ok(Box::new(report)));
    }
}

/// The zip: the multipart field `dataset`, or the raw body. Returns a display name too.
async fn zip_from_body(state: &EvalState, request: Request) -> Result<(String, Bytes), AppError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let (name, bytes) = if is_multipart {
        let mut multipart = Multipart::from_request(request, state).await.map_err(|e| {
            AppError::bad_request(format!("invalid multipart request: {}", e.body_text()))
        })?;
        let mut found = None;
        while let Some(field) = multipart.next_field().await? {
            if field.name() == Some("dataset") {
                let name = field.file_name().unwrap_or("dataset.zip").to_string();
                found = Some((name, field.bytes().await?));
                break;
            }
        }
        found.ok_or_else(|| AppError::bad_request("multipart field 'dataset' is missing"))?
    } else {
        (
            "dataset.zip".to_string(),
            Bytes::from_request(request, state).await?,
        )
    };
    Ok((name.chars().take(200).collect(), bytes))
}
