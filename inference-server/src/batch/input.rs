//! Where a batch's images are: a folder, an S3-compatible bucket (`s3://…`, [`Bucket`]) or
//! a listing file on a web server (`https://…`, [`WebList`]), chosen by `--input`'s form.

use std::path::Path;

use sightline_batch::listing::{self, Item};
use sightline_batch::run::{Files, Reader};

use super::BatchCommandError;
use super::objects::Bucket;
use super::web::WebList;
use crate::cli::BatchArgs;

pub enum Input<'a> {
    Folder(&'a Path),
    Bucket(Bucket),
    Web(WebList),
}

impl<'a> Input<'a> {
    pub fn of(args: &'a BatchArgs) -> Result<Input<'a>, BatchCommandError> {
        let text = args.input.to_str().unwrap_or_default();
        if text.starts_with("s3://") {
            return Ok(Input::Bucket(Bucket::connect(&crate::upload::S3Config {
                url: text.to_string(),
                endpoint: args.serve.s3_endpoint.clone(),
                region: args.serve.s3_region.clone(),
                access_key_id: args.serve.s3_access_key_id.clone(),
                secret_access_key: args.serve.s3_secret_access_key.clone(),
            })?));
        }
        if text.starts_with("https://") || text.starts_with("http://") {
            return Ok(Input::Web(WebList::new(text)?));
        }
        Ok(Input::Folder(&args.input))
    }

    /// Every image, sorted by name.
    pub async fn list(&self) -> Result<Vec<Item>, BatchCommandError> {
        Ok(match self {
            Input::Folder(path) => listing::list(path)?,
            Input::Bucket(bucket) => bucket.list().await?,
            Input::Web(web) => web.list().await?,
        })
    }

    pub fn reader(&self) -> &dyn Reader {
        match self {
            Input::Folder(_) => &Files,
            Input::Bucket(bucket) => bucket,
            Input::Web(web) => web,
        }
    }

    /// Whether `--truth`'s paths name files on this disk (else names under the input).
    pub fn is_local(&self) -> bool {
        matches!(self, Input::Folder(_))
    }
}
