//! `--max-batch-size auto`: the batch size that gives the most images per second on this
//! machine and device, measured with the real session at warm-up.
//!
//! Batching is not free everywhere. On a 2-core CPU whose intra-op threads already use
//! every core, a batch of 8 ran about 15 % fewer images per second than batch 1; on a GPU
//! it is the other way round. So instead of trusting a number, the server times each
//! candidate size ([`candidates`]) in interleaved rounds ([`measure`]), keeps the best
//! ([`choose`]), and reports the table and the choice in `/readyz` and
//! `sightline_inference_batch_throughput` / `sightline_inference_max_batch_size`.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The largest size `auto` tries when no limit is given (`auto:32` tries up to 32).
pub const DEFAULT_AUTO_LIMIT: usize = 8;

/// A size within this share of the best throughput is as good as the best, and the
/// largest such size wins, as long as it is not slower than batch 1 ([`choose`]).
pub const TOLERANCE: f64 = 0.02;

/// At least this many timed rounds of every size, more while the budget lasts.
const MIN_ROUNDS: usize = 3;
const MAX_ROUNDS: usize = 15;
const BUDGET: Duration = Duration::from_millis(1500);

/// `--max-batch-size`: `auto`, `auto:<limit>` or a fixed number of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// Measure every candidate up to `limit` at warm-up and keep the best ([`choose`]).
    Auto { limit: usize },
    /// Always batches of up to this many images.
    Fixed(usize),
}

impl Default for BatchSize {
    fn default() -> Self {
        BatchSize::Auto {
            limit: DEFAULT_AUTO_LIMIT,
        }
    }
}

impl BatchSize {
    /// The largest batch this setting may form.
    pub fn limit(self) -> usize {
        match self {
            BatchSize::Auto { limit } | BatchSize::Fixed(limit) => limit,
        }
    }
}

/// `--max-batch-size` that is neither `auto`, `auto:<n>` nor a number from 1 to 4096.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected `auto`, `auto:<largest size>` or a batch size from 1 to 4096, got {0:?}")]
pub struct BatchSizeError(String);

impl FromStr for BatchSize {
    type Err = BatchSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |text: &str| {
            text.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=4096).contains(n))
                .ok_or_else(|| BatchSizeError(s.to_string()))
        };
        let s_trim = s.trim();
        if s_trim.eq_ignore_ascii_case("auto") {
            return Ok(BatchSize::default());
        }
        match s_trim.split_once(':') {
            Some((auto, limit)) if auto.eq_ignore_ascii_case("auto") => Ok(BatchSize::Auto {
                limit: number(limit)?,
            }),
            Some(_) => Err(BatchSizeError(s.to_string())),
            None => Ok(BatchSize::Fixed(number(s_trim)?)),
        }
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Auto { limit } if *limit == DEFAULT_AUTO_LIMIT => write!(f, "auto"),
            BatchSize::Auto { limit } => write!(f, "auto:{limit}"),
            BatchSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Images per second of one batch size, as measured at warm-up.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Measured {
    pub rows: usize,
    pub images_per_second: f64,
}

/// How the batch size was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Measured at warm-up (`--max-batch-size auto`).
    Auto,
    /// The flag's number.
    Fixed,
    /// The model's input has a fixed batch dimension: the only size it runs.
    Model,
}

/// How the batch size was decided, for `/readyz` and the metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Tuning {
    pub mode: Mode,
    /// The largest size that was allowed.
    pub limit: usize,
    /// The size batches are formed up to.
    pub max_batch_size: usize,
    /// What each candidate ran at (empty unless `auto`).
    pub measured: Vec<Measured>,
}

impl Tuning {
    pub fn fixed(size: usize) -> Tuning {
        Tuning {
            mode: Mode::Fixed,
            limit: size,
            max_batch_size: size,
            measured: Vec::new(),
        }
    }

    /// The model's input declares a fixed batch: that is the only size it runs.
    pub fn by_model(size: usize, limit: usize) -> Tuning {
        Tuning {
            mode: Mode::Model,
            limit,
            max_batch_size: size,
            measured: Vec::new(),
        }
    }

    /// The most rows one request may carry: the limit, or the model's fixed batch.
    pub fn max_request_rows(&self) -> usize {
        match self.mode {
            Mode::Model => self.max_batch_size,
            Mode::Auto | Mode::Fixed => self.limit.max(self.max_batch_size),
        }
    }

    pub fn auto(limit: usize, measured: Vec<Measured>) -> Tuning {
        Tuning {
            mode: Mode::Auto,
            limit,
            max_batch_size: choose(&measured),
            measured,
        }
    }
}

/// The sizes `auto` tries: 1, then powers of two below `limit`, then `limit`.
pub fn candidates(limit: usize) -> Vec<usize> {
    let limit = limit.max(1);
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |s| s.checked_mul(2))
        .take_while(|&s| s < limit)
        .collect();
    sizes.push(limit);
    sizes
}

/// The largest size within [`TOLERANCE`] of the best throughput that is no slower than
/// batch 1 (1 when nothing was measured).
///
/// Largest, because a larger limit costs a lone request nothing (the batcher never waits
/// for company that is not on its way), while under load larger batches save what the
/// warm-up cannot see: fewer queue hand-offs and thread wake-ups per image. Measured
/// through HTTP at concurrency 16 on 2 cores: 172 requests/s batching up to 8 against 131
/// up to 2, where warm-up had timed 2, 4 and 8 within 2 % of each other (BENCHMARKS.md).
pub fn choose(measured: &[Measured]) -> usize {
    let finite = || measured.iter().filter(|m| m.images_per_second.is_finite());
    let best = finite().map(|m| m.images_per_second).fold(0.0f64, f64::max);
    let batch_1 = finite()
        .find(|m| m.rows == 1)
        .map_or(0.0, |m| m.images_per_second);
    let floor = (best * (1.0 - TOLERANCE)).max(batch_1);
    finite()
        .filter(|m| m.images_per_second >= floor)
        .map(|m| m.rows)
        .max()
        .unwrap_or(1)
}

/// Times `run(rows)` for every size. Each size runs once untimed (its first-run cost),
/// then the sizes take turns, round after round, so that a change in the machine's load
/// hits all of them alike; each size's figure is the median of its rounds.
pub fn measure(
    sizes: &[usize],
    mut run: impl FnMut(usize) -> Result<(), String>,
) -> Result<Vec<Measured>, String> {
    for &rows in sizes {
        run(rows)?;
    }
    let mut per_image: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < MIN_ROUNDS || (rounds < MAX_ROUNDS && started.elapsed() < BUDGET) {
        for (i, &rows) in sizes.iter().enumerate() {
            let t = Instant::now();
            run(rows)?;
            per_image[i].push(t.elapsed().as_secs_f64() / rows as f64);
        }
        rounds += 1;
    }
    Ok(sizes
        .iter()
        .zip(per_image)
        .map(|(&rows, mut seconds)| {
            seconds.sort_by(f64::total_cmp);
            let median = seconds[seconds.len() / 2];
            Measured {
                rows,
                images_per_second: if median > 0.0 { 1.0 / median } else { f64::MAX },
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, images_per_second: f64) -> Measured {
        Measured {
            rows,
            images_per_second,
        }
    }

    #[test]
    fn the_flag_takes_auto_a_limit_or_a_number() {
        assert_eq!("auto".parse(), Ok(BatchSize::Auto { limit: 8 }));
        assert_eq!("AUTO:32".parse(), Ok(BatchSize::Auto { limit: 32 }));
        assert_eq!("16".parse(), Ok(BatchSize::Fixed(16)));
        for bad in [
            "", "0", "auto:0", "auto:", "fast", "8:auto", "-1", "5000", "auto:x",
        ] {
            assert!(bad.parse::<BatchSize>().is_err(), "{bad:?} was accepted");
        }
        for s in ["auto", "auto:32", "4"] {
            assert_eq!(s.parse::<BatchSize>().expect(s).to_string(), s);
        }
    }

    #[test]
    fn candidates_are_powers_of_two_and_the_limit() {
        assert_eq!(candidates(1), vec![1]);
        assert_eq!(candidates(8), vec![1, 2, 4, 8]);
        assert_eq!(candidates(12), vec![1, 2, 4, 8, 12]);
        assert_eq!(candidates(0), vec![1]);
    }

    #[test]
    fn the_fastest_size_wins_and_batch_1_when_batching_loses() {
        // The CPU: batch 8 ran 15 % slower than batch 1.
        let cpu = [m(1, 203.0), m(2, 196.0), m(4, 185.0), m(8, 173.0)];
        assert_eq!(choose(&cpu), 1);
        // A GPU: throughput grows with the batch.
        let gpu = [m(1, 300.0), m(2, 580.0), m(4, 1100.0), m(8, 2000.0)];
        assert_eq!(choose(&gpu), 8);
        // Sizes within the tolerance of the best are as good, and the largest wins.
        let flat = [m(1, 100.0), m(2, 150.0), m(4, 200.0), m(8, 199.0)];
        assert_eq!(choose(&flat), 8);
        let warm_up_here = [m(1, 141.0), m(2, 166.8), m(4, 164.5), m(8, 164.6)];
        assert_eq!(choose(&warm_up_here), 8);
        // ... but never one slower than batch 1.
        let near = [m(1, 100.0), m(2, 99.5), m(4, 98.5)];
        assert_eq!(choose(&near), 1);
        assert_eq!(choose(&[]), 1);
        assert_eq!(choose(&[m(1, f64::NAN), m(2, 10.0)]), 2);
    }

    #[test]
    fn the_choice_is_never_slower_than_batch_1() {
        // Whatever the figures, the chosen size runs at least batch 1's images per second.
        let mut seed = 7u64;
        for _ in 0..1000 {
            let measured: Vec<Measured> = candidates(16)
                .into_iter()
                .map(|rows| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    m(rows, 50.0 + (seed >> 33) as f64 % 100.0)
                })
                .collect();
            let chosen = choose(&measured);
            let at = |rows| measured.iter().find(|x| x.rows == rows).expect("size");
            assert!(at(chosen).images_per_second >= at(1).images_per_second);
        }
    }

    #[test]
    fn measuring_finds_the_size_a_runner_is_fastest_at() {
        // A runner whose cost per image is least at 4 rows (a fixed cost per run, and a
        // per-image cost that grows past 4).
        let cost = |rows: usize| {
            let per_image = if rows <= 4 { 200 } else { 1000 };
            Duration::from_micros(400 + per_image * rows as u64)
        };
        let mut runs = Vec::new();
        let measured = measure(&candidates(8), |rows| {
            runs.push(rows);
            std::thread::sleep(cost(rows));
            Ok(())
        })
        .expect("measure");
        assert_eq!(measured.len(), 4);
        assert_eq!(choose(&measured), 4, "{measured:?}");
        assert_eq!(
            &runs[..4],
            &[1, 2, 4, 8],
            "one untimed run of each size first"
        );
        assert!(runs.len() >= 4 * (1 + MIN_ROUNDS));
    }

    #[test]
    fn a_failing_run_fails_the_measurement() {
        let err = measure(&[1, 2], |rows| {
            if rows == 2 {
                Err("out of memory".into())
            } else {
                Ok(())
            }
        })
        .expect_err("a failure");
        assert_eq!(err, "out of memory");
    }
}
