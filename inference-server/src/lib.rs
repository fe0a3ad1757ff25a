//! Sightline's services in one crate: the `recognize` role (ONNX Runtime inference with
//! dynamic batching) and the pieces the other roles share.
//!
//! Where to look: `preprocess` (bytes → tensor), `engine` (the ONNX Runtime session),
//! `batching` (the queue and its policy), `serving` (model lifecycle), `http` (routes),
//! `cli` (flags, config file, environment).

pub mod batching;
pub mod cli;
pub mod engine;
pub mod http;
pub mod image_source;
pub mod labels;
pub mod metrics;
pub mod model_config;
pub mod ort_runtime;
pub mod postprocess;
pub mod preprocess;
pub mod server;
pub mod serving;
