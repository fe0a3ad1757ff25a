//! The model at the heart of Sightline: image bytes in, ranked classes out.
//!
//! Where to look: [`preprocess`] (bytes → tensor, pure), [`engine`] (one ONNX Runtime
//! session: load, check, warm up, run), [`ort_runtime`] (loading `libonnxruntime.so` at run
//! time), [`batching`] (the queue and its flush policy), [`batch_tuning`] (the batch size
//! measured at warm-up), [`layout_tuning`] (instances, threads, spinning and batch size
//! chosen together) and [`load_shape`] (the warm-up trial that measures them under load),
//! [`cache`] (the result cache), [`postprocess`] (scores → ranked
//! labels), [`drift`] (how far the answers moved from the baseline's), [`serving`] (a
//! model's lifecycle: loading → ready | failed), [`metrics`] (the `sightline_inference_*`,
//! `_model_*` and `_cache_*` families).
//!
//! May use: `sightline-api`, `sightline-telemetry` and `sightline-quality` (the drift's
//! divergence); never HTTP, the command line, the store or the upload role. It is
//! configured by its own plain structs ([`serving::ModelSetup`]); the server's command line
//! fills them in.

pub mod batch_tuning;
pub mod batching;
pub mod blocking;
pub mod cache;
pub mod decode_at;
pub mod decode_trial;
pub mod drift;
pub mod engine;
pub mod labels;
pub mod layout_tuning;
pub mod load_shape;
pub mod lone_trial;
pub mod metrics;
pub mod model_config;
pub mod ort_runtime;
pub mod postprocess;
pub mod preprocess;
pub mod serving;
pub mod tuned;
