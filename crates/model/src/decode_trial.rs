//! Where a request's image is decoded (batching.rs): on the blocking pool, beside the
//! instances' workers (`pool`, as always until now), or by the worker that then runs it
//! (`worker`). With one-thread instances, one per core, the second keeps a decode from
//! preempting a run and saves thread hand-offs: on a 2-core Intel Xeon, two such
//! instances served 2–4 % more requests a second with `worker` (seven alternating pairs,
//! BENCHMARKS.md, "Speed on every CPU") and switched threads a third less often. A wider
//! session would idle its other threads while its worker decodes, so only narrow
//! instances as many as the cores try it.
//!
//! Pure: which layouts try it ([`worth_trying`]) and the choice ([`choose`]); the runs are
//! load_shape.rs's, with the photo queued undecoded for `worker`.

use std::time::Duration;

use serde::Serialize;

pub use crate::decode_at::DecodeAt;
use crate::engine::LoadError;
use crate::layout_tuning::Layout;
use crate::load_shape::{self, Load, Sessions};

/// Rounds of the two, alternating.
pub const ROUNDS: usize = 3;
/// `pool` serves only when it is more than this share faster than `worker`.
pub const TIE: f64 = 0.02;

/// One placement's figure: the mean of its rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DecodeTrial {
    pub decode: DecodeAt,
    pub images_per_second: f64,
}

/// Whether `layout` tries both placements: one-thread instances, at least one per core.
pub fn worth_trying(layout: Layout, cores: usize) -> bool {
    layout.threads == 1 && layout.instances >= cores.max(1)
}

/// What the trial will take at most: both placements, every round, each at least the
/// trial's window (load_shape.rs), so the layout trial can leave room for it.
pub fn reserve() -> Duration {
    load_shape::MIN_WINDOW * (2 * ROUNDS) as u32
}

/// `pool` when it beat `worker` by more than [`TIE`]; `worker` otherwise: a near tie
/// goes to the worker, which switches threads less (7.5 context switches a request
/// against 11.0 for `pool`, `perf stat` on the Xeon at concurrency 4). `None` when
/// nothing was measured.
pub fn choose(trials: &[DecodeTrial]) -> Option<DecodeAt> {
    let of = |at: DecodeAt| {
        trials
            .iter()
            .find(|t| t.decode == at && t.images_per_second.is_finite())
            .map(|t| t.images_per_second)
    };
    match (of(DecodeAt::Pool), of(DecodeAt::Worker)) {
        (Some(pool), Some(worker)) if pool > worker * (1.0 + TIE) => Some(DecodeAt::Pool),
        (_, Some(_)) => Some(DecodeAt::Worker),
        (Some(_), None) => Some(DecodeAt::Pool),
        (None, None) => None,
    }
}

/// Both placements on `sessions` at batches of `rows`, [`ROUNDS`] alternating rounds
/// under the trial's load.
pub fn run(
    sessions: &Sessions,
    rows: usize,
    row_len: usize,
    load: &Load,
) -> Result<Vec<DecodeTrial>, LoadError> {
    let placements = [DecodeAt::Pool, DecodeAt::Worker];
    let mut sums = [0.0f64; 2];
    for _ in 0..ROUNDS {
        for (sum, &at) in sums.iter_mut().zip(&placements) {
            *sum += load_shape::images_per_second(sessions, rows, row_len, load, at)?;
        }
    }
    Ok(placements
        .iter()
        .zip(sums)
        .map(|(&decode, sum)| DecodeTrial {
            decode,
            images_per_second: sum / ROUNDS as f64,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(decode: DecodeAt, images_per_second: f64) -> DecodeTrial {
        DecodeTrial {
            decode,
            images_per_second,
        }
    }

    #[test]
    fn only_one_thread_instances_as_many_as_the_cores_try_the_worker() {
        let l = |instances, threads| Layout {
            instances,
            threads,
            spinning: false,
        };
        assert!(worth_trying(l(2, 1), 2));
        assert!(worth_trying(l(4, 1), 4));
        assert!(
            !worth_trying(l(1, 2), 2),
            "a wide session idles while it decodes"
        );
        assert!(!worth_trying(l(1, 1), 2), "a core would have nothing to do");
        assert!(!worth_trying(l(2, 2), 4));
    }

    #[test]
    fn the_pool_serves_only_when_clearly_faster() {
        use DecodeAt::*;
        assert_eq!(choose(&[t(Pool, 200.0), t(Worker, 210.0)]), Some(Worker));
        assert_eq!(
            choose(&[t(Pool, 203.0), t(Worker, 200.0)]),
            Some(Worker),
            "a near tie"
        );
        assert_eq!(choose(&[t(Pool, 210.0), t(Worker, 200.0)]), Some(Pool));
        assert_eq!(choose(&[t(Pool, 150.0), t(Worker, f64::NAN)]), Some(Pool));
        assert_eq!(choose(&[]), None);
        assert_eq!("worker".parse::<DecodeAt>(), Ok(Worker));
        assert!("gpu".parse::<DecodeAt>().is_err());
    }
}
