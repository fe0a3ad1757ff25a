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

/// Request and call latency: 0.5 ms … ~16 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The `model` label alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}
