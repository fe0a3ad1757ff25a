//! `make bench`: recognition through HTTP versus the raw ONNX Runtime session, same model,
//! same thread count, same machine, one run. Prints a Markdown table (and writes it to
//! `--out`) with throughput, p50/p99 latency and their ratios, for each model and
//! concurrency level.
//!
//! Raw: the model's session (created with the same options as the server's) runs a
//! preprocessed batch-1 tensor; `c` client threads share it. HTTP: `c` concurrent clients
//! POST a JPEG photo to `/api/v1/recognize` on loopback, so the HTTP side also pays for
//! the request, the JPEG decode, the resize, batching and JSON. The server runs with its
//! result cache off (`--cache-bytes 0`): the same photo again and again would be a hit.
//!
//! `--cache`: the result cache instead. The latency of a hit (the same photo again; client
//! round trip and the server's own `latency_ms`), against a miss with the cache off; and a
//! load where every other request repeats an image sent before (the rest are new images:
//! the photo with a distinct JPEG comment, so distinct bytes that decode alike), with the
//! cache on and off, same request sequence, same concurrency, alternated for --rounds rounds
//! (new images each round) so that a change in the machine's load hits both alike.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use sightline_e2e::mirror_bench::post_jpeg_timed;
use sightline_e2e::{RunningServer, models, ort_lib, serve_args};
use sightline_server::model_config::ModelSidecar;
use sightline_server::preprocess::{DecodeLimits, decode_for, preprocess, preprocess_full};

#[derive(Debug, Parser)]
#[command(about = "HTTP vs raw ONNX Runtime session benchmark")]
struct Args {
    /// Models (file stems in models/build) to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "efficientnet-lite0,resnet50-random"
    )]
    models: Vec<String>,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Requests per measurement (after warm-up).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// ONNX Runtime intra-op threads, for both sides (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The server's `--max-batch-size` (`auto`: measured at warm-up, as by default).
    #[arg(long, default_value = "auto")]
    max_batch_size: String,
    /// The JPEG sent over HTTP [default: the first JPEG in models/build/photos].
    #[arg(long)]
    image: Option<PathBuf>,
    /// Also write the table here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// `gpu`: both sides use the CUDA execution provider (needs `make deps-gpu` and
    /// `LD_LIBRARY_PATH=.ort-gpu`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The ONNX Runtime library for both sides [default: .ort/libonnxruntime.so].
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Measure what mirroring costs the callers of a canary's front door instead
    /// (`sightline_e2e::mirror_bench`): the first of --models as stable, candidates the
    /// same model and the test classifier, --threads each (default 1); mirroring off and
    /// at 100 % to each candidate, alternated for --rounds rounds.
    #[arg(long)]
    mirror: bool,
    /// Measure the server's CPU time per request (a `sightline-server recognize` process,
    /// several settings) against the raw inference and decode CPU time instead
    /// (`sightline_e2e::cpu_bench`); the first of --models, --image, --threads.
    #[arg(long)]
    cpu: bool,
    /// With --mirror: this process on CPU 0 and the candidates on CPU 1, as if the
    /// candidate ran on its own node (it does, in a cluster).
    #[arg(long)]
    pin: bool,
    /// Compare with four Python servers instead — KServe, BentoML, LitServe, PyTriton
    /// (`sightline_e2e::peers_bench`, `make bench-peers`): the first of --models, --image and
    /// a 12-MP photo made from it, --threads each (default 2), a --max-batch-size number
    /// (default 8).
    #[arg(long)]
    peers: bool,
    /// With --peers: the peers to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kserve,bentoml,litserve,pytriton"
    )]
    peers_list: Vec<String>,
    /// With --mirror or --cache: rounds of each setting.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure the result cache (first model of --models, the last --concurrency for the
    /// 50%-repeat load) instead of HTTP versus raw.
    #[arg(long)]
    cache: bool,
    /// Measure preprocessing of --image (decode, resize, normalise, in this process) at full
    /// size and as the server does it (a large JPEG at a reduced DCT scale) instead.
    #[arg(long)]
    decode: bool,
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn stats(mut latencies: Vec<Duration>, wall: Duration) -> Stats {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies
            .get(i)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    Stats {
        rps: latencies.len() as f64 / wall.as_secs_f64(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

fn find_jpeg() -> anyhow::Result<PathBuf> {
    let dir = models().join("photos");
    let mut jpegs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "jpeg"))
        .collect();
    jpegs.sort();
    jpegs
        .into_iter()
        .next()
        .with_context(|| format!("no JPEG in {}", dir.display()))
}

/// The ONNX Runtime side both measurements share.
struct Side<'a> {
    lib: &'a std::path::Path,
    gpu: bool,
    threads: usize,
}

fn raw(
    side: &Side,
    model: &str,
    tensor: &[f32],
    shape: [usize; 4],
    concurrency: usize,
    n: usize,
) -> anyhow::Result<Stats> {
    let env = sightline_server::ort_runtime::init(side.lib)?;
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_intra_threads(side.threads)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if side.gpu {
        builder = builder
            .with_execution_providers([sightline_server::engine::cuda_execution_provider()])
            .map_err(|e| anyhow::anyhow!("CUDA: {e}"))?;
    }
    let session = builder.commit_from_file(models().join(format!("{model}.onnx")))?;
    let session = Arc::new(Mutex::new(session));
    let shape = shape.map(|d| d as i64);
    let run_once = |session: &Mutex<Session>| -> anyhow::Result<()> {
        let mut guard = session.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let input = ort::value::TensorRef::from_array_view((shape, tensor))?;
        let outputs = guard.run(ort::inputs![input])?;
        let (_, scores) = outputs[0].try_extract_tensor::<f32>()?;
        std::hint::black_box(scores);
        Ok(())
    };
    for _ in 0..10 {
        run_once(&session)?;
    }
    let per_client = n.div_ceil(concurrency);
    let started = Instant::now();
    let latencies = std::thread::scope(|scope| -> anyhow::Result<Vec<Duration>> {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                let session = session.clone();
                let run_once = &run_once;
                scope.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut mine = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        run_once(&session)?;
                        mine.push(t.elapsed());
                    }
                    Ok(mine)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
            );
        }
        Ok(all)
    })?;
    Ok(stats(latencies, started.elapsed()))
}

async fn http(
    url: &str,
    jpeg: bytes::Bytes,
    concurrency: usize,
    n: usize,
) -> anyhow::Result<Stats> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let call = |client: reqwest::Client, jpeg: bytes::Bytes, url: String| async move {
        post_jpeg_timed(&client, &url, jpeg).await
    };
    for _ in 0..10 {
        call(client.clone(), jpeg.clone(), url.to_string()).await?;
    }
    let per_client = n.div_ceil(concurrency);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, jpeg, url) = (client.clone(), jpeg.clone(), url.to_string());
            tokio::spawn(async move {
                let mut mine = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    mine.push(call(client.clone(), jpeg.clone(), url.clone()).await?);
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.mirror {
        return mirror_bench(&args);
    }
    if args.peers {
        return peers_bench(&args);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = if args.threads == 0 {
        cores
    } else {
        args.threads
    };
    let image_path = match &args.image {
        Some(p) => p.clone(),
        None => find_jpeg()?,
    };
    let jpeg = bytes::Bytes::from(
        std::fs::read(&image_path).with_context(|| format!("reading {}", image_path.display()))?,
    );
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    anyhow::ensure!(
        args.device == "cpu" || args.device == "gpu",
        "--device is cpu or gpu"
    );
    let lib = args.ort_lib.clone().unwrap_or_else(ort_lib);
    let side = Side {
        lib: &lib,
        gpu: args.device == "gpu",
        threads,
    };

    if args.decode {
        let table = decode_bench(&args, &image_path, &jpeg)?;
        return emit(&table, args.out.as_deref());
    }
    if args.cpu {
        let bench = sightline_e2e::cpu_bench::CpuBench {
            model: args
                .models
                .first()
                .cloned()
                .unwrap_or_else(|| "efficientnet-lite0".into()),
            image: image_path.clone(),
            threads,
            concurrency: args.concurrency.clone(),
            requests: args.requests,
            ort_lib: lib.clone(),
        };
        let table = sightline_e2e::cpu_bench::run(&bench, &client_rt)?;
        return emit(&table, args.out.as_deref());
    }
    if args.cache {
        let table = cache_bench(&args, &client_rt, &lib, threads, &image_path, jpeg)?;
        return emit(&table, args.out.as_deref());
    }

    let mut table = String::new();
    table.push_str(&format!(
        "Machine: {cores} cores; device {}; ONNX Runtime intra-op threads {threads} on both sides; server max batch {}; \
         {} requests per cell; image {} ({} bytes).\n\n",
        args.device,
        args.max_batch_size,
        args.requests,
        image_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        jpeg.len()
    ));
    let mut notes = Vec::new();
    table.push_str("| model | concurrency | raw img/s | HTTP img/s | HTTP ÷ raw | raw p50 ms | HTTP p50 ms | p50 overhead ms | raw p99 ms | HTTP p99 ms |\n");
    table.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for model in &args.models {
        let model_file = models().join(format!("{model}.onnx"));
        anyhow::ensure!(
            model_file.is_file(),
            "{} is missing: run `make models` (and `make bench` builds the ResNet-50-sized one)",
            model_file.display()
        );
        let sidecar = ModelSidecar::load(&models().join(format!("{model}.json")))?;
        let p = sidecar.preprocess.clone();
        let tensor = preprocess(&jpeg, &DecodeLimits::default(), &p)?;
        let shape = p.batch_shape(1);
        let mut raw_rows = Vec::new();
        for &c in &args.concurrency {
            raw_rows.push(raw(&side, model, &tensor, shape, c, args.requests)?);
            eprintln!("{model}: raw c={c} done");
        }
        let serve = bench_serve_args(&args, model, threads, &lib, "0")?;
        let server = RunningServer::start(serve, 2, Duration::from_secs(120))?;
        let url = server.url("/api/v1/recognize?top_k=5");
        notes.push(sightline_e2e::batching_note(model, &server.url(""))?);
        for (&c, raw) in args.concurrency.iter().zip(raw_rows) {
            let h = client_rt.block_on(http(&url, jpeg.clone(), c, args.requests))?;
            eprintln!("{model}: http c={c} done");
            table.push_str(&format!(
                "| {model} | {c} | {:.1} | {:.1} | {:.3} | {:.2} | {:.2} | {:+.2} | {:.2} | {:.2} |\n",
                raw.rps, h.rps, h.rps / raw.rps, raw.p50_ms, h.p50_ms, h.p50_ms - raw.p50_ms, raw.p99_ms, h.p99_ms
            ));
        }
        drop(server);
    }
    table.push('\n');
    for note in notes {
        table.push_str(&format!("- {note}\n"));
    }
    emit(&table, args.out.as_deref())
}

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

/// `sightline-server all` for `model` as the benchmarks serve it: the bench's threads,
/// batch size and device, a deep queue, and a result cache of `cache_bytes`.
fn bench_serve_args(
    args: &Args,
    model: &str,
    threads: usize,
    lib: &std::path::Path,
    cache_bytes: &str,
) -> anyhow::Result<sightline_server::cli::ServeArgs> {
    let lib_flag = lib.display().to_string();
    serve_args(
        &format!("{model}.onnx"),
        &[
            "--intra-threads",
            &threads.to_string(),
            "--max-batch-size",
            &args.max_batch_size,
            "--queue-capacity",
            "256",
            "--device",
            &args.device,
            "--ort-lib",
            &lib_flag,
            "--cache-bytes",
            cache_bytes,
        ],
    )
}

fn cache_bench(
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

/// `--mirror`: see [`sightline_e2e::mirror_bench`].
fn mirror_bench(args: &Args) -> anyhow::Result<()> {
    let bench = sightline_e2e::mirror_bench::MirrorBench {
        model: args
            .models
            .first()
            .cloned()
            .unwrap_or_else(|| "efficientnet-lite0".into()),
        concurrency: args.concurrency.clone(),
        requests: args.requests,
        rounds: args.rounds.max(1),
        threads: args.threads.max(1),
        max_batch_size: args.max_batch_size.clone(),
        image: match &args.image {
            Some(p) => p.clone(),
            None => find_jpeg()?,
        },
        ort_lib: args.ort_lib.clone().unwrap_or_else(ort_lib),
        pin: args.pin,
    };
    let table = sightline_e2e::mirror_bench::run(&bench)?;
    emit(&table, args.out.as_deref())
}

/// Preprocessing time of one image at full size and as the server does it, per model.
fn decode_bench(args: &Args, image_path: &std::path::Path, jpeg: &[u8]) -> anyhow::Result<String> {
    let limits = DecodeLimits::default();
    let n = args.requests.max(5);
    let mut table = format!(
        "Preprocessing {} ({} bytes), one thread, {n} runs per cell.\n\n\
         | model | decoded at | full size p50 ms | as served p50 ms | full ÷ served |\n\
         |---|---|---:|---:|---:|\n",
        image_path.display(),
        jpeg.len()
    );
    for model in &args.models {
        let sidecar = ModelSidecar::load(&models().join(format!("{model}.json")))?;
        let p = sidecar.preprocess;
        let decoded = decode_for(jpeg, &limits, &p)?;
        let time = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<Stats> {
            f()?;
            let mut all = Vec::with_capacity(n);
            let started = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                f()?;
                all.push(t.elapsed());
            }
            Ok(stats(all, started.elapsed()))
        };
        let full = time(&|| {
            std::hint::black_box(preprocess_full(jpeg, &limits, &p)?);
            Ok(())
        })?;
        let served = time(&|| {
            std::hint::black_box(preprocess(jpeg, &limits, &p)?);
            Ok(())
        })?;
        let (w, h) = decoded.image.dimensions();
        table.push_str(&format!(
            "| {model} | 1/{} ({w}×{h}) | {:.2} | {:.2} | {:.1}× |\n",
            decoded.reduction,
            full.p50_ms,
            served.p50_ms,
            full.p50_ms / served.p50_ms
        ));
    }
    Ok(table)
}

/// `--peers`: see [`sightline_e2e::peers_bench`].
fn peers_bench(args: &Args) -> anyhow::Result<()> {
    let mut bench = sightline_e2e::peers_bench::PeersBench::prepare(
        &args.peers_list,
        args.models
            .first()
            .map_or("efficientnet-lite0", String::as_str),
        &args.concurrency,
        args.requests,
        if args.threads == 0 { 2 } else { args.threads },
        args.max_batch_size.parse().unwrap_or(8),
        &match &args.image {
            Some(p) => p.clone(),
            None => find_jpeg()?,
        },
        &args.ort_lib.clone().unwrap_or_else(ort_lib),
    )?;
    bench.sightline_batch = args.max_batch_size.clone();
    let table = sightline_e2e::peers_bench::run(&bench)?;
    emit(&table, args.out.as_deref())
}

/// Prints the table and writes it to `out` when given.
fn emit(table: &str, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    println!("{table}");
    if let Some(out) = out {
        std::fs::write(out, table).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
