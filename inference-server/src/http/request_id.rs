//! The request id every response carries (`X-Request-Id`): kept from the caller when it is
//! short printable ASCII, made here otherwise, and passed on to the services a request calls.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderName, HeaderValue};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's id when it is usable (at most 128 printable ASCII characters).
pub fn usable(value: &HeaderValue) -> bool {
    value.len() <= 128
        && value
            .to_str()
            .is_ok_and(|s| s.chars().all(|c| c.is_ascii_graphic()))
}

/// A new id: the clock and the process id, plus a counter.
pub fn new_request_id() -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    HeaderValue::from_str(&format!(
        "{:x}-{n:x}",
        nanos ^ u64::from(std::process::id())
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
