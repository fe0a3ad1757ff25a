//! Canary analysis, pure: the figures a revision's pods report on `/metrics` (read by the
//! reconciler through `pods/proxy`), the checks over one step's window (counter deltas and
//! histogram buckets, as Prometheus would compute them, with no Prometheus), and the step
//! machine that promotes, holds or rolls back.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What one revision served, summed over its pods: recognition requests, those answered
/// 5xx, and the latency histogram (cumulative bucket counts by upper bound).
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

fn buckets(pairs: impl IntoIterator<Item = (f64, f64)>) -> Vec<Bucket> {
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

/// Routes whose requests are recognitions (what the checks count).
fn is_recognition(route: &str) -> bool {
    route.starts_with("/api/images/recognition")
        || route.starts_with("/api/v1/recognize")
        || route.starts_with("/api/v1/images/")
        || (route.starts_with("/v2/models/") && route.ends_with("/infer"))
}

/// One sample line: the metric name, its labels, its value.
fn sample_line(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
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

/// The recognition figures in one pod's `/metrics` (Prometheus text format).
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

/// `now - base`; a counter that went down (a pod restarted or left) counts from zero.
fn delta(now: f64, base: f64) -> f64 {
    if now >= base { now - base } else { now }
}

impl Counters {
    /// Sums pods' figures.
    pub fn add(&mut self, other: &Counters) {
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

    /// What was served since `base`.
    pub fn since(&self, base: &Counters) -> Counters {
        let find = |le: f64| {
            base.buckets
                .iter()
                .find(|b| b.le == le)
                .map_or(0.0, |b| b.count)
        };
        Counters {
            requests: delta(self.requests, base.requests),
            errors: delta(self.errors, base.errors),
            buckets: buckets(
                self.buckets
                    .iter()
                    .map(|b| (b.le, delta(b.count, find(b.le)))),
            ),
        }
    }

    /// The `q` quantile of the latency, interpolated within its bucket as
    /// `histogram_quantile` does; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.count;
        if total <= 0.0 {
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
                let within = count - below;
                let fraction = if within > 0.0 {
                    (rank - below) / within
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * fraction);
            }
            lower = le;
            below = count;
        }
        Some(lower)
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.errors / self.requests)
    }
}

impl Mirrored {
    pub fn add(&mut self, other: &Mirrored) {
        self.agree += other.agree;
        self.disagree += other.disagree;
    }

    pub fn since(&self, base: &Mirrored) -> Mirrored {
        Mirrored {
            agree: delta(self.agree, base.agree),
            disagree: delta(self.disagree, base.disagree),
        }
    }

    pub fn agreement(&self) -> Option<f64> {
        let n = self.agree + self.disagree;
        (n > 0.0).then(|| self.agree / n)
    }
}

/// The thresholds of `spec.rollout.analysis`.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub max_top1_drop: f64,
    pub min_agreement: f64,
    pub max_error_rate: f64,
    pub max_p99_latency_ratio: f64,
}

/// One check's verdict over a window.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// `errorRate`, `p99LatencyRatio`, `agreement`, `top1Drop`.
    pub name: String,
    /// `Passed`, `Failed`, or `Pending` (not enough data yet).
    pub status: String,
    /// What was measured (absent while pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<f64>,
    pub threshold: f64,
}

impl Check {
    fn of(name: &str, measured: Option<f64>, threshold: f64, ok: impl Fn(f64) -> bool) -> Check {
        Check {
            name: name.into(),
            status: match measured {
                None => "Pending",
                Some(m) if ok(m) => "Passed",
                Some(_) => "Failed",
            }
            .into(),
            measured,
            threshold,
        }
    }

    pub fn failed(&self) -> bool {
        self.status == "Failed"
    }

    pub fn passed(&self) -> bool {
        self.status == "Passed"
    }

    /// `name measured (threshold)` for a message.
    pub fn describe(&self) -> String {
        let measured = self
            .measured
            .map_or_else(|| "no data".to_string(), |m| format!("{m:.4}"));
        let bound = match self.name.as_str() {
            "agreement" => format!("at least {:.4}", self.threshold),
            _ => format!("at most {:.4}", self.threshold),
        };
        format!("{} {measured} ({bound})", self.name)
    }
}

/// What one step's window measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Window {
    pub stable: Counters,
    pub candidate: Counters,
    pub mirrored: Mirrored,
    /// Top-1 accuracy on the labelled set: the stable revision's recorded result and the
    /// candidate's start-up evaluation (when the model has `spec.evaluation`).
    pub stable_top1: Option<f64>,
    pub candidate_top1: Option<f64>,
}

/// Every check over `w`.
pub fn checks(t: &Thresholds, w: &Window, mirroring: bool, evaluating: bool) -> Vec<Check> {
    let p99 = match (w.candidate.quantile(0.99), w.stable.quantile(0.99)) {
        (Some(c), Some(s)) if s > 0.0 => Some(c / s),
        _ => None,
    };
    let mut out = vec![
        Check::of(
            "errorRate",
            w.candidate.error_rate(),
            t.max_error_rate,
            |m| m <= t.max_error_rate,
        ),
        Check::of("p99LatencyRatio", p99, t.max_p99_latency_ratio, |m| {
            m <= t.max_p99_latency_ratio
        }),
    ];
    if mirroring {
        out.push(Check::of(
            "agreement",
            w.mirrored.agreement(),
            t.min_agreement,
            |m| m >= t.min_agreement,
        ));
    }
    if evaluating {
        let drop = match (w.stable_top1, w.candidate_top1) {
            (Some(s), Some(c)) => Some(s - c),
            _ => None,
        };
        out.push(Check::of("top1Drop", drop, t.max_top1_drop, |m| {
            m <= t.max_top1_drop
        }));
    }
    out
}

/// What the step machine decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep the current step (its window is still open, or paused).
    Hold,
    /// Move to step `n` (an index into `steps`), opening a new window.
    Advance(usize),
    /// Every step passed: make the candidate the stable revision.
    Promote,
    /// Stop at once: traffic back to stable, candidate removed; the message says why.
    RollBack(String),
}

/// Where a canary is, as the step machine reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub step: usize,
    /// Seconds since this step's window opened.
    pub elapsed: u64,
    pub paused: bool,
}

/// The step machine: roll back at the first failed check; advance (or promote after the
/// last step) once the window lasted `step_seconds`, saw `min_requests` candidate requests
/// and every check passed; otherwise hold.
pub fn decide(
    steps: &[u32],
    step_seconds: u64,
    min_requests: u64,
    position: &Position,
    checks: &[Check],
    candidate_requests: f64,
) -> Decision {
    if let Some(failed) = checks.iter().find(|c| c.failed()) {
        return Decision::RollBack(format!("check failed: {}", failed.describe()));
    }
    if position.paused {
        return Decision::Hold;
    }
    let window_done = position.elapsed >= step_seconds && candidate_requests >= min_requests as f64;
    if !window_done || !checks.iter().all(Check::passed) {
        return Decision::Hold;
    }
    if position.step + 1 >= steps.len() {
        Decision::Promote
    } else {
        Decision::Advance(position.step + 1)
    }
}

/// `5m`, `30s`, `1h`, `90` (seconds) as seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP sightline_http_requests HTTP requests
# TYPE sightline_http_requests counter
sightline_http_requests_total{route="/api/v1/recognize",method="POST",status_class="2xx"} 90
sightline_http_requests_total{route="/api/v1/recognize",method="POST",status_class="5xx"} 10
sightline_http_requests_total{route="/readyz",method="GET",status_class="2xx"} 500
sightline_http_request_duration_seconds_bucket{route="/api/v1/recognize",method="POST",le="0.01"} 50
sightline_http_request_duration_seconds_bucket{route="/api/v1/recognize",method="POST",le="0.02"} 90
sightline_http_request_duration_seconds_bucket{route="/api/v1/recognize",method="POST",le="0.04"} 100
sightline_http_request_duration_seconds_bucket{route="/api/v1/recognize",method="POST",le="+Inf"} 100
sightline_http_request_duration_seconds_bucket{route="/readyz",method="GET",le="+Inf"} 500
sightline_frontdoor_mirrored_total{model="lite0",outcome="agree"} 95
sightline_frontdoor_mirrored_total{model="lite0",outcome="disagree"} 5
sightline_frontdoor_mirrored_total{model="lite0",outcome="timeout"} 7
sightline_frontdoor_mirrored_total{model="other",outcome="disagree"} 50
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
        assert_eq!(s.error_rate(), Some(0.1));
        // p50: rank 50 falls at the top of the first bucket.
        assert_eq!(s.quantile(0.5), Some(0.01));
        // p95: rank 95 is 5 of the 10 in (0.02, 0.04]: 0.02 + 0.02 × 0.5.
        assert!((s.quantile(0.95).expect("p95") - 0.03).abs() < 1e-12);
        let m = parse_mirrored(METRICS, "lite0");
        assert_eq!(
            m.agreement(),
            Some(0.95),
            "timeouts and other models are not counted"
        );
    }

    #[test]
    fn windows_are_counter_deltas_and_survive_a_restart() {
        let base = Counters {
            requests: 100.0,
            errors: 10.0,
            buckets: buckets([(0.01, 50.0), (f64::MAX, 100.0)]),
        };
        let now = Counters {
            requests: 300.0,
            errors: 12.0,
            buckets: buckets([(0.01, 150.0), (f64::MAX, 300.0)]),
        };
        let w = now.since(&base);
        assert_eq!((w.requests, w.errors), (200.0, 2.0));
        assert_eq!(w.error_rate(), Some(0.01));
        assert_eq!(w.buckets, buckets([(0.01, 100.0), (f64::MAX, 200.0)]));
        // A pod restarted: its counters began again from zero.
        let restarted = Counters {
            requests: 20.0,
            errors: 0.0,
            buckets: vec![],
        };
        assert_eq!(restarted.since(&base).requests, 20.0);
    }

    fn thresholds() -> Thresholds {
        Thresholds {
            max_top1_drop: 0.01,
            min_agreement: 0.95,
            max_error_rate: 0.01,
            max_p99_latency_ratio: 1.5,
        }
    }

    fn served(requests: f64, errors: f64, fast: f64) -> Counters {
        // `fast` of the requests took ≤ 10 ms, the rest ≤ 100 ms.
        Counters {
            requests,
            errors,
            buckets: buckets([(0.01, fast), (0.1, requests), (f64::MAX, requests)]),
        }
    }

    #[test]
    fn each_check_on_a_hand_computed_window() {
        let good = Window {
            stable: served(1000.0, 0.0, 995.0),
            candidate: served(200.0, 1.0, 199.0),
            mirrored: Mirrored {
                agree: 97.0,
                disagree: 3.0,
            },
            stable_top1: Some(0.80),
            candidate_top1: Some(0.795),
        };
        let all = checks(&thresholds(), &good, true, true);
        assert!(all.iter().all(Check::passed), "{all:#?}");
        // Slow: the candidate's p99 sits in the 100 ms bucket, the stable's in 10 ms.
        let slow = Window {
            candidate: served(200.0, 0.0, 100.0),
            ..good.clone()
        };
        let p99 = checks(&thresholds(), &slow, true, true);
        let latency = p99
            .iter()
            .find(|c| c.name == "p99LatencyRatio")
            .expect("p99");
        assert!(latency.failed(), "{latency:?}");
        // Disagreeing: a random-weights model.
        let random = Window {
            mirrored: Mirrored {
                agree: 1.0,
                disagree: 99.0,
            },
            ..good.clone()
        };
        let agreement = checks(&thresholds(), &random, true, true);
        assert!(
            agreement
                .iter()
                .any(|c| c.name == "agreement" && c.failed())
        );
        // Erroring, and worse on the labelled set.
        let bad = Window {
            candidate: served(200.0, 20.0, 199.0),
            candidate_top1: Some(0.70),
            ..good.clone()
        };
        let failed: Vec<String> = checks(&thresholds(), &bad, true, true)
            .into_iter()
            .filter(Check::failed)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, vec!["errorRate", "top1Drop"]);
        // No traffic yet: pending, not failed.
        let empty = Window::default();
        assert!(
            checks(&thresholds(), &empty, true, true)
                .iter()
                .all(|c| c.status == "Pending")
        );
    }

    #[test]
    fn the_step_machine_holds_advances_promotes_and_rolls_back() {
        let steps = [10, 50, 100];
        let passed = vec![Check::of("errorRate", Some(0.0), 0.01, |m| m <= 0.01)];
        let at = |step, elapsed| Position {
            step,
            elapsed,
            paused: false,
        };
        assert_eq!(
            decide(&steps, 300, 200, &at(0, 100), &passed, 500.0),
            Decision::Hold
        );
        assert_eq!(
            decide(&steps, 300, 200, &at(0, 300), &passed, 100.0),
            Decision::Hold
        );
        assert_eq!(
            decide(&steps, 300, 200, &at(0, 300), &passed, 200.0),
            Decision::Advance(1)
        );
        assert_eq!(
            decide(&steps, 300, 200, &at(2, 301), &passed, 900.0),
            Decision::Promote
        );
        let pending = vec![Check::of("agreement", None, 0.95, |m| m >= 0.95)];
        assert_eq!(
            decide(&steps, 300, 200, &at(0, 900), &pending, 900.0),
            Decision::Hold
        );
        let failed = vec![Check::of("errorRate", Some(0.2), 0.01, |m| m <= 0.01)];
        let Decision::RollBack(why) = decide(&steps, 300, 200, &at(0, 1), &failed, 1.0) else {
            panic!("a failed check rolls back at once")
        };
        assert!(why.contains("errorRate 0.2000 (at most 0.0100)"), "{why}");
        let paused = Position {
            paused: true,
            ..at(1, 10_000)
        };
        assert_eq!(
            decide(&steps, 300, 200, &paused, &passed, 1e6),
            Decision::Hold
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("30s"), Some(30));
        assert_eq!(parse_duration("1h"), Some(3600));
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("5 minutes"), None);
        assert_eq!(parse_duration(""), None);
    }
}
