//! How the model runs on a CPU — the sessions side by side (instances), the intra-op
//! threads of each, whether those threads spin, and the batch size — chosen together at
//! warm-up, because they interact and because the best choice differs from CPU to CPU
//! (BENCHMARKS.md, "Speed on every CPU"): on one 2-core machine one-thread sessions cost
//! a fifth less CPU per image than one two-thread session, spinning threads lost 5 % on
//! one CPU and won on another, and batches paid off only with threads that sleep.
//!
//! Pure: the candidates ([`layouts`]) and the choice ([`choose`]); the trial that measures
//! them under the load they will serve is `load_shape.rs`.

use serde::Serialize;

/// A trial within this share of the best throughput is as good as the best.
pub const TOLERANCE: f64 = 0.02;

/// At most this many instances are tried unless the flag asks for more (each is a copy of
/// the model's weights in memory).
pub const MAX_TRIED_INSTANCES: usize = 4;

/// One way to run the model on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Layout {
    /// Sessions side by side, each with its own inference thread.
    pub instances: usize,
    /// Intra-op threads of each session.
    pub threads: usize,
    /// Whether those threads busy-wait between operators.
    pub spinning: bool,
}

impl Layout {
    /// One session with every core: today's single-instance layout, and the lone session
    /// beside narrow instances (batching.rs).
    pub fn wide(cores: usize) -> Layout {
        Layout {
            instances: 1,
            threads: cores.max(1),
            spinning: false,
        }
    }
}

/// What the flags fix; `None` is left to the warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fixed {
    pub instances: Option<usize>,
    pub threads: Option<usize>,
    pub spinning: Option<bool>,
    /// Where images are decoded (`--decode-at`; decode_trial.rs).
    pub decode: Option<crate::decode_at::DecodeAt>,
}

impl Fixed {
    /// Whether the flags leave nothing about the layout to choose.
    pub fn all(&self) -> bool {
        self.instances.is_some() && self.threads.is_some() && self.spinning.is_some()
    }
}

/// The layouts worth trying on `cores`: 1, 2, 4 … instances up to the cores (and
/// [`MAX_TRIED_INSTANCES`]), each with the cores shared out as threads, spinning off and
/// on where a session has threads to spin (one thread has none: no second candidate). A
/// fixed flag pins its part; threads fixed without instances keep one instance (the flag
/// meant one session of that width).
pub fn layouts(cores: usize, fixed: Fixed) -> Vec<Layout> {
    let cores = cores.max(1);
    let instances: Vec<usize> = match (fixed.instances, fixed.threads) {
        (Some(n), _) => vec![n.max(1)],
        (None, Some(_)) => vec![1],
        (None, None) => std::iter::successors(Some(1usize), |n| n.checked_mul(2))
            .take_while(|&n| n <= cores.min(MAX_TRIED_INSTANCES))
            .chain((cores <= MAX_TRIED_INSTANCES && !cores.is_power_of_two()).then_some(cores))
            .collect(),
    };
    let mut out = Vec::new();
    for n in instances {
        let threads = fixed.threads.unwrap_or((cores / n).max(1)).max(1);
        let spins: &[bool] = match fixed.spinning {
            Some(true) => &[true],
            Some(false) => &[false],
            None if threads == 1 => &[false],
            None => &[false, true],
        };
        for &spinning in spins {
            out.push(Layout {
                instances: n,
                threads,
                spinning,
            });
        }
    }
    out
}

/// One candidate's figure from the trial.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trial {
    #[serde(flatten)]
    pub layout: Layout,
    /// The batch size it formed batches up to.
    pub rows: usize,
    /// Images per second through the batcher, with decoding running beside it.
    pub images_per_second: f64,
}

/// The trial to serve with: the most images per second; among those within [`TOLERANCE`]
/// of it, the fewest instances (less memory), then threads that sleep (kinder to the
/// decoding and to neighbours), then the smallest batch (a request waits for fewer
/// others, and with several instances one does not take the work the others could run:
/// at concurrency 4 on 2 cores, two one-thread instances lost a tenth batching up to 8
/// where the trial had timed 8 within its noise of 1). `None` when nothing was measured.
pub fn choose(trials: &[Trial]) -> Option<Trial> {
    let finite = || trials.iter().filter(|t| t.images_per_second.is_finite());
    let best = finite().map(|t| t.images_per_second).fold(0.0f64, f64::max);
    let floor = best * (1.0 - TOLERANCE);
    finite()
        .filter(|t| t.images_per_second >= floor)
        .min_by_key(|t| (t.layout.instances, t.layout.spinning, t.rows))
        .copied()
}

/// Whether a lone session should stand beside `chosen` (batching.rs): when its sessions
/// are narrower than the cores, a request that arrives alone would otherwise run on one
/// session's threads while the other cores idle.
pub fn wants_lone(chosen: Layout, cores: usize) -> bool {
    chosen.instances > 1 && chosen.threads < cores
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(instances: usize, threads: usize, spinning: bool) -> Layout {
        Layout {
            instances,
            threads,
            spinning,
        }
    }

    #[test]
    fn two_cores_try_one_wide_session_both_ways_and_two_narrow_ones() {
        assert_eq!(
            layouts(2, Fixed::default()),
            vec![l(1, 2, false), l(1, 2, true), l(2, 1, false)]
        );
        assert_eq!(layouts(1, Fixed::default()), vec![l(1, 1, false)]);
        assert_eq!(
            layouts(3, Fixed::default()),
            vec![
                l(1, 3, false),
                l(1, 3, true),
                l(2, 1, false),
                l(3, 1, false)
            ]
        );
        let sixteen = layouts(16, Fixed::default());
        assert_eq!(
            sixteen.iter().map(|x| x.instances).max(),
            Some(MAX_TRIED_INSTANCES)
        );
        assert!(sixteen.contains(&l(4, 4, true)));
    }

    #[test]
    fn fixed_flags_pin_their_part() {
        let spin_off = Fixed {
            spinning: Some(false),
            ..Fixed::default()
        };
        assert_eq!(layouts(2, spin_off), vec![l(1, 2, false), l(2, 1, false)]);
        let two = Fixed {
            instances: Some(2),
            ..Fixed::default()
        };
        assert_eq!(layouts(2, two), vec![l(2, 1, false)]);
        let threads = Fixed {
            threads: Some(2),
            ..Fixed::default()
        };
        assert_eq!(layouts(8, threads), vec![l(1, 2, false), l(1, 2, true)]);
        let all = Fixed {
            instances: Some(3),
            threads: Some(1),
            spinning: Some(true),
            decode: None,
        };
        assert!(all.all());
        assert_eq!(layouts(2, all), vec![l(3, 1, true)]);
    }

    fn t(layout: Layout, rows: usize, images_per_second: f64) -> Trial {
        Trial {
            layout,
            rows,
            images_per_second,
        }
    }

    #[test]
    fn the_fastest_wins_and_near_ties_go_to_fewer_sessions_sleeping_threads_smaller_batches() {
        let trials = [
            t(l(1, 2, false), 1, 120.0),
            t(l(1, 2, false), 8, 150.0),
            t(l(1, 2, true), 8, 140.0),
            t(l(2, 1, false), 1, 165.0),
            t(l(2, 1, false), 4, 160.0),
        ];
        assert_eq!(choose(&trials), Some(trials[3]));
        // Within 2 %: the single session wins over two.
        let near = [t(l(2, 1, false), 1, 150.0), t(l(1, 2, false), 4, 148.0)];
        assert_eq!(choose(&near), Some(near[1]));
        // Within 2 %: sleeping threads over spinning ones, then the smaller batch.
        let spin = [
            t(l(1, 2, true), 8, 150.0),
            t(l(1, 2, false), 4, 149.0),
            t(l(1, 2, false), 2, 148.0),
        ];
        assert_eq!(choose(&spin), Some(spin[2]));
        assert_eq!(choose(&[]), None);
        let nan = [t(l(1, 2, false), 1, f64::NAN), t(l(2, 1, false), 1, 10.0)];
        assert_eq!(choose(&nan), Some(nan[1]));
    }

    #[test]
    fn a_lone_session_stands_beside_narrow_instances_only() {
        assert!(wants_lone(l(2, 1, false), 2));
        assert!(!wants_lone(l(1, 2, false), 2));
        assert!(
            !wants_lone(l(1, 1, false), 2),
            "one session: it is the lone one"
        );
        assert!(
            !wants_lone(l(2, 2, false), 2),
            "already as wide as the cores"
        );
    }
}
