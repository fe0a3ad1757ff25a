//! `sightline-server fetch`: one model or labels file from `https://` or `s3://` onto local
//! disk, verified. This is what the operator's init container runs, so a pod never serves
//! a file whose digest does not match, and never sees a half-written one.
//!
//! The body is streamed to a temporary file beside the target while its SHA-256 is
//! computed; only a complete file with the expected digest is fsynced and renamed into
//! place. Transient failures are retried with backoff; a digest mismatch is not.
//!
//! [`fetch_to`] is the one copy of that logic: the command runs it, and so does the server
//! for `--evaluate-on-start https://…|s3://…` (with a size limit and fewer, shorter
//! attempts). Error messages name the URI without its query string or credentials (a
//! presigned URL's signature is a secret).

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
    #[error("{0:?} is not an https://, http:// or s3:// URI")]
    Scheme(String),
    #[error("the expected sha256 must be 64 hex digits, got {0:?}")]
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
    #[error("{uri} is larger than the limit of {max_bytes} bytes")]
    TooLarge { uri: String, max_bytes: u64 },
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

/// How hard [`fetch_to`] tries, and how much it accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Attempts for transient failures (network, 5xx, 429); at least one is made.
    pub attempts: u32,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Largest body accepted; a larger one fails at once (from `Content-Length` when the
    /// server sends it, else as soon as the stream passes the limit) and is not retried.
    pub max_bytes: Option<u64>,
}

/// Runs the command: fetch, verify, move into place. Logs the digest.
pub async fn run(args: FetchArgs) -> Result<(), FetchError> {
    let limits = Limits {
        attempts: args.attempts,
        timeout: Duration::from_secs(args.timeout_secs),
        max_bytes: None,
    };
    fetch_to(&args.uri, args.sha256.as_deref(), &args.out, limits).await?;
    Ok(())
}

/// Downloads `uri` (`https://`, `http://` or `s3://`) to `out`, verifying `sha256` when
/// given; retries transient failures with backoff within `limits`. `out` appears only once
/// complete and verified; nothing is left behind on failure. Returns the file's digest.
pub async fn fetch_to(
    uri: &str,
    sha256: Option<&str>,
    out: &Path,
    limits: Limits,
) -> Result<String, FetchError> {
    if let Some(expected) = sha256
        && (expected.len() != 64 || !expected.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(FetchError::BadDigest(expected.to_string()));
    }
    let shown = redact(uri);
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match tokio::time::timeout(limits.timeout, fetch_once(uri, sha256, out, &limits)).await {
            Ok(Ok(digest)) => {
                tracing::info!(uri = %shown, out = %out.display(), sha256 = %digest, "fetched");
                return Ok(digest);
            }
            Ok(Err(e)) if e.transient() && attempt < limits.attempts => {
                tracing::warn!(attempt, error = %e, "fetch failed; retrying");
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                // The attempt was dropped mid-way: its partial file is still there.
                let _ = tokio::fs::remove_file(part_path(out)).await;
                if attempt >= limits.attempts {
                    return Err(FetchError::Transfer {
                        uri: shown,
                        message: format!(
                            "timed out after {attempt} attempt(s) of {:?} each",
                            limits.timeout
                        ),
                    });
                }
                tracing::warn!(attempt, uri = %shown, "fetch timed out; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
        attempt += 1;
    }
}

/// `uri` as error messages and logs show it: without user, password, query or fragment.
pub fn redact(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => uri.split(['?', '#']).next().unwrap_or_default().to_string(),
    }
}

/// One attempt: stream into `<out>.part`, check, rename. Returns the digest.
async fn fetch_once(
    uri: &str,
    sha256: Option<&str>,
    out: &Path,
    limits: &Limits,
) -> Result<String, FetchError> {
    let part = part_path(out);
    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| FetchError::Write { path, source }
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(write_err(dir))?;
    }
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(write_err(&part))?;
    let mut hasher = Sha256::new();
    let result = copy_into(uri, &mut file, &mut hasher, limits.max_bytes).await;
    if let Err(e) = result {
        drop(file);
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    file.sync_all().await.map_err(write_err(&part))?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if let Some(expected) = sha256
        && !expected.eq_ignore_ascii_case(&actual)
    {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(FetchError::Mismatch {
            uri: redact(uri),
            expected: expected.to_string(),
            actual,
        });
    }
    tokio::fs::rename(&part, out)
        .await
        .map_err(write_err(out))?;
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
    max_bytes: Option<u64>,
) -> Result<(), FetchError> {
    let shown = redact(uri);
    let transfer = |message: String| FetchError::Transfer {
        uri: shown.clone(),
        message,
    };
    let sink = Sink {
        file,
        hasher,
        max_bytes,
        uri: &shown,
    };
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| FetchError::Scheme(shown.clone()))?;
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| transfer(e.to_string()))?;
        let result = object_store::ObjectStore::get(&store, &object_store::path::Path::from(key))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => FetchError::Status {
                    uri: shown.clone(),
                    status: 404,
                },
                other => transfer(other.to_string()),
            })?;
        sink.check_size(Some(result.meta.size))?;
        return sink
            .write_stream(result.into_stream(), |e| transfer(e.to_string()))
            .await;
    }
    if !uri.starts_with("https://") && !uri.starts_with("http://") {
        return Err(FetchError::Scheme(shown));
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
            uri: shown,
            status: response.status().as_u16(),
        });
    }
    sink.check_size(response.content_length())?;
    sink.write_stream(response.bytes_stream(), |e| {
        transfer(e.without_url().to_string())
    })
    .await
}

/// Where one attempt's bytes go: hashed, written, counted against the limit.
struct Sink<'a> {
    file: &'a mut tokio::fs::File,
    hasher: &'a mut Sha256,
    max_bytes: Option<u64>,
    /// The URI as messages show it.
    uri: &'a str,
}

impl Sink<'_> {
    fn too_large(&self, max_bytes: u64) -> FetchError {
        FetchError::TooLarge {
            uri: self.uri.to_string(),
            max_bytes,
        }
    }

    /// Refuses a body whose announced size is over the limit before reading it.
    fn check_size(&self, announced: Option<u64>) -> Result<(), FetchError> {
        match (announced, self.max_bytes) {
            (Some(size), Some(max)) if size > max => Err(self.too_large(max)),
            _ => Ok(()),
        }
    }

    /// Hashes and writes every chunk of `stream`; `transfer` words a stream error.
    async fn write_stream<E>(
        self,
        stream: impl futures::Stream<Item = Result<bytes::Bytes, E>>,
        transfer: impl Fn(E) -> FetchError,
    ) -> Result<(), FetchError> {
        let mut stream = std::pin::pin!(stream);
        let mut written: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(&transfer)?;
            written = written.saturating_add(chunk.len() as u64);
            if let Some(max) = self.max_bytes
                && written > max
            {
                return Err(self.too_large(max));
            }
            self.hasher.update(&chunk);
            self.file
                .write_all(&chunk)
                .await
                .map_err(|source| FetchError::Write {
                    path: "the temporary file".into(),
                    source,
                })?;
        }
        Ok(())
    }
}
