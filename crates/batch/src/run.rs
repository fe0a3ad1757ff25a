//! The images through the model: as many in flight as batches can take
//! ([`ServingModel::bulk_in_flight`], as for an evaluation; the batcher forms
//! batches of the size the model tuned), each result written to the journal as it comes,
//! in listing order.

use std::sync::Arc;

use futures::StreamExt;
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

/// Recognizes `items` and appends a line for each to `journal`; `tick` is called after
/// each line (progress). Images larger than `max_image_bytes` are failed, not read.
pub async fn run(
    model: &Arc<ServingModel>,
    items: Vec<Item>,
    journal: &mut Journal,
    max_image_bytes: u64,
    mut tick: impl FnMut(&Line),
) -> Result<Counts, BatchError> {
    let in_flight = model.bulk_in_flight();
    let mut lines = futures::stream::iter(items)
        .map(|item| {
            let model = model.clone();
            async move { recognize(&model, item, max_image_bytes).await }
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

async fn recognize(model: &ServingModel, item: Item, max: u64) -> Line {
    let mut line = Line {
        image: item.name,
        sha256: None,
        model: model.name.clone(),
        model_sha256: model.info.sha256.clone(),
        predictions: Vec::new(),
        error: None,
    };
    let bytes = match sightline_eval::runner::read_image(&item.path, max).await {
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
