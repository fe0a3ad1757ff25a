//! `sightline-server batch`: every image of a folder through the model, in this process,
//! with the model loaded exactly as the recognize role loads it. The work is
//! [`sightline_batch`]; this is the command: flags, resume, progress, the summary and,
//! with `--truth`, the evaluation report over the images it names.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sightline_batch::journal::{Journal, Line};
use sightline_batch::listing::{self, Item};
use sightline_batch::{BatchError, run};
use sightline_eval::progress::{self, Progress};
use sightline_eval::report::{Answer, Report};
use sightline_eval::{EvalError, dataset};

use crate::cli::BatchArgs;

/// How often progress is written when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why the command stopped.
#[derive(Debug, thiserror::Error)]
pub enum BatchCommandError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Model(#[from] EvalError),
    #[error("{out} holds results of model {theirs}, not of this one ({ours}): give another --out")]
    OtherModel {
        out: PathBuf,
        theirs: String,
        ours: String,
    },
}

/// What a run did, for the summary line (and tests).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub recognized: u64,
    pub failed: u64,
    /// Images already in `--out` (resumed).
    pub skipped: u64,
    pub seconds: f64,
    /// With `--truth`: the evaluation over the images it names.
    pub report: Option<Report>,
}

pub async fn run_cli(args: BatchArgs) -> Result<Summary, BatchCommandError> {
    let (index, count) = args.shard;
    let items = listing::shard(listing::list(&args.input)?, index, count)?;
    let (mut journal, done) = Journal::open(&args.out, args.resume)?;
    let model = crate::eval::command::load_model(&args.serve).await?;
    if let Some(other) = done.iter().find(|l| l.model_sha256 != model.info.sha256) {
        return Err(BatchCommandError::OtherModel {
            out: args.out.clone(),
            theirs: other.model_sha256.clone(),
            ours: model.info.sha256.clone(),
        });
    }
    let known: HashSet<&str> = done.iter().map(|l| l.image.as_str()).collect();
    let todo: Vec<Item> = items
        .iter()
        .filter(|i| !known.contains(i.name.as_str()))
        .cloned()
        .collect();
    let skipped = (items.len() - todo.len()) as u64;
    let total = todo.len() as u64;
    let started = Instant::now();
    let bar = Progress::new(total, !args.no_progress);
    let plain = !args.no_progress && !std::io::stderr().is_terminal();
    let mut last_plain = Instant::now();
    let mut written = Vec::new();
    let max = args.serve.max_upload_bytes as u64;
    let counts = run::run(&model, todo, &mut journal, max, |line| {
        bar.inc();
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
    println!(
        "batch: {} recognized, {} failed, {skipped} already in {} ({rate:.1} images/s)",
        counts.recognized,
        counts.failed,
        args.out.display()
    );
    let report = match &args.truth {
        Some(truth) => {
            let lines: Vec<Line> = done.into_iter().chain(written).collect();
            let report = evaluate(
                truth,
                &args.input,
                &model.name,
                &model.labels,
                &lines,
                seconds,
            )?;
            print!("{}", report.table());
            Some(report)
        }
        None => None,
    };
    Ok(Summary {
        recognized: counts.recognized,
        failed: counts.failed,
        skipped,
        seconds,
        report,
    })
}

/// The evaluation report of `lines` against the truth CSV (the images it names; one with
/// no line in the output counts as failed).
fn evaluate(
    truth: &Path,
    input: &Path,
    model: &str,
    labels: &[String],
    lines: &[Line],
    seconds: f64,
) -> Result<Report, EvalError> {
    let samples = dataset::load(truth, labels)?;
    let classes = dataset::Resolver::new(labels);
    let by_name: HashMap<&str, &Line> = lines.iter().map(|l| (l.image.as_str(), l)).collect();
    let root = input.canonicalize().unwrap_or_else(|_| input.to_path_buf());
    let answers: Vec<Answer> = samples
        .into_iter()
        .map(|s| {
            let path = s.path.canonicalize().unwrap_or_else(|_| s.path.clone());
            let name = listing::name_in(&root, &path);
            let ranked = match name.as_deref().and_then(|n| by_name.get(n)) {
                None => Err("not in the batch's output".to_string()),
                Some(line) => match &line.error {
                    Some(e) => Err(e.clone()),
                    None => Ok(line
                        .predictions
                        .iter()
                        .filter_map(|p| classes.resolve(&p.label))
                        .collect()),
                },
            };
            Answer {
                path: s.path,
                truth: s.class,
                ranked,
            }
        })
        .collect();
    Ok(Report::build(
        model,
        &truth.display().to_string(),
        labels,
        &answers,
        seconds,
    ))
}
