//! The formats Sightline's processes exchange, each defined once: what the operator writes
//! and a front door reads ([`traffic`]: the traffic file), what a server's `/readyz` says
//! and the operator reads ([`readiness`]), what a batch shard's evaluation counts and the
//! operator sums ([`evaluation`]), and the prediction every answer and stored result
//! carries.
//!
//! May use: `serde` and `serde_json` only. Plain data, no I/O: both the operator (with
//! kube and k8s-openapi) and the server (with ONNX Runtime and sqlx) depend on it, so it
//! stays the cheapest crate in the workspace.
//!
//! The CRD types stay in the operator: the server never reads a custom resource, and they
//! would bring kube and k8s-openapi into every server build.

pub mod evaluation;
mod prediction;
pub mod readiness;
pub mod traffic;

pub use evaluation::EvalCounts;
pub use prediction::Prediction;
pub use readiness::{Readiness, ReadyModel};
pub use traffic::{AppliedTraffic, Percent, TrafficFile, applied_traffic};
