//! What a load run reports: per-kind latency and error figures, resident-memory samples,
//! and the lost or unexpected records, as the Markdown RELIABILITY.md quotes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::Kind;

#[derive(Debug, Default, Clone)]
pub struct KindStats {
    pub statuses: BTreeMap<u16, usize>,
    /// Requests with no HTTP answer (connection refused or reset, timeout).
    pub transport_errors: usize,
    /// Latencies of the requests after the warm-up, milliseconds.
    pub latencies_ms: Vec<f64>,
}

impl KindStats {
    pub fn count(&self) -> usize {
        self.statuses.values().sum::<usize>() + self.transport_errors
    }

    fn in_range(&self, range: std::ops::Range<u16>) -> usize {
        self.statuses
            .iter()
            .filter(|(s, _)| range.contains(s))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }
}

/// The `p`-th percentile (0–100, nearest rank) of `values`; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone)]
pub struct RssSample {
    pub process: String,
    pub after_warmup_kib: Option<u64>,
    pub at_end_kib: Option<u64>,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub kinds: BTreeMap<Kind, KindStats>,
    /// Wall time of the requests after the warm-up.
    pub measured: Duration,
    /// Distinct images sent through the pipeline, and how many of those were acknowledged.
    pub pipeline_images: usize,
    pub pipeline_acknowledged: usize,
    pub records: usize,
    pub lost: Vec<String>,
    pub duplicated: Vec<(String, usize)>,
    pub unexpected: Vec<String>,
    pub uploads_acknowledged: usize,
    pub uploads_missing: Vec<String>,
    pub rss: Vec<RssSample>,
    /// The first few unexpected answers, for the failure message.
    pub examples: Vec<String>,
}

impl LoadReport {
    pub fn server_errors(&self) -> usize {
        self.kinds.values().map(|k| k.in_range(500..600)).sum()
    }

    pub fn transport_errors(&self) -> usize {
        self.kinds.values().map(|k| k.transport_errors).sum()
    }

    pub fn non_success(&self) -> usize {
        self.kinds
            .values()
            .map(|k| k.count() - k.in_range(200..300))
            .sum()
    }

    /// What broke the invariants (empty when none did).
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.non_success() > 0 {
            v.push(format!(
                "{} requests were not answered 2xx ({} 5xx, {} without an answer); e.g. {:?}",
                self.non_success(),
                self.server_errors(),
                self.transport_errors(),
                self.examples
            ));
        }
        if !self.lost.is_empty() {
            v.push(format!("acknowledged but no record: {:?}", self.lost));
        }
        if !self.duplicated.is_empty() {
            v.push(format!("more than one record: {:?}", self.duplicated));
        }
        if !self.unexpected.is_empty() {
            v.push(format!("records nobody sent: {:?}", self.unexpected));
        }
        if !self.uploads_missing.is_empty() {
            v.push(format!(
                "acknowledged uploads missing or changed: {:?}",
                self.uploads_missing
            ));
        }
        v
    }

    /// The figures as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let total: usize = self.kinds.values().map(KindStats::count).sum();
        let measured: usize = self.kinds.values().map(|k| k.latencies_ms.len()).sum();
        let _ = writeln!(
            out,
            "| request kind | requests | 2xx | 4xx | 5xx | no answer | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (kind, s) in &self.kinds {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
                kind.name(),
                s.count(),
                s.in_range(200..300),
                s.in_range(400..500),
                s.in_range(500..600),
                s.transport_errors,
                s.percentile(50.0),
                s.percentile(99.0)
            );
        }
        let _ = writeln!(
            out,
            "\n{total} requests; after the warm-up {measured} in {:.1} s ({:.0} requests/s).",
            self.measured.as_secs_f64(),
            measured as f64 / self.measured.as_secs_f64().max(1e-9)
        );
        let _ = writeln!(
            out,
            "Store read back: {} distinct pipeline images sent, {} acknowledged, {} records; \
             lost {}, duplicated {}, unexpected {}. Uploads acknowledged {}, missing {}.",
            self.pipeline_images,
            self.pipeline_acknowledged,
            self.records,
            self.lost.len(),
            self.duplicated.len(),
            self.unexpected.len(),
            self.uploads_acknowledged,
            self.uploads_missing.len()
        );
        let _ = writeln!(
            out,
            "\n| process | RSS after warm-up MiB | RSS at end MiB | change |\n|---|---:|---:|---:|"
        );
        let mib =
            |k: Option<u64>| k.map_or("?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
        for s in &self.rss {
            let change = match (s.after_warmup_kib, s.at_end_kib) {
                (Some(a), Some(b)) if a > 0 => {
                    format!("{:+.1} %", (b as f64 - a as f64) * 100.0 / a as f64)
                }
                _ => "?".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {change} |",
                s.process,
                mib(s.after_warmup_kib),
                mib(s.at_end_kib)
            );
        }
        out
    }
}
