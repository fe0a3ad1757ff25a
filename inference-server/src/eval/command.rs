//! `sightline-server eval`: loads the model (and the baseline) exactly as the recognize
//! role does (same sidecar, flags, engine and dynamic batcher), evaluates it on the set
//! ([`sightline_eval`]), prints the table and writes the JSON report.

use std::sync::Arc;

use sightline_eval::dataset;
use sightline_eval::runner::evaluate;
use sightline_eval::{EvalError, Report};
use sightline_model::metrics::InferenceMetrics;
use sightline_model::serving::{ModelSlot, ModelStatus, ServingModel, load_into};

use crate::cli::EvalArgs;

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

pub(crate) async fn load_model(
    args: &crate::cli::ServeArgs,
) -> Result<Arc<ServingModel>, EvalError> {
    let setup = crate::model_flags::model_setup(args)?;
    let shown = args.model.model.display().to_string();
    let slot = ModelSlot::new(ModelStatus::Loading);
    load_into(slot.clone(), setup, InferenceMetrics::unregistered()).await;
    slot.ready().map_err(|message| EvalError::Model {
        model: shown,
        message,
    })
}
