//! The sample rule's arithmetic: the upper tail of a binomial distribution, exact (summed
//! from its terms), for "is this many failures out of that many trials too many for a
//! failure rate of `p`?" (docs/rollouts.md, "The sample rule").

/// The significance level of the sample rule: a check fails only on a window that a
/// candidate exactly at its threshold would show less often than this.
pub const ALPHA: f64 = 0.001;

/// `ln Γ(x)` for `x ≥ 1` (Lanczos, g = 7, nine terms: about 15 significant digits).
pub fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let t = x + 7.5;
    let series = COEFFICIENTS[1..]
        .iter()
        .enumerate()
        .fold(COEFFICIENTS[0], |sum, (i, c)| {
            sum + c / (x + i as f64 + 1.0)
        });
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// `P(X ≥ k)` for `X ~ Binomial(n, p)`: the terms from `k` up when `k` lies above the mean,
/// one minus those from `k − 1` down otherwise — either way summed from the term nearest
/// the mode outwards, where they only shrink (and a first term too small for an `f64` means
/// the rest are too).
pub fn upper_tail(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let tail = if k as f64 > n as f64 * p {
        outward(n, p, k, Outward::Up)
    } else {
        1.0 - outward(n, p, k - 1, Outward::Down)
    };
    tail.clamp(0.0, 1.0)
}

#[derive(Clone, Copy, PartialEq)]
enum Outward {
    /// `P(X = from) + P(X = from + 1) + … + P(X = n)`.
    Up,
    /// `P(X = from) + P(X = from − 1) + … + P(X = 0)`.
    Down,
}

/// The binomial terms from `from` away from the mode, summed until they no longer count.
fn outward(n: u64, p: f64, from: u64, way: Outward) -> f64 {
    let (nf, j) = (n as f64, from as f64);
    let ln_term = ln_gamma(nf + 1.0) - ln_gamma(j + 1.0) - ln_gamma(nf - j + 1.0)
        + j * p.ln()
        + (nf - j) * (1.0 - p).ln();
    let odds = p / (1.0 - p);
    let mut term = ln_term.exp();
    let mut sum = term;
    let mut i = from;
    loop {
        match way {
            // P(X = i + 1) from P(X = i).
            Outward::Up if i < n => {
                term *= (n - i) as f64 / (i + 1) as f64 * odds;
                i += 1;
            }
            // P(X = i − 1) from P(X = i).
            Outward::Down if i > 0 => {
                term *= i as f64 / (n - i + 1) as f64 / odds;
                i -= 1;
            }
            _ => return sum,
        }
        sum += term;
        if term < sum * 1e-17 {
            return sum;
        }
    }
}

/// Whether `k` failures in `n` trials are too many for a failure rate of `p`: that many
/// or more would happen less often than [`ALPHA`].
pub fn too_many(k: u64, n: u64, p: f64) -> bool {
    upper_tail(k, n, p) < ALPHA
}

/// A counter value as a count (counters are whole numbers; a negative or non-finite one
/// counts as none).
pub fn count(value: f64) -> u64 {
    if value.is_finite() {
        // `as` saturates: a negative value is 0.
        value.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1e-300)
    }

    #[test]
    fn ln_gamma_of_whole_and_half_numbers() {
        assert!(ln_gamma(1.0).abs() < 1e-12);
        assert!(ln_gamma(2.0).abs() < 1e-12);
        assert!(close(ln_gamma(5.0), 24f64.ln()));
        assert!(close(ln_gamma(11.0), 3_628_800f64.ln()));
        // Γ(1.5) = √π / 2.
        assert!(close(
            ln_gamma(1.5),
            (std::f64::consts::PI.sqrt() / 2.0).ln()
        ));
        // Large: ln(170!) against the sum of logs.
        let sum: f64 = (2..=170).map(|i| (i as f64).ln()).sum();
        assert!(close(ln_gamma(171.0), sum));
    }

    #[test]
    fn binomial_tails_by_hand() {
        // One failure or more in 100 trials at 1 %: 1 − 0.99¹⁰⁰.
        assert!(close(upper_tail(1, 100, 0.01), 1.0 - 0.99f64.powi(100)));
        // Two of two at 1 %.
        assert!(close(upper_tail(2, 2, 0.01), 1e-4));
        // Three or more of ten fair coins: 1 − (1 + 10 + 45) / 1024.
        assert!(close(upper_tail(3, 10, 0.5), 968.0 / 1024.0));
        // Eight or more of ten: (45 + 10 + 1) / 1024.
        assert!(close(upper_tail(8, 10, 0.5), 56.0 / 1024.0));
        assert_eq!(upper_tail(0, 10, 0.3), 1.0);
        assert_eq!(upper_tail(11, 10, 0.3), 0.0);
        assert_eq!(upper_tail(12, 10, 0.3), 0.0, "more failures than trials");
        assert_eq!(upper_tail(1, 10, 0.0), 0.0);
        assert_eq!(upper_tail(10, 10, 1.0), 1.0);
        // Far in the tail of a large sample: tiny, not NaN.
        let tiny = upper_tail(5_000, 100_000, 0.01);
        assert!((0.0..1e-100).contains(&tiny), "{tiny}");
        // Just above the mean of a large sample: near one half, not zero.
        let middle = upper_tail(10_001, 1_000_000, 0.01);
        assert!((0.4..0.6).contains(&middle), "{middle}");
        // Far below the mean of a large sample: one (its first terms are too small for an
        // f64, which summing from them upwards would read as zero).
        assert_eq!(upper_tail(100, 1_000_000, 0.5), 1.0);
        // Just below the mean: a little above one half.
        let below = upper_tail(499_990, 1_000_000, 0.5);
        assert!((0.5..0.6).contains(&below), "{below}");
        // Five or more of ten fair coins: 1 − (1 + 10 + 45 + 120 + 210) / 1024.
        assert!(close(upper_tail(5, 10, 0.5), 638.0 / 1024.0));
        // Two or more of twenty at 10 %: 1 − 0.9²⁰ − 20 × 0.1 × 0.9¹⁹.
        let two = 1.0 - 0.9f64.powi(20) - 20.0 * 0.1 * 0.9f64.powi(19);
        assert!(close(upper_tail(2, 20, 0.1), two));
        // Eighteen or more of twenty at 90 %: the same, mirrored.
        assert!(close(upper_tail(18, 20, 0.9), 1.0 - upper_tail(3, 20, 0.1)));
    }

    #[test]
    fn too_many_needs_evidence() {
        // One 5xx among the first 100 at 1 % is not evidence; two of two are.
        assert!(!too_many(1, 100, 0.01));
        assert!(too_many(2, 2, 0.01));
        // One of one: a candidate at 1 % shows that 1 % of the time — not rare enough.
        assert!(!too_many(1, 1, 0.01));
        // At the rate exactly, never.
        assert!(!too_many(10, 1000, 0.01));
        // 3 % of 1000 at 1 %: far beyond chance.
        assert!(too_many(30, 1000, 0.01));
        // Zero tolerance: any failure is too many.
        assert!(too_many(1, 1000, 0.0));
        assert!(!too_many(0, 1000, 0.0));
    }

    #[test]
    fn counts_from_counter_values() {
        assert_eq!(count(3.0), 3);
        assert_eq!(count(2.6), 3);
        assert_eq!(count(-1.0), 0);
        assert_eq!(count(0.4), 0);
        assert_eq!(count(f64::NAN), 0);
        assert_eq!(count(f64::INFINITY), 0);
    }
}
