//! The evaluations of one server: the jobs it keeps (the last [`KEPT`]), the slots that
//! admit them ([`MAX_RUNNING`] at once, taken before anything is unpacked), and the folder
//! their archives are unpacked in.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::archive::Cancel;
use super::progress::Progress;
use super::report::Report;

/// Evaluations running at once (each holds a slot from before its archive is unpacked
/// until it ends).
pub const MAX_RUNNING: usize = 2;
/// Finished evaluations kept for `GET /api/v1/evaluations/{id}`.
pub const KEPT: usize = 20;

/// One evaluation.
pub struct Job {
    pub id: String,
    pub dataset: String,
    pub created_at_ms: i64,
    pub progress: Progress,
    outcome: Mutex<Option<Result<Box<Report>, String>>>,
    /// Set to stop the evaluation (its caller, streaming its progress, went away).
    pub cancel: Cancel,
}

impl Job {
    pub fn new(id: String, dataset: String, total: u64) -> Job {
        Job {
            id,
            dataset,
            created_at_ms: now_ms(),
            progress: Progress::new(total, false),
            outcome: Mutex::new(None),
            cancel: Cancel::default(),
        }
    }

    /// What `GET /api/v1/evaluations/{id}` shows.
    pub fn view(&self) -> serde_json::Value {
        let done = self.progress.done();
        let total = self.progress.total();
        let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let (status, report, error) = match &*outcome {
            None => ("running", None, None),
            Some(Ok(report)) => ("succeeded", Some(report.clone()), None),
            Some(Err(e)) => ("failed", None, Some(e.clone())),
        };
        let mut view = json!({
            "id": self.id,
            "status": status,
            "dataset": self.dataset,
            "created_at_ms": self.created_at_ms,
            "progress": {
                "done": done,
                "total": total,
                "fraction": match (total, status) {
                    // Still fetching: nothing counted yet.
                    (0, "running") => 0.0,
                    (0, _) => 1.0,
                    _ => done as f64 / total as f64,
                },
            },
        });
        if let Some(report) = report {
            view["report"] = serde_json::to_value(&report).unwrap_or_default();
        }
        if let Some(error) = error {
            view["error"] = json!(error);
        }
        view
    }

    pub fn running(&self) -> bool {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Ends the job with `outcome`.
    pub fn finish(&self, outcome: Result<Box<Report>, String>) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    }
}

/// The evaluations of one server. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    list: Arc<Mutex<VecDeque<Arc<Job>>>>,
    slots: Arc<Semaphore>,
    work: Arc<PathBuf>,
}

impl Default for Jobs {
    /// Archives unpacked under the system's temporary folder (`/tmp`, an `emptyDir` in
    /// the operator's pods).
    fn default() -> Self {
        Jobs::in_dir(std::env::temp_dir())
    }
}

impl Jobs {
    /// Jobs whose archives are unpacked under `work`.
    pub fn in_dir(work: PathBuf) -> Jobs {
        Jobs {
            list: Arc::default(),
            slots: Arc::new(Semaphore::new(MAX_RUNNING)),
            work: Arc::new(work),
        }
    }

    /// Where archives are unpacked (each in a folder of its own).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// A slot for one more evaluation, or `None` when [`MAX_RUNNING`] are running.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let jobs = self.list.lock().unwrap_or_else(|p| p.into_inner());
        jobs.iter().find(|j| j.id == id).cloned()
    }

    /// Adds `job`, replacing an earlier job with its id (the fixed start-up id goes from
    /// fetching to running or failed), and drops the oldest finished ones beyond [`KEPT`].
    pub fn push(&self, job: Arc<Job>) {
        let mut jobs = self.list.lock().unwrap_or_else(|p| p.into_inner());
        jobs.retain(|j| j.id != job.id);
        jobs.push_back(job);
        while jobs.len() > KEPT {
            match jobs.iter().position(|j| !j.running()) {
                Some(i) => {
                    jobs.remove(i);
                }
                None => break,
            }
        }
    }

    /// Records an evaluation with `outcome` that runs no slot: one being fetched (`None`,
    /// shown as `running`, nothing counted yet) or one that failed before it could run.
    pub fn record(&self, id: &str, dataset: &str, outcome: Option<String>) {
        let job = Job::new(id.to_string(), dataset.to_string(), 0);
        if let Some(error) = outcome {
            job.finish(Err(error));
        }
        self.push(Arc::new(job));
    }
}

/// A new job id: 24 hex digits.
pub fn new_id() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(now_ms().to_le_bytes());
    h.update(NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(crate::store::random_hex().as_bytes());
    hex::encode(&h.finalize()[..12])
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
