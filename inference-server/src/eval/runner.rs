//! Runs an evaluation: loads the model as the recognize role does (same sidecar, flags,
//! engine and dynamic batcher), classifies every image of the set through the batcher with
//! as many images in flight as batches can take, and scores the answers.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use super::EvalError;
use super::archive::Cancel;
use super::dataset::{self, Sample};
use super::progress::Progress;
use super::report::{Answer, Report};
use crate::cli::EvalArgs;
use crate::metrics::InferenceMetrics;
use crate::postprocess::{softmax, top_k_indices};
use crate::serving::{ModelSlot, ModelStatus, ServingModel, load_into};

/// Ranked classes kept per image (top-5 accuracy needs five).
const RANKED: usize = 5;

/// `sightline-server eval`: runs, prints the table, writes the JSON file.
pub async fn run_cli(args: EvalArgs) -> Result<Report, EvalError> {
    let report = run_eval(&args).await?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").map_err(|source| EvalError::Write {
            path: path.display().to_string(),
            source,
        })?;
        eprintln!("wrote {}", path.display());
    }
    Ok(report)
}

/// Evaluates the model (and the baseline, when given) on the set.
pub async fn run_eval(args: &EvalArgs) -> Result<Report, EvalError> {
    let model = load_model(&args.serve).await?;
    let samples = dataset::load(&args.dataset, &model.labels)?;
    let shown = args.dataset.display().to_string();
    let max = args.serve.max_upload_bytes as u64;
    let report = evaluate(
        &model,
        &model.labels,
        &samples,
        &shown,
        !args.no_progress,
        max,
    )
    .await;
    let Some(baseline_path) = &args.baseline else {
        return Ok(report);
    };
    let mut serve = args.serve.clone();
    serve.model.model = baseline_path.clone();
    serve.model.model_config = None;
    serve.model.model_name = None;
    serve.model.model_sha256 = None;
    let baseline = load_model(&serve).await?;
    // Class indices must mean the same; label spellings may differ between label files
    // (the report names classes with the model's labels).
    if baseline.labels.len() != model.labels.len() {
        return Err(EvalError::LabelsDiffer {
            model: model.labels.len(),
            baseline: baseline.labels.len(),
        });
    }
    if baseline.labels != model.labels {
        tracing::warn!("the baseline's label names differ from the model's; using the model's");
    }
    let base = evaluate(
        &baseline,
        &model.labels,
        &samples,
        &shown,
        !args.no_progress,
        max,
    )
    .await;
    Ok(report.with_baseline(base))
}

async fn load_model(args: &crate::cli::ServeArgs) -> Result<Arc<ServingModel>, EvalError> {
    let setup = crate::serving::model_setup(args)?;
    let shown = args.model.model.display().to_string();
    let slot = ModelSlot::new(ModelStatus::Loading);
    load_into(slot.clone(), setup, InferenceMetrics::unregistered()).await;
    slot.ready().map_err(|message| EvalError::Model {
        model: shown,
        message,
    })
}

/// Classifies every sample through the model's batcher and scores the answers; an image
/// file larger than `max_image_bytes` is a failed sample, not read.
pub async fn evaluate(
    model: &Arc<ServingModel>,
    labels: &[String],
    samples: &[Sample],
    dataset: &str,
    progress: bool,
    max_image_bytes: u64,
) -> Report {
    let bar = Progress::new(samples.len() as u64, progress);
    let never = Cancel::default();
    evaluate_with(
        model,
        labels,
        samples,
        dataset,
        &bar,
        max_image_bytes,
        &never,
    )
    .await
}

/// [`evaluate`], counting progress in `bar` (the evaluations API reads it) and taking no
/// new image once `cancel` is set.
pub async fn evaluate_with(
    model: &Arc<ServingModel>,
    labels: &[String],
    samples: &[Sample],
    dataset: &str,
    bar: &Progress,
    max_image_bytes: u64,
    cancel: &Cancel,
) -> Report {
    let started = Instant::now();
    // Enough images in flight to fill a batch while the next one is being decoded, never
    // more than the queue holds.
    let batching = model.batch_config();
    let in_flight = (batching.max_batch_size * 2).clamp(1, batching.queue_capacity.max(1));
    let answers: Vec<Answer> = futures::stream::iter(samples.iter().cloned())
        .take_while(|_| std::future::ready(!cancel.is_set()))
        .map(|s: Sample| {
            let model = model.clone();
            async move {
                let ranked = rank(&model, &s.path, max_image_bytes).await;
                bar.inc();
                Answer {
                    path: s.path,
                    truth: s.class,
                    ranked,
                }
            }
        })
        .buffered(in_flight)
        .collect()
        .await;
    bar.finish();
    Report::build(
        &model.name,
        dataset,
        labels,
        &answers,
        started.elapsed().as_secs_f64(),
    )
}

/// The bytes of one image file: a regular file (a device or a pipe would be read without
/// end), at most `max` bytes.
async fn read_image(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let meta = tokio::fs::metadata(path).await.map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!("larger than {max} bytes"));
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(bytes)
}

/// The top classes of one image file, best first.
async fn rank(model: &ServingModel, path: &Path, max: u64) -> Result<Vec<usize>, String> {
    let bytes = read_image(path, max).await?;
    // The recognitions' decode bound (--decode-threads) holds for evaluations too.
    let tensor = model
        .preprocess_bytes(bytes.into())
        .await
        .map_err(|e| e.to_string())?;
    let row = model
        .infer_rows(tensor, 1)
        .await
        .map_err(|e| e.to_string())?;
    let probs = if model.info.outputs_probabilities {
        row
    } else {
        softmax(&row)
    };
    Ok(top_k_indices(&probs, RANKED))
}
