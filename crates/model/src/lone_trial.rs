//! The lone session's own trial (batching.rs, [`crate::batching::to_lone`]): the session
//! that takes a request arriving alone runs with every core, and whether its threads
//! should spin between operators is measured the way it serves — one request at a time,
//! its photo decoded and then run at batch 1 — not assumed. Spinning threads skip a
//! wake-up per operator but keep a core busy for a while after each run; which wins
//! differs from CPU to CPU.
//!
//! The candidates take turns request by request, so that a change in the machine's speed
//! hits them alike; each one's figure is its median.

use std::time::Instant;

use serde::Serialize;

use crate::load_shape::{Load, Shared};
use crate::preprocess::preprocess;
use crate::{batching::BatchRunner, engine::LoadError};

/// Timed requests per candidate (after two untimed ones).
pub const REQUESTS: usize = 15;
/// Medians within this fraction of the best are a tie, which sleeping threads win: they
/// leave the cores free as soon as a run ends.
const TIE: f64 = 0.02;

/// One candidate's figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoneTrial {
    pub spinning: bool,
    /// Median milliseconds of one request: decoding the photo and the run.
    pub p50_ms: f64,
}

/// The candidate to serve: the lowest median; near ties ([`TIE`]) go to sleeping threads.
pub fn choose(trials: &[LoneTrial]) -> Option<LoneTrial> {
    let best = trials
        .iter()
        .map(|t| t.p50_ms)
        .filter(|ms| ms.is_finite())
        .fold(f64::INFINITY, f64::min);
    trials
        .iter()
        .filter(|t| t.p50_ms.is_finite() && t.p50_ms <= best * (1.0 + TIE))
        .min_by(|a, b| {
            a.spinning
                .cmp(&b.spinning)
                .then(a.p50_ms.total_cmp(&b.p50_ms))
        })
        .copied()
}

/// Times every `(spinning, session)` candidate over [`REQUESTS`] lone requests each.
pub fn run(candidates: &[(bool, Shared)], load: &Load) -> Result<Vec<LoneTrial>, LoadError> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); candidates.len()];
    for request in 0..REQUESTS + 2 {
        for (i, (_, session)) in candidates.iter().enumerate() {
            let started = Instant::now();
            let input = preprocess(&load.photo, &load.limits, &load.preprocess)
                .map_err(|e| LoadError::Warmup(format!("the lone trial's photo: {e}")))?;
            session
                .clone()
                .run(&input, 1)
                .map_err(|e| LoadError::Warmup(format!("the lone trial failed: {e}")))?;
            if request >= 2 {
                times[i].push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    Ok(candidates
        .iter()
        .zip(times)
        .map(|((spinning, _), mut ms)| {
            ms.sort_by(f64::total_cmp);
            LoneTrial {
                spinning: *spinning,
                p50_ms: ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(spinning: bool, p50_ms: f64) -> LoneTrial {
        LoneTrial { spinning, p50_ms }
    }

    #[test]
    fn the_faster_lone_session_serves() {
        assert_eq!(choose(&[t(false, 8.7), t(true, 7.4)]), Some(t(true, 7.4)));
        assert_eq!(choose(&[t(false, 7.0), t(true, 8.1)]), Some(t(false, 7.0)));
    }

    #[test]
    fn a_near_tie_goes_to_sleeping_threads() {
        // 1 % apart: spinning would burn a core after every run for nothing.
        assert_eq!(
            choose(&[t(true, 7.90), t(false, 7.98)]),
            Some(t(false, 7.98))
        );
        // 5 % apart is no tie.
        assert_eq!(
            choose(&[t(true, 7.60), t(false, 8.00)]),
            Some(t(true, 7.60))
        );
    }

    #[test]
    fn nothing_measured_chooses_nothing() {
        assert_eq!(choose(&[]), None);
        assert_eq!(choose(&[t(false, f64::NAN)]), None);
        assert_eq!(
            choose(&[t(false, f64::NAN), t(true, 9.0)]),
            Some(t(true, 9.0))
        );
    }
}
