//! One server's cells: a warm-up, then `c` clients in a closed loop per photo and
//! concurrency, each answer checked against the reference top-1; latency percentiles and
//! the server's CPU time per request.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::PeersBench;
use super::process::ServerProcess;
use super::server::{Request, Server};
use crate::proc_stat::{clock_ticks_per_second, process_tree_ticks};

/// Milliseconds of CPU per request from two tick counts.
pub fn cpu_ms_per_request(before: u64, after: u64, ticks_per_second: u64, requests: usize) -> f64 {
    if requests == 0 || ticks_per_second == 0 {
        return f64::NAN;
    }
    after.saturating_sub(before) as f64 * 1000.0 / ticks_per_second as f64 / requests as f64
}

/// One cell's figures.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_ms: f64,
}

fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// One call: the latency, after checking the status and the top-1 label.
async fn call(
    client: &reqwest::Client,
    server: Server,
    url: &str,
    request: &Request,
    expected: Option<&str>,
) -> anyhow::Result<(Duration, String)> {
    let t = Instant::now();
    let mut builder = client
        .post(url)
        .header("content-type", &request.content_type)
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let response = builder.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    let latency = t.elapsed();
    anyhow::ensure!(
        status.is_success(),
        "{}: HTTP {status}: {}",
        server.name(),
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    let top1 = server.top1(&body)?;
    if let Some(expected) = expected {
        anyhow::ensure!(
            top1 == expected,
            "{} answered top-1 {top1:?}, Sightline {expected:?}",
            server.name()
        );
    }
    Ok((latency, top1))
}

/// `concurrency` clients in a closed loop, `n` calls in all (each client its share, as
/// `make bench` runs them); the latencies and the wall time.
async fn closed_loop(
    client: &reqwest::Client,
    server: Server,
    url: &str,
    request: &Request,
    expected: &str,
    concurrency: usize,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let per_client = n.div_ceil(concurrency.max(1));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, url, request) = (client.clone(), url.to_string(), request.clone());
            let expected = expected.to_string();
            tokio::spawn(async move {
                let mut mine = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let (latency, _) =
                        call(&client, server, &url, &request, Some(&expected)).await?;
                    mine.push(latency);
                }
                anyhow::Ok(mine)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all, started.elapsed()))
}

/// Polls with the first photo until the server answers it (or exits, or `timeout` passes).
async fn wait_answering(
    process: &mut ServerProcess,
    client: &reqwest::Client,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<()> {
    let url = format!("{}{}", process.base, process.server.path());
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.child.try_wait()? {
            anyhow::bail!(
                "{} exited with {status} before it answered; the end of {}:\n{}",
                process.server.name(),
                process.log.display(),
                process.log_tail()
            );
        }
        match call(client, process.server, &url, request, None).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!(
                    "{} did not answer within {timeout:?} ({e}); the end of {}:\n{}",
                    process.server.name(),
                    process.log.display(),
                    process.log_tail()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Every cell of one server: `[photo][concurrency]`.
pub(super) fn measure(
    bench: &PeersBench,
    runtime: &tokio::runtime::Runtime,
    server: Server,
    expected: &mut [Option<String>],
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Vec<Cell>>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()?;
    let requests: Vec<Request> = bench
        .photos
        .iter()
        .map(|(_, path)| {
            let jpeg = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
            Ok(server.request(&jpeg))
        })
        .collect::<anyhow::Result<_>>()?;
    let first = requests.first().context("no photo")?;
    let mut process = ServerProcess::start(bench, server, &bench.log_dir)?;
    let result = runtime.block_on(async {
        wait_answering(&mut process, &client, first, Duration::from_secs(300)).await?;
        eprintln!("peers: {} answers", server.name());
        if server == Server::Sightline {
            notes.push(crate::batching_note("Sightline", &process.base)?);
        }
        let url = format!("{}{}", process.base, server.path());
        let ticks_per_second = clock_ticks_per_second();
        let mut rows = Vec::new();
        for (k, request) in requests.iter().enumerate() {
            let (_, top1) = call(&client, server, &url, request, None).await?;
            let want = match &expected[k] {
                Some(want) => want.clone(),
                None => {
                    expected[k] = Some(top1.clone());
                    top1.clone()
                }
            };
            anyhow::ensure!(
                top1 == want,
                "{} answered top-1 {top1:?} on {}, Sightline {want:?}",
                server.name(),
                bench.photos[k].0
            );
            let mut row = Vec::new();
            for &c in &bench.concurrency {
                // Warm-up at this concurrency (fills the batcher's paths), not measured.
                closed_loop(&client, server, &url, request, &want, c, (2 * c).max(10)).await?;
                let before = process_tree_ticks(process.pid());
                let (mut latencies, wall) =
                    closed_loop(&client, server, &url, request, &want, c, bench.requests).await?;
                let after = process_tree_ticks(process.pid());
                latencies.sort();
                let n = latencies.len();
                row.push(Cell {
                    rps: n as f64 / wall.as_secs_f64(),
                    p50_ms: percentile_ms(&latencies, 0.50),
                    p99_ms: percentile_ms(&latencies, 0.99),
                    cpu_ms: cpu_ms_per_request(before, after, ticks_per_second, n),
                });
                eprintln!(
                    "peers: {} {} c={c}: {:.1} req/s",
                    server.name(),
                    bench.photos[k].0,
                    row[row.len() - 1].rps
                );
            }
            rows.push(row);
        }
        anyhow::Ok(rows)
    });
    // Close the kept-alive connections first: tritonserver waits for them before it exits.
    drop(client);
    process.stop();
    result
}
