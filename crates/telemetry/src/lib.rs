//! What `/metrics` looks like in every Sightline process (the server's roles and the
//! operator): the conventional `process_*` families and content negotiation
//! ([`exposition`]), and the histogram shapes and label sets the crates' own families share.
//!
//! May use: `std` and `prometheus_client` only.

pub mod exposition;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// A family of histograms built by a plain constructor.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A gauge holding a float.
pub type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Call latency (store and outbound calls): 0.5 ms … ~16 s, a factor of 2 apart.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The bounds of [`request_latency_histogram`]: 0.5 ms … ~23 s, a factor of √2 apart. The
/// even steps are 0.5 ms × a power of two, as in [`latency_histogram`] (so `1.024`, the SLO
/// rules' bound, is one of them); the odd steps are rounded to three significant digits so
/// that `le` reads as a plain number.
pub fn request_latency_bounds() -> Vec<f64> {
    (0..32)
        .map(|k: i32| {
            let exact = 0.0005 * 2f64.powi(k / 2);
            if k % 2 == 0 {
                exact
            } else {
                three_digits(exact * std::f64::consts::SQRT_2)
            }
        })
        .collect()
}

/// HTTP request latency: [`request_latency_bounds`]. Finer than [`latency_histogram`]
/// because the canary compares two revisions' p99s interpolated within a bucket
/// (docs/rollouts.md): at a factor of 2, two equal revisions could read 1.7 × apart.
pub fn request_latency_histogram() -> Histogram {
    Histogram::new(request_latency_bounds())
}

fn three_digits(x: f64) -> f64 {
    format!("{x:.2e}").parse().unwrap_or(x)
}

/// The `model` label alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bounds_are_sqrt2_apart_and_keep_the_slo_bound() {
        let b = request_latency_bounds();
        assert_eq!(b.len(), 32);
        assert_eq!(b[0], 0.0005);
        assert_eq!(b[1], 0.000707);
        assert!(b.contains(&1.024), "the SLO rules read le=\"1.024\"");
        for pair in b.windows(2) {
            let step = pair[1] / pair[0];
            assert!((step - std::f64::consts::SQRT_2).abs() < 0.01, "{pair:?}");
        }
        // Every bound prints as a short number in `le`.
        assert!(b.iter().all(|x| x.to_string().len() <= 12), "{b:?}");
    }
}
