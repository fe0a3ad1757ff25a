//! A one-line progress bar with rate and ETA, drawn on stderr only when stderr is a
//! terminal (so logs and CI output stay clean).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Draws at most every [`REDRAW`].
const REDRAW: Duration = Duration::from_millis(100);
const WIDTH: usize = 30;

pub struct Progress {
    total: u64,
    enabled: bool,
    started: Instant,
    state: Mutex<(u64, Option<Instant>)>,
}

impl Progress {
    /// A bar for `total` items, shown when `wanted` and stderr is a terminal.
    pub fn new(total: u64, wanted: bool) -> Progress {
        Progress {
            total,
            enabled: wanted && std::io::stderr().is_terminal(),
            started: Instant::now(),
            state: Mutex::new((0, None)),
        }
    }

    /// One more item done.
    pub fn inc(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        let now = Instant::now();
        let due = state.1.is_none_or(|last| now - last >= REDRAW) || state.0 == self.total;
        if self.enabled && due {
            state.1 = Some(now);
            let line = line(state.0, self.total, self.started.elapsed());
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
        }
    }

    /// Items done so far.
    pub fn done(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Ends the line.
    pub fn finish(&self) {
        if self.enabled {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// `[#####·····]  120/500  24.0 img/s  ETA 16s`
pub fn line(done: u64, total: u64, elapsed: Duration) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (fraction * WIDTH as f64).round() as usize;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let eta = if rate > 0.0 {
        format_secs(total.saturating_sub(done) as f64 / rate)
    } else {
        "?".to_string()
    };
    format!(
        "[{}{}] {done:>width$}/{total}  {rate:.1} img/s  ETA {eta}",
        "#".repeat(filled),
        "·".repeat(WIDTH - filled),
        width = total.to_string().len()
    )
}

fn format_secs(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_count_rate_and_eta() {
        let l = line(120, 500, Duration::from_secs(5));
        assert!(l.contains("120/500"), "{l}");
        assert!(l.contains("24.0 img/s"), "{l}");
        assert!(l.contains("ETA 16s"), "{l}");
        assert!(line(0, 10, Duration::ZERO).contains("ETA ?"));
        assert!(line(10, 10, Duration::from_secs(1)).contains("ETA 0s"));
        assert!(line(1, 10_000, Duration::from_secs(1)).contains("ETA 2h46m"));
    }
}
