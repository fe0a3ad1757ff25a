//! `sightline-bench --batch`: `sightline-server batch` on a folder of photos against what
//! the cores allow for the same work, both measured in this run.
//!
//! The work, measured in this process: the raw ONNX Runtime session's CPU time per image at
//! its best batch size (1, 2, 4 or 8; one intra-op thread per core and one thread, spinning
//! off; the least), and one decode + resize + normalise per image (CPU time, one thread,
//! over the generated photos). What the cores allow: `cores ÷ (inference + preprocessing)`
//! images/s. Then the command, as its own process, on the folder (result cache off, a new
//! output each time) for each setting tried: wall time, images/s, its CPU time per image,
//! and the ratio to what the cores allow.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, ensure};

use crate::cpu_bench::{cpu_ms_per_call, raw_cpu_ms};
use crate::mirror_bench::cpu_model;
use crate::models;
use crate::proc_stat::process_tree_ticks;
use crate::process::{ScratchDir, require_server_binary};

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

/// CPU ms per image of the raw session at batch `rows` (spinning off, as the server).
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
    let mut raw = Vec::new();
    for threads in [cores, 1] {
        for rows in [1, 2, 4, 8] {
            raw.push((
                threads,
                rows,
                raw_cpu_ms_per_image(bench, &tensor, &p, rows, threads)?,
            ));
        }
    }
    let &(best_threads, best_rows, infer_ms) = raw
        .iter()
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .context("no raw measurement")?;
    let allowed = cores as f64 * 1000.0 / (infer_ms + pre_ms);
    let raw_cells: Vec<String> = raw
        .iter()
        .map(|(t, r, ms)| format!("{t} thread(s) × batch {r}: {ms:.2}"))
        .collect();
    let mut text = format!(
        "Machine: {} ({cores} cores). {}, {} JPEGs of {} ({} bytes each, one pixel apart), \
         result cache off.\n\n\
         The work: raw session CPU ms per image ({}); the least, {infer_ms:.2} ms \
         ({best_threads} thread(s), batch {best_rows}); decode + preprocess {pre_ms:.2} CPU \
         ms per image; so the cores allow {allowed:.1} images/s.\n\n\
         Images/s count from the first result line to the last (the model's loading and \
         warm-up, shown apart, are paid once per run).\n\n\
         | command setting | load + warm-up s | recognizing s | images/s | CPU ms / image | \
         ÷ allowed |\n|---|---:|---:|---:|---:|---:|\n",
        cpu_model(),
        bench.model,
        bench.images,
        bench
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        photos[0].len(),
        raw_cells.join("; "),
    );
    let ticks_per_second = crate::proc_stat::clock_ticks_per_second() as f64;
    for (round, (name, flags)) in SETTINGS.iter().enumerate() {
        let out = scratch.path().join(format!("results-{round}.jsonl"));
        let flags: Vec<String> = flags
            .iter()
            .map(|f| f.replace("CORES", &cores.to_string()))
            .collect();
        let started = Instant::now();
        let mut child = Command::new(&binary)
            .arg("batch")
            .arg("--model")
            .arg(models().join(format!("{}.onnx", bench.model)))
            .arg("--ort-lib")
            .arg(&bench.ort_lib)
            .arg("--input")
            .arg(&folder)
            .arg("--out")
            .arg(&out)
            .args(["--no-progress", "--cache-bytes", "0"])
            .args(&flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start sightline-server batch")?;
        let pid = child.id();
        // The first line marks the model ready; CPU ticks from then to just before exit.
        let (mut first, mut ticks_at_first, mut ticks) = (None, 0, 0);
        while child.try_wait()?.is_none() {
            let now = process_tree_ticks(pid);
            ticks = ticks.max(now);
            if first.is_none() && std::fs::metadata(&out).is_ok_and(|m| m.len() > 0) {
                first = Some(Instant::now());
                ticks_at_first = now;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let ended = Instant::now();
        let status = child.wait()?;
        ensure!(
            status.success(),
            "sightline-server batch ({name}) failed: {status}"
        );
        let lines = std::fs::read_to_string(&out)?.lines().count();
        ensure!(lines == bench.images, "{lines} lines of {}", bench.images);
        let first = first.context("no result line was seen before the run ended")?;
        let load = first.duration_since(started).as_secs_f64();
        let recognizing = ended.duration_since(first).as_secs_f64();
        let rate = (bench.images - 1) as f64 / recognizing;
        let cpu_ms =
            (ticks - ticks_at_first) as f64 / ticks_per_second * 1000.0 / (bench.images - 1) as f64;
        text.push_str(&format!(
            "| {name} | {load:.1} | {recognizing:.1} | {rate:.1} | {cpu_ms:.2} | {:.2} |\n",
            rate / allowed
        ));
    }
    Ok(text)
}
