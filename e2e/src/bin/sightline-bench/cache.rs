//! `--cache`: the result cache's hit latency against a miss, and a load where every other
//! request repeats an image sent before, cache on and off, alternated over rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sightline_e2e::RunningServer;

use super::{Args, Stats, bench_serve_args, stats};

/// `jpeg` with a comment segment saying `n` after its start marker: other bytes (another
/// cache key), the same pixels.
fn variant(jpeg: &[u8], n: usize) -> bytes::Bytes {
    let text = format!("sightline-bench variant {n}");
    let mut out = Vec::with_capacity(jpeg.len() + text.len() + 4);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((text.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&jpeg[2..]);
    out.into()
}

/// One request's client round trip and the server's own `latency_ms`.
async fn timed_call(
    client: &reqwest::Client,
    url: &str,
    image: bytes::Bytes,
) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "image/jpeg")
        .body(image)
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    let round_trip = t.elapsed();
    anyhow::ensure!(
        status.is_success(),
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    let server_ms = answer["latency_ms"]
        .as_f64()
        .context("no latency_ms in the answer")?;
    Ok((round_trip, Duration::from_secs_f64(server_ms / 1000.0)))
}

/// `images` in order, `concurrency` at a time (each client takes the next one).
async fn run_sequence(
    url: &str,
    images: &[bytes::Bytes],
    concurrency: usize,
) -> anyhow::Result<Stats> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let images: Arc<Vec<bytes::Bytes>> = Arc::new(images.to_vec());
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, images, url) = (
                client.clone(),
                next.clone(),
                images.clone(),
                url.to_string(),
            );
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(image) = images.get(i) else {
                        break;
                    };
                    mine.push(timed_call(&client, &url, image.clone()).await?.0);
                }
                anyhow::Ok(mine)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(stats(all, started.elapsed()))
}

pub(super) fn cache_bench(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    lib: &std::path::Path,
    threads: usize,
    image_path: &std::path::Path,
    jpeg: bytes::Bytes,
) -> anyhow::Result<String> {
    let model = args.models.first().context("--models names no model")?;
    let concurrency = args.concurrency.last().copied().unwrap_or(4).max(1);
    let n = args.requests.max(20);
    let rounds = args.rounds.max(1);
    let start = |cache_bytes: &str| -> anyhow::Result<RunningServer> {
        let serve = bench_serve_args(args, model, threads, lib, cache_bytes)?;
        RunningServer::start(serve, 2, Duration::from_secs(120))
    };
    // A 50%-repeat sequence: every odd request repeats one of the last 16 new images (a
    // stride through them, so not always the latest); every even one is a new image.
    let sequence = |round: usize| {
        let mut sequence = Vec::with_capacity(n);
        let mut fresh = Vec::new();
        for i in 0..n {
            if i % 2 == 0 {
                fresh.push(variant(&jpeg, (round + 1) * 1_000_000 + i));
                sequence.push(fresh[fresh.len() - 1].clone());
            } else {
                let window = fresh.len().min(16);
                let back = (i * 7) % window;
                sequence.push(fresh[fresh.len() - 1 - back].clone());
            }
        }
        sequence
    };
    let client = reqwest::Client::new();
    let servers = [("off", start("0")?), ("on", start("67108864")?)];

    // Latency of the same photo again, one at a time (with the cache on: all hits).
    let mut single = Vec::new();
    for (label, server) in &servers {
        let url = server.url("/api/v1/recognize?top_k=5");
        let (mut round_trips, mut server_side) = (Vec::new(), Vec::new());
        rt.block_on(async {
            for _ in 0..10 {
                timed_call(&client, &url, jpeg.clone()).await?;
            }
            for _ in 0..n {
                let (trip, srv) = timed_call(&client, &url, jpeg.clone()).await?;
                round_trips.push(trip);
                server_side.push(srv);
            }
            anyhow::Ok(())
        })?;
        let wall = Duration::from_secs(1);
        single.push((*label, stats(round_trips, wall), stats(server_side, wall)));
        eprintln!("cache {label}: same image done");
    }

    // The 50%-repeat load, off then on, each round with new images.
    let mut loads: Vec<(Stats, Stats)> = Vec::new();
    for round in 0..rounds {
        let images = sequence(round);
        let mut pair = Vec::new();
        for (label, server) in &servers {
            let url = server.url("/api/v1/recognize?top_k=5");
            pair.push(rt.block_on(run_sequence(&url, &images, concurrency))?);
            eprintln!("cache {label}: 50%-repeat load, round {} done", round + 1);
        }
        loads.push((pair[0], pair[1]));
    }
    let mut counts = Vec::new();
    for (_, server) in &servers {
        let metrics = rt.block_on(async {
            client
                .get(server.url("/metrics"))
                .send()
                .await?
                .text()
                .await
        })?;
        let count = |name: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        counts.push((
            count("sightline_inference_batch_size_sum"),
            count("sightline_cache_hits_total"),
        ));
    }
    drop(servers);

    let (cores, load_avg) = (
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| "?".into()),
    );
    let mut table = format!(
        "Result cache, {model}: {cores} cores (load average {load_avg} at the end); device {}; \
         intra-op threads {threads}; server max batch {}; image {} ({} bytes); {n} requests per \
         cell; the 50%-repeat load at concurrency {concurrency}, {rounds} rounds.\n\n",
        args.device,
        args.max_batch_size,
        image_path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        jpeg.len(),
    );
    table.push_str(
        "| cache | same image: server p50 ms | server p99 ms | client p50 ms | client p99 ms \
         | images through the model (all requests) | cache hits |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((label, client, server), (images, hits)) in single.iter().zip(&counts) {
        table.push_str(&format!(
            "| {label} | {:.3} | {:.3} | {:.2} | {:.2} | {images} | {hits} |\n",
            server.p50_ms, server.p99_ms, client.p50_ms, client.p99_ms,
        ));
    }
    table.push_str(
        "\n| round | 50%-repeat img/s, cache off | cache on | on ÷ off | p50 ms off | p50 ms on |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    let mut ratios = Vec::new();
    for (i, (off, on)) in loads.iter().enumerate() {
        ratios.push(on.rps / off.rps);
        table.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |\n",
            i + 1,
            off.rps,
            on.rps,
            on.rps / off.rps,
            off.p50_ms,
            on.p50_ms
        ));
    }
    ratios.sort_by(f64::total_cmp);
    table.push_str(&format!(
        "\n50%-repeat throughput, cache on ÷ off: median {:.2}× (rounds {:.2}× to {:.2}×)\n",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    ));
    Ok(table)
}
