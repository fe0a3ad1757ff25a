//! One batch through a runner, and its answers (batching.rs).

use std::time::Instant;

use super::{BatchConfig, BatchRunner, InferError, Job, run_rows};
use crate::metrics::InferenceMetrics;

/// Runs one batch on `runner`, calls `done` (the runner is free again) and then answers
/// each job with its rows (or the error) — in that order, so that a caller who sends its
/// next request the moment it has its answer finds the runner free.
pub(super) fn run_batch<R: BatchRunner>(
    runner: &mut R,
    jobs: Vec<Job>,
    rows: usize,
    cfg: BatchConfig,
    row_len: usize,
    metrics: &InferenceMetrics,
    done: impl FnOnce(),
) {
    let _span = tracing::debug_span!("inference", rows, requests = jobs.len()).entered();
    let started = Instant::now();
    for job in &jobs {
        metrics.queue_wait(started.duration_since(job.enqueued));
    }
    let run_rows = run_rows(rows, cfg.max_batch_size, cfg.fixed_shape);
    let mut input = Vec::with_capacity(run_rows * row_len);
    for job in &jobs {
        input.extend_from_slice(&job.input);
    }
    input.resize(run_rows * row_len, 0.0);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runner.run(&input, run_rows)
    }))
    .unwrap_or_else(|_| Err("the model runner panicked".to_string()));
    metrics.batch(rows, started.elapsed());
    done();
    match result {
        Ok(output) if run_rows > 0 && output.len() % run_rows == 0 => {
            let per_row = output.len() / run_rows;
            let mut offset = 0;
            for job in jobs {
                let end = offset + job.rows * per_row;
                let _ = job.reply.send(Ok(output[offset..end].to_vec()));
                offset = end;
            }
        }
        Ok(output) => {
            let err = InferError::Failed(format!("{} output values for {rows} rows", output.len()));
            for job in jobs {
                let _ = job.reply.send(Err(err.clone()));
            }
        }
        Err(message) => {
            tracing::error!(error = %message, rows, "inference failed");
            metrics.failed();
            for job in jobs {
                let _ = job.reply.send(Err(InferError::Failed(message.clone())));
            }
        }
    }
}
