//! The `upload` role's data layer: checking image bytes and keeping them,
//! content-addressed, on local disk.
//!
//! An image's id is the SHA-256 of its bytes, so the same image uploaded twice is stored
//! once, and an id names exactly one content forever (strong ETags, immutable caching).
//! Names sent by clients are never used: the key is `<id[0..2]>/<id>`.
//!
//! Two backends: a local directory (the default), where a write goes to a temporary file in
//! the same tree, is fsynced, linked into place (an atomic, create-only rename) and the
//! directory fsynced, so a crash leaves either the whole image or none of it; and an S3-compatible bucket through the
//! `object_store` crate (`--image-store s3://bucket/prefix`), where a PUT is atomic and is
//! made conditional (create-only) so concurrent uploads of one image write it once.

pub mod http;
pub mod image_end;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::preprocess::{DecodeLimits, PreprocessError};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Image(#[from] PreprocessError),
    #[error(
        "the file is not only an image: {0} bytes follow the end of the image (a polyglot file?)"
    )]
    TrailingData(usize),
    #[error(
        "the {format} image is cut short: the file ends before the image does (an interrupted upload?)"
    )]
    Truncated { format: &'static str },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the image check was interrupted: {0}")]
    Worker(String),
    #[error("invalid image store {0:?}: use a directory or s3://bucket[/prefix]")]
    StoreUrl(String),
    #[error("object store: cannot {action} {key}: {source}")]
    Object {
        action: &'static str,
        key: String,
        source: object_store::Error,
    },
}

/// Age past which a temporary file is a crash's leftover (a write takes well under the
/// request timeout).
pub const TEMPORARY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

impl UploadError {
    /// True when a write failed because the disk (or the process's file size limit, or a
    /// quota) is full: the client can retry once space is freed.
    pub fn is_storage_full(&self) -> bool {
        use std::io::ErrorKind;
        matches!(self, UploadError::Io { source, .. } if matches!(
            source.kind(),
            ErrorKind::StorageFull | ErrorKind::FileTooLarge | ErrorKind::QuotaExceeded
        ))
    }
}

/// Where an S3-compatible image store is and how to sign in. Unset fields come from the
/// usual `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_REGION`, `AWS_ENDPOINT`, …).
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// `s3://bucket[/prefix]`.
    pub url: String,
    /// For S3-compatible servers (MinIO, Ceph, …): `http://minio:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl S3Config {
    /// The bucket's client (nothing is contacted yet) and the prefix under it, without
    /// surrounding `/`. Also used by `sightline-server batch --input s3://…`.
    pub fn connect(&self) -> Result<(Arc<dyn object_store::ObjectStore>, String), UploadError> {
        let rest = self
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| UploadError::StoreUrl(self.url.clone()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(UploadError::StoreUrl(self.url.clone()));
        }
        // Bounded retries: a dead bucket is a quick 503, not a request held for minutes.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(10),
            ..object_store::RetryConfig::default()
        };
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry);
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &self.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &self.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder.build().map_err(|source| UploadError::Object {
            action: "configure",
            key: self.url.clone(),
            source,
        })?;
        Ok((Arc::new(store), prefix.trim_matches('/').to_string()))
    }
}

enum Backend {
    Local(PathBuf),
    Object {
        store: Arc<dyn object_store::ObjectStore>,
        prefix: String,
    },
}

/// What the checks found out about an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    /// `jpeg`, `png`, `webp`, `gif` or `bmp`.
    pub format: String,
    pub bytes: u64,
}

/// True for a content id: 64 lowercase hex digits.
pub fn is_image_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The MIME type for one of our format names.
pub fn content_type(format: &str) -> &'static str {
    match format {
        "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        _ => "application/octet-stream",
    }
}

pub fn format_name(format: image::ImageFormat) -> &'static str {
    match format {
        image::ImageFormat::Jpeg => "jpeg",
        image::ImageFormat::Png => "png",
        image::ImageFormat::WebP => "webp",
        image::ImageFormat::Gif => "gif",
        image::ImageFormat::Bmp => "bmp",
        _ => "unknown",
    }
}

/// Checks that `bytes` are one whole image and nothing else: the magic bytes name a
/// supported format, a JPEG or PNG is complete (decoders fill a cut-off image with grey
/// instead of failing), the header's dimensions are within `limits` (before any pixel is
/// decoded), the pixels decode, and no other file hides after the image's end, whatever the
/// format ([`image_end`]).
/// CPU-bound: call from a blocking thread.
pub fn check_image(bytes: &[u8], limits: &DecodeLimits) -> Result<ImageInfo, UploadError> {
    let format = crate::preprocess::sniff(bytes)?;
    if !image_end::complete(format, bytes) {
        return Err(UploadError::Truncated {
            format: format_name(format),
        });
    }
    let decoded = crate::preprocess::decode(bytes, limits)?;
    let trailing = image_end::trailing(format, bytes);
    if trailing > 0 {
        return Err(UploadError::TrailingData(trailing));
    }
    Ok(ImageInfo {
        sha256: sha256_hex(bytes),
        width: decoded.width(),
        height: decoded.height(),
        format: format_name(format).to_string(),
        bytes: bytes.len() as u64,
    })
}

/// Content-addressed images on local disk or in a bucket.
#[derive(Clone)]
pub struct ImageStore {
    backend: Arc<Backend>,
    limits: DecodeLimits,
    /// Bounds the image checks running at once (they are CPU work on the blocking pool).
    cpu: Arc<Semaphore>,
}

impl ImageStore {
    /// Opens (creating) `<dir>`.
    pub fn open(dir: &Path, limits: DecodeLimits) -> Result<ImageStore, UploadError> {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|source| UploadError::Io {
            action: "create the image directory",
            path: tmp.display().to_string(),
            source,
        })?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(ImageStore {
            backend: Arc::new(Backend::Local(dir.to_path_buf())),
            limits,
            cpu: Arc::new(Semaphore::new(cores)),
        })
    }

    /// An S3-compatible bucket (nothing is contacted until the first request).
    pub fn s3(config: &S3Config, limits: DecodeLimits) -> Result<ImageStore, UploadError> {
        let (store, prefix) = config.connect()?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(ImageStore {
            backend: Arc::new(Backend::Object { store, prefix }),
            limits,
            cpu: Arc::new(Semaphore::new(cores)),
        })
    }

    /// `<id[0..2]>/<id>`: never a name from a client.
    fn key_of(id: &str) -> String {
        format!("{}/{id}", &id[..2])
    }

    fn object_path(prefix: &str, id: &str) -> object_store::path::Path {
        if prefix.is_empty() {
            object_store::path::Path::from(Self::key_of(id))
        } else {
            object_store::path::Path::from(format!("{prefix}/{}", Self::key_of(id)))
        }
    }

    /// Checks and stores `bytes`. Returns what it is and whether it was new.
    pub async fn put(&self, bytes: Bytes) -> Result<(ImageInfo, bool), UploadError> {
        let permit = self
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| UploadError::Worker(e.to_string()))?;
        let limits = self.limits;
        let backend = self.backend.clone();
        let checked = bytes.clone();
        // The permit goes with the check: a client that hangs up does not free a slot while
        // its image is still being decoded.
        let info = crate::blocking::run_holding(permit, move || {
            let info = check_image(&checked, &limits)?;
            if let Backend::Local(dir) = &*backend {
                let created = write_local(dir, &info.sha256, &checked)?;
                return Ok((info, Some(created)));
            }
            Ok::<_, UploadError>((info, None))
        })
        .await
        .map_err(|e| UploadError::Worker(e.to_string()))??;
        match (info, &*self.backend) {
            ((info, Some(created)), _) => Ok((info, created)),
            ((info, None), Backend::Object { store, prefix }) => {
                let created = put_object(store.as_ref(), prefix, &info.sha256, bytes).await?;
                Ok((info, created))
            }
            ((_, None), Backend::Local(_)) => Err(UploadError::Worker(
                "internal: a local write reported nothing".into(),
            )),
        }
    }

    /// The bytes of image `id`, or `None` when there is no such image.
    pub async fn get(&self, id: &str) -> Result<Option<Bytes>, UploadError> {
        if !is_image_id(id) {
            return Ok(None);
        }
        match &*self.backend {
            Backend::Local(dir) => {
                let path = dir.join(Self::key_of(id));
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(UploadError::Io {
                        action: "read",
                        path: path.display().to_string(),
                        source,
                    }),
                }
            }
            Backend::Object { store, prefix } => {
                let path = Self::object_path(prefix, id);
                let object_error = |action, source| UploadError::Object {
                    action,
                    key: path.to_string(),
                    source,
                };
                match store.get(&path).await {
                    Ok(result) => Ok(Some(
                        result.bytes().await.map_err(|e| object_error("read", e))?,
                    )),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(object_error("get", e)),
                }
            }
        }
    }

    /// Deletes temporary files left by a crash mid-write (local directories only). Only
    /// files older than [`TEMPORARY_MAX_AGE`]: another replica sharing the directory may be
    /// writing the recent ones right now.
    pub fn sweep_temporary(&self) {
        if let Backend::Local(dir) = &*self.backend
            && let Ok(entries) = std::fs::read_dir(dir.join("tmp"))
        {
            for entry in entries.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > TEMPORARY_MAX_AGE);
                if stale {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// A create-only PUT; `false` when the object exists already. Servers without conditional
/// PUTs get a HEAD first (a race there writes the same bytes twice: harmless, the key is
/// their hash).
async fn put_object(
    store: &dyn object_store::ObjectStore,
    prefix: &str,
    id: &str,
    bytes: Bytes,
) -> Result<bool, UploadError> {
    use object_store::{PutMode, PutOptions};
    let path = ImageStore::object_path(prefix, id);
    let object_error = |action, source| UploadError::Object {
        action,
        key: path.to_string(),
        source,
    };
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store.put_opts(&path, bytes.clone().into(), create).await {
        Ok(_) => Ok(true),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Ok(false),
        Err(object_store::Error::NotImplemented) => match store.head(&path).await {
            Ok(_) => Ok(false),
            Err(object_store::Error::NotFound { .. }) => {
                store
                    .put(&path, bytes.into())
                    .await
                    .map_err(|e| object_error("put", e))?;
                Ok(true)
            }
            Err(e) => Err(object_error("head", e)),
        },
        Err(e) => Err(object_error("put", e)),
    }
}

/// Writes atomically unless the content is already there; true when written now.
fn write_local(dir: &Path, id: &str, bytes: &[u8]) -> Result<bool, UploadError> {
    let path = dir.join(ImageStore::key_of(id));
    if path.is_file() {
        return Ok(false);
    }
    let io = |action, path: &Path| {
        let path = path.display().to_string();
        move |source| UploadError::Io {
            action,
            path,
            source,
        }
    };
    let parent = path.parent().unwrap_or(dir).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let tmp = dir
        .join("tmp")
        .join(format!("{id}.{}", &crate::store::random_hex()[..16]));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        drop(file);
        // A hard link is an atomic create-only rename: of two racing uploads of one image
        // exactly one creates it, and a reader never sees a partial file.
        let created = match std::fs::hard_link(&tmp, &path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(source) => return Err(io("link into", &path)(source)),
        };
        std::fs::File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", &parent))?;
        Ok(created)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests;
