//! `sightline-server batch`: every image of a folder through the model, in this process,
//! with the model loaded exactly as the recognize role loads it. The work is
//! [`sightline_batch`]; this is the command: flags, the shard, resume, progress, the
//! summary ([`summary`], also for the operator), metrics ([`metrics`]) and, with `--truth`,
//! the evaluation report over the images it names ([`truth`]).

mod csv_out;
mod input;
pub mod metrics;
mod objects;
mod store_sink;
pub mod summary;
mod truth;
mod web;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sightline_batch::journal::{Journal, Line};
use sightline_batch::listing::{self, Item};
use sightline_batch::run::Sink;
use sightline_batch::{BatchError, run};
use sightline_eval::EvalError;
use sightline_eval::progress::{self, Progress};
use sightline_eval::report::Report;

use crate::cli::BatchArgs;
use metrics::BatchMetrics;
use summary::ShardSummary;

/// The environment variable the Job controller sets to a pod's completion index (Indexed
/// Jobs).
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// Exit status of a run that retrying cannot fix (a pod failure policy fails the index).
pub const EXIT_PERMANENT: u8 = 2;

/// How often progress is written when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why the command stopped.
#[derive(Debug, thiserror::Error)]
pub enum BatchCommandError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Model(#[from] EvalError),
    #[error(
        "{out} holds results of model {theirs}, not of this model and preprocessing ({ours}): \
         give another --out"
    )]
    OtherModel {
        out: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("--shards {count}: ${COMPLETION_INDEX_ENV} {found}, not a shard index below {count}")]
    NoShardIndex { count: usize, found: String },
    #[error("cannot create the folder of {path}: {source}")]
    OutputFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(std::io::Error),
    #[error(transparent)]
    Bucket(#[from] crate::upload::UploadError),
    #[error(transparent)]
    Listing(#[from] web::WebListError),
    #[error(transparent)]
    Csv(#[from] csv_out::CsvError),
    #[error(
        "--job {0:?}: with --store-url the job must be a Kubernetes object name (a-z, 0-9, '-', '.')"
    )]
    JobName(String),
    #[error("cannot make an HTTP client: {0}")]
    Client(String),
}

impl BatchCommandError {
    /// True when running again cannot help (bad flags, another model's output, a model
    /// that does not load or match its digest, a corrupt output file): exit
    /// [`EXIT_PERMANENT`]. Reading and writing files may be transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            BatchCommandError::Batch(e) => matches!(
                e,
                BatchError::NotAFolder(_)
                    | BatchError::OutputExists(_)
                    | BatchError::BadLine { .. }
                    | BatchError::Shard { .. }
            ),
            BatchCommandError::Model(_)
            | BatchCommandError::OtherModel { .. }
            | BatchCommandError::NoShardIndex { .. }
            | BatchCommandError::JobName(_) => true,
            BatchCommandError::Listing(e) => matches!(e, web::WebListError::BadLine { .. }),
            BatchCommandError::Client(_) | BatchCommandError::Csv(_) => false,
            BatchCommandError::Bucket(e) => matches!(e, crate::upload::UploadError::StoreUrl(_)),
            BatchCommandError::OutputFolder { .. } | BatchCommandError::Metrics(_) => false,
        }
    }
}

/// What a run did, for the summary line (and tests).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub shard: ShardSummary,
    /// With `--truth`: the evaluation over the images it names.
    pub report: Option<Report>,
}

/// `(index, count)`: `--shard I/N`, or with `--shards N` the index the Job controller gave
/// this pod.
fn shard_of(args: &BatchArgs) -> Result<(usize, usize), BatchCommandError> {
    let Some(count) = args.shards else {
        return Ok(args.shard);
    };
    let found = std::env::var(COMPLETION_INDEX_ENV);
    match found.as_deref().map(str::trim).map(str::parse::<usize>) {
        Ok(Ok(index)) if index < count => Ok((index, count)),
        _ => Err(BatchCommandError::NoShardIndex {
            count,
            found: match found {
                Ok(v) => format!("is {v:?}"),
                Err(_) => "is not set".to_string(),
            },
        }),
    }
}

/// Runs the command; with `--summary`, the summary is written whether it succeeds or not.
pub async fn run_cli(args: BatchArgs) -> Result<Summary, BatchCommandError> {
    let metrics = BatchMetrics::new(&args.job);
    let mut account = ShardSummary::default();
    let result = run_shard(&args, &metrics, &mut account).await;
    if let Err(e) = &result {
        account.error = Some(e.to_string());
    }
    if let Some(path) = &args.summary
        && let Err(e) = account.write(path)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the batch summary");
    }
    if args.metrics_listen.is_some() && args.metrics_linger_seconds > 0 {
        tokio::time::sleep(Duration::from_secs(args.metrics_linger_seconds)).await;
    }
    result.map(|report| Summary {
        shard: account,
        report,
    })
}

async fn run_shard(
    args: &BatchArgs,
    metrics: &BatchMetrics,
    account: &mut ShardSummary,
) -> Result<Option<Report>, BatchCommandError> {
    if let Some(addr) = args.metrics_listen {
        metrics
            .serve(addr)
            .await
            .map_err(BatchCommandError::Metrics)?;
    }
    let (index, count) = shard_of(args)?;
    (account.shard, account.shards) = (index, count);
    if args.serve.store_url.is_some() && !crate::store::checks::is_job_name(&args.job) {
        return Err(BatchCommandError::JobName(args.job.clone()));
    }
    let input = input::Input::of(args)?;
    let listed = input.list().await?;
    let reader = input.reader();
    // With --truth and shards: every name of the listing, to tell a CSV row of another
    // shard from one naming no image at all.
    let everything: HashSet<String> = match &args.truth {
        Some(_) if count > 1 => listed.iter().map(|i| i.name.clone()).collect(),
        _ => HashSet::new(),
    };
    let items = listing::shard(listed, index, count)?;
    account.total = items.len() as u64;
    metrics.shard_images(account.total);
    if let Some(folder) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(|source| BatchCommandError::OutputFolder {
            path: args.out.clone(),
            source,
        })?;
    }
    let (mut journal, done) = Journal::open(&args.out, args.resume)?;
    let model = crate::eval::command::load_model(&args.serve).await?;
    account.model_sha256 = model.info.sha256.clone();
    eprintln!(
        "batch: {} ({}): {}",
        model.name,
        model.info.sha256,
        model.layout.summary(model.batch_config().max_batch_size)
    );
    let sink = match &args.serve.store_url {
        Some(url) => Some(
            store_sink::StoreSink::new(url, &args.job, &model.name, args.store_api_key.clone())
                .map_err(|e| BatchCommandError::Client(e.to_string()))?,
        ),
        None => None,
    };
    // A line is this run's answer only for the same model digest and preprocessing.
    let answer_of = |sha256: &str, preprocess: &str| match preprocess {
        "" => format!("{sha256} with unrecorded preprocessing"),
        p => format!("{sha256} with preprocessing {p}"),
    };
    if let Some(other) = done.iter().find(|l| {
        l.model_sha256 != model.info.sha256 || l.preprocess_sha256 != model.preprocess_sha256
    }) {
        return Err(BatchCommandError::OtherModel {
            out: args.out.clone(),
            theirs: answer_of(&other.model_sha256, &other.preprocess_sha256),
            ours: answer_of(&model.info.sha256, &model.preprocess_sha256),
        });
    }
    let known: HashSet<&str> = done.iter().map(|l| l.image.as_str()).collect();
    let todo: Vec<Item> = items
        .iter()
        .filter(|i| !known.contains(i.name.as_str()))
        .cloned()
        .collect();
    // Lines already in --out (a resumed run): an error stays an error, in the counts and
    // the first errors, so that a killed attempt's bad images are not lost to the summary.
    let in_shard: HashSet<&str> = items.iter().map(|i| i.name.as_str()).collect();
    let earlier_errors: Vec<&Line> = done
        .iter()
        .filter(|l| l.error.is_some() && in_shard.contains(l.image.as_str()))
        .collect();
    for line in &earlier_errors {
        account.bad_image(&line.image, line.error.as_deref().unwrap_or_default());
    }
    account.failed = earlier_errors.len() as u64;
    account.skipped = ((items.len() - todo.len()) as u64).saturating_sub(account.failed);
    metrics.add("skipped", account.skipped);
    metrics.add("failed", account.failed);
    let total = todo.len() as u64;
    let started = Instant::now();
    let bar = Progress::new(total, !args.no_progress);
    let plain = !args.no_progress && !std::io::stderr().is_terminal();
    let mut last_plain = Instant::now();
    let mut written = Vec::new();
    let max = args.serve.max_upload_bytes as u64;
    let sink = sink.as_ref().map(|s| s as &dyn Sink);
    let counts = run::run(&model, todo, (reader, sink), &mut journal, max, |line| {
        bar.inc();
        match &line.error {
            Some(error) => {
                metrics.add("failed", 1);
                account.bad_image(&line.image, error);
            }
            None if line.known => metrics.add("skipped", 1),
            None => metrics.add("recognized", 1),
        }
        if plain && last_plain.elapsed() >= PLAIN_PROGRESS_EVERY {
            last_plain = Instant::now();
            eprintln!("{}", progress::line(bar.done(), total, started.elapsed()));
        }
        if args.truth.is_some() {
            written.push(line.clone());
        }
    })
    .await?;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 {
        (counts.recognized + counts.failed) as f64 / seconds
    } else {
        0.0
    };
    account.recognized = counts.recognized;
    account.known = counts.known;
    account.skipped += counts.known;
    account.failed += counts.failed;
    account.seconds = seconds;
    account.images_per_second = rate;
    account.complete = true;
    println!(
        "batch: {} recognized, {} failed, {} already in {}, {} already in the store ({rate:.1} \
         images/s)",
        counts.recognized,
        counts.failed,
        account.skipped - counts.known,
        args.out.display(),
        counts.known,
    );
    if let Some(csv) = &args.csv {
        csv_out::write(&args.out, csv)?;
    }
    let Some(truth) = &args.truth else {
        return Ok(None);
    };
    let lines: Vec<Line> = done.into_iter().chain(written).collect();
    let root = match truth.parent() {
        Some(folder) if !input.is_local() => folder,
        _ => args.input.as_path(),
    };
    // This shard's images of the CSV, and (shard 0) those naming no image of the listing.
    let mine = |name: Option<&str>| match name {
        Some(n) if in_shard.contains(n) => true,
        Some(n) if everything.contains(n) => false,
        _ => index == 0,
    };
    let (report, counts) = truth::evaluate(
        truth,
        root,
        (&model.name, &model.labels),
        &lines,
        mine,
        seconds,
    )?;
    account.evaluation = Some(counts);
    if count > 1 {
        println!(
            "batch: the evaluation below covers shard {index}/{count}'s images of {}",
            truth.display()
        );
    }
    print!("{}", report.table());
    Ok(Some(report))
}
