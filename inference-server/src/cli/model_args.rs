//! The model flags (`--model`, `--labels`, preprocessing overrides, device, threads,
//! batching, cache, `--ort-lib`); `model_flags` turns them into the model's own setup.

use std::path::PathBuf;

use clap::Args;

use crate::engine::Device;
use crate::model_config::{Channels, Layout, ResizePolicy, parse_triple};

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The ONNX classifier to serve.
    #[arg(
        long,
        env = "SIGHTLINE_MODEL",
        default_value = "models/build/efficientnet-lite0.onnx"
    )]
    pub model: PathBuf,

    /// Labels file, one class per line in output order [default: <model>.labels.txt].
    #[arg(long, env = "SIGHTLINE_LABELS")]
    pub labels: Option<PathBuf>,

    /// Preprocessing sidecar (JSON) [default: <model>.json when it exists, else ImageNet
    /// defaults].
    #[arg(long, env = "SIGHTLINE_MODEL_CONFIG")]
    pub model_config: Option<PathBuf>,

    /// Name of the model in URLs and metrics [default: the sidecar's name, else the file
    /// name without extension].
    #[arg(long, env = "SIGHTLINE_MODEL_NAME")]
    pub model_name: Option<String>,

    /// Expected SHA-256 of the model file; the server stays not-ready on a mismatch.
    #[arg(long, env = "SIGHTLINE_MODEL_SHA256")]
    pub model_sha256: Option<String>,

    /// Input side in pixels (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_INPUT_SIZE")]
    pub input_size: Option<u32>,

    /// Input tensor layout (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_LAYOUT", value_enum)]
    pub layout: Option<Layout>,

    /// Resize policy (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_RESIZE", value_enum)]
    pub resize: Option<ResizePolicy>,

    /// Share of the shorter side kept by the centre crop (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_CROP_FRACTION")]
    pub crop_fraction: Option<f32>,

    /// Channel order (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_CHANNELS", value_enum)]
    pub channels: Option<Channels>,

    /// Factor applied to 8-bit samples before normalisation (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_SCALE")]
    pub scale: Option<f32>,

    /// Per-channel mean, `r,g,b` (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_MEAN", value_parser = parse_triple)]
    pub mean: Option<[f32; 3]>,

    /// Per-channel standard deviation, `r,g,b` (overrides the sidecar).
    #[arg(long, env = "SIGHTLINE_STD", value_parser = parse_triple)]
    pub std: Option<[f32; 3]>,

    /// Where inference runs. `gpu` registers the ONNX Runtime CUDA execution provider.
    #[arg(long, env = "SIGHTLINE_DEVICE", value_enum, default_value = "cpu")]
    pub device: Device,

    /// With --device gpu: serve on the CPU if CUDA cannot be registered, instead of
    /// staying not-ready.
    #[arg(long, env = "SIGHTLINE_ALLOW_CPU_FALLBACK")]
    pub allow_cpu_fallback: bool,

    /// Threads ONNX Runtime uses inside one operator, in each instance (0 = chosen by the
    /// warm-up trial; one per CPU core without a trial).
    #[arg(long, env = "SIGHTLINE_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,

    /// Let ONNX Runtime's intra-op threads spin (busy-wait) for work between operators
    /// instead of sleeping. Unset, the warm-up trial tries both; without a trial they sleep:
    /// spinning burned the CPU that image decoding and HTTP need on one CPU and won on
    /// another (BENCHMARKS.md, "Speed on every CPU").
    #[arg(long, env = "SIGHTLINE_INTRA_OP_SPINNING", action = clap::ArgAction::Set)]
    pub intra_op_spinning: Option<bool>,

    /// Copies of the model, each its own ONNX Runtime session and inference thread, taking
    /// batches from one queue side by side (Triton's instance count). Unset, the warm-up
    /// trial chooses (1 without a trial); on a CPU, give each `--intra-threads` cores ÷
    /// instances.
    #[arg(long, env = "SIGHTLINE_INSTANCES", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub instances: Option<u16>,

    /// Seconds the warm-up trial may take: every candidate layout (instances, intra-op
    /// threads, spinning) and batch size runs with decoding beside it, round after round
    /// while the budget lasts (at least one round), and the fastest is served. 0 turns the
    /// trial off: the flags' layout, else one session with a thread per core, and the
    /// batch size timed on the session alone. Never on a GPU.
    #[arg(long, env = "SIGHTLINE_TUNE_BUDGET_SECONDS", default_value_t = 15.0, value_parser = parse_budget)]
    pub tune_budget_seconds: f64,

    /// Images decoded and preprocessed at once on the blocking pool (0 = one per CPU
    /// core).
    #[arg(long, env = "SIGHTLINE_DECODE_THREADS", default_value_t = 0)]
    pub decode_threads: usize,

    /// Where a request's image is decoded: `pool` (the blocking pool, --decode-threads at
    /// once, then queued) or `worker` (queued undecoded; the instance that runs it decodes
    /// it first, one at a time each). Unset, the warm-up trial tries both when the
    /// instances are one-thread, one per core; otherwise `pool`.
    #[arg(long, env = "SIGHTLINE_DECODE_AT")]
    pub decode_at: Option<sightline_model::decode_at::DecodeAt>,

    /// Most images in one model run: `auto` measures batch sizes 1, 2, 4, 8 with the
    /// model at warm-up and keeps the largest within 2 % of the fastest, never one slower
    /// than batch 1 (`auto:32` tries up to 32); a number fixes it.
    #[arg(long, env = "SIGHTLINE_MAX_BATCH_SIZE", default_value = "auto")]
    pub max_batch_size: crate::batch_tuning::BatchSize,

    /// Most milliseconds a request waits for others to share its batch (only while more
    /// requests are being decoded; a lone request never waits).
    #[arg(long, env = "SIGHTLINE_MAX_DELAY_MS", default_value_t = 2)]
    pub max_delay_ms: u64,

    /// Requests waiting for the model; when full, new ones get 503 with Retry-After.
    #[arg(long, env = "SIGHTLINE_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,

    /// Bytes of recognition results kept in memory, keyed by the image bytes, the model's
    /// digest and its preprocessing (least recently used evicted first; identical requests
    /// in flight share one inference). 0 turns the cache off.
    #[arg(long, env = "SIGHTLINE_CACHE_BYTES", default_value_t = crate::cache::DEFAULT_BYTES)]
    pub cache_bytes: usize,

    /// Answers (top-1 class and confidence) that make the drift baseline, counted from when
    /// the model loaded; `sightline_model_drift` compares the live window with it (see
    /// docs/quality.md). 0 turns drift tracking off.
    #[arg(long, env = "SIGHTLINE_DRIFT_BASELINE_ANSWERS", default_value_t = 1000)]
    pub drift_baseline_answers: u64,

    /// Seconds of answers in the live drift window (it slides in 60 steps).
    #[arg(long, env = "SIGHTLINE_DRIFT_WINDOW_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=30 * 24 * 3600))]
    pub drift_window_seconds: u64,

    /// Fewest answers in the live window for a drift figure (fewer: no figure, not 0).
    #[arg(long, env = "SIGHTLINE_DRIFT_MIN_SAMPLES", default_value_t = 200)]
    pub drift_min_samples: u64,

    /// The ONNX Runtime shared library (from the onnxruntime wheel; `make deps` puts it in
    /// .ort/).
    #[arg(long, env = "SIGHTLINE_ORT_LIB", default_value = crate::ort_runtime::DEFAULT_LIB)]
    pub ort_lib: PathBuf,
}

impl ModelArgs {
    /// `<model>.<suffix>` beside the model file (`models/x.onnx` → `models/x.labels.txt`).
    pub fn beside_model(&self, suffix: &str) -> PathBuf {
        self.model.with_extension(suffix)
    }
}

/// `--tune-budget-seconds`: a number of seconds from 0 to 600.
fn parse_budget(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (0.0..=600.0).contains(s))
        .ok_or_else(|| format!("expected seconds from 0 to 600, got {text:?}"))
}
