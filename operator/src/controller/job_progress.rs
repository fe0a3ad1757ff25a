//! Where a RecognitionJob stands, from what its shards say about themselves: a finished
//! shard's summary (the JSON `sightline-server batch --summary` writes to
//! `/dev/termination-log`, which the kubelet copies into the container's
//! `state.terminated.message`), a running shard's `/metrics`
//! (`sightline_batch_images_total{job,outcome}`, `sightline_batch_shard_images{job}`), and
//! the Job's own status and conditions. Pure: the reconciler reads the objects and passes
//! them in.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde::Deserialize;
use sightline_api::EvalCounts;

use crate::build::recognition_job::{CONTAINER, INDEX_ANNOTATION};
use crate::crd::{ImageError, JobEvaluation, ShardCounts};
use crate::rollout::{PodFailure, pod_failure};

/// Errors kept in `status.firstErrors`.
pub const FIRST_ERRORS: usize = 5;

/// A shard's summary, as `sightline-server batch --summary` writes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default)]
pub struct Summary {
    pub shard: u64,
    pub shards: u64,
    /// Images in the shard.
    pub total: u64,
    /// Recognized by this attempt.
    pub recognized: u64,
    /// Already in the output when this attempt started.
    pub skipped: u64,
    pub failed: u64,
    pub errors: Vec<ImageError>,
    pub seconds: f64,
    pub images_per_second: f64,
    pub model_sha256: String,
    /// Every image of the shard is in its output.
    pub complete: bool,
    /// Why the run stopped early, when it did.
    pub error: Option<String>,
    /// With `--truth`: the evaluation's counts over the shard's images of the CSV.
    pub evaluation: Option<EvalCounts>,
}

/// What one shard has done so far.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Counts {
    /// Images in the shard, when it said.
    pub total: Option<u64>,
    pub recognized: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Its own rate now (a running shard's), images a second.
    pub rate: Option<f64>,
    pub errors: Vec<ImageError>,
    pub model_sha256: Option<String>,
    /// A finished shard's evaluation.
    pub evaluation: Option<EvalCounts>,
}

impl Counts {
    pub fn done(&self) -> u64 {
        self.recognized + self.skipped + self.failed
    }
}

impl From<Summary> for Counts {
    fn from(s: Summary) -> Counts {
        Counts {
            total: Some(s.total),
            recognized: s.recognized,
            skipped: s.skipped,
            failed: s.failed,
            rate: None,
            errors: s.errors,
            model_sha256: Some(s.model_sha256).filter(|d| !d.is_empty()),
            evaluation: s.evaluation,
        }
    }
}

/// The shard container's termination message, when it has terminated.
pub fn termination_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find(|s| s.name == CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()?
        .message
        .clone()
}

/// The summary a terminated shard left, if it left one.
pub fn summary(pod: &Pod) -> Option<Summary> {
    serde_json::from_str(termination_message(pod)?.trim()).ok()
}

/// A running shard's counts in its `/metrics` for `job`; `seconds` it has run so far.
pub fn from_metrics(text: &str, job: &str, seconds: Option<f64>) -> Counts {
    let mut counts = Counts::default();
    for (name, labels, value) in text.lines().filter_map(crate::canary::figures::sample_line) {
        if labels.get("job") != Some(&job) || !value.is_finite() || value < 0.0 {
            continue;
        }
        let value = value as u64;
        match (name, labels.get("outcome").copied()) {
            ("sightline_batch_images_total", Some("recognized")) => counts.recognized = value,
            ("sightline_batch_images_total", Some("skipped")) => counts.skipped = value,
            ("sightline_batch_images_total", Some("failed")) => counts.failed = value,
            ("sightline_batch_shard_images", _) => counts.total = Some(value),
            _ => {}
        }
    }
    counts.rate = seconds
        .filter(|s| *s > 0.0)
        .map(|s| (counts.recognized + counts.failed) as f64 / s);
    counts
}

/// A pod's completion index.
pub fn index_of(pod: &Pod) -> Option<i32> {
    pod.annotations()
        .get(INDEX_ANNOTATION)
        .or_else(|| pod.labels().get(INDEX_ANNOTATION))?
        .parse()
        .ok()
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// When the shard container started running, if it runs.
pub fn started_at(pod: &Pod) -> Option<k8s_openapi::jiff::Timestamp> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?;
    let s = status.iter().find(|s| s.name == CONTAINER)?;
    Some(s.state.as_ref()?.running.as_ref()?.started_at.as_ref()?.0)
}

/// The pod whose word stands for its index: a succeeded one, else the running one, else
/// the newest failed one that left a summary.
pub fn deciding_pods(pods: &[Pod]) -> BTreeMap<i32, &Pod> {
    let rank = |p: &Pod| match phase(p) {
        "Succeeded" => 3,
        "Running" => 2,
        "Failed" if summary(p).is_some() => 1,
        _ => 0,
    };
    let key = |p: &Pod| (rank(p), p.creation_timestamp().map(|t| t.0));
    let mut by_index: BTreeMap<i32, &Pod> = BTreeMap::new();
    for pod in pods {
        let Some(index) = index_of(pod) else { continue };
        match by_index.get(&index) {
            Some(old) if key(old) >= key(pod) => {}
            _ => {
                by_index.insert(index, pod);
            }
        }
    }
    by_index
}

/// The job's figures over its shards.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Totals {
    /// Known once every shard said its size.
    pub total: Option<u64>,
    pub recognized: u64,
    pub skipped: u64,
    pub failed: u64,
    pub first_errors: Vec<ImageError>,
    pub images_per_second: Option<f64>,
    /// Seconds left at that rate.
    pub eta_seconds: Option<u64>,
    pub model_sha256: Option<String>,
    /// The finished shards' evaluations, summed.
    pub evaluation: Option<JobEvaluation>,
}

impl Totals {
    pub fn done(&self) -> u64 {
        self.recognized + self.skipped + self.failed
    }

    /// `42%` of the total, when known.
    pub fn percent(&self) -> Option<String> {
        let total = self.total?;
        let done = self.done().min(total);
        Some(match total {
            0 => "100%".into(),
            t => format!("{}%", done * 100 / t),
        })
    }
}

/// Sums `shards` shards' counts (`counts` by index; a shard not in it has said nothing).
pub fn totals(shards: i32, counts: &BTreeMap<i32, Counts>) -> Totals {
    let mut t = Totals::default();
    let mut total = 0;
    let mut sized = 0;
    let mut rate = 0.0;
    let mut rated = false;
    let mut evaluated = Vec::new();
    for c in counts.values() {
        t.recognized += c.recognized;
        t.skipped += c.skipped;
        t.failed += c.failed;
        if let Some(n) = c.total {
            total += n;
            sized += 1;
        }
        if let Some(r) = c.rate {
            rate += r;
            rated = true;
        }
        for e in &c.errors {
            if t.first_errors.len() < FIRST_ERRORS {
                t.first_errors.push(e.clone());
            }
        }
        if t.model_sha256.is_none() {
            t.model_sha256 = c.model_sha256.clone();
        }
        if let Some(e) = &c.evaluation {
            evaluated.push(*e);
        }
    }
    t.total = (sized == shards.max(0) as usize).then_some(total);
    t.evaluation = evaluation(&evaluated);
    if rated {
        t.images_per_second = Some((rate * 10.0).round() / 10.0);
        if let Some(total) = t.total
            && rate > 0.0
        {
            let left = total.saturating_sub(t.done());
            t.eta_seconds = Some((left as f64 / rate).ceil() as u64);
        }
    }
    t
}

/// The shards' evaluation counts summed, and the accuracies of the sum (each image of
/// the CSV is in exactly one shard's counts, so the sum is the whole set's once every
/// shard is in it). `None` when no shard has reported one.
pub fn evaluation(shards: &[EvalCounts]) -> Option<JobEvaluation> {
    if shards.is_empty() {
        return None;
    }
    let mut sum = EvalCounts::default();
    for e in shards {
        sum.images += e.images;
        sum.evaluated += e.evaluated;
        sum.top1 += e.top1;
        sum.top5 += e.top5;
    }
    let of = |n: u64| match sum.evaluated {
        0 => 0.0,
        d => n as f64 / d as f64,
    };
    Some(JobEvaluation {
        images: sum.images,
        evaluated: sum.evaluated,
        accuracy: of(sum.top1),
        top5_accuracy: of(sum.top5),
        shards: shards.len() as i32,
    })
}

/// `1h2m3s`.
pub fn duration_text(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// How many indexes a Job's `completedIndexes` / `failedIndexes` names (`"1,3-5,7"`).
pub fn count_indexes(text: Option<&str>) -> i32 {
    text.unwrap_or_default()
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<i32>(), b.trim().parse::<i32>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => i32::from(p.trim().parse::<i32>().is_ok()),
        })
        .sum()
}

/// The shards by state, from the Job's status.
pub fn shard_counts(job: &Job) -> ShardCounts {
    let status = job.status.clone().unwrap_or_default();
    ShardCounts {
        succeeded: count_indexes(status.completed_indexes.as_deref()),
        failed: count_indexes(status.failed_indexes.as_deref()),
        running: status.active.unwrap_or(0),
    }
}

/// A condition of the Job, when true: `(reason, message)`.
pub fn job_condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_else(|| type_.to_string()),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// Why shard pods that should run do not (no node fits, the image cannot be pulled, …),
/// in the scheduler's and kubelet's words ([`crate::rollout::pod_failure`]).
pub fn stuck_pods(pods: &[Pod]) -> Vec<PodFailure> {
    pods.iter()
        .filter(|p| matches!(phase(p), "Pending" | "Running"))
        .filter_map(pod_failure)
        .collect()
}

/// What the failed attempts of failed shards said: their summary's first error, else
/// their termination message, else their exit code.
pub fn failed_attempts(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter(|p| phase(p) == "Failed")
        .filter_map(|p| {
            let index = index_of(p)?;
            let said = match summary(p) {
                Some(s) => s.error.clone(),
                None => termination_message(p).filter(|m| !m.trim().is_empty()),
            };
            let exit = p
                .status
                .as_ref()?
                .container_statuses
                .iter()
                .flatten()
                .find(|s| s.name == CONTAINER)
                .and_then(|s| s.state.as_ref()?.terminated.as_ref())
                .map(|t| t.exit_code);
            Some(format!(
                "shard {index} (pod {}, exit code {}){}",
                p.name_any(),
                exit.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                said.map(|s| format!(": {}", s.trim())).unwrap_or_default()
            ))
        })
        .collect()
}

#[cfg(test)]
#[path = "job_progress_tests.rs"]
mod tests;
