//! `sightline-bench --cpu`: the server's throughput against what the cores allow, with the
//! result cache off, per concurrency — the way issue 22 measures it.
//!
//! What the cores allow: [`crate::raw_bound`] (the raw session at its best by wall time,
//! plus the server's own decode shared over the cores). Then, in alternating pairs: the
//! bound again (the sweep's three best re-measured, the most of them: each pair has its
//! own bound, never an unlucky draw) and each server setting at each concurrency (`c`
//! clients POSTing the photo in a closed loop, on the same cores, as a user's load test
//! would). Each cell's figure is the median over the pairs of its throughput ÷ that
//! pair's bound; the server's CPU time per request (utime + stime of every thread,
//! `/proc/<pid>/stat`) beside it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::mirror_bench::{cpu_model, send};
use crate::models;
use crate::proc_stat::process_cpu_seconds;
use crate::process::{ScratchDir, ServerProcess, free_port, require_server_binary};
use crate::raw_bound::{RawModel, Sweep, allowed, median, spread};

/// What to measure.
#[derive(Debug, Clone)]
pub struct CpuBench {
    /// A file stem in models/build.
    pub model: String,
    pub image: PathBuf,
    pub concurrency: Vec<usize>,
    /// Requests per cell (and images per raw measurement).
    pub requests: usize,
    /// Alternating pairs (raw, then every server cell).
    pub pairs: usize,
    pub ort_lib: PathBuf,
    /// Server settings measured after [`SETTINGS`]: a name and the flags it adds.
    pub extra: Vec<(String, Vec<String>)>,
}

/// A `--cpu-setting` argument, `NAME=FLAGS` (the flags split on whitespace): the name
/// the tables show, and the flags added to the server's command line.
pub fn parse_setting(text: &str) -> Result<(String, Vec<String>), String> {
    let (name, flags) = text.split_once('=').ok_or_else(|| {
        format!("{text:?}: expected NAME=FLAGS, e.g. 'spinning=--intra-op-spinning true'")
    })?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{text:?}: the setting has no name"));
    }
    Ok((
        name.to_string(),
        flags.split_whitespace().map(str::to_string).collect(),
    ))
}

/// The server settings compared: a name and its flags. The first is what a user gets.
const SETTINGS: [(&str, &[&str]); 2] = [
    ("defaults (warm-up trial)", &["--tune-budget-seconds", "15"]),
    (
        "no trial (one session, a thread per core, spinning off; the default until now)",
        &["--tune-budget-seconds", "0"],
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

/// One server cell of one pair.
#[derive(Debug, Clone, Copy)]
struct Cell {
    ratio: f64,
    rps: f64,
    p50_ms: f64,
    cpu_ms: f64,
    /// This process's (the load generator's) CPU milliseconds per request: it shares the
    /// cores with the server, which the bound does not count.
    client_ms: f64,
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
    let limits = sightline_server::preprocess::DecodeLimits::default();
    let tensor = sightline_server::preprocess::preprocess(&jpeg, &limits, &p)?;
    let decode_ms = cpu_ms_per_call(bench.requests, || {
        std::hint::black_box(sightline_server::preprocess::preprocess(
            &jpeg, &limits, &p,
        )?);
        Ok(())
    })?;

    let raw = RawModel {
        ort_lib: &bench.ort_lib,
        model: &bench.model,
        tensor: &tensor,
        preprocess: &p,
    };
    let sweep = Sweep::measure(&raw, cores, bench.requests, "cpu")?;
    let (best_layout, best_rows, _) = sweep.top[0];

    let binary = require_server_binary().context("the server runs as its own process")?;
    let scratch = ScratchDir::new("cpu-bench")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let lib = bench.ort_lib.display().to_string();
    let mut servers = Vec::new();
    let settings = SETTINGS
        .iter()
        .map(|(name, flags)| {
            let flags = flags.iter().map(|f| f.to_string()).collect::<Vec<_>>();
            (name.to_string(), flags)
        })
        .chain(bench.extra.iter().cloned());
    for (name, flags) in settings {
        // No `--intra-threads`: the server's own defaults.
        let model = models().join(format!("{}.onnx", bench.model));
        let mut args: Vec<String> = vec![
            "--model".into(),
            model.display().to_string(),
            "--ort-lib".into(),
            lib.clone(),
            "--cache-bytes".into(),
            "0".into(),
            "--queue-capacity".into(),
            "256".into(),
        ];
        args.extend(flags);
        let server = ServerProcess::start_named(
            &binary,
            "recognize",
            &name.replace([' ', ',', '(', ')', ';'], "-"),
            free_port()?,
            &args,
            scratch.path(),
        )?;
        let note = crate::batching_note(&name, &server.url(""))?;
        servers.push((name, server, note));
    }

    let mut bounds = Vec::new();
    // cells[server][concurrency] over the pairs.
    let mut cells: Vec<Vec<Vec<Cell>>> =
        vec![vec![Vec::new(); bench.concurrency.len()]; servers.len()];
    for pair in 0..bench.pairs {
        let allowed = allowed(sweep.best_now(&raw, bench.requests)?, decode_ms, cores);
        bounds.push(allowed);
        for (s, (name, server, _)) in servers.iter().enumerate() {
            let pid = server.pid().context("the server's pid")?;
            let url = server.url("/api/v1/recognize");
            for (i, &c) in bench.concurrency.iter().enumerate() {
                client.block_on(send(&http, &url, vec![jpeg.clone(); 2 * c], c))?;
                let before = process_cpu_seconds(pid)?;
                let client_before = process_cpu_seconds(std::process::id())?;
                let started = Instant::now();
                let mut latencies =
                    client.block_on(send(&http, &url, vec![jpeg.clone(); bench.requests], c))?;
                let wall = started.elapsed().as_secs_f64();
                let cpu_ms = (process_cpu_seconds(pid)? - before) * 1000.0 / bench.requests as f64;
                let client_ms = (process_cpu_seconds(std::process::id())? - client_before) * 1000.0
                    / bench.requests as f64;
                latencies.sort();
                let p50_ms = latencies
                    .get(latencies.len() / 2)
                    .map_or(f64::NAN, Duration::as_secs_f64)
                    * 1000.0;
                let rps = bench.requests as f64 / wall;
                eprintln!(
                    "cpu: pair {pair}, {name}, c={c}: {rps:.1} req/s, {:.3} of {allowed:.1}",
                    rps / allowed
                );
                cells[s][i].push(Cell {
                    ratio: rps / allowed,
                    rps,
                    p50_ms,
                    cpu_ms,
                    client_ms,
                });
            }
        }
    }

    let bound = spread(&bounds);
    let mut table = format!(
        "Machine: {} ({cores} cores). {}, photo {} ({} bytes), result cache off, {} requests \
         per cell, {} alternating pairs.\n\n\
         The raw session's best in the sweep: {best_layout} at batch {best_rows} (each pair \
         takes the most of the sweep's three best, re-measured); decode + preprocess \
         {decode_ms:.2} CPU ms an image; the cores allow {:.1} images/s (median of the pairs; \
         {:.1}–{:.1}).\n\n",
        cpu_model(),
        bench.model,
        bench
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        jpeg.len(),
        bench.requests,
        bench.pairs,
        bound.0,
        bound.1,
        bound.2,
    );
    table.push_str(&sweep.table());
    table.push_str(
        "\n| server setting | concurrency | req/s | ÷ allowed (median) | min–max | p50 ms | \
         server CPU ms / request | load generator CPU ms / request |\n\
         |---|---:|---:|---:|---|---:|---:|---:|\n",
    );
    for (s, (name, _, _)) in servers.iter().enumerate() {
        for (i, &c) in bench.concurrency.iter().enumerate() {
            let of = |f: fn(&Cell) -> f64| cells[s][i].iter().map(f).collect::<Vec<_>>();
            let (ratio, least, most) = spread(&of(|c| c.ratio));
            table.push_str(&format!(
                "| {name} | {c} | {:.1} | **{ratio:.3}** | {least:.3}–{most:.3} | {:.2} | {:.2} | {:.2} |\n",
                median(&of(|c| c.rps)),
                median(&of(|c| c.p50_ms)),
                median(&of(|c| c.cpu_ms)),
                median(&of(|c| c.client_ms)),
            ));
        }
    }
    table.push('\n');
    for (_, _, note) in &servers {
        table.push_str(&format!("- {note}\n"));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_is_a_name_and_the_flags_after_the_first_equals_sign() {
        assert_eq!(
            parse_setting("spin, batch 4=--intra-op-spinning true  --max-batch-size=4"),
            Ok((
                "spin, batch 4".to_string(),
                vec![
                    "--intra-op-spinning".to_string(),
                    "true".to_string(),
                    "--max-batch-size=4".to_string()
                ]
            ))
        );
        assert!(parse_setting("no flags at all").is_err());
        assert!(parse_setting(" =--instances 2").is_err());
        assert_eq!(parse_setting("plain="), Ok(("plain".to_string(), vec![])));
    }
}
