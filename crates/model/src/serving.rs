//! The model a recognize role serves, and its lifecycle: loading → ready | failed.
//!
//! The HTTP server starts before the model is loaded so that `/healthz` answers at once and
//! `/readyz` can say *why* the model is not ready (loading, digest mismatch, CUDA missing…).
//! Recognition requests get `503` until the model is ready.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::batch_tuning::BatchSize;
use crate::batching::{BatchConfig, Batcher, Decode, InferError};
use crate::cache::{KeyPrefix, ResultCache, Scores};
use crate::decode_at::DecodeAt;
use crate::drift::{Drift, DriftConfig, SLOTS};
use crate::engine::{EngineConfig, LoadError, ModelInfo};
use crate::layout_tuning::{Fixed, Layout};
use crate::load_shape::Load;
use crate::metrics::InferenceMetrics;
use crate::model_config::Preprocess;
use crate::postprocess::{Prediction, top_k, top1};
use crate::preprocess::{DecodeLimits, PreprocessError, preprocess};
use crate::tuned::{LayoutTuning, TrialSetup, Tuned};

/// A loaded model behind its batcher.
pub struct ServingModel {
    pub name: String,
    pub info: ModelInfo,
    pub labels: Arc<Vec<String>>,
    pub preprocess: Preprocess,
    /// [`Preprocess::digest`] of `preprocess`: with `info.sha256`, what a kept answer (the
    /// cache's, the store's, a batch run's) must match to be this model's answer.
    pub preprocess_sha256: String,
    pub limits: DecodeLimits,
    /// Sessions of the model running side by side (`--instances`, or the warm-up's choice).
    pub instances: usize,
    /// How the sessions were laid out, and the warm-up trial that chose it.
    pub layout: LayoutTuning,
    batcher: Batcher,
    /// Bounds concurrent decode+resize work to the CPU count (the blocking pool itself is
    /// large; this keeps image work from crowding out inference).
    cpu: Arc<Semaphore>,
    metrics: InferenceMetrics,
    /// Scores of images seen before (`--cache-bytes`; `None` when 0), keyed by `key_prefix`
    /// plus the image bytes.
    cache: Option<ResultCache<RecognizeError>>,
    key_prefix: KeyPrefix,
    /// The answers' baseline and live window (`None` with `--drift-baseline-answers 0`).
    drift: Option<Arc<Mutex<Drift>>>,
}

/// Images up to this size are hashed for the cache on the calling thread (well under a
/// millisecond); larger ones on the blocking pool.
const HASH_INLINE_BYTES: usize = 256 * 1024;

/// Why a recognition did not produce predictions.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecognizeError {
    #[error(transparent)]
    Image(#[from] PreprocessError),
    #[error(transparent)]
    Infer(#[from] InferError),
}

/// An image that does not decode, or asks for too many rows, fails the same way for every
/// request with its bytes: shared with the requests waiting on the same computation. A
/// full queue, a stopped worker or a failed run is transient: each waiter tries again.
impl crate::cache::Shareable for RecognizeError {
    fn is_shareable(&self) -> bool {
        match self {
            RecognizeError::Image(_) => true,
            RecognizeError::Infer(InferError::TooManyRows { .. } | InferError::Image(_)) => true,
            RecognizeError::Infer(
                InferError::QueueFull { .. } | InferError::Stopped | InferError::Failed(_),
            ) => false,
        }
    }
}

impl ServingModel {
    pub fn batch_config(&self) -> BatchConfig {
        self.batcher.config()
    }

    /// How many images a bulk caller (an evaluation, a batch run) keeps in flight: enough
    /// to fill every instance's batch while the next ones are being decoded, never more
    /// than the queue holds.
    pub fn bulk_in_flight(&self) -> usize {
        let batching = self.batch_config();
        (batching.max_batch_size * self.instances.max(1) * 2)
            .clamp(1, batching.queue_capacity.max(1))
    }

    /// Decodes and classifies one image; returns the top `k` predictions. The same bytes
    /// seen before (or being classified right now) are answered from the result cache.
    pub async fn classify(
        &self,
        bytes: bytes::Bytes,
        k: usize,
    ) -> Result<Vec<Prediction>, RecognizeError> {
        let row = match &self.cache {
            None => self.scores(bytes).await?,
            Some(cache) => {
                let key = if bytes.len() <= HASH_INLINE_BYTES {
                    self.key_prefix.key(&bytes)
                } else {
                    let (prefix, image) = (self.key_prefix.clone(), bytes.clone());
                    tokio::task::spawn_blocking(move || prefix.key(&image))
                        .await
                        .map_err(|_| InferError::Failed("image worker panicked".into()))?
                };
                cache.get_or_compute(key, || self.scores(bytes)).await?
            }
        };
        let probabilities = self.info.outputs_probabilities;
        if let (Some(drift), Some((class, p))) = (&self.drift, top1(&row, probabilities)) {
            lock(drift).record(class, p, Instant::now());
        }
        Ok(top_k(&row, probabilities, &self.labels, k))
    }

    /// Publishes the drift figures every slot of the live window (at least every 5 s) for
    /// as long as the model is served, so that the window empties without traffic too.
    fn publish_drift(&self, window: Duration) {
        let Some(drift) = &self.drift else { return };
        let tick = (window / SLOTS).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let drift = Arc::downgrade(drift);
        let (metrics, sha256) = (self.metrics.clone(), self.info.sha256.clone());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(drift) = drift.upgrade() else { return };
                let figures = lock(&drift).figures(Instant::now());
                metrics.drift(&sha256, &figures);
            }
        });
    }

    /// The result cache, when there is one.
    pub fn cache(&self) -> Option<&ResultCache<RecognizeError>> {
        self.cache.as_ref()
    }

    /// The model's output row for one image: decode, queue, run — or, where the warm-up
    /// chose it (decode_trial.rs), queue the image undecoded for the worker that runs it.
    async fn scores(&self, bytes: bytes::Bytes) -> Result<Scores, RecognizeError> {
        let span = || tracing::debug_span!("queue_wait_and_inference");
        let row = if self.layout.decode == DecodeAt::Worker {
            let answer = self.batcher.submit_encoded(self.decode_job(bytes))?;
            answer.instrument(span()).await
        } else {
            let incoming = self.batcher.incoming();
            let tensor = self.preprocess_bytes(bytes).await?;
            // Queued: the batcher no longer waits for it.
            let answer = self.batcher.submit_incoming(Some(incoming), tensor, 1)?;
            answer.instrument(span()).await
        };
        let row = row.map_err(|e| match e {
            InferError::Image(e) => RecognizeError::Image(e),
            e => RecognizeError::Infer(e),
        })?;
        Ok(row.into())
    }

    /// Decodes and preprocesses `bytes` where it is called, counted in the metrics.
    fn decode_job(&self, bytes: bytes::Bytes) -> Decode {
        let p = self.preprocess.clone();
        let limits = self.limits;
        let metrics = self.metrics.clone();
        // The thread that decodes does not inherit the caller's span: carry it over.
        let span = tracing::debug_span!("preprocess", bytes = bytes.len());
        Box::new(move || {
            let _decoding = metrics.decoding();
            let started = Instant::now();
            let result = span.in_scope(|| preprocess(&bytes, &limits, &p));
            match &result {
                Ok(_) => metrics.preprocessed(started.elapsed()),
                Err(e) => metrics.rejected(e.reason()),
            }
            result
        })
    }

    /// Runs already-preprocessed rows (the Open Inference Protocol path).
    pub async fn infer_rows(&self, input: Vec<f32>, rows: usize) -> Result<Vec<f32>, InferError> {
        self.batcher.infer(input, rows).await
    }

    /// Decodes and preprocesses one image on the blocking pool, at most `--decode-threads`
    /// at once — a bound that holds until each decode ends, also when its caller went away
    /// (see [`crate::blocking`]). Evaluations go through here too.
    pub async fn preprocess_bytes(&self, bytes: bytes::Bytes) -> Result<Vec<f32>, RecognizeError> {
        let permit = self
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| InferError::Stopped)?;
        let result = crate::blocking::run_holding(permit, self.decode_job(bytes))
            .await
            .map_err(|_| InferError::Failed("image worker panicked".into()))?;
        Ok(result?)
    }
}

/// Where the model is in its life.
#[derive(Clone)]
pub enum ModelStatus {
    Loading,
    Ready(Arc<ServingModel>),
    Failed {
        reason: &'static str,
        message: String,
    },
    /// This role serves no model.
    None,
}

/// Shared, swappable model status.
#[derive(Clone)]
pub struct ModelSlot(Arc<RwLock<ModelStatus>>);

impl ModelSlot {
    pub fn new(status: ModelStatus) -> ModelSlot {
        ModelSlot(Arc::new(RwLock::new(status)))
    }

    pub fn get(&self) -> ModelStatus {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, status: ModelStatus) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// The ready model, or why there is none.
    pub fn ready(&self) -> Result<Arc<ServingModel>, String> {
        match self.get() {
            ModelStatus::Ready(model) => Ok(model),
            ModelStatus::Loading => Err("the model is still loading".into()),
            ModelStatus::Failed { reason, message } => {
                Err(format!("the model is not ready ({reason}): {message}"))
            }
            ModelStatus::None => Err("this role serves no model".into()),
        }
    }
}

/// Everything needed to bring a model up.
pub struct ModelSetup {
    pub name: String,
    pub ort_lib: std::path::PathBuf,
    pub engine: EngineConfig,
    pub batching: BatchConfig,
    pub limits: DecodeLimits,
    pub preprocess_workers: usize,
    /// What the flags fix of the layout (`--instances`, `--intra-threads`,
    /// `--intra-op-spinning`); the warm-up trial chooses the rest.
    pub layout: Fixed,
    /// The CPU cores this process may use.
    pub cores: usize,
    /// How long the warm-up trial may take (`--tune-budget-seconds`); zero turns it off.
    pub tune_budget: Duration,
    /// Bytes of the result cache (`--cache-bytes`); 0 turns it off.
    pub cache_bytes: usize,
    /// The drift baseline and window (`--drift-*`).
    pub drift: DriftConfig,
}

impl ModelSetup {
    /// Whether the warm-up trial chooses the layout or batch size: on a CPU, with a
    /// budget, and something left to choose.
    fn tried(&self) -> bool {
        let batch_fixed = matches!(self.engine.batch_size, BatchSize::Fixed(_));
        self.engine.device == crate::engine::Device::Cpu
            && !self.tune_budget.is_zero()
            && !(self.layout.all() && batch_fixed)
    }

    /// The layout without a trial: the flags', else one session as wide as the cores with
    /// sleeping threads.
    fn fixed_layout(&self) -> Layout {
        let wide = Layout::wide(self.cores);
        Layout {
            instances: self.layout.instances.unwrap_or(wide.instances),
            threads: self.layout.threads.unwrap_or(wide.threads),
            spinning: self.layout.spinning.unwrap_or(wide.spinning),
        }
    }
}

/// Loads the model on a blocking thread and publishes the outcome into `slot`.
pub async fn load_into(slot: ModelSlot, setup: ModelSetup, metrics: InferenceMetrics) {
    let name = setup.name.clone();
    let drift_window = setup.drift.window;
    metrics.not_ready();
    let loading = metrics.clone();
    let outcome = tokio::task::spawn_blocking(move || load(setup, loading))
        .await
        .unwrap_or_else(|_| Err(("LoadPanicked", "model loading panicked".to_string())));
    match outcome {
        Ok(model) => {
            tracing::info!(
                model = %name,
                sha256 = %model.info.sha256,
                device = model.info.device.as_str(),
                classes = model.info.classes,
                load_seconds = model.info.load_seconds,
                "model ready"
            );
            metrics.loaded(
                &model.info.sha256,
                model.info.device.as_str(),
                model.info.load_seconds,
            );
            model.publish_drift(drift_window);
            slot.set(ModelStatus::Ready(Arc::new(model)));
        }
        Err((reason, message)) => {
            tracing::error!(model = %name, reason, error = %message, "model failed to load");
            metrics.not_ready();
            slot.set(ModelStatus::Failed { reason, message });
        }
    }
}

fn load(
    setup: ModelSetup,
    metrics: InferenceMetrics,
) -> Result<ServingModel, (&'static str, String)> {
    let env = crate::ort_runtime::init(&setup.ort_lib)
        .map_err(|e| ("RuntimeUnavailable", e.to_string()))?;
    let load_err = |e: LoadError| (e.reason(), e.to_string());
    let tuned = if setup.tried() {
        let load = Load {
            photo: crate::load_shape::sample_photo(),
            limits: setup.limits,
            preprocess: setup.engine.preprocess.clone(),
            // Twice the cores, each one request at a time: decoding beside inference, as
            // at concurrency 2 and more.
            feeders: setup.cores.max(1) * 2,
            max_delay: setup.batching.max_delay,
            budget: setup.tune_budget,
        };
        let trial = TrialSetup {
            cores: setup.cores,
            fixed: setup.layout,
            load,
        };
        crate::tuned::tune(env, &setup.engine, trial)
    } else {
        let decode = setup.layout.decode.unwrap_or(DecodeAt::Pool);
        crate::tuned::fixed(env, &setup.engine, setup.fixed_layout(), decode)
    }
    .map_err(load_err)?;
    let Tuned {
        engines,
        lone,
        info,
        row_len,
        layout,
    } = tuned;
    let instances = engines.len();
    metrics.queue_capacity(setup.batching.queue_capacity);
    metrics.batch_tuned(&info.batching);
    metrics.layout_tuned(
        (layout.layout, layout.decode),
        (layout.lone_threads, layout.lone_spinning),
        &layout.trials,
        layout.seconds,
    );
    let batching = crate::batching::BatchConfig {
        max_batch_size: info.batching.max_batch_size,
        max_request_rows: info.batching.max_request_rows(),
        // The GPU runs one shape (batching.rs); so does a model whose batch is fixed.
        fixed_shape: info.device == crate::engine::Device::Gpu
            || info.batching.mode == crate::batch_tuning::Mode::Model,
        ..setup.batching
    };
    let batcher =
        Batcher::start(engines, lone, batching, row_len, metrics.clone()).map_err(|e| {
            (
                "WorkerFailed",
                format!("cannot start the inference thread: {e}"),
            )
        })?;
    let preprocess_sha256 = setup.engine.preprocess.digest();
    let key_prefix = KeyPrefix::new(&info.sha256, &preprocess_sha256);
    Ok(ServingModel {
        name: setup.name,
        info,
        labels: Arc::new(setup.engine.labels),
        preprocess: setup.engine.preprocess,
        preprocess_sha256,
        limits: setup.limits,
        instances,
        layout,
        batcher,
        cpu: Arc::new(Semaphore::new(setup.preprocess_workers.max(1))),
        cache: ResultCache::new(setup.cache_bytes, metrics.clone()),
        key_prefix,
        metrics,
        drift: setup
            .drift
            .enabled()
            .then(|| Arc::new(Mutex::new(Drift::new(setup.drift)))),
    })
}

/// The drift state, also after a panic elsewhere (it holds plain counts).
fn lock(drift: &Mutex<Drift>) -> std::sync::MutexGuard<'_, Drift> {
    drift.lock().unwrap_or_else(|p| p.into_inner())
}

/// A model that cannot be set up from the flags.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] crate::model_config::ConfigError),
    #[error(transparent)]
    Labels(#[from] crate::labels::LabelsError),
}
