//! The lone runner (batching.rs): a session with more intra-op threads than each instance
//! has, on a thread of its own, running only the batches the instances' workers hand it —
//! those [`to_lone`] says came alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use super::{BatchConfig, BatchRunner, Job, run_batch, to_lone};
use crate::metrics::InferenceMetrics;

/// A batch formed by an instance's worker and handed to the lone runner.
pub(super) type Handed = (Vec<Job>, usize);

/// How an instance's worker reaches the lone runner.
#[derive(Clone)]
pub(super) struct LoneHandle {
    tx: SyncSender<Handed>,
    idle: Arc<AtomicBool>,
}

impl LoneHandle {
    /// Hands `batch` over when [`to_lone`] says so (`None`), counting it as `running`
    /// from then on; otherwise gives it back to run on the instance.
    pub(super) fn offer(
        &self,
        batch: Handed,
        running: &AtomicUsize,
        waiting: usize,
    ) -> Option<Handed> {
        let idle = self.idle.load(Ordering::SeqCst);
        if !to_lone(running.load(Ordering::SeqCst), idle, waiting)
            || self
                .idle
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return Some(batch);
        }
        // Counted as running from here, so no other worker hands it a second batch.
        running.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(batch) {
            Ok(()) => None,
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => {
                running.fetch_sub(1, Ordering::SeqCst);
                self.idle.store(true, Ordering::SeqCst);
                Some(batch)
            }
        }
    }
}

/// Starts the lone runner's thread; it ends when every instance's worker (each holds a
/// handle) has ended.
pub(super) fn start<R: BatchRunner>(
    mut runner: R,
    cfg: BatchConfig,
    row_len: usize,
    running: Arc<AtomicUsize>,
    batches: Arc<AtomicUsize>,
    metrics: InferenceMetrics,
) -> std::io::Result<LoneHandle> {
    let (tx, rx) = sync_channel::<Handed>(1);
    let idle = Arc::new(AtomicBool::new(true));
    let handle = LoneHandle {
        tx,
        idle: idle.clone(),
    };
    std::thread::Builder::new()
        .name("sightline-batcher-lone".into())
        .spawn(move || {
            while let Ok((jobs, rows)) = rx.recv() {
                run_batch(&mut runner, jobs, rows, cfg, row_len, &metrics, || {
                    batches.fetch_add(1, Ordering::SeqCst);
                    running.fetch_sub(1, Ordering::SeqCst);
                    idle.store(true, Ordering::SeqCst);
                });
            }
        })?;
    Ok(handle)
}
