//! The two custom resources, `ImageModel` and `RecognitionPipeline` (group `sightline.io`,
//! version `v1alpha1`). Every field's doc comment becomes its `kubectl explain` text; CEL
//! rules reject specs the operator could not honour.

// kube's `printcolumn(name = …, type_ = …)` repeats keys by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

mod model;
mod monitoring;
mod pipeline;
mod recognition_job;
mod rollout;
mod runtime;

pub use model::*;
pub use monitoring::*;
pub use pipeline::*;
pub use recognition_job::*;
pub use rollout::*;
pub use runtime::*;

pub const GROUP: &str = "sightline.io";
pub const VERSION: &str = "v1alpha1";
