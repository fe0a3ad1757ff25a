//! `sightline-bench --mirror`: what mirroring costs the callers of a canary's front door.
//!
//! A stable recognize server and a front door (the upload role reading a traffic file) in
//! this process, two candidate recognize processes — the same model (same file) and the
//! tiny test classifier — with `threads` ONNX Runtime threads each; `c` clients POST
//! distinct JPEGs (no two alike, so no answer comes from a result cache) to the front
//! door's `/api/v1/recognize`. The settings, alternated round after round so that drift
//! hits them alike: mirroring off; 10 % and 100 % mirrored to the same model; 100 %
//! mirrored to the test classifier (what the front door itself pays: the copy, the second
//! call, the comparison, nearly without the candidate's inference). The table has each
//! setting's p50/p99, their ratios to mirroring off, and what became of the mirrored
//! requests.
//!
//! `pin`: in a cluster the candidate runs in its own pods, on CPU the stable revision does
//! not use. On one machine the candidate's inference competes with stable's for the same
//! cores instead, which measures the machine, not mirroring. Pinned, this process (clients,
//! front door, stable) runs on CPU 0 and the candidates on CPU 1, in every setting alike.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;

use crate::canary::{TrafficDir, model_flags, scrape, sum};
use crate::process::{ScratchDir, ServerProcess, require_server_binary};
use crate::{RunningServer, serve_args};

/// What to measure.
#[derive(Debug, Clone)]
pub struct MirrorBench {
    /// A file stem in models/build: stable and candidate.
    pub model: String,
    pub concurrency: Vec<usize>,
    /// Calls per round and setting.
    pub requests: usize,
    /// Rounds of each setting.
    pub rounds: usize,
    /// ONNX Runtime intra-op threads of each server.
    pub threads: usize,
    /// `--max-batch-size` of every server (`auto`, `auto:<n>` or a number).
    pub max_batch_size: String,
    /// The photo the JPEGs are made from.
    pub image: PathBuf,
    pub ort_lib: PathBuf,
    /// This process on CPU 0, the candidates on CPU 1 (as if on their own node).
    pub pin: bool,
}

const OUTCOMES: [&str; 5] = ["agree", "disagree", "error", "timeout", "dropped"];

/// `n` distinct JPEGs made from `photo` (224 px, with `tag` and the index stamped into the
/// first row of blocks).
fn distinct_jpegs(photo: &image::DynamicImage, tag: u64, n: usize) -> anyhow::Result<Vec<Bytes>> {
    let base = photo.thumbnail(224, 224).to_rgb8();
    (0..n)
        .map(|i| {
            let mut img = base.clone();
            let stamp = ((tag << 32) | i as u64).to_le_bytes();
            for (k, byte) in stamp.iter().enumerate() {
                for dx in 0..8 {
                    for dy in 0..8 {
                        let x = (k as u32 * 8 + dx) % img.width();
                        img.put_pixel(
                            x,
                            dy % img.height(),
                            image::Rgb([*byte, 255 - *byte, *byte]),
                        );
                    }
                }
            }
            let mut out = std::io::Cursor::new(Vec::new());
            image::DynamicImage::ImageRgb8(img)
                .write_to(&mut out, image::ImageFormat::Jpeg)
                .context("encode a JPEG")?;
            Ok(Bytes::from(out.into_inner()))
        })
        .collect()
}

/// POSTs `jpeg` as a raw `image/jpeg` body to `url`; how long the answer took (an error
/// unless it is a 2xx).
pub async fn post_jpeg_timed(
    client: &reqwest::Client,
    url: &str,
    jpeg: Bytes,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "image/jpeg")
        .body(jpeg)
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(t.elapsed())
}

/// `images` POSTed to `url`, `concurrency` at a time; each call's latency.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    images: Vec<Bytes>,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    futures::stream::iter(images)
        .map(|jpeg| post_jpeg_timed(client, url, jpeg))
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Writes the traffic file and waits until the front door applied it.
async fn set(
    client: &reqwest::Client,
    front: &str,
    traffic: &mut TrafficDir,
    file: serde_json::Value,
) -> anyhow::Result<()> {
    let applied = |t: &str| {
        sum(
            t,
            "sightline_frontdoor_traffic_reloads_total",
            &[("outcome", "applied")],
        )
    };
    let before = applied(&scrape(client, front).await?);
    traffic.write(&file)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while applied(&scrape(client, front).await?) <= before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the traffic file was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Mirrored outcomes so far, in [`OUTCOMES`] order.
async fn mirrored(client: &reqwest::Client, front: &str) -> anyhow::Result<Vec<f64>> {
    let text = scrape(client, front).await?;
    Ok(OUTCOMES
        .iter()
        .map(|o| {
            sum(
                &text,
                "sightline_frontdoor_mirrored_total",
                &[("outcome", o)],
            )
        })
        .collect())
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// p50 and p99 in milliseconds (nearest rank) and calls a second.
fn figures(mut latencies: Vec<Duration>, wall: Duration) -> (f64, f64, f64) {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies
            .get(i)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    (
        at(0.5),
        at(0.99),
        latencies.len() as f64 / wall.as_secs_f64(),
    )
}

/// Where the front door's calls go in one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    Off,
    /// This share mirrored to a candidate serving the same model.
    SameModel(u32),
    /// 100 % mirrored to a candidate serving the tiny test classifier: what the front door
    /// itself pays for mirroring, nearly without the candidate's inference.
    Cheap,
}

impl Setting {
    const ALL: [Setting; 4] = [
        Setting::Off,
        Setting::SameModel(10),
        Setting::SameModel(100),
        Setting::Cheap,
    ];

    fn name(self) -> String {
        match self {
            Setting::Off => "mirroring off".into(),
            Setting::SameModel(p) => format!("{p} % mirrored, candidate = the same model"),
            Setting::Cheap => "100 % mirrored, candidate = test classifier".into(),
        }
    }

    fn mirror_percent(self) -> u32 {
        match self {
            Setting::Off => 0,
            Setting::SameModel(p) => p,
            Setting::Cheap => 100,
        }
    }
}

/// Restricts every thread of process `pid` to `cpu` (threads they start inherit it).
fn pin(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .output()
        .context("run taskset (util-linux)")?;
    anyhow::ensure!(
        out.status.success(),
        "taskset -a -p -c {cpu} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs the measurement; the Markdown table.
pub fn run(bench: &MirrorBench) -> anyhow::Result<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = bench.threads.max(1);
    let model = &bench.model;
    let photo =
        image::open(&bench.image).with_context(|| format!("decode {}", bench.image.display()))?;
    let lib = bench.ort_lib.display().to_string();
    let recognize = |model: &str| {
        serve_args(
            &format!("{model}.onnx"),
            &[
                "--intra-threads",
                &threads.to_string(),
                "--max-batch-size",
                &bench.max_batch_size,
                "--cache-bytes",
                "0",
                "--ort-lib",
                &lib,
            ],
        )
    };
    if bench.pin {
        anyhow::ensure!(cores >= 2, "--pin needs two CPUs, this machine has {cores}");
        pin(std::process::id(), 0)?;
    }
    let stable = RunningServer::start(recognize(model)?, 2, Duration::from_secs(120))?;
    let scratch = ScratchDir::new("mirror-bench")?;
    let binary = require_server_binary().context("the candidates run as processes")?;
    let candidate = |name: &str, file: &str| -> anyhow::Result<ServerProcess> {
        let extra = [
            "--intra-threads".to_string(),
            threads.to_string(),
            "--max-batch-size".to_string(),
            bench.max_batch_size.clone(),
            "--cache-bytes".to_string(),
            "0".to_string(),
            "--ort-lib".to_string(),
            lib.clone(),
        ];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let port = crate::process::free_port()?;
        let process = ServerProcess::start_named(
            &binary,
            "recognize",
            name,
            port,
            &model_flags(file, &extra),
            scratch.path(),
        )?;
        if bench.pin {
            pin(process.pid().context("the candidate's pid")?, 1)?;
        }
        Ok(process)
    };
    let same = candidate("same-model", &format!("{model}.onnx"))?;
    let cheap = candidate("test-classifier", "test-classifier.onnx")?;
    let mut traffic = TrafficDir::new(scratch.path().join("traffic"))?;
    let data_dir = scratch.path().join("front").display().to_string();
    let (stable_url, traffic_path) = (stable.url(""), traffic.path().display().to_string());
    let front_args = sightline_server::cli::parse(
        [
            "sightline-server",
            "upload",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
            "--recognize-url",
            &stable_url,
            "--traffic-file",
            &traffic_path,
        ]
        .into_iter()
        .map(Into::into)
        .collect(),
    )?
    .command
    .into_serve_args()
    .context("the upload role's flags")?;
    let front = RunningServer::start(front_args, 2, Duration::from_secs(30))?;
    let front_url = front.url("");
    let url = front.url("/api/v1/recognize");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    // Each write differs (the revision), so the front door applies every one.
    let writes = std::cell::Cell::new(0u32);
    let file = |setting: Setting| {
        writes.set(writes.get() + 1);
        let candidate = match setting {
            Setting::Cheap => cheap.url(""),
            Setting::Off | Setting::SameModel(_) => same.url(""),
        };
        let mirror = setting.mirror_percent();
        serde_json::json!({
            "model": model, "stable": stable.url(""), "candidate": candidate,
            "candidateWeight": 0, "mirrorPercent": mirror,
            "revision": format!("bench-{}", writes.get()),
        })
    };

    let mut table = format!(
        "Machine: {} ({cores} cores; 1-minute load average {} at the start). Stable: {model}, \
         ONNX Runtime intra-op threads {threads}, max batch {}, result cache off; candidates \
         the same (same model file) and the test classifier, each its own process; the front \
         door, stable and the clients in this one. {}. {} distinct {}-derived JPEGs (224 px) \
         per phase; {} rounds of the {} settings, alternated.\n\n\
         | concurrency | setting | p50 ms | p50 ÷ off | p99 ms | p99 ÷ off | calls/s | \
         mirrored: agree / disagree / error / timeout / dropped |\n\
         |---:|---|---:|---:|---:|---:|---:|---|\n",
        cpu_model(),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split(' ').next().map(str::to_string))
            .unwrap_or_else(|| "?".into()),
        bench.max_batch_size,
        if bench.pin {
            "Pinned: this process on CPU 0, the candidates on CPU 1"
        } else {
            "Not pinned: every process shares every core"
        },
        bench.requests,
        bench
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bench.rounds,
        Setting::ALL.len(),
    );
    let mut tag = 0u64;
    for &c in &bench.concurrency {
        let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); Setting::ALL.len()];
        let mut walls = vec![Duration::ZERO; Setting::ALL.len()];
        let mut outcomes = vec![vec![0.0; OUTCOMES.len()]; Setting::ALL.len()];
        // Warm-up of every server through the front door, not measured.
        for setting in [Setting::SameModel(100), Setting::Cheap] {
            tag += 1;
            let warm = distinct_jpegs(&photo, tag, 20)?;
            runtime.block_on(async {
                set(&client, &front_url, &mut traffic, file(setting)).await?;
                send(&client, &url, warm, c).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                anyhow::Ok(())
            })?;
        }
        for _ in 0..bench.rounds {
            for (k, setting) in Setting::ALL.into_iter().enumerate() {
                tag += 1;
                let images = distinct_jpegs(&photo, tag, bench.requests)?;
                let (phase, wall, done) = runtime.block_on(async {
                    set(&client, &front_url, &mut traffic, file(setting)).await?;
                    let before = mirrored(&client, &front_url).await?;
                    let started = Instant::now();
                    let phase = send(&client, &url, images, c).await?;
                    let wall = started.elapsed();
                    // This phase's mirrors finish before the next phase starts.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let after = mirrored(&client, &front_url).await?;
                    let done: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
                    anyhow::Ok((phase, wall, done))
                })?;
                latencies[k].extend(phase);
                walls[k] += wall;
                for (total, n) in outcomes[k].iter_mut().zip(done) {
                    *total += n;
                }
            }
        }
        eprintln!("mirror: c={c} done");
        let (p50_off, p99_off, _) = figures(latencies[0].clone(), walls[0]);
        for (k, setting) in Setting::ALL.into_iter().enumerate() {
            let (p50, p99, rps) = figures(latencies[k].clone(), walls[k]);
            let shown: Vec<String> = outcomes[k].iter().map(|n| n.to_string()).collect();
            table.push_str(&format!(
                "| {c} | {} | {p50:.2} | {:.3} | {p99:.2} | {:.3} | {rps:.1} | {} |\n",
                setting.name(),
                p50 / p50_off,
                p99 / p99_off,
                shown.join(" / ")
            ));
        }
    }
    drop((front, cheap, same, stable));
    Ok(table)
}
