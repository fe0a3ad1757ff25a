//! How far one distribution of answers has moved from another: the Jensen–Shannon
//! divergence, in bits.
//!
//! For two distributions P and Q over the same bins, with M = (P + Q) / 2,
//!
//! ```text
//! JS(P, Q) = ½ KL(P ‖ M) + ½ KL(Q ‖ M),   KL(P ‖ M) = Σ p·log₂(p / m)
//! ```
//!
//! It is symmetric, 0 for equal distributions and 1 for distributions with no bin in
//! common, and — unlike the Population Stability Index — finite when a bin is empty on one
//! side (a class the baseline never saw), so no smoothing constant decides the figure.
//!
//! Counts from samples are never exactly equal even when the traffic has not changed: with
//! `b` bins and `n`, `m` answers on the two sides, sampling noise alone gives about
//! [`noise_floor`] (the χ² approximation of the divergence). Keep `b` small and read the
//! sample sizes beside the figure.

/// The Jensen–Shannon divergence (base 2, in `[0, 1]`) between two histograms over the same
/// bins, given as counts. `None` when either side has no answers or the lengths differ.
pub fn jensen_shannon(a: &[u64], b: &[u64]) -> Option<f64> {
    let (total_a, total_b) = (sum(a), sum(b));
    if a.len() != b.len() || total_a == 0 || total_b == 0 {
        return None;
    }
    let mut divergence = 0.0;
    for (&count_a, &count_b) in a.iter().zip(b) {
        let p = count_a as f64 / total_a as f64;
        let q = count_b as f64 / total_b as f64;
        let m = (p + q) / 2.0;
        divergence += half_kl(p, m) + half_kl(q, m);
    }
    // Rounding can leave a hair outside [0, 1].
    Some(divergence.clamp(0.0, 1.0))
}

/// ½·p·log₂(p / m), with 0·log 0 = 0.
fn half_kl(p: f64, m: f64) -> f64 {
    if p == 0.0 {
        0.0
    } else {
        0.5 * p * (p / m).log2()
    }
}

fn sum(counts: &[u64]) -> u64 {
    counts.iter().sum()
}

/// The divergence two samples of one unchanged distribution show on average: about
/// `(bins − 1)·(1/n + 1/m) / (8·ln 2)` for `n` and `m` answers over `bins` bins.
pub fn noise_floor(bins: usize, n: u64, m: u64) -> f64 {
    if n == 0 || m == 0 || bins < 2 {
        return 0.0;
    }
    (bins - 1) as f64 * (1.0 / n as f64 + 1.0 / m as f64) / (8.0 * std::f64::consts::LN_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_distributions_have_no_divergence_whatever_the_counts() {
        assert_eq!(jensen_shannon(&[10, 20, 30], &[1, 2, 3]), Some(0.0));
    }

    #[test]
    fn disjoint_distributions_are_one_bit_apart() {
        let d = jensen_shannon(&[5, 0, 0], &[0, 3, 7]).expect("defined");
        assert!((d - 1.0).abs() < 1e-12, "{d}");
    }

    #[test]
    fn it_is_symmetric_and_matches_a_hand_computed_value() {
        // P = (½, ½), Q = (1, 0): M = (¾, ¼).
        // ½·[½·log₂(⅔) + ½·log₂(2)] + ½·[1·log₂(4/3)] = 0.311278…
        let expected = 0.5 * (0.5 * (2.0f64 / 3.0).log2() + 0.5) + 0.5 * (4.0f64 / 3.0).log2();
        let d = jensen_shannon(&[1, 1], &[4, 0]).expect("defined");
        assert!((d - expected).abs() < 1e-12, "{d} vs {expected}");
        assert_eq!(jensen_shannon(&[4, 0], &[1, 1]), Some(d));
    }

    #[test]
    fn an_empty_side_or_mismatched_bins_has_no_figure() {
        assert_eq!(jensen_shannon(&[0, 0], &[1, 2]), None);
        assert_eq!(jensen_shannon(&[1, 2], &[]), None);
        assert_eq!(jensen_shannon(&[1, 2], &[1, 2, 3]), None);
    }

    #[test]
    fn the_noise_floor_is_what_resampling_one_distribution_gives() {
        // Deterministic resampling of a 21-bin distribution: 1000 vs 200 answers, many
        // times; the mean divergence lands near the χ² estimate.
        let weights: Vec<f64> = (1..=21).map(|i| 1.0 / i as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut draw = |n: usize| {
            let mut counts = vec![0u64; weights.len()];
            for _ in 0..n {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut u = (state >> 11) as f64 / (1u64 << 53) as f64 * total;
                let bin = weights
                    .iter()
                    .position(|w| {
                        u -= w;
                        u < 0.0
                    })
                    .unwrap_or(weights.len() - 1);
                counts[bin] += 1;
            }
            counts
        };
        let runs = 200;
        let mean = (0..runs)
            .map(|_| jensen_shannon(&draw(1000), &draw(200)).expect("defined"))
            .sum::<f64>()
            / runs as f64;
        let floor = noise_floor(21, 1000, 200);
        assert!(
            (floor * 0.6..floor * 1.4).contains(&mean),
            "mean {mean} vs floor {floor}"
        );
    }
}
