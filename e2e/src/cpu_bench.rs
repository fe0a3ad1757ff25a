//! `sightline-bench --cpu`: where a request's CPU time goes, against what the work needs.
//!
//! The work, measured in this process with nothing else running: one batch-1 inference
//! (the raw session's CPU time per run, ONNX Runtime's thread spinning on and off; the
//! smaller counts) and one decode + resize + normalise of the photo (CPU time per image,
//! one thread). The server: `sightline-server recognize` as its own process, for each
//! setting tried (spinning, decode threads), closed-loop POSTs of the photo at each
//! concurrency with the result cache off; its CPU time (utime + stime from
//! `/proc/<pid>/stat`, every thread) per request, and its throughput against what the
//! cores allow for that work (`cores ÷ (inference + decode CPU)`). The clients run on the
//! same cores, in every setting alike.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::canary::model_flags;
use crate::mirror_bench::{cpu_model, send};
use crate::models;
use crate::proc_stat::process_cpu_seconds;
use crate::process::{ScratchDir, ServerProcess, free_port, require_server_binary};

/// What to measure.
#[derive(Debug, Clone)]
pub struct CpuBench {
    /// A file stem in models/build.
    pub model: String,
    pub image: PathBuf,
    /// ONNX Runtime intra-op threads, raw session and server alike.
    pub threads: usize,
    pub concurrency: Vec<usize>,
    /// Requests per cell (and raw runs / decodes per measurement).
    pub requests: usize,
    pub ort_lib: PathBuf,
}

/// The server settings tried: a name and its flags (after `--intra-threads <threads>`,
/// so a setting's own `--intra-threads` wins).
const SETTINGS: [(&str, &[&str]); 5] = [
    (
        "1 instance, spinning on (ONNX Runtime's default)",
        &["--intra-op-spinning", "true"],
    ),
    (
        "1 instance, spinning off",
        &["--intra-op-spinning", "false"],
    ),
    (
        "1 instance, spinning off, 1 decode thread",
        &["--intra-op-spinning", "false", "--decode-threads", "1"],
    ),
    (
        "2 instances × 1 thread, spinning off",
        &[
            "--instances",
            "2",
            "--intra-threads",
            "1",
            "--intra-op-spinning",
            "false",
        ],
    ),
    (
        "2 instances × 1 thread, spinning on",
        &[
            "--instances",
            "2",
            "--intra-threads",
            "1",
            "--intra-op-spinning",
            "true",
        ],
    ),
];

/// CPU milliseconds per call of `f`, run `n` times in this process (after 10 untimed).
pub fn cpu_ms_per_call(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..10 {
        f()?;
    }
    let me = std::process::id();
    let before = process_cpu_seconds(me)?;
    for _ in 0..n {
        f()?;
    }
    Ok((process_cpu_seconds(me)? - before) * 1000.0 / n as f64)
}

/// The raw session's CPU milliseconds per run of `tensor` (of `shape`) with the model
/// `model` (a file stem in models/build), `runs` times.
pub fn raw_cpu_ms(
    ort_lib: &std::path::Path,
    model: &str,
    (tensor, shape): (&[f32], [i64; 4]),
    threads: usize,
    spinning: bool,
    runs: usize,
) -> anyhow::Result<f64> {
    let env = sightline_server::ort_runtime::init(ort_lib)?;
    let mut session = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_intra_threads(threads)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_intra_op_spinning(spinning)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .commit_from_file(models().join(format!("{model}.onnx")))?;
    cpu_ms_per_call(runs, || {
        let input = ort::value::TensorRef::from_array_view((shape, tensor))?;
        let outputs = session.run(ort::inputs![input])?;
        let (_, scores) = outputs[0].try_extract_tensor::<f32>()?;
        std::hint::black_box(scores);
        Ok(())
    })
}

/// The raw session's CPU milliseconds per batch-1 run.
fn raw_inference_cpu_ms(
    bench: &CpuBench,
    tensor: &[f32],
    shape: [i64; 4],
    threads: usize,
    spinning: bool,
) -> anyhow::Result<f64> {
    raw_cpu_ms(
        &bench.ort_lib,
        &bench.model,
        (tensor, shape),
        threads,
        spinning,
        bench.requests,
    )
}

/// Runs the measurement; the Markdown table.
pub fn run(bench: &CpuBench, client: &tokio::runtime::Runtime) -> anyhow::Result<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jpeg = Bytes::from(
        std::fs::read(&bench.image).with_context(|| format!("read {}", bench.image.display()))?,
    );
    let sidecar = sightline_server::model_config::ModelSidecar::load(
        &models().join(format!("{}.json", bench.model)),
    )?;
    let p = sidecar.preprocess.clone();
    let shape = p.batch_shape(1).map(|d| d as i64);
    let limits = sightline_server::preprocess::DecodeLimits::default();
    let tensor = sightline_server::preprocess::preprocess(&jpeg, &limits, &p)?;
    let decode_ms = cpu_ms_per_call(bench.requests, || {
        std::hint::black_box(sightline_server::preprocess::preprocess(
            &jpeg, &limits, &p,
        )?);
        Ok(())
    })?;
    let spin_ms = raw_inference_cpu_ms(bench, &tensor, shape, bench.threads, true)?;
    let nospin_ms = raw_inference_cpu_ms(bench, &tensor, shape, bench.threads, false)?;
    let single_ms = raw_inference_cpu_ms(bench, &tensor, shape, 1, false)?;
    let work_ms = spin_ms.min(nospin_ms).min(single_ms) + decode_ms;
    let allowed_rps = cores as f64 * 1000.0 / work_ms;

    let binary = require_server_binary().context("the server runs as its own process")?;
    let scratch = ScratchDir::new("cpu-bench")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let mut table = format!(
        "Machine: {} ({cores} cores). {}, ONNX Runtime intra-op threads {}, photo {} \
         ({} bytes), result cache off, {} requests per cell.\n\n\
         The work: raw batch-1 inference {spin_ms:.2} CPU ms with {} threads spinning, \
         {nospin_ms:.2} with them not spinning, {single_ms:.2} on one thread; decode + \
         preprocess {decode_ms:.2} CPU ms; so {work_ms:.2} CPU ms a request (the least \
         inference + decode), and the cores allow {allowed_rps:.1} requests/s.\n\n\
         | server setting | concurrency | req/s | p50 ms | server CPU ms / request | ÷ work | \
         req/s ÷ allowed |\n|---|---:|---:|---:|---:|---:|---:|\n",
        cpu_model(),
        bench.model,
        bench.threads,
        bench
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        jpeg.len(),
        bench.requests,
        bench.threads,
    );
    for (name, flags) in SETTINGS {
        let threads = bench.threads.to_string();
        let lib = bench.ort_lib.display().to_string();
        let mut extra = vec![
            "--intra-threads",
            &threads,
            "--cache-bytes",
            "0",
            "--queue-capacity",
            "256",
            "--ort-lib",
            &lib,
        ];
        extra.extend_from_slice(flags);
        let server = ServerProcess::start_named(
            &binary,
            "recognize",
            &name.replace([' ', ',', '='], "-"),
            free_port()?,
            &model_flags(&format!("{}.onnx", bench.model), &extra),
            scratch.path(),
        )?;
        let pid = server.pid().context("the server's pid")?;
        let url = server.url("/api/v1/recognize");
        for &c in &bench.concurrency {
            client.block_on(send(&http, &url, vec![jpeg.clone(); 20], c))?;
            let before = process_cpu_seconds(pid)?;
            let started = Instant::now();
            let mut latencies =
                client.block_on(send(&http, &url, vec![jpeg.clone(); bench.requests], c))?;
            let wall = started.elapsed().as_secs_f64();
            let cpu_ms = (process_cpu_seconds(pid)? - before) * 1000.0 / bench.requests as f64;
            latencies.sort();
            let p50 = latencies
                .get(latencies.len() / 2)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
            let rps = bench.requests as f64 / wall;
            table.push_str(&format!(
                "| {name} | {c} | {rps:.1} | {p50:.2} | {cpu_ms:.2} | {:.3} | {:.3} |\n",
                cpu_ms / work_ms,
                rps / allowed_rps
            ));
            eprintln!("cpu: {name}, c={c} done");
        }
    }
    Ok(table)
}
