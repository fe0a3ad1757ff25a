//! `make load`: the split pipeline (upload, recognize and store as three processes on
//! loopback, the test classifier, SQLite unless `--database-url`) under a mixed load of
//! one-call pipelines, uploads, recognitions and result queries. Prints per-kind status
//! counts and p50/p99 latency, reads the store and the image store back (no acknowledged
//! record lost, none doubled), and each process's resident memory after the warm-up and
//! at the end. Exits non-zero when an invariant broke.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sightline_e2e::load::{self, LoadOptions, Targets};
use sightline_e2e::split::{Split, SplitOptions};
use sightline_e2e::{models, ort_lib};

#[derive(Debug, Parser)]
#[command(about = "Mixed load on the three split services; checks that nothing is lost")]
struct Args {
    /// Requests in all (warm-up included).
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests before the first memory sample, not in the latency figures
    /// [default: a tenth of --requests].
    #[arg(long)]
    warmup: Option<usize>,
    /// The server binary [default: sightline-server beside this command].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The store's database [default: SQLite in a scratch directory].
    #[arg(long)]
    database_url: Option<String>,
    /// Also write the figures here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = match args.server_bin {
        Some(path) => path,
        None => std::env::current_exe()
            .context("this command's path")?
            .with_file_name(format!("sightline-server{}", std::env::consts::EXE_SUFFIX)),
    };
    for needed in [&binary, &ort_lib(), &models().join("test-classifier.onnx")] {
        anyhow::ensure!(
            needed.exists(),
            "{} is missing: run `make deps models` and build the server (`make load` does both)",
            needed.display()
        );
    }
    let split = Split::launch(
        &binary,
        &SplitOptions {
            database_url: args.database_url.clone(),
            ..SplitOptions::default()
        },
    )?;
    let pid = |p: &sightline_e2e::process::ServerProcess| {
        p.pid()
            .map(|pid| (p.role.clone(), pid))
            .ok_or_else(|| anyhow::anyhow!("{} is not running", p.role))
    };
    let targets = Targets {
        upload: split.upload.url(""),
        recognize: split.recognize.url(""),
        store: split.store.url(""),
        processes: vec![
            pid(&split.upload)?,
            pid(&split.recognize)?,
            pid(&split.store)?,
        ],
    };
    let options = LoadOptions {
        requests: args.requests,
        concurrency: args.concurrency,
        warmup: args.warmup.unwrap_or(args.requests / 10),
    };
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let report = runtime.block_on(load::run(&targets, options))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let text = format!(
        "Split pipeline (upload, recognize, store processes; test classifier; {}), {} requests \
         at concurrency {}, warm-up {}; {cores} cores.\n\n{}",
        args.database_url
            .as_deref()
            .map_or("SQLite".to_string(), sightline_server::store::redact),
        options.requests,
        options.concurrency,
        options.warmup,
        report.markdown()
    );
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("write {}", out.display()))?;
    }
    let violations = report.violations();
    if !violations.is_empty() {
        eprintln!("{}", split.logs());
        anyhow::bail!("invariants broken:\n- {}", violations.join("\n- "));
    }
    println!("Invariants held: no 5xx, no request without an answer, nothing lost or doubled.");
    Ok(())
}
