//! The model's families (`sightline_inference_*`, `sightline_model_*`,
//! `sightline_cache_*`): batches, queue, decodes, model load and identity, the result cache.
//! Registered under the process's `sightline` prefix by whoever composes the registry.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sightline_telemetry::{F64Gauge, HistogramFamily, ModelLabels};

fn model_latency_histogram() -> Histogram {
    // 1 ms … ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn batch_size_histogram() -> Histogram {
    // 1, 2, 4, … 256 rows
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelReasonLabels {
    pub model: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelRowsLabels {
    pub model: String,
    pub rows: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelInfoLabels {
    pub model: String,
    pub sha256: String,
    pub device: String,
}

/// A layout of the model's sessions (tuned.rs).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LayoutLabels {
    pub model: String,
    pub instances: String,
    pub threads: String,
    pub spinning: String,
    /// Where images are decoded: `pool` or `worker` (decode_trial.rs).
    pub decode: String,
}

/// A layout tried at one batch size.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrialLabels {
    pub model: String,
    pub instances: String,
    pub threads: String,
    pub spinning: String,
    pub rows: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub model: String,
    pub sha256: String,
    /// `class` or `confidence`.
    pub signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftSampleLabels {
    pub model: String,
    pub sha256: String,
    /// `baseline` or `live`.
    pub window: String,
}

/// An image decode in progress (see [`InferenceMetrics::decoding`]).
pub struct Decoding(Gauge);

impl Drop for Decoding {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Inference: batches, queue, model load and identity.
#[derive(Clone)]
pub struct InferenceMetrics {
    model: ModelLabels,
    batch_size: HistogramFamily<ModelLabels>,
    duration: HistogramFamily<ModelLabels>,
    queue_depth: Family<ModelLabels, Gauge>,
    queue_capacity: Family<ModelLabels, Gauge>,
    queue_wait: HistogramFamily<ModelLabels>,
    preprocess: HistogramFamily<ModelLabels>,
    decoding: Family<ModelLabels, Gauge>,
    rejected: Family<ModelReasonLabels, Counter>,
    failures: Family<ModelLabels, Counter>,
    load_seconds: Family<ModelLabels, F64Gauge>,
    max_batch_size: Family<ModelLabels, Gauge>,
    batch_throughput: Family<ModelRowsLabels, F64Gauge>,
    layout: Family<LayoutLabels, Gauge>,
    lone_threads: Family<ModelLabels, Gauge>,
    lone_spinning: Family<ModelLabels, Gauge>,
    trial_throughput: Family<TrialLabels, F64Gauge>,
    trial_seconds: Family<ModelLabels, F64Gauge>,
    ready: Family<ModelLabels, Gauge>,
    info: Family<ModelInfoLabels, Gauge>,
    cache_hits: Family<ModelLabels, Counter>,
    cache_misses: Family<ModelLabels, Counter>,
    cache_evictions: Family<ModelLabels, Counter>,
    cache_bytes: Family<ModelLabels, Gauge>,
    drift: Family<DriftLabels, F64Gauge>,
    drift_samples: Family<DriftSampleLabels, Gauge>,
}

impl InferenceMetrics {
    fn families(model: &str) -> InferenceMetrics {
        InferenceMetrics {
            model: ModelLabels {
                model: model.to_string(),
            },
            batch_size: Family::new_with_constructor(batch_size_histogram),
            duration: Family::new_with_constructor(model_latency_histogram),
            queue_depth: Family::default(),
            queue_capacity: Family::default(),
            queue_wait: Family::new_with_constructor(model_latency_histogram),
            preprocess: Family::new_with_constructor(model_latency_histogram),
            decoding: Family::default(),
            rejected: Family::default(),
            failures: Family::default(),
            load_seconds: Family::default(),
            max_batch_size: Family::default(),
            batch_throughput: Family::default(),
            layout: Family::default(),
            lone_threads: Family::default(),
            lone_spinning: Family::default(),
            trial_throughput: Family::default(),
            trial_seconds: Family::default(),
            ready: Family::default(),
            info: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_evictions: Family::default(),
            cache_bytes: Family::default(),
            drift: Family::default(),
            drift_samples: Family::default(),
        }
    }

    /// The families, registered in `registry` (the process's `sightline` sub-registry).
    pub fn register(registry: &mut Registry, model: &str) -> InferenceMetrics {
        let m = Self::families(model);
        registry.register(
            "inference_batch_size",
            "Images per model run",
            m.batch_size.clone(),
        );
        registry.register(
            "inference_duration_seconds",
            "Wall time of one model run (a whole batch)",
            m.duration.clone(),
        );
        registry.register(
            "inference_queue_depth",
            "Requests waiting for the model",
            m.queue_depth.clone(),
        );
        registry.register(
            "inference_queue_capacity",
            "Requests the queue holds before new ones are refused (reason queue_full)",
            m.queue_capacity.clone(),
        );
        registry.register(
            "inference_queue_wait_seconds",
            "Time a request waited in the queue before its batch ran",
            m.queue_wait.clone(),
        );
        registry.register(
            "preprocess_duration_seconds",
            "Time to decode, resize and normalise one image",
            m.preprocess.clone(),
        );
        registry.register(
            "preprocess_in_progress",
            "Images being decoded and preprocessed now (at most --decode-threads, also while \
             their clients are gone)",
            m.decoding.clone(),
        );
        registry.register(
            "inference_rejected",
            "Requests refused before inference, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "inference_failures",
            "Model runs that returned an error",
            m.failures.clone(),
        );
        registry.register(
            "model_load_duration_seconds",
            "Time to read, verify, load and warm up the model",
            m.load_seconds.clone(),
        );
        registry.register(
            "inference_max_batch_size",
            "Most images in one model run: the flag's size, or the fastest measured at warm-up (--max-batch-size auto)",
            m.max_batch_size.clone(),
        );
        registry.register(
            "inference_batch_throughput",
            "Images per second each batch size ran at when measured at warm-up (--max-batch-size auto)",
            m.batch_throughput.clone(),
        );
        registry.register(
            "inference_layout",
            "How the model's sessions run: instances side by side, intra-op threads each, \
             spinning or not, images decoded on the pool or by the worker that runs them \
             (value is always 1); chosen by the warm-up trial unless fixed",
            m.layout.clone(),
        );
        registry.register(
            "inference_lone_threads",
            "Intra-op threads of the lone session that takes a batch when nothing else runs \
             (0: none)",
            m.lone_threads.clone(),
        );
        registry.register(
            "inference_lone_spinning",
            "1 when the lone session's intra-op threads spin between operators (the lone \
             trial chose it), 0 when they sleep or there is no lone session",
            m.lone_spinning.clone(),
        );
        registry.register(
            "inference_trial_throughput",
            "Images per second each layout and batch size ran at in the warm-up trial, with \
             decoding beside it",
            m.trial_throughput.clone(),
        );
        registry.register(
            "inference_trial_duration_seconds",
            "How long the warm-up trial took (bounded by --tune-budget-seconds, at least one \
             round; 0 when there was none)",
            m.trial_seconds.clone(),
        );
        registry.register(
            "model_ready",
            "1 when the model is loaded, validated and warmed up",
            m.ready.clone(),
        );
        registry.register(
            "model_info",
            "The model being served (value is always 1)",
            m.info.clone(),
        );
        registry.register(
            "cache_hits",
            "Recognitions answered from the result cache, or shared with an identical request in flight",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Recognitions the result cache did not have (the model ran)",
            m.cache_misses.clone(),
        );
        registry.register(
            "cache_evictions",
            "Result cache entries dropped to stay within --cache-bytes",
            m.cache_evictions.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes the result cache holds (at most --cache-bytes)",
            m.cache_bytes.clone(),
        );
        registry.register(
            "model_drift",
            "Jensen-Shannon divergence (bits, 0 to 1) of the answers of the live window from the \
             baseline's, by signal (class: top-1 classes; confidence: top-1 probability); absent \
             until the baseline is complete and the window holds --drift-min-samples answers",
            m.drift.clone(),
        );
        registry.register(
            "model_drift_samples",
            "Answers in the drift baseline (complete at --drift-baseline-answers) and in the live \
             window (--drift-window-seconds)",
            m.drift_samples.clone(),
        );
        if !model.is_empty() {
            // Zero series from the start, so rates and alerts have data before the first event.
            m.failures.get_or_create(&m.model).inc_by(0);
            m.queue_depth.get_or_create(&m.model).set(0);
            m.ready.get_or_create(&m.model).set(0);
        }
        m
    }

    /// Families that belong to no registry (for tests of components that record metrics).
    pub fn unregistered() -> InferenceMetrics {
        Self::families("test")
    }

    pub fn batch(&self, rows: usize, elapsed: Duration) {
        self.batch_size
            .get_or_create(&self.model)
            .observe(rows as f64);
        self.duration
            .get_or_create(&self.model)
            .observe(elapsed.as_secs_f64());
    }

    pub fn queue_depth(&self, depth: usize) {
        self.queue_depth
            .get_or_create(&self.model)
            .set(depth as i64);
    }

    pub fn queue_capacity(&self, capacity: usize) {
        self.queue_capacity
            .get_or_create(&self.model)
            .set(capacity as i64);
    }

    pub fn queue_wait(&self, waited: Duration) {
        self.queue_wait
            .get_or_create(&self.model)
            .observe(waited.as_secs_f64());
    }

    pub fn preprocessed(&self, elapsed: Duration) {
        self.preprocess
            .get_or_create(&self.model)
            .observe(elapsed.as_secs_f64());
    }

    /// One image is being decoded until the returned guard is dropped.
    pub fn decoding(&self) -> Decoding {
        let gauge = self.decoding.get_or_create(&self.model).clone();
        gauge.inc();
        Decoding(gauge)
    }

    pub fn rejected(&self, reason: &'static str) {
        let labels = ModelReasonLabels {
            model: self.model.model.clone(),
            reason: reason.to_string(),
        };
        self.rejected.get_or_create(&labels).inc();
    }

    pub fn failed(&self) {
        self.failures.get_or_create(&self.model).inc();
    }

    pub fn loaded(&self, sha256: &str, device: &str, seconds: f64) {
        self.load_seconds.get_or_create(&self.model).set(seconds);
        self.ready.get_or_create(&self.model).set(1);
        let info = ModelInfoLabels {
            model: self.model.model.clone(),
            sha256: sha256.to_string(),
            device: device.to_string(),
        };
        self.info.get_or_create(&info).set(1);
    }

    /// The batch size the model serves with, and what each candidate ran at.
    pub fn batch_tuned(&self, tuning: &crate::batch_tuning::Tuning) {
        self.max_batch_size
            .get_or_create(&self.model)
            .set(tuning.max_batch_size as i64);
        self.batch_throughput.clear();
        for m in &tuning.measured {
            let labels = ModelRowsLabels {
                model: self.model.model.clone(),
                rows: m.rows.to_string(),
            };
            self.batch_throughput
                .get_or_create(&labels)
                .set(m.images_per_second);
        }
    }

    /// The layout served and where it decodes (`lone_threads`: the lone session's, if
    /// any), and the warm-up trial it came from (`trials` over `seconds`; none without a trial).
    pub fn layout_tuned(
        &self,
        (layout, decode): (crate::layout_tuning::Layout, crate::decode_at::DecodeAt),
        (lone_threads, lone_spinning): (Option<usize>, Option<bool>),
        trials: &[crate::layout_tuning::Trial],
        seconds: f64,
    ) {
        let model = || self.model.model.clone();
        self.layout.clear();
        self.layout
            .get_or_create(&LayoutLabels {
                model: model(),
                instances: layout.instances.to_string(),
                threads: layout.threads.to_string(),
                spinning: layout.spinning.to_string(),
                decode: decode.as_str().to_string(),
            })
            .set(1);
        self.lone_threads
            .get_or_create(&self.model)
            .set(lone_threads.unwrap_or(0) as i64);
        self.lone_spinning
            .get_or_create(&self.model)
            .set(i64::from(lone_spinning.unwrap_or(false)));
        self.trial_throughput.clear();
        for t in trials {
            let labels = TrialLabels {
                model: model(),
                instances: t.layout.instances.to_string(),
                threads: t.layout.threads.to_string(),
                spinning: t.layout.spinning.to_string(),
                rows: t.rows.to_string(),
            };
            self.trial_throughput
                .get_or_create(&labels)
                .set(t.images_per_second);
        }
        self.trial_seconds.get_or_create(&self.model).set(seconds);
    }

    pub fn not_ready(&self) {
        self.ready.get_or_create(&self.model).set(0);
    }

    /// The result cache is on: its series start at zero.
    pub fn cache_enabled(&self) {
        self.cache_hits.get_or_create(&self.model).inc_by(0);
        self.cache_misses.get_or_create(&self.model).inc_by(0);
        self.cache_evictions.get_or_create(&self.model).inc_by(0);
        self.cache_bytes.get_or_create(&self.model).set(0);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.get_or_create(&self.model).inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.get_or_create(&self.model).inc();
    }

    pub fn cache_evicted(&self, entries: u64) {
        self.cache_evictions
            .get_or_create(&self.model)
            .inc_by(entries);
    }

    pub fn cache_bytes(&self, bytes: usize) {
        self.cache_bytes
            .get_or_create(&self.model)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The drift of the model with digest `sha256` now: samples always, each divergence
    /// only while it is known (an unknown drift is absent, never 0).
    pub fn drift(&self, sha256: &str, figures: &crate::drift::DriftFigures) {
        for (window, samples) in [
            ("baseline", figures.baseline_samples),
            ("live", figures.live_samples),
        ] {
            let labels = DriftSampleLabels {
                model: self.model.model.clone(),
                sha256: sha256.to_string(),
                window: window.to_string(),
            };
            self.drift_samples
                .get_or_create(&labels)
                .set(i64::try_from(samples).unwrap_or(i64::MAX));
        }
        for (signal, value) in [("class", figures.class), ("confidence", figures.confidence)] {
            let labels = DriftLabels {
                model: self.model.model.clone(),
                sha256: sha256.to_string(),
                signal: signal.to_string(),
            };
            match value {
                Some(v) => {
                    self.drift.get_or_create(&labels).set(v);
                }
                None => {
                    self.drift.remove(&labels);
                }
            }
        }
    }
}
