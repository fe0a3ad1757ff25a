//! Drift without labels: has what the model answers moved away from what it answered when
//! it started serving?
//!
//! Every answer the model gives ([`crate::serving::ServingModel::classify`]) is counted
//! twice: by its top-1 class and by its top-1 confidence (in [`CONFIDENCE_BINS`] equal bins
//! of `[0, 1]`). The first `baseline_answers` answers after the model loaded are the
//! **baseline**; the answers of the last `window` are the **live window** (kept in
//! [`SLOTS`] time slots, so it slides in steps of `window / SLOTS`). The figure for each
//! signal is the Jensen–Shannon divergence between the two ([`sightline_quality::drift`]).
//!
//! The class signal compares the baseline's [`CLASS_BINS`] most frequent classes one by one
//! and every other class as one bin, `other`: a thousand sparsely filled bins would make
//! sampling noise look like drift (see [`sightline_quality::drift::noise_floor`]), and a
//! class the baseline rarely saw becoming frequent still shows, through `other`.
//!
//! No figure exists until the baseline is complete and the live window holds at least
//! `min_samples` answers: an unknown drift is absent, never 0.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sightline_quality::drift::jensen_shannon;

/// Classes the class signal compares one by one (the baseline's most frequent).
pub const CLASS_BINS: usize = 20;
/// Equal-width bins of the top-1 confidence.
pub const CONFIDENCE_BINS: usize = 10;
/// Time slots the live window is kept in.
pub const SLOTS: u32 = 60;

/// What to compare (`--drift-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriftConfig {
    /// Answers that make the baseline; 0 turns drift tracking off.
    pub baseline_answers: u64,
    /// Length of the live window.
    pub window: Duration,
    /// Fewest answers in the live window for a figure.
    pub min_samples: u64,
}

impl DriftConfig {
    pub fn enabled(&self) -> bool {
        self.baseline_answers > 0 && !self.window.is_zero()
    }
}

/// What the drift is now.
#[derive(Clone, Debug, PartialEq)]
pub struct DriftFigures {
    /// Answers in the baseline so far (complete at `baseline_answers`).
    pub baseline_samples: u64,
    /// Answers in the live window.
    pub live_samples: u64,
    /// Divergence of the top-1 classes; `None` while unknown.
    pub class: Option<f64>,
    /// Divergence of the top-1 confidences; `None` while unknown.
    pub confidence: Option<f64>,
}

/// Answers counted by class and by confidence bin.
#[derive(Clone, Debug, Default)]
struct Tally {
    answers: u64,
    classes: HashMap<usize, u64>,
    confidence: [u64; CONFIDENCE_BINS],
}

impl Tally {
    fn add(&mut self, class: usize, bin: usize) {
        self.answers += 1;
        *self.classes.entry(class).or_default() += 1;
        self.confidence[bin] += 1;
    }

    /// Removes `old`, a tally this one was summed from.
    fn remove(&mut self, old: &Tally) {
        self.answers -= old.answers;
        for (class, n) in &old.classes {
            if let Some(count) = self.classes.get_mut(class) {
                *count -= n;
                if *count == 0 {
                    self.classes.remove(class);
                }
            }
        }
        for (mine, theirs) in self.confidence.iter_mut().zip(old.confidence) {
            *mine -= theirs;
        }
    }

    /// Counts per class in `bins`, then everything else.
    fn class_histogram(&self, bins: &[usize]) -> Vec<u64> {
        let mut histogram: Vec<u64> = bins
            .iter()
            .map(|c| self.classes.get(c).copied().unwrap_or(0))
            .collect();
        let named: u64 = histogram.iter().sum();
        histogram.push(self.answers - named);
        histogram
    }

    /// The `n` most frequent classes, ties to the lower class index.
    fn most_frequent(&self, n: usize) -> Vec<usize> {
        let mut classes: Vec<(usize, u64)> = self.classes.iter().map(|(&c, &k)| (c, k)).collect();
        classes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        classes.into_iter().take(n).map(|(c, _)| c).collect()
    }
}

/// The confidence bin of a top-1 probability (anything outside `[0, 1]` is clamped).
pub fn confidence_bin(probability: f32) -> usize {
    if probability.is_nan() {
        return 0;
    }
    ((probability.clamp(0.0, 1.0) * CONFIDENCE_BINS as f32) as usize).min(CONFIDENCE_BINS - 1)
}

/// One model's baseline and live window. Pure: the caller says what time it is.
#[derive(Debug)]
pub struct Drift {
    config: DriftConfig,
    baseline: Tally,
    /// The baseline's most frequent classes, fixed when the baseline completes.
    bins: Option<Vec<usize>>,
    /// (start, answers) per time slot, oldest first.
    slots: VecDeque<(Instant, Tally)>,
    /// The sum of `slots`.
    live: Tally,
}

impl Drift {
    pub fn new(config: DriftConfig) -> Drift {
        Drift {
            config,
            baseline: Tally::default(),
            bins: None,
            slots: VecDeque::new(),
            live: Tally::default(),
        }
    }

    fn slot_width(&self) -> Duration {
        (self.config.window / SLOTS).max(Duration::from_millis(1))
    }

    /// Counts one answer: its top-1 class and that class's probability.
    pub fn record(&mut self, class: usize, probability: f32, now: Instant) {
        let bin = confidence_bin(probability);
        if self.bins.is_none() {
            self.baseline.add(class, bin);
            if self.baseline.answers >= self.config.baseline_answers {
                self.bins = Some(self.baseline.most_frequent(CLASS_BINS));
            }
        }
        self.evict(now);
        let width = self.slot_width();
        match self.slots.back_mut() {
            Some((start, tally)) if now.saturating_duration_since(*start) < width => {
                tally.add(class, bin)
            }
            _ => {
                let mut tally = Tally::default();
                tally.add(class, bin);
                self.slots.push_back((now, tally));
            }
        }
        self.live.add(class, bin);
    }

    /// Drops the slots that began a whole window ago.
    fn evict(&mut self, now: Instant) {
        while let Some((start, _)) = self.slots.front() {
            if now.saturating_duration_since(*start) < self.config.window {
                break;
            }
            if let Some((_, old)) = self.slots.pop_front() {
                self.live.remove(&old);
            }
        }
    }

    /// The figures at `now`.
    pub fn figures(&mut self, now: Instant) -> DriftFigures {
        self.evict(now);
        let known = self.live.answers >= self.config.min_samples.max(1);
        let (class, confidence) = match &self.bins {
            Some(bins) if known => (
                jensen_shannon(
                    &self.baseline.class_histogram(bins),
                    &self.live.class_histogram(bins),
                ),
                jensen_shannon(&self.baseline.confidence, &self.live.confidence),
            ),
            _ => (None, None),
        };
        DriftFigures {
            baseline_samples: self.baseline.answers,
            live_samples: self.live.answers,
            class,
            confidence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DriftConfig {
        DriftConfig {
            baseline_answers: 30,
            window: Duration::from_secs(60),
            min_samples: 10,
        }
    }

    /// Answers cycling through classes 0, 1, 2 at confidence 0.95.
    fn mixed(drift: &mut Drift, n: usize, at: Instant) {
        for i in 0..n {
            drift.record(i % 3, 0.95, at);
        }
    }

    #[test]
    fn there_is_no_figure_before_the_baseline_is_complete() {
        let t0 = Instant::now();
        let mut drift = Drift::new(config());
        mixed(&mut drift, 29, t0);
        let f = drift.figures(t0);
        assert_eq!((f.baseline_samples, f.live_samples), (29, 29));
        assert_eq!((f.class, f.confidence), (None, None));
        mixed(&mut drift, 1, t0);
        let f = drift.figures(t0);
        assert_eq!(f.class, Some(0.0));
        assert_eq!(f.confidence, Some(0.0));
    }

    #[test]
    fn traffic_like_the_baseline_stays_near_zero_and_one_class_drifts() {
        let t0 = Instant::now();
        let mut drift = Drift::new(config());
        mixed(&mut drift, 30, t0);
        // A whole window later, the same mix: the baseline's own answers are gone.
        let t1 = t0 + Duration::from_secs(61);
        mixed(&mut drift, 30, t1);
        let f = drift.figures(t1);
        assert_eq!(f.live_samples, 30);
        assert_eq!(f.class, Some(0.0));
        // Another window later, only class 2.
        let t2 = t1 + Duration::from_secs(61);
        for _ in 0..30 {
            drift.record(2, 0.95, t2);
        }
        let f = drift.figures(t2);
        // JS((⅓, ⅓, ⅓, 0), (0, 0, 1, 0)) = 0.459…
        assert!(f.class.expect("known") > 0.45, "{f:?}");
        assert_eq!(f.confidence, Some(0.0), "same confidence, other classes");
        assert_eq!(f.baseline_samples, 30, "the baseline does not move");
    }

    #[test]
    fn unsure_answers_move_the_confidence_signal() {
        let t0 = Instant::now();
        let mut drift = Drift::new(config());
        mixed(&mut drift, 30, t0);
        let t1 = t0 + Duration::from_secs(61);
        for i in 0..30 {
            drift.record(i % 3, 0.34, t1);
        }
        let f = drift.figures(t1);
        assert_eq!(f.class, Some(0.0));
        assert!((f.confidence.expect("known") - 1.0).abs() < 1e-12, "{f:?}");
    }

    #[test]
    fn the_figure_disappears_when_the_window_empties() {
        let t0 = Instant::now();
        let mut drift = Drift::new(config());
        mixed(&mut drift, 30, t0);
        assert!(drift.figures(t0).class.is_some());
        let f = drift.figures(t0 + Duration::from_secs(60));
        assert_eq!(f.live_samples, 0);
        assert_eq!(f.class, None);
        // Too few answers in the new window: still unknown.
        mixed(&mut drift, 9, t0 + Duration::from_secs(61));
        assert_eq!(drift.figures(t0 + Duration::from_secs(61)).class, None);
    }

    #[test]
    fn the_window_slides_slot_by_slot() {
        let t0 = Instant::now();
        let mut drift = Drift::new(config());
        // One answer a second for two minutes: the live window keeps about the last 60.
        for s in 0..120 {
            drift.record(0, 0.9, t0 + Duration::from_secs(s));
        }
        let live = drift.figures(t0 + Duration::from_secs(119)).live_samples;
        assert!((59..=61).contains(&live), "{live}");
    }

    #[test]
    fn classes_outside_the_baselines_most_frequent_share_one_bin() {
        let t0 = Instant::now();
        let mut drift = Drift::new(DriftConfig {
            baseline_answers: (CLASS_BINS + 10) as u64,
            ..config()
        });
        // Baseline: classes 0..30 once each; the first CLASS_BINS by index are named.
        for c in 0..CLASS_BINS + 10 {
            drift.record(c, 0.9, t0);
        }
        let t1 = t0 + Duration::from_secs(61);
        // Live: the same number of answers, but all in classes the baseline never saw.
        for c in 100..100 + CLASS_BINS + 10 {
            drift.record(c, 0.9, t1);
        }
        let class = drift.figures(t1).class.expect("known");
        // ½·Σ over the named bins (1/60 each) + the `other` bin: 0.459…
        assert!(class > 0.45, "{class}");
    }

    #[test]
    fn confidence_bins_cover_zero_to_one() {
        assert_eq!(confidence_bin(0.0), 0);
        assert_eq!(confidence_bin(0.099), 0);
        assert_eq!(confidence_bin(0.1), 1);
        assert_eq!(confidence_bin(0.95), 9);
        assert_eq!(confidence_bin(1.0), 9);
        assert_eq!(confidence_bin(1.5), 9);
        assert_eq!(confidence_bin(f32::NAN), 0);
    }
}
