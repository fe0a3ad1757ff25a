//! One batch through a runner, and its answers (batching.rs).

use std::time::Instant;

use super::{BatchConfig, BatchRunner, InferError, Input, Job, run_rows};
use crate::metrics::InferenceMetrics;

/// Runs one batch on `runner`, calls `done` (the runner is free again) and then answers
/// each job with its rows (or the error) — in that order, so that a caller who sends its
/// next request the moment it has its answer finds the runner free. Images queued
/// undecoded are decoded here first; one that fails is answered with its error and the
/// rest run without it.
pub(super) fn run_batch<R: BatchRunner>(
    runner: &mut R,
    jobs: Vec<Job>,
    rows: usize,
    cfg: BatchConfig,
    row_len: usize,
    metrics: &InferenceMetrics,
    done: impl FnOnce(),
) {
    let now = Instant::now();
    for job in &jobs {
        metrics.queue_wait(now.duration_since(job.enqueued));
    }
    let (jobs, rows) = decode_encoded(jobs, rows, row_len);
    if jobs.is_empty() {
        done();
        return;
    }
    let _span = tracing::debug_span!("inference", rows, requests = jobs.len()).entered();
    let started = Instant::now();
    let run_rows = run_rows(rows, cfg.max_batch_size, cfg.fixed_shape);
    let one = jobs.len() == 1 && run_rows == rows;
    let input = match jobs.first().map(|job| &job.input) {
        // A batch of one request runs on the request's own rows, not a copy.
        Some(Input::Rows(only)) if one => std::borrow::Cow::Borrowed(only.as_slice()),
        _ => {
            let mut input = Vec::with_capacity(run_rows * row_len);
            for job in &jobs {
                if let Input::Rows(own) = &job.input {
                    input.extend_from_slice(own);
                }
            }
            input.resize(run_rows * row_len, 0.0);
            std::borrow::Cow::Owned(input)
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runner.run(&input, run_rows)
    }))
    .unwrap_or_else(|_| Err("the model runner panicked".to_string()));
    drop(input);
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

/// Decodes the jobs queued undecoded, in place. A job whose image fails (or whose row is
/// not the model's length) is answered now and dropped from the batch, as is one whose
/// caller has gone; the rows left.
fn decode_encoded(jobs: Vec<Job>, rows: usize, row_len: usize) -> (Vec<Job>, usize) {
    if jobs.iter().all(|job| matches!(job.input, Input::Rows(_))) {
        return (jobs, rows);
    }
    let mut kept = Vec::with_capacity(jobs.len());
    let mut rows = 0;
    for mut job in jobs {
        if matches!(job.input, Input::Encoded(_)) && job.reply.is_closed() {
            continue; // its caller went away while it was queued: no one to decode it for
        }
        if let Input::Encoded(decode) = std::mem::replace(&mut job.input, Input::Rows(Vec::new())) {
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
                .unwrap_or_else(|_| {
                    Err(crate::preprocess::PreprocessError::Decode(
                        "the decoder panicked".into(),
                    ))
                });
            match decoded {
                Ok(row) if row.len() == row_len * job.rows => job.input = Input::Rows(row),
                Ok(row) => {
                    let _ = job.reply.send(Err(InferError::Failed(format!(
                        "a decoded image gave {} values where the model takes {}",
                        row.len(),
                        row_len * job.rows
                    ))));
                    continue;
                }
                Err(e) => {
                    let _ = job.reply.send(Err(InferError::Image(e)));
                    continue;
                }
            }
        }
        rows += job.rows;
        kept.push(job);
    }
    (kept, rows)
}
