//! API keys and rate limits, enforced by the services themselves (so they hold behind any
//! gateway, or none).
//!
//! Keys come from a file (`--api-keys-file`, one key a line, optionally `name:key`; `#`
//! starts a comment) and/or the environment (`SIGHTLINE_API_KEYS`, comma-separated). Only
//! their SHA-256 digests are kept, and a presented key is compared with every digest in
//! constant time. Clients send `Authorization: Bearer <key>` or `X-API-Key: <key>`.
//!
//! Rate limits are a token bucket per key (one shared bucket for everyone when no keys are
//! configured): `--rate-limit-rps` tokens a second, bursts of `--rate-limit-burst`.
//! Refusals are `401` and `429` with `Retry-After`. Health, readiness, metrics and the
//! index stay open; so do image downloads by content id (the id is the SHA-256 of the bytes,
//! a capability only someone who had the image or its URL knows), which the recognize role
//! fetches without credentials.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::metrics::PipelineMetrics;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the API keys file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the API keys file {path} line {line}: {reason}")]
    Invalid {
        path: String,
        line: usize,
        reason: &'static str,
    },
    #[error("--rate-limit-rps must be a finite number ≥ 0, got {0}")]
    Rate(f64),
}

struct Key {
    name: String,
    digest: [u8; 32],
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Keys (hashed) and buckets.
pub struct Auth {
    keys: Vec<Key>,
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Auth {
    /// No keys and no limit: every request passes.
    pub fn open() -> Auth {
        Auth {
            keys: Vec::new(),
            rate: 0.0,
            burst: 0.0,
            buckets: Mutex::default(),
        }
    }

    /// From the flags: the keys file, keys from the environment, the rate limit.
    pub fn new(
        keys_file: Option<&Path>,
        env_keys: &[String],
        rate: f64,
        burst: Option<u32>,
    ) -> Result<Auth, AuthError> {
        if !rate.is_finite() || rate < 0.0 {
            return Err(AuthError::Rate(rate));
        }
        let mut keys = Vec::new();
        if let Some(path) = keys_file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                path: shown.clone(),
                source,
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, key) = match line.split_once(':') {
                    Some((name, key)) => (name.trim().to_string(), key.trim()),
                    None => (format!("key{}", keys.len() + 1), line),
                };
                if key.len() < 8 {
                    return Err(AuthError::Invalid {
                        path: shown,
                        line: n + 1,
                        reason: "keys must be at least 8 characters",
                    });
                }
                keys.push(Key {
                    name,
                    digest: Sha256::digest(key.as_bytes()).into(),
                });
            }
        }
        for key in env_keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
            let (name, key) = match key.split_once(':') {
                Some((name, key)) => (name.trim().to_string(), key.trim()),
                None => (format!("env{}", keys.len() + 1), key),
            };
            keys.push(Key {
                name,
                digest: Sha256::digest(key.as_bytes()).into(),
            });
        }
        let burst = f64::from(burst.unwrap_or_else(|| (rate.ceil() as u32).max(1)).max(1));
        Ok(Auth {
            keys,
            rate,
            burst,
            buckets: Mutex::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The name of the key `presented` is, comparing with every key in constant time.
    fn identify(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            let diff = key
                .digest
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(key.name.as_str());
            }
        }
        found
    }

    /// Takes a token from `who`'s bucket; `Err(seconds to wait)` when it is empty.
    fn take(&self, who: &str) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(who.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// Routes anyone may call.
fn is_open(method: &Method, route: &str) -> bool {
    matches!(
        route,
        "/" | "/healthz"
            | "/readyz"
            | "/metrics"
            | "/v2/health/live"
            | "/v2/health/ready"
            | "/api/openapi.json"
            | "/api/docs"
    ) || (method == Method::GET || method == Method::HEAD)
        && matches!(route, "/api/v1/images/{id}" | "/uploads/{name}")
}

fn presented_key(request: &Request) -> Option<&str> {
    let headers = request.headers();
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = auth.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn refuse(status: StatusCode, message: &str, retry_after: Option<u64>) -> Response {
    let mut response =
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sightline\""),
        );
    }
    if let Some(seconds) = retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The middleware's state: the keys and buckets, and where refusals are counted.
#[derive(Clone)]
pub struct AuthState {
    pub auth: Arc<Auth>,
    pub metrics: PipelineMetrics,
}

/// The middleware: 401 without a valid key (when keys are configured), 429 over the rate.
pub async fn enforce(State(state): State<AuthState>, request: Request, next: Next) -> Response {
    let auth = &state.auth;
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if is_open(request.method(), &route) || (!auth.enabled() && auth.rate <= 0.0) {
        return next.run(request).await;
    }
    let who = if auth.enabled() {
        let Some(presented) = presented_key(&request) else {
            state.metrics.auth_rejected("missing_key");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "an API key is required: send Authorization: Bearer <key> or X-API-Key",
                None,
            );
        };
        match auth.identify(presented) {
            Some(name) => name.to_string(),
            None => {
                state.metrics.auth_rejected("invalid_key");
                return refuse(StatusCode::UNAUTHORIZED, "the API key is not valid", None);
            }
        }
    } else {
        "anonymous".to_string()
    };
    if let Err(wait) = auth.take(&who) {
        state.metrics.auth_rejected("rate_limited");
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded for this API key; retry after the Retry-After seconds",
            Some(wait),
        );
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_and_matched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("keys");
        std::fs::write(&file, "# comment\nalice:alice-secret-1\nbob-secret-22\n").expect("write");
        let auth =
            Auth::new(Some(&file), &["carol:carol-secret-3".into()], 0.0, None).expect("keys");
        assert_eq!(auth.identify("alice-secret-1"), Some("alice"));
        assert_eq!(auth.identify("bob-secret-22"), Some("key2"));
        assert_eq!(auth.identify("carol-secret-3"), Some("carol"));
        assert_eq!(auth.identify("alice-secret-2"), None);
        std::fs::write(&file, "short\n").expect("write");
        assert!(Auth::new(Some(&file), &[], 0.0, None).is_err());
        assert!(Auth::new(None, &[], -1.0, None).is_err());
    }

    #[test]
    fn token_bucket_allows_the_burst_then_refuses() {
        let auth = Auth::new(None, &[], 1.0, Some(3)).expect("auth");
        for _ in 0..3 {
            assert!(auth.take("a").is_ok());
        }
        assert_eq!(auth.take("a"), Err(1));
        assert!(auth.take("b").is_ok(), "buckets are per key");
    }
}
