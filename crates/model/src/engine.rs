//! One ONNX Runtime session for one classifier: load, validate, warm up, run batches.
//!
//! Loading is a sequence of checks, each with its own error (and readiness reason):
//! the file is read and its SHA-256 compared with the expected digest, the execution
//! provider is registered, the session is created, its input and output are checked against
//! the preprocessing contract and the labels, and a warm-up batch runs. Only a model that
//! passed all of them serves.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, ValueType};
use sha2::{Digest, Sha256};

use crate::batch_tuning::{self, BatchSize, Tuning};
use crate::model_config::{Layout, OutputKind, Preprocess};
use crate::postprocess::is_distribution;

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Gpu,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}

/// Everything needed to load one model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_path: PathBuf,
    pub labels: Vec<String>,
    pub preprocess: Preprocess,
    pub input_name: Option<String>,
    pub output_name: Option<String>,
    pub output_kind: OutputKind,
    pub expected_sha256: Option<String>,
    pub device: Device,
    /// With `device: gpu`, serve on the CPU when CUDA cannot be registered (instead of
    /// staying not-ready).
    pub allow_cpu_fallback: bool,
    pub intra_threads: usize,
    /// Whether the intra-op threads busy-wait between operators (ONNX Runtime's default).
    pub intra_op_spinning: bool,
    /// With spinning: the threads stop spinning the moment a run ends (ONNX Runtime's
    /// `session.force_spinning_stop`), so that no core is kept busy between requests.
    pub stop_spinning_after_run: bool,
    /// `auto` (measured at warm-up), `auto:<limit>` or a fixed size.
    pub batch_size: BatchSize,
}

/// Why a model is not serving. `reason()` is the stable readiness / metric reason.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("model digest mismatch: expected sha256 {expected}, file {path} has {actual}")]
    DigestMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error(
        "the CUDA execution provider could not be registered: {0}. Install the GPU runtime \
         (`make deps-gpu`) on a machine with an NVIDIA driver, or allow CPU fallback \
         (--allow-cpu-fallback)"
    )]
    ExecutionProvider(String),
    #[error("ONNX Runtime could not load the model: {0}")]
    Session(String),
    #[error("model does not fit its configuration: {0}")]
    Invalid(String),
    #[error(
        "the model has {classes} output classes but the labels file has {labels} lines: use \
         the labels file that belongs to this model (one label a line, in output order)"
    )]
    LabelsMismatch { classes: usize, labels: usize },
    #[error("warm-up inference failed: {0}")]
    Warmup(String),
}

impl LoadError {
    pub fn reason(&self) -> &'static str {
        match self {
            LoadError::Read { .. } => "ModelUnreadable",
            LoadError::DigestMismatch { .. } => "DigestMismatch",
            LoadError::ExecutionProvider(_) => "ExecutionProviderUnavailable",
            LoadError::Session(_) => "SessionFailed",
            LoadError::Invalid(_) => "ModelInvalid",
            LoadError::LabelsMismatch { .. } => "LabelsMismatch",
            LoadError::Warmup(_) => "WarmupFailed",
        }
    }
}

/// What the rest of the server needs to know about a loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub input_name: String,
    pub output_name: String,
    /// The input shape as the model declares it (`-1` for dynamic dimensions).
    pub input_shape: Vec<i64>,
    pub classes: usize,
    /// Whether output rows are already probabilities (decided at warm-up when `auto`).
    pub outputs_probabilities: bool,
    pub sha256: String,
    /// The device actually used (CPU when GPU fell back).
    pub device: Device,
    pub load_seconds: f64,
    /// The batch size batches are formed up to, and how it was decided.
    pub batching: Tuning,
}

/// A loaded, validated, warmed-up session.
pub struct Engine {
    session: Session,
    info: ModelInfo,
    preprocess: Preprocess,
    row_len: usize,
}

/// SHA-256 of a file, streamed (models can be hundreds of MB).
pub fn sha256_file(path: &Path) -> Result<String, std::io::Error> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

impl Engine {
    /// Loads and checks the model; blocking (call it off the async runtime).
    pub fn load(
        env: &ort::environment::Environment,
        cfg: &EngineConfig,
    ) -> Result<Engine, LoadError> {
        let started = Instant::now();
        let path_text = cfg.model_path.display().to_string();
        let sha256 = sha256_file(&cfg.model_path).map_err(|source| LoadError::Read {
            path: path_text.clone(),
            source,
        })?;
        if let Some(expected) = &cfg.expected_sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(LoadError::DigestMismatch {
                path: path_text,
                expected: expected.clone(),
                actual: sha256,
            });
        }

        let (session, device) = build_session(env, cfg)?;
        let (input_name, input_shape) = check_input(&session, cfg)?;
        let (output_name, classes) = check_output(&session, cfg)?;
        let row_len = cfg.preprocess.tensor_len();
        let mut engine = Engine {
            session,
            info: ModelInfo {
                input_name,
                output_name,
                input_shape,
                classes: classes.unwrap_or(0),
                outputs_probabilities: cfg.output_kind == OutputKind::Probabilities,
                sha256,
                device,
                load_seconds: 0.0,
                batching: Tuning::fixed(1),
            },
            preprocess: cfg.preprocess.clone(),
            row_len,
        };
        engine.warm_up(cfg)?;
        engine.info.load_seconds = started.elapsed().as_secs_f64();
        Ok(engine)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Values in one input row (one preprocessed image).
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// Runs `rows` images laid out back to back in `input`; returns `rows × classes` scores.
    pub fn run(&mut self, input: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        let (shape, data) = self.forward(input, rows)?;
        if shape.first().copied() != Some(rows as i64) || data.len() != rows * self.info.classes {
            return Err(format!(
                "model output has shape {shape:?}, expected [{rows}, {}]",
                self.info.classes
            ));
        }
        Ok(data)
    }

    /// One session run; returns the output's shape and values.
    fn forward(&mut self, input: &[f32], rows: usize) -> Result<(Vec<i64>, Vec<f32>), String> {
        if rows == 0 || input.len() != rows * self.row_len {
            return Err(format!(
                "batch of {rows} rows needs {} values, got {}",
                rows * self.row_len,
                input.len()
            ));
        }
        let shape = self.preprocess.batch_shape(rows).map(|d| d as i64);
        let tensor =
            ort::value::TensorRef::from_array_view((shape, input)).map_err(|e| e.to_string())?;
        let outputs = self
            .session
            .run(ort::inputs![self.info.input_name.as_str() => tensor])
            .map_err(|e| e.to_string())?;
        let value = outputs
            .get(self.info.output_name.as_str())
            .ok_or_else(|| format!("model produced no output {:?}", self.info.output_name))?;
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        Ok((shape.to_vec(), data.to_vec()))
    }

    /// Learns the class count if the graph leaves it open, decides the batch size
    /// (measuring each candidate for `auto`), runs a full batch of varied inputs (so the
    /// first request pays no first-run cost), checks the output size against the labels and
    /// decides, for `auto` outputs, whether the rows are already probabilities.
    fn warm_up(&mut self, cfg: &EngineConfig) -> Result<(), LoadError> {
        let input = input_rows(self.row_len, 1);
        if self.info.classes == 0 {
            // The class count is dynamic in the graph: learn it from one run.
            let (_, data) = self
                .forward(&input[..self.row_len], 1)
                .map_err(LoadError::Warmup)?;
            self.info.classes = data.len();
        }
        if self.info.classes != cfg.labels.len() {
            return Err(LoadError::LabelsMismatch {
                classes: self.info.classes,
                labels: cfg.labels.len(),
            });
        }
        self.info.batching = self.tune_batch_size(cfg.batch_size)?;
        // The largest batch this model will run (on the GPU, the only shape it runs).
        let rows = self.info.batching.max_batch_size;
        let input = input_rows(self.row_len, rows);
        let out = self.run(&input, rows).map_err(LoadError::Warmup)?;
        if out.iter().any(|v| !v.is_finite()) {
            return Err(LoadError::Warmup(
                "the model produced NaN or infinite scores".into(),
            ));
        }
        self.info.outputs_probabilities = match cfg.output_kind {
            OutputKind::Probabilities => true,
            OutputKind::Logits => false,
            OutputKind::Auto => out.chunks_exact(self.info.classes).all(is_distribution),
        };
        Ok(())
    }
}

impl Engine {
    /// The batch size to serve with: the flag's, the model's own fixed batch, or for
    /// `auto` the fastest of the candidates timed here with this session
    /// (batch_tuning.rs).
    fn tune_batch_size(&mut self, wanted: BatchSize) -> Result<Tuning, LoadError> {
        let model_batch = self
            .info
            .input_shape
            .first()
            .copied()
            .filter(|&b| b > 0)
            .map(|b| b as usize);
        match (wanted, model_batch) {
            (BatchSize::Fixed(n), Some(b)) if n != b => Err(LoadError::Invalid(format!(
                "the model's input has a fixed batch of {b}, so it cannot run batches of up to \
                 {n}: set the maximum batch size to {b}, or to auto"
            ))),
            (BatchSize::Fixed(n), _) => Ok(Tuning::fixed(n)),
            (BatchSize::Auto { limit }, Some(b)) => Ok(Tuning::by_model(b, limit)),
            (BatchSize::Auto { limit }, None) => {
                let sizes = batch_tuning::candidates(limit);
                let largest = sizes.iter().copied().max().unwrap_or(1);
                let input = input_rows(self.row_len, largest);
                let measured = batch_tuning::measure(&sizes, |rows| {
                    self.run(&input[..rows * self.row_len], rows).map(drop)
                })
                .map_err(LoadError::Warmup)?;
                Ok(Tuning::auto(limit, measured))
            }
        }
    }
}

fn build_session(
    env: &ort::environment::Environment,
    cfg: &EngineConfig,
) -> Result<(Session, Device), LoadError> {
    let session_err = |e: ort::Error| LoadError::Session(e.to_string());
    let base = || -> Result<ort::session::builder::SessionBuilder, LoadError> {
        Session::builder(env)
            .map_err(session_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| LoadError::Session(e.to_string()))?
            .with_intra_threads(cfg.intra_threads.max(1))
            .map_err(|e| LoadError::Session(e.to_string()))?
            .with_intra_op_spinning(cfg.intra_op_spinning)
            .map_err(|e| LoadError::Session(e.to_string()))?
            .with_config_entry(
                "session.force_spinning_stop",
                if cfg.stop_spinning_after_run {
                    "1"
                } else {
                    "0"
                },
            )
            .map_err(|e| LoadError::Session(e.to_string()))
    };
    let commit = |builder: ort::session::builder::SessionBuilder| {
        let mut builder = builder;
        builder
            .commit_from_file(&cfg.model_path)
            .map_err(session_err)
    };
    match cfg.device {
        Device::Cpu => Ok((commit(base()?)?, Device::Cpu)),
        Device::Gpu => {
            let cuda = cuda_execution_provider();
            match base()?.with_execution_providers([cuda]) {
                Ok(builder) => Ok((commit(builder)?, Device::Gpu)),
                Err(e) if cfg.allow_cpu_fallback => {
                    tracing::warn!(error = %e, "CUDA unavailable; serving on the CPU as allowed");
                    Ok((commit(base()?)?, Device::Cpu))
                }
                Err(e) => Err(LoadError::ExecutionProvider(e.to_string())),
            }
        }
    }
}

/// Varied, deterministic input rows for warm-up runs.
fn input_rows(row_len: usize, rows: usize) -> Vec<f32> {
    (0..rows * row_len)
        .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
        .collect()
}

/// The CUDA execution provider as the server (and the benchmark's raw side) uses it.
///
/// cuDNN's convolution algorithm is chosen by heuristics rather than ONNX Runtime's default
/// exhaustive benchmarking, which re-ran whenever a convolution saw a new input shape
/// (measured on an H200 with batches of changing size: p50 1054 ms → 187 ms at concurrency
/// 4; the batcher's fixed GPU batch shape removed the rest, BENCHMARKS.md "GPU").
pub fn cuda_execution_provider() -> ort::ep::ExecutionProviderDispatch {
    ort::ep::CUDA::default()
        .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
        .build()
        .error_on_failure()
}

fn tensor_outlet<'a>(
    outlets: &'a [ort::value::Outlet],
    wanted: Option<&str>,
    what: &str,
) -> Result<(&'a str, &'a [i64]), LoadError> {
    let outlet = match wanted {
        Some(name) => outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
            let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
            LoadError::Invalid(format!(
                "the model has no {what} named {name:?} (it has {names:?})"
            ))
        })?,
        None => outlets
            .first()
            .ok_or_else(|| LoadError::Invalid(format!("the model has no {what}")))?,
    };
    match outlet.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => Ok((outlet.name(), shape)),
        other => Err(LoadError::Invalid(format!(
            "{what} {:?} must be a float32 tensor, the model declares {other}",
            outlet.name()
        ))),
    }
}

fn check_input(session: &Session, cfg: &EngineConfig) -> Result<(String, Vec<i64>), LoadError> {
    if cfg.input_name.is_none() && session.inputs().len() != 1 {
        return Err(LoadError::Invalid(format!(
            "the model has {} inputs; name the image input in the model config",
            session.inputs().len()
        )));
    }
    let (name, shape) = tensor_outlet(session.inputs(), cfg.input_name.as_deref(), "input")?;
    let s = i64::from(cfg.preprocess.size);
    let expected: [i64; 3] = match cfg.preprocess.layout {
        Layout::Nchw => [3, s, s],
        Layout::Nhwc => [s, s, 3],
    };
    let fits = shape.len() == 4
        && shape[1..]
            .iter()
            .zip(expected)
            .all(|(&d, e)| d == e || d < 0)
        && (shape[0] < 0 || shape[0] >= 1);
    if !fits {
        return Err(LoadError::Invalid(format!(
            "input {name:?} has shape {shape:?}, but the preprocessing produces [N, {}, {}, {}] \
             ({:?}, size {})",
            expected[0], expected[1], expected[2], cfg.preprocess.layout, cfg.preprocess.size
        )));
    }
    Ok((name.to_string(), shape.to_vec()))
}

fn check_output(
    session: &Session,
    cfg: &EngineConfig,
) -> Result<(String, Option<usize>), LoadError> {
    let (name, shape) = tensor_outlet(session.outputs(), cfg.output_name.as_deref(), "output")?;
    if shape.len() != 2 {
        return Err(LoadError::Invalid(format!(
            "output {name:?} has shape {shape:?}; a classifier's output is [N, classes]"
        )));
    }
    let classes = (shape[1] > 0).then_some(shape[1] as usize);
    Ok((name.to_string(), classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_labels_file_of_another_length_has_its_own_reason_and_says_what_to_do() {
        let e = LoadError::LabelsMismatch {
            classes: 1000,
            labels: 999,
        };
        assert_eq!(e.reason(), "LabelsMismatch");
        let message = e.to_string();
        assert!(
            message.contains("1000 output classes")
                && message.contains("999 lines")
                && message.contains("use the labels file that belongs to this model"),
            "{message}"
        );
        assert_eq!(LoadError::Invalid("x".into()).reason(), "ModelInvalid");
    }
}
