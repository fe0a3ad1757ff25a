//! `sightline-server fetch`: one model or labels file from `https://` or `s3://` onto local
//! disk, verified. This is what the operator's init container runs, so a pod never serves
//! a file whose digest does not match, and never sees a half-written one.
//!
//! The body is streamed to a temporary file beside the target while its SHA-256 is
//! computed; only a complete file with the expected digest is fsynced and renamed into
//! place. Transient failures are retried with backoff; a digest mismatch is not.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// `sightline-server fetch` flags.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// `https://host/path` (or plain `http://` inside a trusted network) or
    /// `s3://bucket/key` (S3 credentials, region and endpoint from the usual `AWS_*`
    /// environment variables).
    #[arg(long, env = "SIGHTLINE_FETCH_URI")]
    pub uri: String,
    /// Expected lower-case hex SHA-256; the file is refused when it differs.
    #[arg(long, env = "SIGHTLINE_FETCH_SHA256")]
    pub sha256: Option<String>,
    /// Where to write the file.
    #[arg(long, env = "SIGHTLINE_FETCH_OUT")]
    pub out: PathBuf,
    /// Attempts for transient failures (network, 5xx).
    #[arg(long, default_value_t = 4)]
    pub attempts: u32,
    /// Seconds one attempt may take.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0:?} is not an https:// or s3:// URI")]
    Scheme(String),
    #[error("--sha256 must be 64 hex digits, got {0:?}")]
    BadDigest(String),
    #[error("digest mismatch for {uri}: expected sha256 {expected}, got {actual}")]
    Mismatch {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("{uri} answered HTTP {status}")]
    Status { uri: String, status: u16 },
    #[error("fetching {uri}: {message}")]
    Transfer { uri: String, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl FetchError {
    /// Worth another attempt.
    fn transient(&self) -> bool {
        match self {
            FetchError::Transfer { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Runs the command: fetch, verify, move into place. Prints the digest.
pub async fn run(args: FetchArgs) -> Result<(), FetchError> {
    if let Some(expected) = &args.sha256
        && (expected.len() != 64 || !expected.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(FetchError::BadDigest(expected.clone()));
    }
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match tokio::time::timeout(Duration::from_secs(args.timeout_secs), fetch_once(&args)).await
        {
            Ok(Ok(digest)) => {
                tracing::info!(uri = %args.uri, out = %args.out.display(), sha256 = %digest, "fetched");
                return Ok(());
            }
            Ok(Err(e)) if e.transient() && attempt < args.attempts => {
                tracing::warn!(attempt, error = %e, "fetch failed; retrying");
            }
            Ok(Err(e)) => return Err(e),
            Err(_) if attempt < args.attempts => {
                tracing::warn!(attempt, "fetch timed out; retrying");
            }
            Err(_) => {
                return Err(FetchError::Transfer {
                    uri: args.uri.clone(),
                    message: "timed out".into(),
                });
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
        attempt += 1;
    }
}

/// One attempt: stream into `<out>.part`, check, rename. Returns the digest.
async fn fetch_once(args: &FetchArgs) -> Result<String, FetchError> {
    let part = part_path(&args.out);
    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| FetchError::Write { path, source }
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(write_err(dir))?;
    }
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(write_err(&part))?;
    let mut hasher = Sha256::new();
    let result = copy_into(&args.uri, &mut file, &mut hasher).await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    file.sync_all().await.map_err(write_err(&part))?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if let Some(expected) = &args.sha256
        && !expected.eq_ignore_ascii_case(&actual)
    {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(FetchError::Mismatch {
            uri: args.uri.clone(),
            expected: expected.clone(),
            actual,
        });
    }
    tokio::fs::rename(&part, &args.out)
        .await
        .map_err(write_err(&args.out))?;
    Ok(actual)
}

fn part_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".part");
    out.with_file_name(name)
}

async fn copy_into(
    uri: &str,
    file: &mut tokio::fs::File,
    hasher: &mut Sha256,
) -> Result<(), FetchError> {
    let transfer = |message: String| FetchError::Transfer {
        uri: uri.to_string(),
        message,
    };
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| FetchError::Scheme(uri.to_string()))?;
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| transfer(e.to_string()))?;
        let result = object_store::ObjectStore::get(&store, &object_store::path::Path::from(key))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => FetchError::Status {
                    uri: uri.to_string(),
                    status: 404,
                },
                other => transfer(other.to_string()),
            })?;
        return write_stream(result.into_stream(), file, hasher, |e| {
            transfer(e.to_string())
        })
        .await;
    }
    if !uri.starts_with("https://") && !uri.starts_with("http://") {
        return Err(FetchError::Scheme(uri.to_string()));
    }
    let response = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| transfer(e.to_string()))?
        .get(uri)
        .send()
        .await
        .map_err(|e| transfer(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(FetchError::Status {
            uri: uri.to_string(),
            status: response.status().as_u16(),
        });
    }
    write_stream(response.bytes_stream(), file, hasher, |e| {
        transfer(e.without_url().to_string())
    })
    .await
}

/// Hashes and writes every chunk of `stream` to `file`; `transfer` words a stream error.
async fn write_stream<E>(
    stream: impl futures::Stream<Item = Result<bytes::Bytes, E>>,
    file: &mut tokio::fs::File,
    hasher: &mut Sha256,
    transfer: impl Fn(E) -> FetchError,
) -> Result<(), FetchError> {
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(&transfer)?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|source| FetchError::Write {
                path: "the temporary file".into(),
                source,
            })?;
    }
    Ok(())
}
