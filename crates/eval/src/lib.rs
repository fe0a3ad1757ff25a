//! Model evaluation: accuracy, top-5 accuracy, per-class precision, recall and F1, macro
//! and weighted averages and the confusion matrix of a model on a labelled image set, with
//! the seed's definitions (see [`metrics`] for the formulas and the divide-by-zero cases).
//!
//! - [`metrics`]: pure functions and the confusion matrix (from `sightline-quality`).
//! - [`dataset`]: ImageFolder directories and `path,label` CSV files.
//! - [`archive`]: an uploaded zip set, unpacked confined to its folder and cleaned up.
//! - [`runner`]: classifies the set through a loaded model's batcher.
//! - [`report`]: the JSON report, the printed table, the baseline comparison.
//! - [`progress`]: the progress bar (stderr, only on a terminal).
//!
//! May use: `sightline-model` (the model it evaluates) and `sightline-quality` (the
//! seed's formulas, shared with the live quality); never HTTP, the command line or the
//! store. The server's `eval` command and `POST /api/v1/evaluations` load the model and
//! call [`runner`] (`sightline_server::eval`).

pub mod archive;
pub mod dataset;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod runner;

pub use report::Report;

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(
        "no dataset at {0}: give a directory with one folder per class, or a CSV file of path,label"
    )]
    NoDataset(String),
    #[error("the dataset at {0} holds no images")]
    EmptyDataset(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Csv {
        path: String,
        line: usize,
        message: String,
    },
    /// A row of an uploaded set's CSV names a file outside the set.
    #[error("{path}, line {line}: the path {row:?} is outside the archive: {why}")]
    Outside {
        path: String,
        line: usize,
        row: String,
        why: &'static str,
    },
    #[error("class {name:?} (at {at}) is not a label of the model nor a class index")]
    UnknownClass { name: String, at: String },
    #[error(transparent)]
    Setup(#[from] sightline_model::serving::SetupError),
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    #[error(
        "the baseline has {baseline} classes and the model {model}: compare models with the same classes"
    )]
    LabelsDiffer { model: usize, baseline: usize },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode the report: {0}")]
    Encode(#[from] serde_json::Error),
}
