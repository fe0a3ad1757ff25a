//! What `/metrics` serves, shared by every Sightline process:
//!
//! - the process families with their conventional names (`process_cpu_seconds_total`,
//!   `process_resident_memory_bytes`, `process_open_fds`, …), read from `/proc/self` on each
//!   scrape: register them with [`register_process_metrics`] on a registry *without* a prefix
//!   so the names stay the ones every Prometheus dashboard knows (on systems without `/proc`
//!   the collector exports nothing);
//! - content negotiation ([`negotiate`]): OpenMetrics for scrapers that ask for it
//!   (Prometheus does), the classic text format 0.0.4 otherwise (curl, `promtool check
//!   metrics`), where a counter's `HELP`/`TYPE` carry its full `_total` name.
//!
//! This module depends on `std` and `prometheus_client` only: the operator and the server
//! both use it, so both binaries export the same families the same way.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Kernel clock ticks per second (`USER_HZ`), 100 on every Linux architecture Rust targets.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of the process's resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub threads: f64,
    pub start_time_seconds: f64,
    pub open_fds: f64,
    pub max_fds: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where it cannot be read (not Linux).
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let mut stats = parse(&stat, &status, &boot, &limits)?;
        stats.open_fds = open_fds;
        Some(stats)
    }
}

/// The pure part of [`ProcessStats::read`]: the texts of `/proc/self/stat`,
/// `/proc/self/status`, `/proc/stat` and `/proc/self/limits`.
pub fn parse(stat: &str, status: &str, boot: &str, limits: &str) -> Option<ProcessStats> {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime 15, starttime 22.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu_seconds = (field(14)? + field(15)?) / TICKS_PER_SECOND;
    let started_ticks = field(22)?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let boot_time = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime"))
        .and_then(|v| v.trim().parse::<f64>().ok())?;
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    Some(ProcessStats {
        cpu_seconds,
        resident_bytes: kib("VmRSS:").unwrap_or(0.0) * 1024.0,
        virtual_bytes: kib("VmSize:").unwrap_or(0.0) * 1024.0,
        threads: kib("Threads:").unwrap_or(0.0),
        start_time_seconds: boot_time + started_ticks / TICKS_PER_SECOND,
        open_fds: 0.0,
        max_fds,
    })
}

/// Exports [`ProcessStats`] on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessStats::read() else {
            return Ok(());
        };
        let counter = ConstCounter::new(s.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            counter.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: f64| {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            s.resident_bytes,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            s.virtual_bytes,
        )?;
        gauge(
            "process_open_fds",
            "Number of open file descriptors",
            s.open_fds,
        )?;
        if let Some(max) = s.max_fds {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors",
                max,
            )?;
        }
        gauge("process_threads", "Number of OS threads", s.threads)?;
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            s.start_time_seconds,
        )?;
        Ok(())
    }
}

/// Adds the process families to `registry` (which should have no prefix).
pub fn register_process_metrics(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type and body to answer a scrape whose `Accept` header is `accept`, given the
/// registry's OpenMetrics encoding.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (OPENMETRICS_CONTENT_TYPE, openmetrics)
    } else {
        (TEXT_CONTENT_TYPE, to_text_format(&openmetrics))
    }
}

/// OpenMetrics text as `prometheus_client` writes it → the classic text format: counters'
/// `HELP` and `TYPE` lines name the `_total` sample, `UNIT` and `EOF` lines go.
pub fn to_text_format(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let counters: std::collections::HashSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in lines {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) && !name.ends_with("_total") {
                out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_total_sample_and_drops_eof() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
                  a_requests_total{route=\"/x\"} 3\n# HELP b_depth Depth.\n# TYPE b_depth gauge\n\
                  b_depth 1\n# EOF\n";
        let (content_type, text) = negotiate(Some("text/plain"), om.to_string());
        assert_eq!(content_type, TEXT_CONTENT_TYPE);
        assert_eq!(
            text,
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
             a_requests_total{route=\"/x\"} 3\n# HELP b_depth Depth.\n# TYPE b_depth gauge\n\
             b_depth 1\n"
        );
        let prometheus =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert_eq!(
            negotiate(Some(prometheus), om.to_string()),
            (OPENMETRICS_CONTENT_TYPE, om.to_string())
        );
        assert_eq!(negotiate(None, om.to_string()).0, TEXT_CONTENT_TYPE);
    }

    #[test]
    fn parses_proc_texts_including_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    7 0 123400 1000000 500 18446744073709551615";
        let status = "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t    1024 kB\nThreads:\t7\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let s = parse(stat, status, boot, limits).expect("parses");
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.resident_bytes, 1024.0 * 1024.0);
        assert_eq!(s.virtual_bytes, 2048.0 * 1024.0);
        assert_eq!(s.threads, 7.0);
        assert_eq!(s.start_time_seconds, 1_700_000_000.0 + 1234.0);
        assert_eq!(s.max_fds, Some(1024.0));
        assert!(parse("garbage", status, boot, limits).is_none());
    }

    #[test]
    fn exports_conventional_names_without_a_prefix() {
        let mut registry = Registry::default();
        register_process_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        if std::path::Path::new("/proc/self/stat").exists() {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_open_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(text.contains(name), "{name} missing in:\n{text}");
            }
            let rss: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
                .and_then(|v| v.parse().ok())
                .expect("a number");
            assert!(
                rss > 1e6,
                "a running test process has more than 1 MB resident"
            );
        }
    }
}
