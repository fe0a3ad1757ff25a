//! The figures a pod reports on `/metrics` (Prometheus text format), read without a
//! Prometheus: a recognize pod's recognitions, their 5xx and their latency histogram; a
//! front door's mirrored comparisons; any pod's process start time.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Counters a window is taken over: kept per pod, subtracted, summed.
pub trait Figures: Clone + Default + PartialEq {
    /// Adds another pod's (or window's) figures.
    fn add(&mut self, other: &Self);
    /// What was counted since `base`, an earlier reading of the same process.
    fn since(&self, base: &Self) -> Self;
    /// Whether some counter is lower than in `earlier`: the counters began again (a
    /// counter reset, as Prometheus' `rate()` reads it — the process restarted).
    fn reset_since(&self, earlier: &Self) -> bool;
}

/// What one revision served: recognition requests, those answered 5xx, and the latency
/// histogram (cumulative bucket counts by upper bound).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub requests: f64,
    pub errors: f64,
    /// Cumulative counts by upper bound, ascending; the last bound is `+Inf` (written as
    /// the largest finite number).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<Bucket>,
}

/// One histogram bucket: observations at most `le` seconds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
pub struct Bucket {
    pub le: f64,
    pub count: f64,
}

pub(crate) fn buckets(pairs: impl IntoIterator<Item = (f64, f64)>) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = pairs
        .into_iter()
        .map(|(le, count)| Bucket { le, count })
        .collect();
    out.sort_by(|a, b| a.le.total_cmp(&b.le));
    out
}

/// What the front doors saw of the mirrored traffic: answers that agreed on the top-1
/// label with the stable answer, and those that did not.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Mirrored {
    pub agree: f64,
    pub disagree: f64,
}

/// The recognize role's routes (templates, as its metrics name them) whose requests are
/// recognitions: what the checks count.
fn is_recognition(route: &str) -> bool {
    matches!(
        route,
        "/api/images/recognition"
            | "/api/v1/recognize"
            | "/v2/models/{name}/infer"
            | "/v2/models/{name}/versions/{version}/infer"
    )
}

/// One sample line: the metric name, its labels, its value.
pub(crate) fn sample_line(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let mut map = BTreeMap::new();
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"")?;
        map.insert(k.trim_matches(','), v.trim_end_matches('"'));
    }
    Some((name, map, value))
}

fn le_of(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::MAX),
        t => t.parse().ok(),
    }
}

/// The recognition figures in one pod's `/metrics`.
pub fn parse_counters(text: &str) -> Counters {
    let mut out = Counters::default();
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (name, labels, value) in text.lines().filter_map(sample_line) {
        let route = labels.get("route").copied().unwrap_or_default();
        if !is_recognition(route) {
            continue;
        }
        match name {
            "sightline_http_requests_total" => {
                out.requests += value;
                if labels.get("status_class") == Some(&"5xx") {
                    out.errors += value;
                }
            }
            "sightline_http_request_duration_seconds_bucket" => {
                if let Some(le) = labels.get("le").and_then(|l| le_of(l)) {
                    buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
                }
            }
            _ => {}
        }
    }
    out.buckets = self::buckets(buckets.into_values());
    out
}

/// A front door's mirroring counters for `model` in one pod's `/metrics`.
pub fn parse_mirrored(text: &str, model: &str) -> Mirrored {
    let mut out = Mirrored::default();
    for (name, labels, value) in text.lines().filter_map(sample_line) {
        if name == "sightline_frontdoor_mirrored_total" && labels.get("model") == Some(&model) {
            match labels.get("outcome").copied() {
                Some("agree") => out.agree += value,
                Some("disagree") => out.disagree += value,
                _ => {}
            }
        }
    }
    out
}

/// When the pod's process started (`process_start_time_seconds`, Unix seconds).
pub fn parse_started(text: &str) -> Option<f64> {
    text.lines()
        .filter_map(sample_line)
        .find(|(name, _, _)| *name == "process_start_time_seconds")
        .map(|(_, _, value)| value)
        .filter(|v| v.is_finite())
}

impl Figures for Counters {
    fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.errors += other.errors;
        let mut merged: BTreeMap<u64, (f64, f64)> = self
            .buckets
            .iter()
            .map(|b| (b.le.to_bits(), (b.le, b.count)))
            .collect();
        for b in &other.buckets {
            merged.entry(b.le.to_bits()).or_insert((b.le, 0.0)).1 += b.count;
        }
        self.buckets = buckets(merged.into_values());
    }

    fn since(&self, base: &Counters) -> Counters {
        Counters {
            requests: self.requests - base.requests,
            errors: self.errors - base.errors,
            buckets: buckets(
                self.buckets
                    .iter()
                    .map(|b| (b.le, b.count - base.count_at(b.le))),
            ),
        }
    }

    fn reset_since(&self, earlier: &Counters) -> bool {
        self.requests < earlier.requests
            || self.errors < earlier.errors
            || earlier
                .buckets
                .iter()
                .any(|b| self.count_at(b.le) < b.count)
    }
}

impl Counters {
    /// The cumulative count of bucket `le` (0 when the histogram has no such bucket yet).
    fn count_at(&self, le: f64) -> f64 {
        self.buckets
            .iter()
            .find(|b| b.le == le)
            .map_or(0.0, |b| b.count)
    }

    /// Observations in the histogram.
    pub fn observations(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.count)
    }

    /// The `q` quantile (0 < `q` ≤ 1) of the latency, interpolated within its bucket as
    /// `histogram_quantile` does; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.observations();
        if total <= 0.0 || q <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &Bucket { le, count } in &self.buckets {
            if count >= rank {
                if le == f64::MAX {
                    return Some(lower);
                }
                // `count >= rank > below`: the bucket holds the rank.
                let fraction = (rank - below) / (count - below);
                return Some(lower + (le - lower) * fraction);
            }
            lower = le;
            below = count;
        }
        Some(lower)
    }

    /// Observations certainly slower than `seconds`: those in buckets wholly above it
    /// (never more than there were).
    pub fn slower_than(&self, seconds: f64) -> f64 {
        let within = self
            .buckets
            .iter()
            .find(|b| b.le >= seconds)
            .map_or(0.0, |b| b.count);
        (self.observations() - within).max(0.0)
    }
}

impl Figures for Mirrored {
    fn add(&mut self, other: &Mirrored) {
        self.agree += other.agree;
        self.disagree += other.disagree;
    }

    fn since(&self, base: &Mirrored) -> Mirrored {
        Mirrored {
            agree: self.agree - base.agree,
            disagree: self.disagree - base.disagree,
        }
    }

    fn reset_since(&self, earlier: &Mirrored) -> bool {
        self.agree < earlier.agree || self.disagree < earlier.disagree
    }
}

impl Mirrored {
    pub fn compared(&self) -> f64 {
        self.agree + self.disagree
    }

    pub fn agreement(&self) -> Option<f64> {
        let n = self.compared();
        (n > 0.0).then(|| self.agree / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP sightline_http_requests HTTP requests
# TYPE sightline_http_requests counter
sightline_http_requests_total{route="/api/v1/recognize",method="POST",status_class="2xx"} 90
sightline_http_requests_total{route="/api/v1/recognize",method="POST",status_class="5xx"} 10
sightline_http_requests_total{route="/readyz",method="GET",status_class="2xx"} 500
sightline_http_requests_total{route="/v2/models/{name}",method="GET",status_class="2xx"} 40
sightline_http_requests_total{route="/v2/models/{name}/ready",method="GET",status_class="5xx"} 40
sightline_http_request_duration_seconds_bucket{route="/api/v1/recognize",method="POST",le="0.01"} 50
sightline_http_request_duration_seconds_bucket{route="/api/v1/recognize",method="POST",le="0.02"} 90
sightline_http_request_duration_seconds_bucket{route="/api/v1/recognize",method="POST",le="0.04"} 100
sightline_http_request_duration_seconds_bucket{route="/api/v1/recognize",method="POST",le="+Inf"} 100
sightline_http_request_duration_seconds_bucket{route="/readyz",method="GET",le="+Inf"} 500
sightline_frontdoor_mirrored_total{model="lite0",outcome="agree"} 95
sightline_frontdoor_mirrored_total{model="lite0",outcome="disagree"} 5
sightline_frontdoor_mirrored_total{model="lite0",outcome="timeout"} 7
sightline_frontdoor_mirrored_total{model="other",outcome="disagree"} 50
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds
process_start_time_seconds 1800000123.5
"#;

    #[test]
    fn recognition_figures_are_read_from_the_text_format() {
        let s = parse_counters(METRICS);
        assert_eq!(
            (s.requests, s.errors),
            (100.0, 10.0),
            "health checks not counted"
        );
        assert_eq!(s.buckets.len(), 4);
        assert_eq!(s.observations(), 100.0);
        // p50: rank 50 falls at the top of the first bucket.
        assert_eq!(s.quantile(0.5), Some(0.01));
        // p95: rank 95 is 5 of the 10 in (0.02, 0.04]: 0.02 + 0.02 × 0.5.
        assert!((s.quantile(0.95).expect("p95") - 0.03).abs() < 1e-12);
        // p20: rank 20 of the 50 in (0, 0.01]: 0.004.
        assert!((s.quantile(0.2).expect("p20") - 0.004).abs() < 1e-12);
        let m = parse_mirrored(METRICS, "lite0");
        assert_eq!(
            m.agreement(),
            Some(0.95),
            "timeouts and other models are not counted"
        );
        assert_eq!(m.compared(), 100.0);
        assert_eq!(parse_started(METRICS), Some(1_800_000_123.5));
        assert_eq!(parse_started("x 1\n"), None);
        assert_eq!(parse_counters("garbage\n{}\n"), Counters::default());
    }

    #[test]
    fn comments_and_blank_lines_are_not_samples() {
        assert_eq!(sample_line("# HELP x 1"), None);
        assert_eq!(sample_line("#x 1"), None);
        assert_eq!(sample_line("   "), None);
        assert_eq!(
            sample_line("x{a=\"b\"} +Inf").map(|s| s.2),
            Some(f64::INFINITY)
        );
        assert_eq!(sample_line("x{a=\"b\" 1"), None, "an unclosed label set");
        assert_eq!(sample_line("x{ab} 1"), None, "a label without a value");
        assert_eq!(sample_line("x one"), None);
        let (name, labels, value) = sample_line("  y{a=\"1\",b=\"2\"} 3 ").expect("a sample");
        assert_eq!((name, value), ("y", 3.0));
        assert_eq!(labels.get("a"), Some(&"1"));
        assert_eq!(labels.get("b"), Some(&"2"));
    }

    #[test]
    fn every_recognition_route_counts_and_nothing_else() {
        let line = |route: &str, class: &str| {
            format!(
                "sightline_http_requests_total{{route=\"{route}\",method=\"POST\",status_class=\"{class}\"}} 1\n"
            )
        };
        let text: String = [
            line("/api/images/recognition", "2xx"),
            line("/api/v1/recognize", "5xx"),
            line("/v2/models/{name}/infer", "2xx"),
            line("/v2/models/{name}/versions/{version}/infer", "5xx"),
            line("/v2/models/{name}/ready", "5xx"),
            line("/v2/repository/index", "2xx"),
            line("/api/v1/evaluations/startup", "5xx"),
            line("/api/v1/recognize/extra", "2xx"),
        ]
        .concat();
        let c = parse_counters(&text);
        assert_eq!((c.requests, c.errors), (4.0, 2.0), "{text}");
    }

    #[test]
    fn quantiles_at_the_edges() {
        assert_eq!(Counters::default().quantile(0.99), None);
        assert_eq!(parse_counters(METRICS).quantile(0.0), None);
        let all_slow = Counters {
            requests: 10.0,
            errors: 0.0,
            buckets: buckets([(0.01, 0.0), (f64::MAX, 10.0)]),
        };
        assert_eq!(all_slow.quantile(0.99), Some(0.01), "+Inf: the last bound");
        let empty_bucket = Counters {
            requests: 10.0,
            errors: 0.0,
            buckets: buckets([(0.01, 10.0), (0.02, 10.0), (f64::MAX, 10.0)]),
        };
        assert_eq!(empty_bucket.quantile(1.0), Some(0.01));
    }

    #[test]
    fn slower_than_counts_only_buckets_wholly_above() {
        let c = parse_counters(METRICS);
        // 0.02 is a bound: the 10 above 0.02 are slower.
        assert_eq!(c.slower_than(0.02), 10.0);
        // 0.015 falls inside (0.01, 0.02]: only what lies above 0.02 is certainly slower.
        assert_eq!(c.slower_than(0.015), 10.0);
        assert_eq!(c.slower_than(0.0), 50.0);
        assert_eq!(c.slower_than(1.0), 0.0, "nothing but +Inf above");
        assert_eq!(Counters::default().slower_than(0.1), 0.0);
    }

    #[test]
    fn deltas_sums_and_resets() {
        let base = Counters {
            requests: 100.0,
            errors: 10.0,
            buckets: buckets([(0.01, 50.0), (f64::MAX, 100.0)]),
        };
        let now = Counters {
            requests: 300.0,
            errors: 12.0,
            buckets: buckets([(0.01, 150.0), (0.02, 250.0), (f64::MAX, 300.0)]),
        };
        let w = now.since(&base);
        assert_eq!((w.requests, w.errors), (200.0, 2.0));
        assert_eq!(
            w.buckets,
            buckets([(0.01, 100.0), (0.02, 250.0), (f64::MAX, 200.0)])
        );
        assert!(!now.reset_since(&base));
        assert!(!now.reset_since(&now));
        let mut restarted = now.clone();
        restarted.requests = 20.0;
        assert!(restarted.reset_since(&base));
        let mut fewer_errors = now.clone();
        fewer_errors.errors = 1.0;
        assert!(fewer_errors.reset_since(&base));
        let mut fewer_fast = now.clone();
        fewer_fast.buckets = buckets([(0.01, 40.0), (f64::MAX, 300.0)]);
        assert!(fewer_fast.reset_since(&base), "a bucket went down");
        let mut sum = base.clone();
        sum.add(&now);
        assert_eq!((sum.requests, sum.errors), (400.0, 22.0));
        assert_eq!(
            sum.buckets,
            buckets([(0.01, 200.0), (0.02, 250.0), (f64::MAX, 400.0)])
        );

        let m = Mirrored {
            agree: 10.0,
            disagree: 2.0,
        };
        let later = Mirrored {
            agree: 15.0,
            disagree: 3.0,
        };
        assert_eq!(
            later.since(&m),
            Mirrored {
                agree: 5.0,
                disagree: 1.0
            }
        );
        assert!(!later.reset_since(&m));
        assert!(m.reset_since(&later));
        assert!(
            Mirrored {
                agree: 20.0,
                disagree: 0.0
            }
            .reset_since(&m)
        );
        let mut total = m.clone();
        total.add(&later);
        assert_eq!((total.agree, total.disagree), (25.0, 5.0));
        assert_eq!(Mirrored::default().agreement(), None);
    }
}
