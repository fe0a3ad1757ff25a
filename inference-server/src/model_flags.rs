//! The model flags (`--model`, `--labels`, the preprocessing overrides, batching, threads,
//! cache) turned into [`ModelSetup`], the plain configuration `sightline-model` takes:
//! the sidecar JSON beside the model first, then each flag that was given.

use std::time::Duration;

use sightline_model::batching::BatchConfig;
use sightline_model::drift::DriftConfig;
use sightline_model::engine::EngineConfig;
use sightline_model::layout_tuning::Fixed;
use sightline_model::model_config::{ModelSidecar, Preprocess};
use sightline_model::preprocess::DecodeLimits;
use sightline_model::serving::{ModelSetup, SetupError};

use crate::cli::ServeArgs;

/// The model setup the flags describe: sidecar, then flag overrides.
pub fn model_setup(args: &ServeArgs) -> Result<ModelSetup, SetupError> {
    let m = &args.model;
    let sidecar_path = m.model_config.clone().or_else(|| {
        let beside = m.beside_model("json");
        beside.is_file().then_some(beside)
    });
    let sidecar = match &sidecar_path {
        Some(path) => ModelSidecar::load(path)?,
        None => ModelSidecar {
            preprocess: Preprocess::default(),
            ..ModelSidecar::default()
        },
    };
    let mut p = sidecar.preprocess.clone();
    if let Some(v) = m.input_size {
        p.size = v;
    }
    if let Some(v) = m.layout {
        p.layout = v;
    }
    if let Some(v) = m.resize {
        p.resize = v;
    }
    if let Some(v) = m.crop_fraction {
        p.crop_fraction = v;
    }
    if let Some(v) = m.channels {
        p.channels = v;
    }
    if let Some(v) = m.scale {
        p.scale = v;
    }
    if let Some(v) = m.mean {
        p.mean = v;
    }
    if let Some(v) = m.std {
        p.std = v;
    }
    p.validate()?;
    let labels_path = m
        .labels
        .clone()
        .unwrap_or_else(|| m.beside_model("labels.txt"));
    let labels = sightline_model::labels::load(&labels_path)?;
    let name = m
        .model_name
        .clone()
        .or_else(|| sidecar.name.clone())
        .or_else(|| {
            m.model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "model".to_string());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Ok(ModelSetup {
        name,
        ort_lib: m.ort_lib.clone(),
        engine: EngineConfig {
            model_path: m.model.clone(),
            labels,
            preprocess: p,
            input_name: sidecar.input.clone(),
            output_name: sidecar.output.clone(),
            output_kind: sidecar.output_kind(),
            expected_sha256: m.model_sha256.clone(),
            device: m.device,
            allow_cpu_fallback: m.allow_cpu_fallback,
            // Set by the layout (the flags', or the warm-up trial's).
            intra_threads: if m.intra_threads == 0 {
                cores
            } else {
                m.intra_threads
            },
            intra_op_spinning: m.intra_op_spinning.unwrap_or(false),
            stop_spinning_after_run: false,
            batch_size: m.max_batch_size,
        },
        batching: BatchConfig {
            // The limit until the model has loaded; then the size it was tuned to.
            max_batch_size: m.max_batch_size.limit(),
            max_request_rows: m.max_batch_size.limit(),
            max_delay: Duration::from_millis(m.max_delay_ms),
            queue_capacity: m.queue_capacity.max(1),
            // Decided when the model loads (the device it really got).
            fixed_shape: false,
        },
        limits: DecodeLimits {
            max_pixels: args.max_image_pixels,
            ..DecodeLimits::default()
        },
        layout: Fixed {
            instances: m.instances.map(usize::from),
            threads: (m.intra_threads > 0).then_some(m.intra_threads),
            spinning: m.intra_op_spinning,
            decode: m.decode_at,
        },
        cores,
        // Checked by the flag's parser: finite, from 0 to 600.
        tune_budget: Duration::from_secs_f64(m.tune_budget_seconds),
        preprocess_workers: if m.decode_threads == 0 {
            cores
        } else {
            m.decode_threads
        },
        cache_bytes: m.cache_bytes,
        drift: DriftConfig {
            baseline_answers: m.drift_baseline_answers,
            window: Duration::from_secs(m.drift_window_seconds),
            min_samples: m.drift_min_samples,
        },
    })
}
