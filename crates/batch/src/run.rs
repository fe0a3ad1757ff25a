//! The images through the model: as many in flight as batches can take
//! ([`ServingModel::bulk_in_flight`], as for an evaluation; the batcher forms
//! batches of the size the model tuned), each result written to the journal as it comes,
//! in listing order.

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use sightline_model::serving::ServingModel;

use sightline_api::Prediction;

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
    /// Images the sink already had a result for (not recognized again).
    pub known: u64,
    /// Images that failed (a line with an `error`).
    pub failed: u64,
}

/// Where the images' bytes come from.
pub trait Reader: Send + Sync {
    /// The bytes of `item`, at most `max` of them; why not, as the line's error.
    fn read<'a>(&'a self, item: &'a Item, max: u64) -> BoxFuture<'a, Result<Vec<u8>, String>>;
    /// Where `item` is, as a URL (what a stored result names as its image).
    fn url(&self, item: &Item) -> String;
}

/// Files on a disk (the folder listing's items).
pub struct Files;

impl Reader for Files {
    fn read<'a>(&'a self, item: &'a Item, max: u64) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(sightline_eval::runner::read_image(&item.path, max))
    }

    fn url(&self, item: &Item) -> String {
        format!("file://{}", item.path.display())
    }
}

/// Where results are kept besides the output file (a pipeline's results database), and
/// what it already knows: an image it has a result for, for this model digest and this
/// preprocessing, is not recognized again.
pub trait Sink: Send + Sync {
    /// The stored predictions of image `line.sha256` by model digest `line.model_sha256`
    /// with preprocessing `line.preprocess_sha256`, if any.
    fn known<'a>(
        &'a self,
        sha256: &'a str,
        line: &'a Line,
    ) -> BoxFuture<'a, Result<Option<Vec<Prediction>>, String>>;
    /// Keeps one image's result (idempotently: saving it twice keeps one).
    fn save<'a>(&'a self, image_url: String, line: &'a Line) -> BoxFuture<'a, Result<(), String>>;
}

/// Recognizes `items` and appends a line for each to `journal`; `tick` is called after
/// each line (progress). Images larger than `max_image_bytes` are failed, not read.
///
/// With a `sink`, an image it already knows is not recognized again (its line carries the
/// stored predictions and `known`), and every new result is saved there before its line
/// is written, so a run stopped at any moment has stored every line of its output; a sink
/// that cannot answer stops the run ([`BatchError::Sink`]), to be resumed.
pub async fn run(
    model: &Arc<ServingModel>,
    items: Vec<Item>,
    (reader, sink): (&dyn Reader, Option<&dyn Sink>),
    journal: &mut Journal,
    max_image_bytes: u64,
    mut tick: impl FnMut(&Line),
) -> Result<Counts, BatchError> {
    let in_flight = model.bulk_in_flight();
    let mut lines = futures::stream::iter(items)
        .map(|item| {
            let model = model.clone();
            async move { recognize(&model, item, reader, sink, max_image_bytes).await }
        })
        .buffered(in_flight);
    let mut counts = Counts::default();
    while let Some(line) = lines.next().await {
        let line = line?;
        journal.write(&line)?;
        if line.error.is_some() {
            counts.failed += 1;
        } else if line.known {
            counts.known += 1;
        } else {
            counts.recognized += 1;
        }
        tick(&line);
    }
    Ok(counts)
}

async fn recognize(
    model: &ServingModel,
    item: Item,
    reader: &dyn Reader,
    sink: Option<&dyn Sink>,
    max: u64,
) -> Result<Line, BatchError> {
    let mut line = Line {
        image: item.name.clone(),
        sha256: None,
        model: model.name.clone(),
        model_sha256: model.info.sha256.clone(),
        preprocess_sha256: model.preprocess_sha256.clone(),
        predictions: Vec::new(),
        known: false,
        error: None,
    };
    let bytes = match reader.read(&item, max).await {
        Ok(bytes) => bytes,
        Err(e) => {
            line.error = Some(e);
            return Ok(line);
        }
    };
    let sha256 = hex::encode(Sha256::digest(&bytes));
    line.sha256 = Some(sha256.clone());
    if let Some(sink) = sink
        && let Some(stored) = sink.known(&sha256, &line).await.map_err(BatchError::Sink)?
    {
        line.predictions = stored;
        line.known = true;
        return Ok(line);
    }
    match model.classify(bytes.into(), TOP_K).await {
        Ok(predictions) => line.predictions = predictions,
        Err(e) => {
            line.error = Some(e.to_string());
            return Ok(line);
        }
    }
    if let Some(sink) = sink {
        sink.save(reader.url(&item), &line)
            .await
            .map_err(BatchError::Sink)?;
    }
    Ok(line)
}
