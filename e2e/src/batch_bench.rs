//! `sightline-bench --batch`: `sightline-server batch` on a folder of photos against what
//! the cores allow for the same work, both measured in this run.
//!
//! What the cores allow is the bound `--cpu` uses ([`crate::raw_bound`]): the raw session
//! at its best by wall time (a thread per core, or one one-thread session per core side
//! by side; batches 1–8) plus one decode + resize + normalise per image (CPU time, one
//! thread, over the generated photos), re-measured just before each run of the command
//! (this machine's speed drifts by several per cent from minute to minute). The bound of
//! the earlier stops — one session alone, its CPU time per image — is shown beside it:
//! alone, a session has the caches and the memory bus to itself, which the cores working
//! together never do. Then the command, as its own process, on the folder (result cache
//! off, a new output each time) for each setting, in `rounds` rounds: wall time,
//! images/s, its CPU time per image and the ratio to the bound; medians over the rounds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, ensure};

use crate::cpu_bench::{cpu_ms_per_call, raw_cpu_ms};
use crate::mirror_bench::cpu_model;
use crate::models;
use crate::proc_stat::process_tree_ticks;
use crate::process::{ScratchDir, require_server_binary};
use crate::raw_bound::{RawModel, Sweep, allowed, median, spread};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BatchBench {
    /// A file stem in models/build.
    pub model: String,
    /// The photo the folder's images are made from.
    pub image: PathBuf,
    /// Images in the folder.
    pub images: usize,
    pub ort_lib: PathBuf,
    /// Rounds: in each, every setting once, each with its own bound measured just before.
    pub rounds: usize,
}

/// The command's settings tried: a name and its flags.
const SETTINGS: [(&str, &[&str]); 4] = [
    ("defaults", &[]),
    ("spinning on", &["--intra-op-spinning", "true"]),
    (
        "batches of up to 8, 20 ms wait",
        &["--max-batch-size", "8", "--max-delay-ms", "20"],
    ),
    (
        "one instance per core × 1 thread",
        &["--instances", "CORES", "--intra-threads", "1"],
    ),
];

/// `n` JPEGs made from `photo`, each with one pixel changed so that no two are the same
/// bytes (the same decode work, no cache could help).
fn write_photos(photo: &Path, dir: &Path, n: usize) -> anyhow::Result<Vec<PathBuf>> {
    let base = image::open(photo)
        .with_context(|| format!("decode {}", photo.display()))?
        .to_rgb8();
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut files = Vec::with_capacity(n);
    for i in 0..n {
        let mut img = base.clone();
        let (w, h) = img.dimensions();
        let [a, b] = (i as u16).to_le_bytes();
        img.put_pixel(i as u32 % w, (i as u32 / w) % h, image::Rgb([a, b, 255]));
        let path = dir.join(format!("{:03}/{i:06}.jpg", i % 100));
        std::fs::create_dir_all(path.parent().context("a parent")?)?;
        let mut out =
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img)?;
        files.push(path);
    }
    Ok(files)
}

/// CPU ms per image of the raw session alone at batch `rows` (spinning off, as the server).
fn raw_cpu_ms_per_image(
    bench: &BatchBench,
    tensor: &[f32],
    p: &sightline_server::model_config::Preprocess,
    rows: usize,
    threads: usize,
) -> anyhow::Result<f64> {
    let shape = p.batch_shape(rows).map(|d| d as i64);
    let input: Vec<f32> = tensor.repeat(rows);
    let runs = (200 / rows).max(20);
    let ms = raw_cpu_ms(
        &bench.ort_lib,
        &bench.model,
        (&input, shape),
        threads,
        false,
        runs,
    )?;
    Ok(ms / rows as f64)
}

/// One run of the command: seconds to its first line, seconds from the first line to
/// the last, images/s over them and CPU ms per image over them.
struct CommandRun {
    /// The layout the command served with, as it printed it.
    layout: String,
    load: f64,
    recognizing: f64,
    rate: f64,
    cpu_ms: f64,
}

fn run_command(
    bench: &BatchBench,
    binary: &Path,
    folder: &Path,
    out: &Path,
    flags: &[String],
) -> anyhow::Result<CommandRun> {
    // Its stderr in a file, read once it ended (a pipe nobody reads could fill and stop it).
    let log = out.with_extension("log");
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg("batch")
        .arg("--model")
        .arg(models().join(format!("{}.onnx", bench.model)))
        .arg("--ort-lib")
        .arg(&bench.ort_lib)
        .arg("--input")
        .arg(folder)
        .arg("--out")
        .arg(out)
        .args(["--no-progress", "--cache-bytes", "0"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?,
        ))
        .spawn()
        .context("start sightline-server batch")?;
    let pid = child.id();
    // The first line marks the model ready; CPU ticks from then to just before exit.
    let (mut first, mut ticks_at_first, mut ticks) = (None, 0, 0);
    while child.try_wait()?.is_none() {
        let now = process_tree_ticks(pid);
        ticks = ticks.max(now);
        if first.is_none() && std::fs::metadata(out).is_ok_and(|m| m.len() > 0) {
            first = Some(Instant::now());
            ticks_at_first = now;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let ended = Instant::now();
    let status = child.wait()?;
    let stderr =
        std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
    ensure!(
        status.success(),
        "sightline-server batch {flags:?} failed: {status}\n{stderr}"
    );
    // The layout line (`batch: <model> (<sha256>): <layout>`).
    let layout = stderr
        .lines()
        .find_map(|l| l.strip_prefix("batch: ")?.split_once("): ").map(|(_, l)| l))
        .unwrap_or("?")
        .to_string();
    let lines = std::fs::read_to_string(out)?.lines().count();
    ensure!(lines == bench.images, "{lines} lines of {}", bench.images);
    std::fs::remove_file(out).with_context(|| format!("remove {}", out.display()))?;
    let first = first.context("no result line was seen before the run ended")?;
    let recognizing = ended.duration_since(first).as_secs_f64();
    let ticks_per_second = crate::proc_stat::clock_ticks_per_second() as f64;
    Ok(CommandRun {
        layout,
        load: first.duration_since(started).as_secs_f64(),
        recognizing,
        rate: (bench.images - 1) as f64 / recognizing,
        cpu_ms: (ticks - ticks_at_first) as f64 / ticks_per_second * 1000.0
            / (bench.images - 1) as f64,
    })
}

/// Runs the measurement; the Markdown text.
pub fn run(bench: &BatchBench) -> anyhow::Result<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let binary = require_server_binary().context("the command runs as its own process")?;
    let scratch = ScratchDir::new("batch-bench")?;
    let folder = scratch.path().join("photos");
    let files = write_photos(&bench.image, &folder, bench.images)?;

    let sidecar = sightline_server::model_config::ModelSidecar::load(
        &models().join(format!("{}.json", bench.model)),
    )?;
    let p = sidecar.preprocess.clone();
    let limits = sightline_server::preprocess::DecodeLimits::default();
    let photos: Vec<Vec<u8>> = files
        .iter()
        .take(200)
        .map(std::fs::read)
        .collect::<Result<_, _>>()?;
    let tensor = sightline_server::preprocess::preprocess(&photos[0], &limits, &p)?;
    let mut next = photos.iter().cycle();
    let pre_ms = cpu_ms_per_call(photos.len(), || {
        let bytes = next.next().context("a photo")?;
        std::hint::black_box(sightline_server::preprocess::preprocess(
            bytes, &limits, &p,
        )?);
        Ok(())
    })?;
    // The bound of the last stops, kept for comparison: one session alone, its CPU time.
    let mut solo = Vec::new();
    for threads in [cores, 1] {
        for rows in [1, 2, 4, 8] {
            solo.push((
                threads,
                rows,
                raw_cpu_ms_per_image(bench, &tensor, &p, rows, threads)?,
            ));
        }
    }
    let &(solo_threads, solo_rows, solo_ms) = solo
        .iter()
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .context("no raw measurement")?;
    let solo_allowed = cores as f64 * 1000.0 / (solo_ms + pre_ms);

    let raw = RawModel {
        ort_lib: &bench.ort_lib,
        model: &bench.model,
        tensor: &tensor,
        preprocess: &p,
    };
    let sweep = Sweep::measure(&raw, cores, 200, "batch")?;
    let (best_layout, best_rows, _) = sweep.top[0];
    // runs[setting] over the rounds: (bound, run).
    let mut runs: Vec<Vec<(f64, CommandRun)>> = SETTINGS.iter().map(|_| Vec::new()).collect();
    for round in 0..bench.rounds {
        for (s, (name, flags)) in SETTINGS.iter().enumerate() {
            let bound = allowed(sweep.best_now(&raw, 200)?, pre_ms, cores);
            let flags: Vec<String> = flags
                .iter()
                .map(|f| f.replace("CORES", &cores.to_string()))
                .collect();
            let out = scratch.path().join(format!("results-{round}-{s}.jsonl"));
            let run = run_command(bench, &binary, &folder, &out, &flags)?;
            eprintln!(
                "batch: round {round}, {name}: {:.1} images/s, {:.3} of {bound:.1} ({})",
                run.rate,
                run.rate / bound,
                run.layout
            );
            runs[s].push((bound, run));
        }
    }
    let bounds: Vec<f64> = runs.iter().flatten().map(|(b, _)| *b).collect();
    let bound = spread(&bounds);
    let solo_cells: Vec<String> = solo
        .iter()
        .map(|(t, r, ms)| format!("{t} thread(s) × batch {r}: {ms:.2}"))
        .collect();
    let mut text = format!(
        "Machine: {} ({cores} cores). {}, {} JPEGs of {} ({} bytes each, one pixel apart), \
         result cache off, {} rounds.\n\n\
         What the cores allow (as `--cpu` measures it, `raw_bound.rs`): the raw session's \
         best in the sweep is {best_layout} at batch {best_rows}; before each run of the \
         command the sweep's three best are measured again and the most taken; decode + \
         preprocess {pre_ms:.2} CPU ms per image; so the cores allow {:.1} images/s \
         (median; {:.1}–{:.1}).\n\n\
         The bound of the earlier stops, one session alone by CPU time ({}): the least, \
         {solo_ms:.2} ms ({solo_threads} thread(s), batch {solo_rows}), so {solo_allowed:.1} \
         images/s.\n\n\
         Images/s count from the first result line to the last (the model's loading and \
         warm-up, shown apart, are paid once per run); each figure is the median over the \
         rounds.\n\n{}\n\
         | command setting | load + warm-up s | recognizing s | images/s | CPU ms / image | \
         ÷ allowed (min–max) | ÷ the solo bound |\n|---|---:|---:|---:|---:|---:|---:|\n",
        cpu_model(),
        bench.model,
        bench.images,
        bench
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        photos[0].len(),
        bench.rounds,
        bound.0,
        bound.1,
        bound.2,
        solo_cells.join("; "),
        sweep.table(),
    );
    for ((name, _), runs) in SETTINGS.iter().zip(&runs) {
        let of = |f: &dyn Fn(&(f64, CommandRun)) -> f64| runs.iter().map(f).collect::<Vec<_>>();
        let (ratio, least, most) = spread(&of(&|(b, r)| r.rate / b));
        let rate = median(&of(&|(_, r)| r.rate));
        text.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {rate:.1} | {:.2} | **{ratio:.3}** ({least:.3}–{most:.3}) \
             | {:.3} |\n",
            median(&of(&|(_, r)| r.load)),
            median(&of(&|(_, r)| r.recognizing)),
            median(&of(&|(_, r)| r.cpu_ms)),
            rate / solo_allowed,
        ));
    }
    text.push_str("\nWhat each run served with:\n\n");
    for ((name, _), runs) in SETTINGS.iter().zip(&runs) {
        for (round, (bound, run)) in runs.iter().enumerate() {
            text.push_str(&format!(
                "- {name}, round {round}: {:.3} of {bound:.1} — {}\n",
                run.rate / bound,
                run.layout
            ));
        }
    }
    Ok(text)
}
