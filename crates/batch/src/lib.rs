//! Batch recognition: every image of a folder through the model, in-process, with the
//! batching the model tuned, written as JSON lines; resumable, so an interrupted run
//! redoes nothing and loses nothing.
//!
//! - [`listing`]: the images of a folder (or among an object store's keys), in a fixed
//!   order, and a deterministic shard of them (index `i` of `n`).
//! - [`journal`]: the output file: one JSON line per image, flushed as it is written; on
//!   resume, the images it already holds (a line cut short by a kill is dropped).
//! - [`run`]: the images through the model, as many in flight as batches can take, their
//!   bytes from a [`run::Reader`] (files here; the server reads buckets).
//!
//! May use: `sightline-model` and `sightline-api`; never HTTP, the command line or the
//! store. `sightline-server batch` loads the model from flags and calls [`run`].

pub mod journal;
pub mod listing;
pub mod run;

use std::path::PathBuf;

/// Why a batch cannot run (a bad image is not one: it is a line with an `error`).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("cannot read the input folder {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("{0} exists: give --resume to go on from it, or another --out")]
    OutputExists(PathBuf),
    #[error("cannot read {path}: {source}")]
    ReadOutput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: not a result line: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("--shard {index}/{count}: the index must be below the count")]
    Shard { index: usize, count: usize },
    /// The results database did not answer (the run stops; resume it).
    #[error("the results store: {0}")]
    Sink(String),
}
