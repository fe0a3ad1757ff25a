//! `--input s3://bucket[/prefix]`: the images of an S3-compatible bucket, listed and read
//! through `object_store` with the same endpoint and credentials flags as the upload role's
//! image store (`--s3-endpoint`, `--s3-region`, `AWS_*`).

use std::sync::Arc;

use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::ObjectStore;
use sightline_batch::listing::{self, Item};
use sightline_batch::run::Reader;

use crate::upload::{S3Config, UploadError};

/// A bucket prefix of images.
pub struct Bucket {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl Bucket {
    pub fn connect(config: &S3Config) -> Result<Bucket, UploadError> {
        let (store, prefix) = config.connect()?;
        Ok(Bucket {
            url: config.url.clone(),
            store,
            prefix,
        })
    }

    /// Every image under the prefix, sorted by name (the same rule as a folder's listing).
    pub async fn list(&self) -> Result<Vec<Item>, UploadError> {
        let under =
            (!self.prefix.is_empty()).then(|| object_store::path::Path::from(self.prefix.as_str()));
        let keys: Vec<String> = self
            .store
            .list(under.as_ref())
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|source| UploadError::Object {
                action: "list",
                key: self.url.clone(),
                source,
            })?;
        Ok(listing::objects(&self.prefix, keys))
    }
}

impl Reader for Bucket {
    fn read<'a>(&'a self, item: &'a Item, max: u64) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let key = item.path.to_string_lossy();
            let location = object_store::path::Path::from(key.as_ref());
            let object = self
                .store
                .get(&location)
                .await
                .map_err(|e| format!("cannot read s3 object {key}: {e}"))?;
            if object.meta.size > max {
                return Err(format!("larger than {max} bytes"));
            }
            let bytes = object
                .bytes()
                .await
                .map_err(|e| format!("cannot read s3 object {key}: {e}"))?;
            if bytes.len() as u64 > max {
                return Err(format!("larger than {max} bytes"));
            }
            Ok(bytes.to_vec())
        })
    }

    fn url(&self, item: &Item) -> String {
        let bucket = self
            .url
            .trim_start_matches("s3://")
            .split('/')
            .next()
            .unwrap_or_default();
        format!("s3://{bucket}/{}", item.path.to_string_lossy())
    }
}
