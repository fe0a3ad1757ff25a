//! Mixed load on the split pipeline, and the check that nothing was lost: one-call
//! pipelines (some re-sending an image already sent), plain uploads, recognitions by bytes
//! and result queries, `concurrency` at a time. Afterwards the store is read back: every
//! acknowledged pipeline call has exactly one record, there is no record nobody asked for,
//! and every acknowledged upload can be downloaded with the bytes it had. The resident
//! memory of each process is sampled after the warm-up and at the end.
//!
//! Used by the `sightline-load` command (figures for RELIABILITY.md) and, with fewer
//! requests, by `tests/load.rs` (the invariants only, no timing).

mod report;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use sightline_server::upload::sha256_hex;

use crate::split::{records_per_image, try_all_records, try_pipeline, unique_png};

pub use report::{KindStats, LoadReport, RssSample, percentile};

/// What one request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `POST /api/v1/pipeline` on upload (upload → recognize → store).
    Pipeline,
    /// `POST /api/v1/images` on upload.
    Upload,
    /// `POST /api/v1/recognize` on recognize, image bytes.
    Recognize,
    /// `GET /api/v1/results` on store.
    Query,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pipeline => "pipeline (POST /api/v1/pipeline)",
            Kind::Upload => "upload (POST /api/v1/images)",
            Kind::Recognize => "recognize (POST /api/v1/recognize)",
            Kind::Query => "query (GET /api/v1/results)",
        }
    }

    /// Four in ten requests are pipelines, two uploads, two recognitions, two queries.
    fn of(i: usize) -> Kind {
        match i % 10 {
            0..=3 => Kind::Pipeline,
            4 | 5 => Kind::Upload,
            6 | 7 => Kind::Recognize,
            _ => Kind::Query,
        }
    }
}

/// Every 40th request (a pipeline) re-sends the image of the pipeline 39 requests earlier
/// (itself never a re-send): it must not make a second record.
const RESEND_EVERY: usize = 40;

/// Base URLs of the three services, and the processes to sample.
#[derive(Debug, Clone)]
pub struct Targets {
    pub upload: String,
    pub recognize: String,
    pub store: String,
    /// `(name, pid)` of each process whose memory is sampled.
    pub processes: Vec<(String, u32)>,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub requests: usize,
    pub concurrency: usize,
    /// Requests before the first memory sample (not in the latency figures).
    pub warmup: usize,
}

/// Resident memory of a process, KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// What one request sent and got.
struct Outcome {
    i: usize,
    kind: Kind,
    /// The image's id (pipeline, upload).
    image_id: Option<String>,
    status: Option<u16>,
    body: String,
    elapsed: Duration,
}

/// The image request `i` sends (the pipeline re-sends reuse an earlier one).
fn image_for(i: usize) -> Vec<u8> {
    if Kind::of(i) == Kind::Pipeline && i >= RESEND_EVERY && i.is_multiple_of(RESEND_EVERY) {
        unique_png((i + 1 - RESEND_EVERY) as u64)
    } else {
        unique_png(i as u64)
    }
}

async fn one(client: &reqwest::Client, targets: &Targets, i: usize) -> Outcome {
    let kind = Kind::of(i);
    let started = Instant::now();
    let (request, image_id) = match kind {
        Kind::Pipeline | Kind::Upload | Kind::Recognize => {
            let image = image_for(i);
            let id = sha256_hex(&image);
            let url = match kind {
                Kind::Pipeline => format!("{}/api/v1/pipeline", targets.upload),
                Kind::Upload => format!("{}/api/v1/images", targets.upload),
                _ => format!("{}/api/v1/recognize", targets.recognize),
            };
            let request = client
                .post(url)
                .header("content-type", "image/png")
                .body(image);
            (request, (kind != Kind::Recognize).then_some(id))
        }
        Kind::Query => {
            let query = if i % 20 == 8 {
                "limit=20"
            } else {
                "label=red&limit=5"
            };
            let url = format!("{}/api/v1/results?{query}", targets.store);
            (client.get(url), None)
        }
    };
    let (status, body) = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            (Some(status), body)
        }
        Err(e) => (None, format!("{e:#}")),
    };
    Outcome {
        i,
        kind,
        image_id,
        status,
        body,
        elapsed: started.elapsed(),
    }
}

/// Runs `requests` in `range` at `concurrency`.
async fn phase(
    client: &reqwest::Client,
    targets: &Targets,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> Vec<Outcome> {
    futures::stream::iter(range)
        .map(|i| one(client, targets, i))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

fn sample(targets: &Targets) -> Vec<Option<u64>> {
    targets
        .processes
        .iter()
        .map(|(_, pid)| rss_kib(*pid))
        .collect()
}

/// Drives the load, then reads the store and the image store back.
pub async fn run(targets: &Targets, options: LoadOptions) -> anyhow::Result<LoadReport> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(options.concurrency.max(1))
        .build()
        .context("build the HTTP client")?;
    let warmup = options.warmup.min(options.requests);
    let mut outcomes = phase(&client, targets, 0..warmup, options.concurrency).await;
    let warm = sample(targets);
    let started = Instant::now();
    let measured = phase(
        &client,
        targets,
        warmup..options.requests,
        options.concurrency,
    )
    .await;
    let elapsed = started.elapsed();
    let end = sample(targets);
    outcomes.extend(measured);

    let mut report = LoadReport {
        measured: elapsed,
        rss: targets
            .processes
            .iter()
            .zip(warm.into_iter().zip(end))
            .map(|((name, _), (w, e))| RssSample {
                process: name.clone(),
                after_warmup_kib: w,
                at_end_kib: e,
            })
            .collect(),
        ..LoadReport::default()
    };
    let mut pipeline_sent = HashSet::new();
    let mut pipeline_acked = HashSet::new();
    let mut uploads_acked = HashSet::new();
    for o in &outcomes {
        let stats = report.kinds.entry(o.kind).or_default();
        match o.status {
            Some(s) => *stats.statuses.entry(s).or_default() += 1,
            None => stats.transport_errors += 1,
        }
        if o.i >= warmup {
            stats.latencies_ms.push(o.elapsed.as_secs_f64() * 1000.0);
        }
        let ok = o.status.is_some_and(|s| (200..300).contains(&s));
        if !ok && report.examples.len() < 5 {
            let body: String = o.body.chars().take(300).collect();
            report
                .examples
                .push(format!("#{} {:?}: {:?} {body}", o.i, o.kind, o.status));
        }
        match (o.kind, &o.image_id) {
            (Kind::Pipeline, Some(id)) => {
                pipeline_sent.insert(id.clone());
                if ok {
                    pipeline_acked.insert(id.clone());
                }
            }
            (Kind::Upload, Some(id)) if ok => {
                uploads_acked.insert(id.clone());
            }
            _ => {}
        }
    }
    report.pipeline_images = pipeline_sent.len();
    report.pipeline_acknowledged = pipeline_acked.len();
    report.uploads_acknowledged = uploads_acked.len();

    let records = try_all_records(&client, &targets.store).await?;
    report.records = records.len();
    let per_image: HashMap<String, usize> = records_per_image(&records);
    let mut lost: Vec<String> = pipeline_acked
        .iter()
        .filter(|id| !per_image.contains_key(*id))
        .cloned()
        .collect();
    lost.sort();
    report.lost = lost;
    let mut duplicated: Vec<(String, usize)> = per_image
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id.clone(), *n))
        .collect();
    duplicated.sort();
    report.duplicated = duplicated;
    let mut unexpected: Vec<String> = per_image
        .keys()
        .filter(|id| !pipeline_sent.contains(*id))
        .cloned()
        .collect();
    unexpected.sort();
    report.unexpected = unexpected;

    let checks = futures::stream::iter(uploads_acked)
        .map(|id| {
            let client = client.clone();
            let url = format!("{}/api/v1/images/{id}", targets.upload);
            async move {
                let intact = match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        r.bytes().await.is_ok_and(|bytes| sha256_hex(&bytes) == id)
                    }
                    _ => false,
                };
                (!intact).then_some(id)
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut missing: Vec<String> = checks.into_iter().flatten().collect();
    missing.sort();
    report.uploads_missing = missing;
    Ok(report)
}

/// For the fault tests: each pipeline answer after a burst, by image id.
pub async fn pipeline_burst(
    client: &reqwest::Client,
    upload: &str,
    images: impl Iterator<Item = Vec<u8>>,
    concurrency: usize,
) -> Vec<(String, anyhow::Result<(u16, serde_json::Value)>)> {
    futures::stream::iter(images)
        .map(|image| {
            let client = client.clone();
            async move {
                let id = sha256_hex(&image);
                (id, try_pipeline(&client, upload, image).await)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn the_mix_and_the_resends() {
        let kinds: Vec<Kind> = (0..10).map(Kind::of).collect();
        assert_eq!(kinds.iter().filter(|k| **k == Kind::Pipeline).count(), 4);
        assert_eq!(Kind::of(RESEND_EVERY), Kind::Pipeline);
        assert_eq!(image_for(RESEND_EVERY), image_for(1));
        assert_eq!(Kind::of(1), Kind::Pipeline);
        assert_eq!(image_for(2 * RESEND_EVERY), image_for(RESEND_EVERY + 1));
        assert_ne!(image_for(1), image_for(0));
    }

    #[test]
    fn rss_of_this_process() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
