//! The circuit breaker in front of each downstream.

use super::*;

/// Per-downstream circuit breaker: closed → open after [`BREAKER_THRESHOLD`] failed calls
/// (each after its retries) in a row → after [`BREAKER_COOLDOWN`] calls are let through again; one success closes it,
/// a failure re-opens it at once.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// `Err(seconds until it may close)` while open.
    pub fn allow(&self) -> Result<(), Duration> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.open_until {
            Some(until) if until > Instant::now() => Err(until - Instant::now()),
            _ => Ok(()),
        }
    }

    pub fn success(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.failures = 0;
        state.open_until = None;
    }

    /// Records a failure; true when the breaker is open now.
    pub fn failure(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.failures = state.failures.saturating_add(1);
        if state.failures >= BREAKER_THRESHOLD {
            state.open_until = Some(Instant::now() + BREAKER_COOLDOWN);
            true
        } else {
            false
        }
    }
}
