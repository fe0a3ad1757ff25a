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

/// `P(X ≥ k)` for `X ~ Binomial(n, p)`.
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
    let (nf, kf) = (n as f64, k as f64);
    let ln_first = ln_gamma(nf + 1.0) - ln_gamma(kf + 1.0) - ln_gamma(nf - kf + 1.0)
        + kf * p.ln()
        + (nf - kf) * (1.0 - p).ln();
    let odds = p / (1.0 - p);
    let mut term = ln_first.exp();
    let mut sum = term;
    let mut i = k;
    while i < n {
        // P(X = i + 1) from P(X = i).
        term *= (n - i) as f64 / (i + 1) as f64 * odds;
        sum += term;
        i += 1;
        // Past the mode the terms only shrink: stop once they no longer count.
        if i as f64 > nf * p && term <= sum * 1e-17 {
            break;
        }
    }
    sum.min(1.0)
}

/// Whether `k` failures in `n` trials are too many for a failure rate of `p`: more than
/// `n·p`, and at least that many would happen less often than [`ALPHA`].
pub fn too_many(k: u64, n: u64, p: f64) -> bool {
    k as f64 > n as f64 * p && upper_tail(k, n, p) < ALPHA
}

/// A counter value as a count (counters are whole numbers; a negative or non-finite one
/// counts as none).
pub fn count(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
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
        assert_eq!(upper_tail(1, 10, 0.0), 0.0);
        assert_eq!(upper_tail(10, 10, 1.0), 1.0);
        // Far in the tail of a large sample: tiny, not NaN.
        let tiny = upper_tail(5_000, 100_000, 0.01);
        assert!((0.0..1e-100).contains(&tiny), "{tiny}");
        // Just above the mean of a large sample: near one half, not zero.
        let middle = upper_tail(10_001, 1_000_000, 0.01);
        assert!((0.4..0.6).contains(&middle), "{middle}");
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
        assert_eq!(count(f64::NAN), 0);
        assert_eq!(count(f64::INFINITY), 0);
    }
}
