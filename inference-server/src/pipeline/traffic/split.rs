//! Which revision answers a recognition: a deterministic split, not a random one.
//!
//! Each decision adds the candidate's share to an accumulator and sends the request to the
//! candidate when it passes the whole (error diffusion — smooth weighted round-robin for
//! two backends). Of any `n` consecutive requests at a constant weight `w` %, the candidate
//! gets `⌊n·w/100⌋` or `⌈n·w/100⌉`: the split is exact at every scale, where a coin toss
//! is off by ±√n. Mirroring is decided the same way among the requests that go to stable.
//! The accumulators survive a weight change, so the new weight takes effect at once
//! without a burst.
//!
//! The price of determinism: a client whose requests alternate with the same period as
//! the split (at 50 %, a client that sends pairs) would see one kind always go to the
//! same revision. Requests from many clients through one front door interleave, which
//! breaks such patterns in practice.

use super::file::Share;

/// One error-diffusion sequence: [`Spreader::next`] is true for `share` of its calls.
#[derive(Debug, Default, Clone)]
pub struct Spreader {
    /// Below [`Share::WHOLE`] between calls.
    acc: u32,
}

impl Spreader {
    pub fn next(&mut self, share: Share) -> bool {
        // Both below or at 10 000: no overflow.
        self.acc += share.hundredths();
        if self.acc >= Share::WHOLE {
            self.acc -= Share::WHOLE;
            true
        } else {
            false
        }
    }
}

/// Where one recognition goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Candidate,
    /// Stable, and whether it is also sent to the candidate.
    Stable {
        mirror: bool,
    },
}

/// The split and the mirror decisions of one front door.
#[derive(Debug, Default)]
pub struct Splitter {
    split: Spreader,
    mirror: Spreader,
}

impl Splitter {
    /// The route of the next recognition: `weight` of them to the candidate, `mirror` of
    /// the rest mirrored to it.
    pub fn route(&mut self, weight: Share, mirror: Share) -> Route {
        if self.split.next(weight) {
            Route::Candidate
        } else {
            Route::Stable {
                mirror: self.mirror.next(mirror),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(splitter: &mut Splitter, n: usize, weight: f64, mirror: f64) -> (usize, usize) {
        let (weight, mirror) = (Share::from_percent(weight), Share::from_percent(mirror));
        let mut candidate = 0;
        let mut mirrored = 0;
        for _ in 0..n {
            match splitter.route(weight, mirror) {
                Route::Candidate => candidate += 1,
                Route::Stable { mirror: true } => mirrored += 1,
                Route::Stable { mirror: false } => {}
            }
        }
        (candidate, mirrored)
    }

    #[test]
    fn every_window_gets_its_share_to_one_request() {
        for weight in [0.0, 1.0, 3.0, 10.0, 20.0, 33.33, 50.0, 77.7, 99.0, 100.0] {
            let mut s = Spreader::default();
            let share = Share::from_percent(weight);
            let picks: Vec<bool> = (0..3000).map(|_| s.next(share)).collect();
            for n in [1, 7, 100, 333, 1000] {
                for start in (0..picks.len() - n).step_by(97) {
                    let got = picks[start..start + n].iter().filter(|p| **p).count() as f64;
                    let want = n as f64 * weight / 100.0;
                    assert!(
                        (got - want).abs() < 1.0 + 1e-9,
                        "weight {weight}: {got} of {n} from {start}, want {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_split_and_the_mirror_follow_their_weights() {
        let mut s = Splitter::default();
        let (candidate, mirrored) = count(&mut s, 2000, 20.0, 10.0);
        assert_eq!(candidate, 400);
        assert_eq!(mirrored, 160, "10 % of the 1600 stable requests");
        // A weight change takes effect at once, with no burst from the past.
        let (candidate, mirrored) = count(&mut s, 1000, 50.0, 0.0);
        assert!((499..=501).contains(&candidate), "{candidate}");
        assert_eq!(mirrored, 0);
        let (candidate, _) = count(&mut s, 500, 0.0, 100.0);
        assert_eq!(candidate, 0);
        let (candidate, _) = count(&mut s, 500, 100.0, 100.0);
        assert_eq!(candidate, 500);
        let (candidate, mirrored) = count(&mut s, 100, 0.0, 100.0);
        assert_eq!((candidate, mirrored), (0, 100));
    }
}
