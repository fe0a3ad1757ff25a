//! Pure builders: a custom resource (and what it references) in, typed child objects out.
//! No I/O here; this is where most of the operator's tests live.

pub mod canary;
pub mod device;
pub mod inputs;
pub mod meta;
pub mod model;
pub mod monitoring;
pub mod network;
pub mod pipeline;
pub mod pod;
pub mod recognition_job;
pub mod sizing;
