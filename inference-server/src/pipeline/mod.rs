//! The pipeline: upload → recognize → store, in one call.
//!
//! In `all` every step runs in-process. With split roles the upload role calls the
//! recognize and store services by URL (`--recognize-url`, `--store-url`) through a
//! [`Downstream`]: a timeout per attempt and a deadline per call, bounded retries with
//! exponential backoff and jitter (both calls are idempotent: recognition is a pure
//! function, saving is keyed by (image, model)), and a circuit breaker per downstream that
//! fails fast while it is open. When a step cannot be done the caller gets a `503` naming
//! the component, and the image stays stored so `POST /api/v1/images/{id}/recognize` can
//! re-run it later: nothing is dropped silently.
//!
//! The same [`Downstream`]s carry the front door's forwarded calls
//! ([`crate::front_door`]), through [`Downstream::forward`], so each service has one
//! breaker whichever route calls it. Recognitions reach the recognize service through
//! [`traffic::Traffic`], which splits them between a canary's stable and candidate
//! revisions when the operator's traffic file says so.

mod breaker;
pub mod http;
pub mod traffic;

pub use breaker::Breaker;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::metrics::PipelineMetrics;

/// Consecutive failures that open a breaker.
const BREAKER_THRESHOLD: u32 = 5;
/// Largest answer [`Downstream::post`] reads: a stored record of 10 000 predictions with
/// 255-byte labels is about 3 MB, a recognition a few hundred bytes.
pub const MAX_CALL_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Most of a failed answer read for its error message.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// How long an open breaker fails fast before letting a call through again.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(5);

/// A downstream that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamConfigError {
    #[error("not a valid http(s) URL: {0}")]
    Url(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    /// Cannot be reached, timed out, answered 5xx or 429, or its breaker is open.
    #[error("the {component} service is unavailable: {message}")]
    Unavailable {
        component: &'static str,
        message: String,
        /// Seconds before a new try may succeed (the breaker's cooldown when it is open).
        retry_after: u64,
    },
    /// It refused the request (4xx); the status and its error message are passed on.
    #[error("the {component} service refused the request: {message}")]
    Refused {
        component: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error("the {component} service answered something unexpected: {message}")]
    BadAnswer {
        component: &'static str,
        message: String,
    },
}

impl DownstreamError {
    pub fn component(&self) -> &'static str {
        match self {
            DownstreamError::Unavailable { component, .. }
            | DownstreamError::Refused { component, .. }
            | DownstreamError::BadAnswer { component, .. } => component,
        }
    }
}

/// Timeouts and retries for calls to other services.
#[derive(Debug, Clone, Copy)]
pub struct CallPolicy {
    /// The most one call may take, all attempts together (each attempt too).
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// First backoff; doubles each retry, plus up to as much again of jitter.
    pub backoff: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

/// Headers a call forwards from the request that caused it (the caller's credentials and
/// request id).
pub const FORWARDED: [HeaderName; 3] = [
    axum::http::header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    crate::http::request_id::REQUEST_ID,
];

/// The other services the upload role calls (none in `all`, where everything is local).
#[derive(Clone, Default)]
pub struct Downstreams {
    /// `--recognize-url`, and a canary's revisions from `--traffic-file`.
    pub recognize: Option<Arc<traffic::Traffic>>,
    /// `--store-url`.
    pub store: Option<Arc<Downstream>>,
}

/// A downstream's answer to a forwarded request, whatever its status.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Another Sightline service, called over HTTP.
pub struct Downstream {
    pub component: &'static str,
    base: String,
    client: reqwest::Client,
    policy: CallPolicy,
    breaker: Breaker,
    metrics: PipelineMetrics,
}

impl Downstream {
    pub fn new(
        component: &'static str,
        base: &str,
        policy: CallPolicy,
        metrics: PipelineMetrics,
    ) -> Result<Downstream, DownstreamConfigError> {
        let parsed =
            url::Url::parse(base).map_err(|e| DownstreamConfigError::Url(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(DownstreamConfigError::Url(format!(
                "{base:?} is not an http(s) URL with a host"
            )));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(policy.timeout.min(Duration::from_secs(3)))
            .timeout(policy.timeout)
            .build()
            .map_err(|e| DownstreamConfigError::Client(e.to_string()))?;
        Ok(Downstream {
            component,
            base: parsed.as_str().trim_end_matches('/').to_string(),
            client,
            policy,
            breaker: Breaker::default(),
            metrics,
        })
    }

    /// The base URL calls go to (no trailing slash).
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn policy(&self) -> CallPolicy {
        self.policy
    }

    pub fn metrics(&self) -> &PipelineMetrics {
        &self.metrics
    }

    /// POSTs `body` to `path` and decodes a 2xx JSON answer, retrying what is safe to retry.
    /// The answer is read within [`MAX_CALL_ANSWER_BYTES`] (an error's within 64 KiB): a
    /// larger one is a [`DownstreamError::BadAnswer`], never held whole.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: Bytes,
        forward: &HeaderMap,
    ) -> Result<(StatusCode, T), DownstreamError> {
        let component = self.component;
        let unavailable = |message: String| DownstreamError::Unavailable {
            component,
            message,
            retry_after: 1,
        };
        let deadline = Instant::now() + self.policy.timeout;
        let url = format!("{}{path}", self.base);
        let mut attempt = 0u32;
        loop {
            self.admit()?;
            let mut request = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body.clone());
            for name in &FORWARDED {
                if let Some(value) = forward.get(name) {
                    request = request.header(name.as_str(), value.as_bytes());
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let started = Instant::now();
            let outcome = match tokio::time::timeout(remaining, request.send()).await {
                Err(_) => Err(format!("no answer within {:?}", self.policy.timeout)),
                Ok(Err(e)) => Err(e.without_url().to_string()),
                Ok(Ok(response)) => Ok(response),
            };
            self.metrics
                .downstream_latency(component, started.elapsed());
            let retryable_message = match outcome {
                Ok(response) => {
                    let status = response.status();
                    let retryable =
                        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    if !retryable {
                        self.record_success();
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        let limit = if status.is_success() {
                            MAX_CALL_ANSWER_BYTES
                        } else {
                            MAX_ERROR_BYTES
                        };
                        let bytes = tokio::time::timeout(
                            remaining,
                            read_limited(response, limit, component),
                        )
                        .await
                        .map_err(|_| {
                            unavailable(format!(
                                "the answer did not arrive within {:?}",
                                self.policy.timeout
                            ))
                        })??;
                        if status.is_success() {
                            self.metrics.downstream_call(component, "ok");
                            let value = serde_json::from_slice(&bytes).map_err(|e| {
                                DownstreamError::BadAnswer {
                                    component,
                                    message: e.to_string(),
                                }
                            })?;
                            return Ok((status, value));
                        }
                        self.metrics.downstream_call(component, "refused");
                        return Err(DownstreamError::Refused {
                            component,
                            status,
                            message: error_message(&bytes),
                        });
                    }
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let bytes = tokio::time::timeout(
                        remaining,
                        read_limited(response, MAX_ERROR_BYTES, component),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                    format!("it answered {status}: {}", error_message(&bytes))
                }
                Err(message) => message,
            };
            attempt += 1;
            let sleep = self.retry_or_give_up(attempt, deadline, true, &retryable_message)?;
            tracing::warn!(component, attempt, error = %retryable_message, "downstream call failed; retrying");
            tokio::time::sleep(sleep).await;
        }
    }

    /// Sends `method` `path_and_query` with `headers` and `body` and returns the answer as
    /// it is, whatever its status: a forwarded request's answer is the caller's to read.
    /// Only a request that got no answer is retried (within the call's deadline): when the
    /// connection was refused (it never arrived), or, for `GET` and `HEAD`, on any
    /// transport error. An answer longer than `max_answer` bytes is a
    /// [`DownstreamError::BadAnswer`]; no answer at all is [`DownstreamError::Unavailable`].
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
        max_answer: usize,
    ) -> Result<Answer, DownstreamError> {
        let component = self.component;
        let deadline = Instant::now() + self.policy.timeout;
        let url = format!("{}{path_and_query}", self.base);
        let idempotent = method == Method::GET || method == Method::HEAD;
        let mut attempt = 0u32;
        loop {
            self.admit()?;
            let request = self
                .client
                .request(method.clone(), &url)
                .headers(headers.clone())
                .body(body.clone());
            let remaining = deadline.saturating_duration_since(Instant::now());
            let started = Instant::now();
            let sent = tokio::time::timeout(remaining, request.send()).await;
            let (message, retryable) = match sent {
                Ok(Ok(response)) => {
                    self.record_success();
                    let status = response.status();
                    let headers = response.headers().clone();
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let body = tokio::time::timeout(
                        remaining,
                        read_limited(response, max_answer, component),
                    )
                    .await
                    .map_err(|_| DownstreamError::Unavailable {
                        component,
                        message: format!(
                            "the answer did not arrive within {:?}",
                            self.policy.timeout
                        ),
                        retry_after: 1,
                    })??;
                    self.metrics
                        .downstream_latency(component, started.elapsed());
                    self.metrics.downstream_call(
                        component,
                        if status.is_server_error() {
                            "unavailable"
                        } else if status.is_client_error() {
                            "refused"
                        } else {
                            "ok"
                        },
                    );
                    return Ok(Answer {
                        status,
                        headers,
                        body,
                    });
                }
                Ok(Err(e)) => {
                    let retryable = e.is_connect() || idempotent;
                    (e.without_url().to_string(), retryable)
                }
                Err(_) => (format!("no answer within {:?}", self.policy.timeout), false),
            };
            self.metrics
                .downstream_latency(component, started.elapsed());
            attempt += 1;
            let sleep = self.retry_or_give_up(attempt, deadline, retryable, &message)?;
            tracing::warn!(component, attempt, error = %message, "forwarded call got no answer; retrying");
            tokio::time::sleep(sleep).await;
        }
    }

    /// Refuses at once while the circuit breaker is open.
    fn admit(&self) -> Result<(), DownstreamError> {
        let Err(wait) = self.breaker.allow() else {
            return Ok(());
        };
        self.metrics.downstream_call(self.component, "circuit_open");
        let seconds = wait.as_secs() + 1;
        Err(DownstreamError::Unavailable {
            component: self.component,
            message: format!("circuit open after repeated failures; next try in {seconds}s"),
            retry_after: seconds,
        })
    }

    /// After failed attempt number `attempt` (saying `message`): how long to wait before
    /// the next one, or the final error when the failure is not `retryable`, the retries
    /// are spent or the wait would pass `deadline`. The breaker counts calls that failed
    /// after their retries, not attempts: a restart the retries ride out does not open it.
    fn retry_or_give_up(
        &self,
        attempt: u32,
        deadline: Instant,
        retryable: bool,
        message: &str,
    ) -> Result<Duration, DownstreamError> {
        let backoff = self.policy.backoff * 2u32.saturating_pow(attempt - 1);
        let sleep = backoff + jitter(backoff);
        if !retryable || attempt > self.policy.retries || Instant::now() + sleep >= deadline {
            if self.breaker.failure() {
                self.metrics.breaker_open(self.component, true);
            }
            self.metrics.downstream_call(self.component, "unavailable");
            return Err(DownstreamError::Unavailable {
                component: self.component,
                message: format!(
                    "{message} (after {attempt} attempt{})",
                    if attempt == 1 { "" } else { "s" }
                ),
                retry_after: 1,
            });
        }
        self.metrics.downstream_call(self.component, "retry");
        Ok(sleep)
    }

    fn record_success(&self) {
        self.breaker.success();
        self.metrics.breaker_open(self.component, false);
    }
}

/// The body of `response`, at most `limit` bytes (checked as it arrives).
async fn read_limited(
    response: reqwest::Response,
    limit: usize,
    component: &'static str,
) -> Result<Bytes, DownstreamError> {
    let too_large = || DownstreamError::BadAnswer {
        component,
        message: format!("the answer is larger than {limit} bytes"),
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| DownstreamError::BadAnswer {
            component,
            message: format!("the answer was cut off: {}", e.without_url()),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

/// The `error` of a JSON error body, else the start of the text.
fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned())
}

/// Up to `max` of random delay (from the clock's low bits and a counter).
fn jitter(max: Duration) -> Duration {
    let random = crate::store::random_hex();
    let n = u64::from_str_radix(&random[..8], 16).unwrap_or(0);
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(n % nanos)
    }
}

#[cfg(test)]
mod tests;
