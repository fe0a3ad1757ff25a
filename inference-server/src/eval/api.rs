//! `POST /api/v1/evaluations` (recognize role): a labelled set uploaded as a zip file
//! (one folder per class, or a CSV of `path,label` beside the images) is evaluated in the
//! background through the served model; `GET /api/v1/evaluations/{id}` shows the progress
//! and, once done, the same report as `sightline-server eval --json`.
//!
//! Bounded: the body limit of the server, at most [`MAX_ENTRIES`] files and
//! [`MAX_UNPACKED_BYTES`] unpacked (counted while unpacking, not trusted from the zip
//! headers), paths confined to the unpack directory, [`MAX_RUNNING`] evaluations at once,
//! the last [`KEPT`] kept.
//!
//! `--evaluate-on-start PATH|URI` runs the same evaluation once the model is ready, under
//! the fixed id [`STARTUP_ID`] ([`evaluate_on_start`]); both paths go through [`start`] and
//! the one [`Jobs`] store of the server ([`EvalState::jobs`]). A URI is downloaded
//! only then, by the server itself, so a dataset that cannot be fetched is a `failed`
//! evaluation while the model goes on serving.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequest, Multipart, Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;

use super::dataset::{self, Resolver};
use super::progress::Progress;
use super::report::Report;
use super::runner::evaluate_with;
use crate::http::error::AppError;
use crate::serving::{ModelSlot, ServingModel};

pub const MAX_ENTRIES: usize = 100_000;
pub const MAX_UNPACKED_BYTES: u64 = 2 * 1024 * 1024 * 1024;
pub const MAX_RUNNING: usize = 2;
pub const KEPT: usize = 20;
/// The id of the `--evaluate-on-start` evaluation.
pub const STARTUP_ID: &str = "startup";
/// Attempts at downloading an `--evaluate-on-start` URI (transient failures only)…
pub const DATASET_FETCH_ATTEMPTS: u32 = 3;
/// …each at most this long, so a failure is reported within about a minute.
pub const DATASET_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Where the `--evaluate-on-start` zip comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSource {
    /// A file on this machine.
    File(PathBuf),
    /// A `scheme://` URI (`https://`, `http://` and `s3://` are fetched; any other scheme is
    /// a failed evaluation, not a start-up error).
    Remote(String),
}

impl DatasetSource {
    /// `scheme://…` is a URI, anything else a path. Never fails: a bad URI must not stop the
    /// server, so it is refused later, as the evaluation's error.
    pub fn parse(text: &str) -> Result<DatasetSource, std::convert::Infallible> {
        let is_uri = text.split_once("://").is_some_and(|(scheme, _)| {
            scheme.len() > 1
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        Ok(if is_uri {
            DatasetSource::Remote(text.to_string())
        } else {
            DatasetSource::File(PathBuf::from(text))
        })
    }

    /// The job's `dataset`: the file name (of the path, or of the URI's path).
    fn name(&self) -> String {
        let name = match self {
            DatasetSource::File(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            DatasetSource::Remote(uri) => crate::fetch::redact(uri)
                .rsplit('/')
                .find(|s| !s.is_empty())
                .unwrap_or("dataset.zip")
                .to_string(),
        };
        name.chars().take(200).collect()
    }

    /// For logs: the path, or the URI without query string or credentials.
    fn shown(&self) -> String {
        match self {
            DatasetSource::File(path) => path.display().to_string(),
            DatasetSource::Remote(uri) => crate::fetch::redact(uri),
        }
    }
}

/// `--evaluate-on-start` with its optional `--evaluate-sha256`.
#[derive(Debug, Clone)]
pub struct StartupEvaluation {
    pub source: DatasetSource,
    pub sha256: Option<String>,
}

/// The evaluations of one server.
#[derive(Clone, Default)]
pub struct Jobs(Arc<Mutex<VecDeque<Arc<Job>>>>);

pub struct Job {
    pub id: String,
    pub dataset: String,
    pub created_at_ms: i64,
    pub progress: Progress,
    outcome: Mutex<Option<Result<Box<Report>, String>>>,
}

impl Job {
    fn view(&self) -> serde_json::Value {
        let done = self.progress.done();
        let total = self.progress.total();
        let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let (status, report, error) = match &*outcome {
            None => ("running", None, None),
            Some(Ok(report)) => ("succeeded", Some(report.clone()), None),
            Some(Err(e)) => ("failed", None, Some(e.clone())),
        };
        let mut view = json!({
            "id": self.id,
            "status": status,
            "dataset": self.dataset,
            "created_at_ms": self.created_at_ms,
            "progress": {
                "done": done,
                "total": total,
                "fraction": match (total, status) {
                    // Still fetching: nothing counted yet.
                    (0, "running") => 0.0,
                    (0, _) => 1.0,
                    _ => done as f64 / total as f64,
                },
            },
        });
        if let Some(report) = report {
            view["report"] = serde_json::to_value(&report).unwrap_or_default();
        }
        if let Some(error) = error {
            view["error"] = json!(error);
        }
        view
    }

    fn running(&self) -> bool {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

impl Jobs {
    fn get(&self, id: &str) -> Option<Arc<Job>> {
        let jobs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        jobs.iter().find(|j| j.id == id).cloned()
    }

    /// Adds `job` unless [`MAX_RUNNING`] are running; drops the oldest finished ones
    /// beyond [`KEPT`].
    fn admit(&self, job: Arc<Job>) -> bool {
        let mut jobs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A job this one replaces (the start-up evaluation while fetching) does not count.
        let running = jobs
            .iter()
            .filter(|j| j.running() && j.id != job.id)
            .count();
        if running >= MAX_RUNNING {
            return false;
        }
        push_and_trim(&mut jobs, job);
        true
    }

    /// Records an evaluation that failed before it could run (shown as `failed`).
    fn record_failure(&self, id: &str, dataset: &str, message: String) {
        self.record(id, dataset, Some(Err(message)));
    }

    /// Records an evaluation that is getting its dataset (shown as `running`, nothing
    /// counted yet) until [`start`] or [`Jobs::record_failure`] replaces it.
    fn record_fetching(&self, id: &str, dataset: &str) {
        self.record(id, dataset, None);
    }

    fn record(&self, id: &str, dataset: &str, outcome: Option<Result<Box<Report>, String>>) {
        let job = Arc::new(Job {
            id: id.to_string(),
            dataset: dataset.to_string(),
            created_at_ms: now_ms(),
            progress: Progress::new(0, false),
            outcome: Mutex::new(outcome),
        });
        let mut jobs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        push_and_trim(&mut jobs, job);
    }
}

/// Adds `job`, replacing an earlier job with its id (the fixed [`STARTUP_ID`] goes from
/// fetching to running or failed), and drops the oldest finished ones beyond [`KEPT`].
fn push_and_trim(jobs: &mut VecDeque<Arc<Job>>, job: Arc<Job>) {
    jobs.retain(|j| j.id != job.id);
    jobs.push_back(job);
    while jobs.len() > KEPT {
        match jobs.iter().position(|j| !j.running()) {
            Some(i) => {
                jobs.remove(i);
            }
            None => break,
        }
    }
}

/// The evaluation routes' state: the served model and the server's one [`Jobs`] store.
#[derive(Clone)]
pub struct EvalState {
    pub model: ModelSlot,
    pub jobs: Jobs,
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
    let (name, zip) = zip_from_body(&state, request).await?;
    let job = start(&state.jobs, model, new_id(), name, zip).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/v1/evaluations/{}", job.id))],
        Json(job.view()),
    )
        .into_response())
}

/// Unpacks `zip` (a labelled set named `name`) and evaluates it through `model` in the
/// background as the job `id` of `jobs`; returns the job, running. Errors: not a zip
/// (415), a zip over the limits (413) or not a labelled set of the model's classes (422),
/// [`MAX_RUNNING`] evaluations already running (503).
pub async fn start(
    jobs: &Jobs,
    model: Arc<ServingModel>,
    id: String,
    name: String,
    zip: Bytes,
) -> Result<Arc<Job>, AppError> {
    if !zip.starts_with(b"PK\x03\x04") && !zip.starts_with(b"PK\x05\x06") {
        return Err(AppError::UnsupportedMediaType(
            "send the labelled set as a zip file (one folder per class, or a CSV of path,label)"
                .into(),
        ));
    }
    // A fresh directory whatever the id (a fixed id must not meet a stale directory).
    let dir = std::env::temp_dir().join(format!("sightline-eval-{}", new_id()));
    let labels = model.labels.clone();
    let unpack_dir = dir.clone();
    let unpacked = tokio::task::spawn_blocking(move || {
        let root = unpack(&zip, &unpack_dir)?;
        let root = dataset_root(&root, &Resolver::new(&labels));
        dataset::load(&root, &labels).map_err(|e| AppError::Unprocessable(e.to_string()))
    })
    .await
    .map_err(|_| AppError::Internal("the unpacking worker panicked".into()))
    .and_then(|r| r);
    let samples = match unpacked {
        Ok(samples) => samples,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let job = Arc::new(Job {
        id,
        dataset: name.clone(),
        created_at_ms: now_ms(),
        progress: Progress::new(samples.len() as u64, false),
        outcome: Mutex::new(None),
    });
    if !jobs.admit(job.clone()) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(AppError::Unavailable {
            message: format!("{MAX_RUNNING} evaluations are already running; retry later"),
            retry_after: Some(5),
        });
    }
    let running = job.clone();
    tokio::spawn(async move {
        let labels = model.labels.clone();
        let mut report = evaluate_with(&model, &labels, &samples, &name, &running.progress).await;
        // Paths as they are inside the zip.
        let inside = |p: &mut String| {
            if let Ok(rest) = Path::new(p.as_str()).strip_prefix(&dir) {
                *p = rest.display().to_string();
            }
        };
        report
            .predictions
            .iter_mut()
            .for_each(|r| inside(&mut r.path));
        report.failed.iter_mut().for_each(|f| inside(&mut f.path));
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
        *running.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok(Box::new(report)));
    });
    Ok(job)
}

/// `--evaluate-on-start`: reads the zip (a local file, or a URI downloaded now, into a
/// temporary directory, with [`DATASET_FETCH_ATTEMPTS`] attempts of at most
/// [`DATASET_FETCH_TIMEOUT`]), at most `max_bytes` (the API's body limit) and checked
/// against the expected digest when one is given, and [`start`]s it as the job
/// [`STARTUP_ID`], named after the file. While it is fetched the job is `running`. Any
/// failure (cannot be fetched or read, too large, wrong digest, not a zip, not a labelled
/// set) is recorded as that job, `failed` with the message; nothing here stops the server.
pub async fn evaluate_on_start(
    jobs: &Jobs,
    model: Arc<ServingModel>,
    evaluation: &StartupEvaluation,
    max_bytes: usize,
) -> Option<Arc<Job>> {
    let name = evaluation.source.name();
    let shown = evaluation.source.shown();
    jobs.record_fetching(STARTUP_ID, &name);
    let started = match dataset_bytes(evaluation, max_bytes).await {
        Ok(zip) => start(jobs, model, STARTUP_ID.to_string(), name.clone(), zip).await,
        Err(e) => Err(e),
    };
    match started {
        Ok(job) => {
            tracing::info!(dataset = %shown, id = STARTUP_ID, "start-up evaluation running");
            Some(job)
        }
        Err(e) => {
            let message = e.to_string();
            tracing::error!(dataset = %shown, error = %message, "start-up evaluation failed");
            jobs.record_failure(STARTUP_ID, &name, message);
            jobs.get(STARTUP_ID)
        }
    }
}

/// The zip of `evaluation`, at most `max_bytes`, with the expected digest if one is given.
async fn dataset_bytes(
    evaluation: &StartupEvaluation,
    max_bytes: usize,
) -> Result<Bytes, AppError> {
    let sha256 = evaluation.sha256.as_deref();
    match &evaluation.source {
        DatasetSource::File(path) => {
            let zip = read_bounded(path, max_bytes).await?;
            if let Some(expected) = sha256 {
                use sha2::{Digest, Sha256};
                let actual = hex::encode(Sha256::digest(&zip));
                if !expected.eq_ignore_ascii_case(&actual) {
                    return Err(AppError::Unprocessable(format!(
                        "digest mismatch for {}: expected sha256 {expected} \
                         (--evaluate-sha256), got {actual}",
                        path.display()
                    )));
                }
            }
            Ok(zip)
        }
        DatasetSource::Remote(uri) => download(uri, sha256, max_bytes).await,
    }
}

/// Downloads `uri` into a temporary directory (removed again once read) and reads it.
async fn download(uri: &str, sha256: Option<&str>, max_bytes: usize) -> Result<Bytes, AppError> {
    let unfetched = |why: String| {
        AppError::BadGateway(format!("the evaluation set could not be fetched: {why}"))
    };
    let dir = tempfile::Builder::new()
        .prefix("sightline-evaluate-")
        .tempdir()
        .map_err(|e| {
            unfetched(format!(
                "cannot create a temporary directory in {}: {e}",
                std::env::temp_dir().display()
            ))
        })?;
    let out = dir.path().join("dataset.zip");
    let limits = crate::fetch::Limits {
        attempts: DATASET_FETCH_ATTEMPTS,
        timeout: DATASET_FETCH_TIMEOUT,
        max_bytes: Some(max_bytes as u64),
    };
    crate::fetch::fetch_to(uri, sha256, &out, limits)
        .await
        .map_err(|e| match e {
            crate::fetch::FetchError::TooLarge { .. } => {
                unfetched(format!("{e} (--max-upload-bytes)"))
            }
            other => unfetched(other.to_string()),
        })?;
    let zip = read_bounded(&out, max_bytes).await;
    let _ = tokio::task::spawn_blocking(move || drop(dir)).await;
    zip
}

/// The file at `path`, refused when larger than `max_bytes`.
async fn read_bounded(path: &Path, max_bytes: usize) -> Result<Bytes, AppError> {
    use tokio::io::AsyncReadExt;
    let context =
        |e: std::io::Error| AppError::Unprocessable(format!("cannot read {}: {e}", path.display()));
    let file = tokio::fs::File::open(path).await.map_err(context)?;
    let limit = max_bytes as u64;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(context)?;
    if bytes.len() as u64 > limit {
        return Err(AppError::PayloadTooLarge(format!(
            "{} is larger than {max_bytes} bytes (--max-upload-bytes)",
            path.display()
        )));
    }
    Ok(Bytes::from(bytes))
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

/// Unpacks `zip` into `dir` within the limits; returns `dir`.
fn unpack(zip: &[u8], dir: &Path) -> Result<PathBuf, AppError> {
    let bad = |m: String| AppError::Unprocessable(m);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| bad(format!("not a readable zip file: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(bad(format!("more than {MAX_ENTRIES} files in the zip")));
    }
    std::fs::create_dir_all(dir).map_err(|e| AppError::Internal(e.to_string()))?;
    let mut budget = MAX_UNPACKED_BYTES;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        let Some(relative) = entry.enclosed_name() else {
            return Err(bad(format!(
                "zip entry {:?} points outside the archive",
                entry.name()
            )));
        };
        let hidden = relative.components().any(|c| {
            c.as_os_str()
                .to_str()
                .is_some_and(|s| s.starts_with('.') || s == "__MACOSX")
        });
        if entry.is_dir() || hidden {
            continue;
        }
        let target = dir.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| AppError::Internal(e.to_string()))?;
        }
        let mut out =
            std::fs::File::create(&target).map_err(|e| AppError::Internal(e.to_string()))?;
        let copied = std::io::copy(&mut (&mut entry).take(budget + 1), &mut out)
            .map_err(|e| bad(format!("zip entry {:?}: {e}", relative.display())))?;
        if copied > budget {
            return Err(AppError::PayloadTooLarge(format!(
                "the zip unpacks to more than {MAX_UNPACKED_BYTES} bytes"
            )));
        }
        budget -= copied;
    }
    Ok(dir.to_path_buf())
}

/// Where the set starts inside the unpacked zip: a lone `.csv` file at a level, or the
/// level whose folders are classes (a single wrapping folder that is not a class is
/// stepped into, as zipping a folder makes one).
fn dataset_root(dir: &Path, resolver: &Resolver) -> PathBuf {
    let mut root = dir.to_path_buf();
    for _ in 0..4 {
        let Ok(entries) = std::fs::read_dir(&root) else {
            break;
        };
        let entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        let csvs: Vec<&PathBuf> = entries
            .iter()
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "csv"))
            .collect();
        if let [csv] = csvs.as_slice() {
            return csv.to_path_buf();
        }
        match entries.as_slice() {
            [only]
                if only.is_dir()
                    && only
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_none_or(|n| resolver.resolve(n).is_none()) =>
            {
                root = only.clone();
            }
            _ => break,
        }
    }
    root
}

fn new_id() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(now_ms().to_le_bytes());
    h.update(NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    hex::encode(&h.finalize()[..12])
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
