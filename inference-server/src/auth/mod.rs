//! API keys and rate limits, enforced by the services themselves (so they hold behind any
//! gateway, or none).
//!
//! Keys come from a file (`--api-keys-file`, one key a line, optionally `name:key`; `#`
//! starts a comment) and/or the environment (`SIGHTLINE_API_KEYS`, comma-separated), under
//! one policy ([`keys`]): at least 8 characters, names that never collide. Only their
//! SHA-256 digests are kept, and a presented key is compared with every digest in constant
//! time. The keys file is re-read when it changes ([`Auth::watch`]), so rotating a key needs
//! no restart. Clients send `Authorization: Bearer <key>` or `X-API-Key: <key>` (another
//! `Authorization` scheme, such as a browser's `Basic`, does not hide an `X-API-Key`).
//!
//! Rate limits are a token bucket per key (one shared bucket for everyone when no keys are
//! configured): `--rate-limit-rps` tokens a second, bursts of `--rate-limit-burst`.
//! Refusals are `401` and `429` with `Retry-After`. Health, readiness, metrics and the
//! index stay open; so do image downloads by content id (the id is the SHA-256 of the bytes,
//! a capability only someone who had the image or its URL knows), which the recognize role
//! fetches without credentials.

pub mod keys;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::metrics::PipelineMetrics;
use keys::Key;

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
    #[error("the API keys file {path} holds no key: remove --api-keys-file to run without keys")]
    NoKeys { path: String },
    #[error("API key {item} of --api-keys / SIGHTLINE_API_KEYS: {reason}")]
    InvalidEnv { item: usize, reason: &'static str },
    #[error("--rate-limit-rps must be a finite number ≥ 0, got {0}")]
    Rate(f64),
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The keys in use: the file's (replaced when it changes) and the environment's (fixed).
struct KeySet {
    file: Vec<Key>,
    env: Vec<Key>,
}

impl KeySet {
    fn iter(&self) -> impl Iterator<Item = &Key> {
        self.file.iter().chain(self.env.iter())
    }
}

/// Keys (hashed), the keys file they are re-read from, and buckets.
pub struct Auth {
    keys: RwLock<Arc<KeySet>>,
    file: Option<PathBuf>,
    /// The keys file's last contents seen (to act on changes only, and log each once).
    seen: Mutex<Option<Result<Vec<u8>, String>>>,
    rate: f64,
    burst: f64,
    /// Per key digest (hex), or `anonymous` without keys.
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Auth {
    /// No keys and no limit: every request passes.
    pub fn open() -> Auth {
        Auth::with_keys(Vec::new(), Vec::new(), None, 0.0, 0.0)
    }

    fn with_keys(
        file: Vec<Key>,
        env: Vec<Key>,
        path: Option<PathBuf>,
        rate: f64,
        burst: f64,
    ) -> Auth {
        Auth {
            keys: RwLock::new(Arc::new(KeySet { file, env })),
            file: path,
            seen: Mutex::new(None),
            rate,
            burst,
            buckets: Mutex::default(),
        }
    }

    /// From the flags: the keys file, keys from the environment, the rate limit. A keys
    /// file given but holding no key is an error (it would silently turn keys off).
    pub fn new(
        keys_file: Option<&Path>,
        env_keys: &[String],
        rate: f64,
        burst: Option<u32>,
    ) -> Result<Auth, AuthError> {
        if !rate.is_finite() || rate < 0.0 {
            return Err(AuthError::Rate(rate));
        }
        let mut file_keys = Vec::new();
        let mut seen = None;
        if let Some(path) = keys_file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                path: shown.clone(),
                source,
            })?;
            file_keys = keys::parse_file(&text).map_err(|e| AuthError::Invalid {
                path: shown.clone(),
                line: e.line,
                reason: e.reason,
            })?;
            if file_keys.is_empty() {
                return Err(AuthError::NoKeys { path: shown });
            }
            seen = Some(Ok(text.into_bytes()));
        }
        let env = keys::parse_env(env_keys).map_err(|e| AuthError::InvalidEnv {
            item: e.line,
            reason: e.reason,
        })?;
        let burst = f64::from(burst.unwrap_or_else(|| (rate.ceil() as u32).max(1)).max(1));
        let auth = Auth::with_keys(
            file_keys,
            env,
            keys_file.map(Path::to_path_buf),
            rate,
            burst,
        );
        *auth.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        Ok(auth)
    }

    pub fn enabled(&self) -> bool {
        self.key_set().iter().next().is_some()
    }

    fn key_set(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The digest (hex) and the name of the key `presented` is, comparing with every key in
    /// constant time.
    fn identify(&self, presented: &str) -> Option<(String, String)> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in self.key_set().iter() {
            let diff = key
                .digest
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(key.name.clone());
            }
        }
        found.map(|name| (hex::encode(digest), name))
    }

    /// Re-reads the keys file every [`keys::POLL_INTERVAL`] from a task that ends with the
    /// last `Arc` of this value (see [`keys`] for what a change does). Nothing without a
    /// file.
    pub fn watch(self: &Arc<Self>) {
        if self.file.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(watch(weak));
    }

    /// Reads the keys file and applies what changed since the last read.
    pub async fn reload(&self) {
        let Some(path) = &self.file else {
            return;
        };
        let now = keys::read(path).await.map_err(|e| e.to_string());
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.as_ref() == Some(&now) {
                return;
            }
            *seen = Some(now.clone());
        }
        let shown = path.display();
        match keys::judge(now.map_err(std::io::Error::other)) {
            Ok(file) => {
                let count = file.len();
                let env = self.key_set().env.clone();
                let set = Arc::new(KeySet { file, env });
                let live: std::collections::HashSet<String> =
                    set.iter().map(|k| hex::encode(k.digest)).collect();
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = set;
                // Buckets of keys that are gone go with them.
                self.buckets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|who, _| live.contains(who));
                tracing::info!(file = %shown, keys = count, "API keys file changed: keys applied");
            }
            Err(why) => {
                tracing::warn!(file = %shown, error = %why, "API keys file changed but cannot be used; keeping the last good keys");
            }
        }
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

/// Reads the keys file every [`keys::POLL_INTERVAL`] while the [`Auth`] lives.
async fn watch(auth: Weak<Auth>) {
    let mut tick = tokio::time::interval(keys::POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(auth) = auth.upgrade() else {
            return;
        };
        auth.reload().await;
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

/// The keys a request presents: a `Bearer` token, then `X-API-Key` (another
/// `Authorization` scheme, a browser's `Basic` say, hides nothing).
fn presented_keys(request: &Request) -> impl Iterator<Item = &str> {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| {
            let (scheme, token) = auth.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    bearer.into_iter().chain(api_key).filter(|k| !k.is_empty())
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

/// Who is calling, as the middleware found out: the name of the API key presented
/// (`alice` for `alice:<key>`, `file:3` or `env:2` for an unnamed one), or `anonymous`
/// when no keys are configured. Handlers read it as an optional extension (absent means
/// anonymous: with no keys and no rate limit the middleware looks at nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// The caller without keys.
pub const ANONYMOUS: &str = "anonymous";

impl Caller {
    /// The request's caller (`anonymous` when the middleware recorded none).
    pub fn of(extension: Option<axum::Extension<Caller>>) -> Caller {
        extension
            .map(|axum::Extension(c)| c)
            .unwrap_or_else(|| Caller(ANONYMOUS.to_string()))
    }
}

/// The middleware: 401 without a valid key (when keys are configured), 429 over the rate.
/// Records the [`Caller`] for the handlers.
pub async fn enforce(State(state): State<AuthState>, mut request: Request, next: Next) -> Response {
    let auth = &state.auth;
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if is_open(request.method(), &route) || (!auth.enabled() && auth.rate <= 0.0) {
        return next.run(request).await;
    }
    let (who, name) = if auth.enabled() {
        let mut presented = presented_keys(&request).peekable();
        if presented.peek().is_none() {
            state.metrics.auth_rejected("missing_key");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "an API key is required: send Authorization: Bearer <key> or X-API-Key",
                None,
            );
        }
        match presented.find_map(|key| auth.identify(key)) {
            Some(found) => found,
            None => {
                state.metrics.auth_rejected("invalid_key");
                return refuse(StatusCode::UNAUTHORIZED, "the API key is not valid", None);
            }
        }
    } else {
        (ANONYMOUS.to_string(), ANONYMOUS.to_string())
    };
    request.extensions_mut().insert(Caller(name));
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
        let found = |k: &str, name: &str| {
            Some((hex::encode(Sha256::digest(k.as_bytes())), name.to_string()))
        };
        assert_eq!(
            auth.identify("alice-secret-1"),
            found("alice-secret-1", "alice")
        );
        assert_eq!(
            auth.identify("bob-secret-22"),
            found("bob-secret-22", "file:3")
        );
        assert_eq!(
            auth.identify("carol-secret-3"),
            found("carol-secret-3", "carol")
        );
        assert_eq!(auth.identify("alice-secret-2"), None);
        std::fs::write(&file, "short\n").expect("write");
        assert!(Auth::new(Some(&file), &[], 0.0, None).is_err());
        std::fs::write(&file, "# no keys\n").expect("write");
        assert!(matches!(
            Auth::new(Some(&file), &[], 0.0, None),
            Err(AuthError::NoKeys { .. })
        ));
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
