//! The images through the model: as many in flight as batches can take
//! ([`ServingModel::bulk_in_flight`], as for an evaluation; the batcher forms
//! batches of the size the model tuned), each result written to the journal as it comes,
//! in listing order.

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use sightline_model::serving::ServingModel;

use crate::BatchError;
use crate::journal::{Journal, Line};
use crate::listing::Item;

/// Classes kept per image.
pub const TOP_K: usize = 5;

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Images recognized now.
    pub recognized: u64,
    /// Images that failed (a line with an `error`).
    pub failed: u64,
}

/// Where the images' bytes come from.
pub trait Reader: Send + Sync {
    /// The bytes of `item`, at most `max` of them; why not, as the line's error.
    fn read<'a>(&'a self, item: &'a Item, max: u64) -> BoxFuture<'a, Result<Vec<u8>, String>>;
}

/// Files on a disk (the folder listing's items).
pub struct Files;

impl Reader for Files {
    fn read<'a>(&'a self, item: &'a Item, max: u64) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(sightline_eval::runner::read_image(&item.path, max))
    }
}

/// Recognizes `items` and appends a line for each to `journal`; `tick` is called after
/// each line (progress). Images larger than `max_image_bytes` are failed, not read.
pub async fn run(
    model: &Arc<ServingModel>,
    items: Vec<Item>,
    reader: &dyn Reader,
    journal: &mut Journal,
    max_image_bytes: u64,
    mut tick: impl FnMut(&Line),
) -> Result<Counts, BatchError> {
    let in_flight = model.bulk_in_flight();
    let mut lines = futures::stream::iter(items)
        .map(|item| {
            let model = model.clone();
            async move { recognize(&model, item, reader, max_image_bytes).await }
        })
        .buffered(in_flight);
    let mut counts = Counts::default();
    while let Some(line) = lines.next().await {
        journal.write(&line)?;
        if line.error.is_some() {
            counts.failed += 1;
        } else {
            counts.recognized += 1;
        }
        tick(&line);
    }
    Ok(counts)
}

async fn recognize(model: &ServingModel, item: Item, reader: &dyn Reader, max: u64) -> Line {
    let mut line = Line {
        image: item.name.clone(),
        sha256: None,
        model: model.name.clone(),
        model_sha256: model.info.sha256.clone(),
        predictions: Vec::new(),
        error: None,
    };
    let bytes = match reader.read(&item, max).await {
        Ok(bytes) => bytes,
        Err(e) => {
            line.error = Some(e);
            return line;
        }
    };
    line.sha256 = Some(hex::encode(Sha256::digest(&bytes)));
    match model.classify(bytes.into(), TOP_K).await {
        Ok(predictions) => line.predictions = predictions,
        Err(e) => line.error = Some(e.to_string()),
    }
    line
}
