//! What the cores allow, the way issue 22 measures it, shared by `--cpu` and `--batch`:
//! the raw ONNX Runtime session at its best — one session with a thread per core
//! (spinning on and off) and one one-thread session per core side by side, at batches of
//! 1, 2, 4 and 8: the most images per second by wall time — plus the server's own
//! decoding, resizing and normalising (CPU time per image on one thread, shared over the
//! cores):
//! `1 ÷ (1 ÷ raw + decode ÷ cores)` images per second.
//!
//! One sweep is noisy (this machine's speed moves by several per cent from minute to
//! minute): [`Sweep::best_now`] re-measures the sweep's three best settings and takes the
//! most, so that each measurement beside it has its own bound, never an unlucky draw.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::models;

/// One way to run the raw session: `instances` sessions side by side, `threads` each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawLayout {
    pub instances: usize,
    pub threads: usize,
    pub spinning: bool,
}

impl std::fmt::Display for RawLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} × {} thread{}{}",
            self.instances,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            match (self.threads, self.spinning) {
                (1, _) => "",
                (_, true) => ", spinning",
                (_, false) => ", not spinning",
            }
        )
    }
}

/// The model and the one preprocessed image the raw sessions run.
pub struct RawModel<'a> {
    pub ort_lib: &'a Path,
    /// A file stem in models/build.
    pub model: &'a str,
    pub tensor: &'a [f32],
    pub preprocess: &'a sightline_server::model_config::Preprocess,
}

/// `1 ÷ (1 ÷ raw + decode ÷ cores)`: images per second the cores allow when each image
/// costs the raw session's share (`raw` images/s on every core) plus `decode_ms` of CPU.
pub fn allowed(raw_images_per_second: f64, decode_ms: f64, cores: usize) -> f64 {
    1.0 / (1.0 / raw_images_per_second + decode_ms / 1000.0 / cores as f64)
}

/// The median of `values` (the upper one of an even count), the least and the most: how
/// the benchmarks sum up their pairs or rounds.
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN),
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
    )
}

/// The median of `values` ([`spread`]).
pub fn median(values: &[f64]) -> f64 {
    spread(values).0
}

/// Every layout and batch size, measured once.
pub struct Sweep {
    pub cells: Vec<(RawLayout, usize, f64)>,
    /// The three best of `cells`, best first.
    pub top: Vec<(RawLayout, usize, f64)>,
}

impl Sweep {
    /// Measures every candidate over about `images` images each (`log` each line).
    pub fn measure(
        raw: &RawModel<'_>,
        cores: usize,
        images: usize,
        log: &str,
    ) -> anyhow::Result<Sweep> {
        let mut layouts = vec![
            RawLayout {
                instances: 1,
                threads: cores,
                spinning: true,
            },
            RawLayout {
                instances: 1,
                threads: cores,
                spinning: false,
            },
        ];
        if cores > 1 {
            layouts.push(RawLayout {
                instances: cores,
                threads: 1,
                spinning: false,
            });
        }
        let mut cells = Vec::new();
        for &layout in &layouts {
            for rows in [1, 2, 4, 8] {
                let ips = images_per_second(raw, layout, rows, images)?;
                eprintln!("{log}: raw {layout}, batch {rows}: {ips:.1} images/s");
                cells.push((layout, rows, ips));
            }
        }
        let mut top = cells.clone();
        top.sort_by(|a, b| b.2.total_cmp(&a.2));
        top.truncate(3);
        anyhow::ensure!(!top.is_empty(), "no raw measurement");
        Ok(Sweep { cells, top })
    }

    /// The most images/s of the three best settings, measured again now.
    pub fn best_now(&self, raw: &RawModel<'_>, images: usize) -> anyhow::Result<f64> {
        let mut best = 0.0f64;
        for &(layout, rows, _) in &self.top {
            best = best.max(images_per_second(raw, layout, rows, images)?);
        }
        Ok(best)
    }

    /// The sweep as a Markdown table.
    pub fn table(&self) -> String {
        let mut text = String::from("| raw layout | batch | images/s |\n|---|---:|---:|\n");
        for (layout, rows, ips) in &self.cells {
            text.push_str(&format!("| {layout} | {rows} | {ips:.1} |\n"));
        }
        text
    }
}

fn model_path(model: &str) -> PathBuf {
    models().join(format!("{model}.onnx"))
}

/// Images per second of the raw session(s) at batch `rows` over about `images` images:
/// each session on its own thread, wall time from the first run to the last.
pub fn images_per_second(
    raw: &RawModel<'_>,
    layout: RawLayout,
    rows: usize,
    images: usize,
) -> anyhow::Result<f64> {
    let env = sightline_server::ort_runtime::init(raw.ort_lib)?;
    let mut sessions = (0..layout.instances)
        .map(|_| -> anyhow::Result<Session> {
            Session::builder(env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .with_intra_threads(layout.threads)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .with_intra_op_spinning(layout.spinning)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .commit_from_file(model_path(raw.model))
                .with_context(|| format!("load {}", raw.model))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let input: Vec<f32> = std::iter::repeat_n(raw.tensor, rows)
        .flatten()
        .copied()
        .collect();
    let shape = raw.preprocess.batch_shape(rows).map(|d| d as i64);
    let run = |session: &mut Session| -> anyhow::Result<()> {
        let value = ort::value::TensorRef::from_array_view((shape, input.as_slice()))?;
        let outputs = session.run(ort::inputs![value])?;
        std::hint::black_box(outputs[0].try_extract_tensor::<f32>()?);
        Ok(())
    };
    for session in &mut sessions {
        run(session)?;
        run(session)?;
    }
    let runs = images.div_ceil(rows * layout.instances).max(2);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .iter_mut()
            .map(|session| scope.spawn(move || (0..runs).try_for_each(|_| run(session))))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a raw thread panicked"))?
        })
    })?;
    Ok((runs * rows * layout.instances) as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_median_the_least_and_the_most() {
        assert_eq!(spread(&[0.93, 0.81, 0.97]), (0.93, 0.81, 0.97));
        // An even count takes the upper of the two middle values.
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&[]).is_nan());
    }
}
