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

mod cache;
mod throughput;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use sightline_e2e::{RunningServer, models, ort_lib, serve_args};
use sightline_server::model_config::ModelSidecar;
use sightline_server::preprocess::{DecodeLimits, decode_for, preprocess, preprocess_full};

use cache::cache_bench;
use throughput::{Side, http, raw};

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
    /// Measure the server's throughput against what the cores allow instead (the raw
    /// session at its best plus the server's decode; `sightline_e2e::cpu_bench`), with the
    /// result cache off, in --rounds alternating pairs; the first of --models, --image.
    #[arg(long)]
    cpu: bool,
    /// With --cpu: also measure the server with these flags added, `NAME=FLAGS`
    /// (repeatable), e.g. `--cpu-setting 'spinning=--tune-budget-seconds 0
    /// --intra-op-spinning true'`.
    #[arg(long = "cpu-setting", value_parser = sightline_e2e::cpu_bench::parse_setting)]
    cpu_settings: Vec<(String, Vec<String>)>,
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
    /// With --mirror, --cache, --cpu or --batch: rounds of each setting.
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
    /// Measure `sightline-server batch` on a folder of --batch-images JPEGs made from
    /// --image against what the cores allow (`sightline_e2e::batch_bench`); the first of
    /// --models.
    #[arg(long)]
    batch: bool,
    /// With --batch: images in the folder.
    #[arg(long, default_value_t = 2000)]
    batch_images: usize,
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

impl Args {
    /// The model of the modes that measure one: the first of --models.
    fn first_model(&self) -> &str {
        self.models
            .first()
            .map_or("efficientnet-lite0", String::as_str)
    }
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
            model: args.first_model().to_string(),
            image: image_path.clone(),
            concurrency: args.concurrency.clone(),
            requests: args.requests,
            pairs: args.rounds,
            ort_lib: lib.clone(),
            extra: args.cpu_settings.clone(),
        };
        let table = sightline_e2e::cpu_bench::run(&bench, &client_rt)?;
        return emit(&table, args.out.as_deref());
    }
    if args.batch {
        let bench = sightline_e2e::batch_bench::BatchBench {
            model: args.first_model().to_string(),
            image: image_path.clone(),
            images: args.batch_images,
            ort_lib: lib.clone(),
            rounds: args.rounds.max(1),
        };
        let table = sightline_e2e::batch_bench::run(&bench)?;
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

/// `--mirror`: see [`sightline_e2e::mirror_bench`].
fn mirror_bench(args: &Args) -> anyhow::Result<()> {
    let bench = sightline_e2e::mirror_bench::MirrorBench {
        model: args.first_model().to_string(),
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
        args.first_model(),
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
