//! Sightline's services in one crate: the `recognize` role (ONNX Runtime inference with
//! dynamic batching), the `upload` role (checked, content-addressed images), the `store`
//! role (results in SQLite, PostgreSQL or MySQL), the pipeline across them, and the pieces
//! they share.
//!
//! Where to look: `preprocess` (bytes → tensor), `engine` (the ONNX Runtime session),
//! `batching` (the queue and its policy), `serving` (model lifecycle), `http` (routes),
//! `cli` (flags, config file, environment), `upload`, `store`, `pipeline`, `auth`, and
//! `front_door` (the upload role forwarding every other public route in a cluster).
//!
//! Each role's router takes its own state (`UploadState`, `StoreState`, `PipelineState`,
//! `RecognizeState`, `EvalState`, `FrontDoorState`); only `http` (`app`, `AppState`) and
//! `server` compose them, and no role imports them back.

pub mod auth;
pub mod batch;
pub mod cli;
pub mod drain;
pub mod eval;
pub mod eval_relay;
pub mod fetch;
pub mod front_door;
pub mod http;
pub mod image_source;
pub mod metrics;
pub mod model_flags;
pub mod pinned_dns;
pub mod pipeline;
pub mod server;
pub mod store;
pub mod upload;

// The model and the shared formats, under the paths the roles have always used.
pub use sightline_model::{
    batch_tuning, batching, blocking, cache, decode_at, decode_trial, engine, labels,
    layout_tuning, lone_trial, model_config, ort_runtime, postprocess, preprocess, serving,
};
pub use sightline_telemetry::exposition;
