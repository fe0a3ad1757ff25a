//! Dynamic batching: requests queue, a worker thread per model instance owns its session
//! and runs them in batches of up to `max_batch_size` rows. With several instances
//! (`--instances`), an idle worker forms the next batch while the others run theirs.
//!
//! The policy is a pure function ([`decide`]): a batch is flushed when it is full, when its
//! oldest request has waited `max_delay`, or at once when no other request is on its way
//! (being decoded right now). So a lone request never waits for company, and under load the
//! requests that arrive while the model is busy share the next run.
//!
//! A *lone* session (more intra-op threads than each instance has) may stand beside the
//! instances: a batch goes to it only when no other batch is running and no other request
//! is queued or being decoded ([`to_lone`]), so a request that arrives alone gets every
//! core, while under load the instances — cheaper per image, one thread each — take all
//! the work. Whether the lone session's threads spin is measured at warm-up
//! (lone_trial.rs).
//!
//! A job's image may also come undecoded ([`Batcher::submit_encoded`]): the worker that
//! takes it decodes it just before the run, on the thread and core the run then uses. With
//! one-thread instances, one per core, that keeps decoding from preempting a run and saves
//! the hand-offs between a decoding thread and the worker; the warm-up measures both ways
//! (decode_trial.rs).
//!
//! The queue is bounded (`queue_capacity` jobs); a full queue is an immediate
//! [`InferError::QueueFull`] (HTTP 503 with `Retry-After`), never unbounded memory. The
//! workers are dedicated OS threads, not tasks on the async reactor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::InferenceMetrics;
use crate::preprocess::PreprocessError;
use lone::{Handed, LoneHandle};
use run::run_batch;

/// Batching settings (the `ImageModel` `spec.runtime.batching` fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Requests are combined into batches of up to this many rows.
    pub max_batch_size: usize,
    /// The most rows one request may carry (an OIP request with several images); a request
    /// larger than `max_batch_size` runs as a batch of its own.
    pub max_request_rows: usize,
    pub max_delay: Duration,
    pub queue_capacity: usize,
    /// Run every batch at `max_batch_size` rows (zero rows fill the rest), so the model
    /// always sees one input shape. Set for the GPU: there, batches of changing sizes ran
    /// 50-200 times slower than the same work at one size (BENCHMARKS.md, "GPU").
    pub fixed_shape: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 8,
            max_request_rows: 8,
            max_delay: Duration::from_millis(2),
            queue_capacity: 64,
            fixed_shape: false,
        }
    }
}

/// What the worker does next with a partly formed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Flush,
    /// Wait for more requests, at most until this instant.
    WaitUntil(Instant),
}

/// The batching policy. `rows` are in the batch, `oldest` is when its first request was
/// enqueued, `incoming` requests are admitted and still being preprocessed.
pub fn decide(
    rows: usize,
    max_batch_size: usize,
    oldest: Instant,
    now: Instant,
    max_delay: Duration,
    incoming: usize,
) -> Decision {
    let deadline = oldest + max_delay;
    if rows >= max_batch_size || incoming == 0 || now >= deadline {
        Decision::Flush
    } else {
        Decision::WaitUntil(deadline)
    }
}

/// Whether a formed batch goes to the lone session: only when it is idle, no other batch
/// is running and no other request is queued or being decoded (`waiting`) — a request that
/// came alone, which then has the cores to itself. With others on their way the instances
/// take it: they will be busy in a moment anyway, and the lone session's threads would
/// then compete with theirs.
pub fn to_lone(running: usize, lone_idle: bool, waiting: usize) -> bool {
    running == 0 && lone_idle && waiting == 0
}

/// How many rows a batch of `rows` is run with: itself, or always `max_batch_size` when
/// the shape is fixed.
pub fn run_rows(rows: usize, max_batch_size: usize, fixed_shape: bool) -> usize {
    if fixed_shape {
        rows.max(max_batch_size)
    } else {
        rows
    }
}

/// Something that runs a batch: the ONNX Runtime engine in production.
pub trait BatchRunner: Send + 'static {
    /// Runs `rows` inputs laid out back to back; returns `rows` output rows back to back.
    fn run(&mut self, input: &[f32], rows: usize) -> Result<Vec<f32>, String>;
}

impl BatchRunner for crate::engine::Engine {
    fn run(&mut self, input: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        crate::engine::Engine::run(self, input, rows)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InferError {
    #[error("the inference queue is full ({capacity} requests waiting); retry shortly")]
    QueueFull { capacity: usize },
    #[error("a request of {rows} images exceeds the maximum batch size of {max}")]
    TooManyRows { rows: usize, max: usize },
    #[error("the inference worker has stopped")]
    Stopped,
    #[error("inference failed: {0}")]
    Failed(String),
    /// An image submitted undecoded ([`Batcher::submit_encoded`]) that did not decode.
    #[error(transparent)]
    Image(PreprocessError),
}

/// Decodes and preprocesses one image into its row, on the worker that runs it.
pub type Decode = Box<dyn FnOnce() -> Result<Vec<f32>, PreprocessError> + Send>;

/// A job's rows: ready, or an image its worker decodes first.
enum Input {
    Rows(Vec<f32>),
    Encoded(Decode),
}

struct Job {
    input: Input,
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<f32>, InferError>>,
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    cfg: BatchConfig,
    depth: Arc<AtomicUsize>,
    incoming: Arc<AtomicUsize>,
    metrics: InferenceMetrics,
    lone_batches: Arc<AtomicUsize>,
}

/// Marks a request as on its way to the queue while it is decoded; the worker waits for
/// such requests (up to `max_delay`) instead of flushing a batch early.
pub struct Incoming(Arc<AtomicUsize>);

impl Drop for Incoming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Batcher {
    /// Starts one worker thread per runner (model instance), and one for the `lone` runner
    /// when there is one; each owns its runner until every handle is dropped. An idle
    /// worker takes the queue, forms the next batch and lets go of the queue before it runs
    /// the batch (or hands it to the lone runner, [`to_lone`]), so instances run side by
    /// side.
    pub fn start<R: BatchRunner>(
        runners: Vec<R>,
        lone: Option<R>,
        cfg: BatchConfig,
        row_len: usize,
        metrics: InferenceMetrics,
    ) -> std::io::Result<Batcher> {
        let cfg = BatchConfig {
            max_batch_size: cfg.max_batch_size.max(1),
            max_request_rows: cfg.max_request_rows.max(1),
            queue_capacity: cfg.queue_capacity.max(1),
            ..cfg
        };
        let (tx, rx) = sync_channel(cfg.queue_capacity);
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let incoming = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let lone_batches = Arc::new(AtomicUsize::new(0));
        let lone = match lone {
            Some(runner) => Some(lone::start(
                runner,
                cfg,
                row_len,
                running.clone(),
                lone_batches.clone(),
                metrics.clone(),
            )?),
            None => None,
        };
        for (i, runner) in runners.into_iter().enumerate() {
            let worker = Worker {
                rx: rx.clone(),
                runner,
                cfg,
                row_len,
                depth: depth.clone(),
                incoming: incoming.clone(),
                running: running.clone(),
                lone: lone.clone(),
                metrics: metrics.clone(),
            };
            std::thread::Builder::new()
                .name(format!("sightline-batcher-{i}"))
                .spawn(move || worker.run())?;
        }
        Ok(Batcher {
            tx,
            cfg,
            depth,
            incoming,
            metrics,
            lone_batches,
        })
    }

    /// Batches the lone runner has run.
    pub fn lone_batches(&self) -> usize {
        self.lone_batches.load(Ordering::SeqCst)
    }

    /// [`Batcher::submit_incoming`] for a plain thread (no async runtime): queues now;
    /// calling the result blocks until the rows are back.
    pub fn submit_incoming_blocking(
        &self,
        incoming: Option<Incoming>,
        input: Vec<f32>,
        rows: usize,
    ) -> Result<impl FnOnce() -> Result<Vec<f32>, InferError> + use<>, InferError> {
        let answer = self.enqueue(Input::Rows(input), rows, incoming)?;
        Ok(move || answer.blocking_recv().unwrap_or(Err(InferError::Stopped)))
    }

    /// [`Batcher::submit_encoded`] for a plain thread: queues now; calling the result
    /// blocks until the row is back.
    pub fn submit_encoded_blocking(
        &self,
        decode: Decode,
    ) -> Result<impl FnOnce() -> Result<Vec<f32>, InferError> + use<>, InferError> {
        let answer = self.enqueue(Input::Encoded(decode), 1, None)?;
        Ok(move || answer.blocking_recv().unwrap_or(Err(InferError::Stopped)))
    }

    /// Queues one image undecoded: the worker that takes it runs `decode` just before the
    /// batch runs, and a failed decode is that request's [`InferError::Image`]. The queue
    /// then holds the image's bytes, not its row; at most one decode per worker runs at
    /// once.
    pub fn submit_encoded(
        &self,
        decode: Decode,
    ) -> Result<impl Future<Output = Result<Vec<f32>, InferError>> + use<>, InferError> {
        let answer = self.enqueue(Input::Encoded(decode), 1, None)?;
        Ok(async move { answer.await.unwrap_or(Err(InferError::Stopped)) })
    }

    pub fn config(&self) -> BatchConfig {
        self.cfg
    }

    /// Jobs waiting in the queue now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Call before decoding a request's image; drop the guard once it is enqueued or failed.
    pub fn incoming(&self) -> Incoming {
        self.incoming.fetch_add(1, Ordering::SeqCst);
        Incoming(self.incoming.clone())
    }

    /// Queues `rows` preprocessed inputs and waits for their output rows.
    pub async fn infer(&self, input: Vec<f32>, rows: usize) -> Result<Vec<f32>, InferError> {
        self.submit(input, rows)?.await
    }

    /// Queues `rows` preprocessed inputs now; the returned future yields their output rows.
    pub fn submit(
        &self,
        input: Vec<f32>,
        rows: usize,
    ) -> Result<impl Future<Output = Result<Vec<f32>, InferError>> + use<>, InferError> {
        self.submit_incoming(None, input, rows)
    }

    /// [`Batcher::submit`] for a request marked [`Batcher::incoming`] while it was decoded:
    /// the mark ends the moment the request is counted in the queue, so that a worker never
    /// sees it as both queued and still on its way (which would keep a lone request from
    /// the lone runner).
    pub fn submit_incoming(
        &self,
        incoming: Option<Incoming>,
        input: Vec<f32>,
        rows: usize,
    ) -> Result<impl Future<Output = Result<Vec<f32>, InferError>> + use<>, InferError> {
        let answer = self.enqueue(Input::Rows(input), rows, incoming)?;
        Ok(async move { answer.await.unwrap_or(Err(InferError::Stopped)) })
    }

    /// Queues a job; the receiver its answer comes on.
    fn enqueue(
        &self,
        input: Input,
        rows: usize,
        incoming: Option<Incoming>,
    ) -> Result<oneshot::Receiver<Result<Vec<f32>, InferError>>, InferError> {
        if rows == 0 || rows > self.cfg.max_request_rows {
            return Err(InferError::TooManyRows {
                rows,
                max: self.cfg.max_request_rows,
            });
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            rows,
            enqueued: Instant::now(),
            reply,
        };
        self.depth.fetch_add(1, Ordering::SeqCst);
        // Counted in the queue from here: no longer on its way.
        drop(incoming);
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                self.metrics.rejected("queue_full");
                return Err(InferError::QueueFull {
                    capacity: self.cfg.queue_capacity,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                return Err(InferError::Stopped);
            }
        }
        self.metrics.queue_depth(self.depth());
        Ok(answer)
    }
}

struct Worker<R> {
    /// Shared by every instance's worker: whoever holds it forms the next batch.
    rx: Arc<Mutex<Receiver<Job>>>,
    runner: R,
    cfg: BatchConfig,
    row_len: usize,
    depth: Arc<AtomicUsize>,
    incoming: Arc<AtomicUsize>,
    /// Batches running now, on any runner.
    running: Arc<AtomicUsize>,
    lone: Option<LoneHandle>,
    metrics: InferenceMetrics,
}

/// How long one wait lasts before the policy is asked again (so a request that fails
/// decoding does not hold a batch back for the whole `max_delay`).
const POLL: Duration = Duration::from_micros(250);

impl<R: BatchRunner> Worker<R> {
    fn run(mut self) {
        let mut carry: Option<Job> = None;
        loop {
            let Some((jobs, rows)) = self.next_batch(&mut carry) else {
                return; // every handle dropped: shut down
            };
            let Some((jobs, rows)) = self.hand_to_lone(jobs, rows) else {
                continue;
            };
            self.running.fetch_add(1, Ordering::SeqCst);
            let running = &self.running;
            run_batch(
                &mut self.runner,
                jobs,
                rows,
                self.cfg,
                self.row_len,
                &self.metrics,
                || {
                    running.fetch_sub(1, Ordering::SeqCst);
                },
            );
        }
    }

    /// Hands the batch to the lone runner when [`to_lone`] says so (`None`); otherwise
    /// gives it back to run here.
    fn hand_to_lone(&self, jobs: Vec<Job>, rows: usize) -> Option<Handed> {
        let Some(lone) = &self.lone else {
            return Some((jobs, rows));
        };
        let waiting = self.depth.load(Ordering::SeqCst) + self.incoming.load(Ordering::SeqCst);
        lone.offer((jobs, rows), &self.running, waiting)
    }

    /// Holds the queue while it forms one batch (starting with `carry`, a job that did
    /// not fit the last one); `None` once every handle is dropped and nothing is left.
    fn next_batch(&self, carry: &mut Option<Job>) -> Option<(Vec<Job>, usize)> {
        let rx = self
            .rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let first = match carry.take() {
            Some(job) => job,
            None => rx.recv().ok()?,
        };
        self.taken();
        let mut rows = first.rows;
        let oldest = first.enqueued;
        let mut jobs = vec![first];
        loop {
            // Take what is already queued, as far as it fits.
            while carry.is_none() && rows < self.cfg.max_batch_size {
                match rx.try_recv() {
                    Ok(job) => *carry = self.add(job, &mut jobs, &mut rows),
                    Err(_) => break,
                }
            }
            let incoming = self.incoming.load(Ordering::SeqCst);
            let now = Instant::now();
            let full = carry.is_some();
            match decide(
                rows,
                self.cfg.max_batch_size,
                oldest,
                now,
                self.cfg.max_delay,
                incoming,
            ) {
                Decision::Flush => break,
                _ if full => break,
                Decision::WaitUntil(deadline) => {
                    let wait = deadline.saturating_duration_since(now).min(POLL);
                    match rx.recv_timeout(wait) {
                        Ok(job) => *carry = self.add(job, &mut jobs, &mut rows),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        }
        Some((jobs, rows))
    }

    /// Adds a job taken from the queue to the batch, or hands it back when it does not fit
    /// (it then starts the next batch).
    fn add(&self, job: Job, jobs: &mut Vec<Job>, rows: &mut usize) -> Option<Job> {
        self.taken();
        if *rows + job.rows > self.cfg.max_batch_size {
            return Some(job);
        }
        *rows += job.rows;
        jobs.push(job);
        None
    }

    fn taken(&self) {
        let left = self.depth.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        self.metrics.queue_depth(left);
    }
}

mod lone;
mod run;

#[cfg(test)]
mod tests;
