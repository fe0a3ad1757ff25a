//! `--evaluate-on-start PATH|URI`: the same evaluation as `POST /api/v1/evaluations`, run
//! once the model is ready under the fixed id [`STARTUP_ID`], through [`super::api::start`]
//! and the server's one [`Jobs`] store. A URI is downloaded only then, by the server
//! itself, so a dataset that cannot be fetched is a `failed` evaluation while the model goes
//! on serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::api::start;
use super::jobs::{Job, Jobs};
use crate::http::error::AppError;
use crate::serving::ServingModel;

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
    jobs.record(STARTUP_ID, &name, None);
    let started = match dataset_bytes(evaluation, max_bytes).await {
        Ok(zip) => {
            let id = STARTUP_ID.to_string();
            start(jobs, model, id, name.clone(), zip, max_bytes as u64).await
        }
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
            jobs.record(STARTUP_ID, &name, Some(message));
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
