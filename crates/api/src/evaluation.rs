//! A batch shard's evaluation counts: the server's `batch --truth` writes them in its
//! summary, the operator sums the shards' into a RecognitionJob's `status.evaluation`.

use serde::{Deserialize, Serialize};

/// An evaluation's counts over one shard's images of the truth CSV; they add up over the
/// shards to the whole set's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalCounts {
    /// Images the CSV names (of this shard).
    pub images: u64,
    /// Of those, classified (a failed one is not).
    pub evaluated: u64,
    /// Classified with the true class first.
    pub top1: u64,
    /// Classified with the true class among the first five.
    pub top5: u64,
}
