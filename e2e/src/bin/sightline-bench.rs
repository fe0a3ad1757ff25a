//! `make bench`: recognition through HTTP versus the raw ONNX Runtime session, same model,
//! same thread count, same machine, one run. Prints a Markdown table (and writes it to
//! `--out`) with throughput, p50/p99 latency and their ratios, for each model and
//! concurrency level.
//!
//! Raw: the model's session (created with the same options as the server's) runs a
//! preprocessed batch-1 tensor; `c` client threads share it. HTTP: `c` concurrent clients
//! POST a JPEG photo to `/api/v1/recognize` on loopback, so the HTTP side also pays for
//! the request, the JPEG decode, the resize, batching and JSON.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use sightline_e2e::{RunningServer, models, ort_lib, serve_args};
use sightline_server::model_config::ModelSidecar;
use sightline_server::preprocess::{DecodeLimits, preprocess};

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
    /// Largest batch the server forms.
    #[arg(long, default_value_t = 8)]
    max_batch_size: usize,
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
        let t = Instant::now();
        let response = client
            .post(&url)
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
        anyhow::Ok(t.elapsed())
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
        let lib_flag = lib.display().to_string();
        let serve = serve_args(
            &format!("{model}.onnx"),
            &[
                "--intra-threads",
                &threads.to_string(),
                "--max-batch-size",
                &args.max_batch_size.to_string(),
                "--queue-capacity",
                "256",
                "--device",
                &args.device,
                "--ort-lib",
                &lib_flag,
            ],
        )?;
        let server = RunningServer::start(serve, 2, Duration::from_secs(120))?;
        let url = server.url("/api/v1/recognize?top_k=5");
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
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
