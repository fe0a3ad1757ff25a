//! A canary's traffic, without a mesh: the front door's recognitions split by weight
//! between the stable and the candidate revision, and a share of the stable ones mirrored
//! to the candidate and compared on their top-1.
//!
//! The operator writes where the two revisions answer and the weights into a traffic
//! file (see [`file`]); [`Traffic::start`] reads it, and re-reads it every
//! [`POLL_INTERVAL`] without a restart: a new file applies at once, a malformed one keeps
//! the last good one (logged once, counted), an absent one sends everything to
//! `--recognize-url`.
//!
//! Which recognitions split: those the front door forwards (the seed's recognition by URL,
//! `POST /api/v1/recognize` in all its forms, the Open Inference Protocol's `infer`), and
//! the one-call pipeline's recognition step; see [`split`] for how. Everything else the
//! recognize role serves (readiness, model metadata, evaluations) goes to stable.
//!
//! A candidate that cannot be reached or answers 5xx or 429 (down, not ready, saturated)
//! is counted as a candidate error and the request is sent to stable at once: the caller
//! never sees the candidate fail. Its circuit breaker (see [`super::Breaker`]) opens after
//! repeated failures, so a dead candidate costs one refused connection per request at
//! most, and nothing while open.
//!
//! Mirroring (see [`mirror`]) costs the caller nothing: the shadow request leaves after
//! stable answered, in a task of its own, within its own bounds.

pub mod file;
mod reload;
use reload::watch;
pub mod hosts;
pub mod mirror;
pub mod split;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use sightline_api::{AppliedTraffic, Percent};

use super::{Answer, CallPolicy, Downstream, DownstreamConfigError, DownstreamError, FORWARDED};
use crate::http::oip::HEADER_LENGTH;
use crate::http::recognize::Recognition;
use crate::metrics::{FrontDoorMetrics, PipelineMetrics};
use file::{TrafficConfig, TrafficFileError};
use hosts::{AllowedHosts, without_credentials};
use mirror::{Budget, Compare, Top1};
use split::{Route, Splitter};

/// How often the traffic file is read again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The two revisions' label values in the metrics.
const STABLE: &str = "stable";
const CANDIDATE: &str = "candidate";

/// The traffic file as applied: its settings and the services they name.
struct Active {
    config: TrafficConfig,
    stable: Arc<Downstream>,
    candidate: Option<Arc<Downstream>>,
}

/// What the last read of the file found (to act on changes only, and log each once).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Absent,
    Contents(Vec<u8>),
    Unreadable(String),
}

/// Where the front door's recognitions go. Cheap to share (`Arc`).
pub struct Traffic {
    /// `--recognize-url`: stable while the file names none.
    fallback: Arc<Downstream>,
    file: Option<PathBuf>,
    /// The policy of calls to stable; a candidate's gets no retries (stable is its retry).
    policy: CallPolicy,
    pipeline_metrics: PipelineMetrics,
    metrics: FrontDoorMetrics,
    active: RwLock<Arc<Active>>,
    splitter: Mutex<Splitter>,
    mirrors: Budget,
    seen: tokio::sync::Mutex<Option<Seen>>,
    /// The hosts the file may name (see [`hosts`]).
    hosts: AllowedHosts,
}

impl Traffic {
    /// Everything to `fallback` (`--recognize-url`), no file.
    pub fn fixed(fallback: Arc<Downstream>, metrics: FrontDoorMetrics) -> Traffic {
        let policy = fallback.policy();
        let pipeline_metrics = fallback.metrics().clone();
        let hosts = AllowedHosts::default_for(fallback.base());
        Traffic {
            active: RwLock::new(Arc::new(Active {
                config: TrafficConfig::stable_only(),
                stable: fallback.clone(),
                candidate: None,
            })),
            fallback,
            file: None,
            policy,
            pipeline_metrics,
            metrics,
            splitter: Mutex::default(),
            mirrors: Budget::default(),
            seen: tokio::sync::Mutex::new(None),
            hosts,
        }
    }

    /// Reads `file` (when given) and keeps reading it every [`POLL_INTERVAL`] from a task
    /// that ends with the returned value. The file may name `hosts` only (`None`: the
    /// default, [`AllowedHosts::default_for`] the fallback).
    pub async fn start(
        fallback: Arc<Downstream>,
        file: Option<PathBuf>,
        metrics: FrontDoorMetrics,
        hosts: Option<AllowedHosts>,
    ) -> Arc<Traffic> {
        let fixed = Traffic::fixed(fallback, metrics);
        let traffic = Arc::new(Traffic {
            file,
            hosts: hosts.unwrap_or_else(|| fixed.hosts.clone()),
            ..fixed
        });
        if traffic.file.is_some() {
            traffic.reload().await;
            let weak = Arc::downgrade(&traffic);
            tokio::spawn(watch(weak));
        }
        traffic
    }

    fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The stable revision's service (for what the recognize role serves besides
    /// recognition).
    pub fn stable(&self) -> Arc<Downstream> {
        self.active().stable.clone()
    }

    /// The settings applied now.
    pub fn config(&self) -> TrafficConfig {
        self.active().config.clone()
    }

    fn route(&self, active: &Active) -> Route {
        if active.candidate.is_none() {
            return Route::Stable { mirror: false };
        }
        self.splitter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .route(active.config.candidate_weight, active.config.mirror_percent)
    }

    /// Forwards a recognition (`compare` says how its answer's top-1 is read, for
    /// mirroring) to the revision the split picks, and returns the answer as it is — from
    /// stable when the candidate failed.
    pub async fn forward(
        &self,
        compare: Compare,
        method: Method,
        target: &str,
        headers: HeaderMap,
        body: Bytes,
        max_answer: usize,
    ) -> Result<Answer, DownstreamError> {
        let active = self.active();
        let model = active.config.model.as_str();
        let route = self.route(&active);
        if let (Route::Candidate, Some(candidate)) = (route, &active.candidate) {
            let sent = candidate
                .forward(
                    method.clone(),
                    target,
                    without_credentials(&headers),
                    body.clone(),
                    max_answer,
                )
                .await;
            match sent {
                Ok(answer) if !falls_back(answer.status) => {
                    self.metrics.request(model, CANDIDATE, true);
                    return Ok(answer);
                }
                Ok(answer) => {
                    self.candidate_failed(model, &format!("it answered {}", answer.status))
                }
                Err(e) => self.candidate_failed(model, &e.to_string()),
            }
        }
        let result = active
            .stable
            .forward(
                method.clone(),
                target,
                headers.clone(),
                body.clone(),
                max_answer,
            )
            .await;
        let ok = matches!(&result, Ok(answer) if !answer.status.is_server_error());
        self.metrics.request(model, STABLE, ok);
        if route == (Route::Stable { mirror: true })
            && let Ok(answer) = &result
            && answer.status.is_success()
            && !answer.headers.contains_key(HEADER_LENGTH)
            && compare != Compare::Never
        {
            let expected = Expected::In(answer.body.clone());
            let headers = without_credentials(&headers);
            self.mirror(&active, compare, method, target, headers, body, expected);
        }
        result
    }

    /// The one-call pipeline's recognition: `POST path` with the image `bytes`, decoded,
    /// from the revision the split picks (stable when the candidate failed).
    pub async fn recognize(
        &self,
        path: &str,
        bytes: Bytes,
        forward: &HeaderMap,
    ) -> Result<(StatusCode, Recognition), DownstreamError> {
        const CONTENT_TYPE: &str = "application/octet-stream";
        let active = self.active();
        let model = active.config.model.as_str();
        let route = self.route(&active);
        if let (Route::Candidate, Some(candidate)) = (route, &active.candidate) {
            match candidate
                .post::<Recognition>(
                    path,
                    CONTENT_TYPE,
                    bytes.clone(),
                    &without_credentials(forward),
                )
                .await
            {
                Ok(answer) => {
                    self.metrics.request(model, CANDIDATE, true);
                    return Ok(answer);
                }
                // It wants credentials it is not given: a candidate failing, not the caller.
                Err(DownstreamError::Refused { status, .. }) if refuses_the_front_door(status) => {
                    self.candidate_failed(model, &format!("it answered {status}"));
                }
                // The caller's request was refused: stable would refuse it too.
                Err(e @ DownstreamError::Refused { .. }) => {
                    self.metrics.request(model, CANDIDATE, true);
                    return Err(e);
                }
                Err(e) => self.candidate_failed(model, &e.to_string()),
            }
        }
        let result = active
            .stable
            .post::<Recognition>(path, CONTENT_TYPE, bytes.clone(), forward)
            .await;
        let ok = matches!(&result, Ok(_) | Err(DownstreamError::Refused { .. }));
        self.metrics.request(model, STABLE, ok);
        if route == (Route::Stable { mirror: true })
            && let Ok((_, recognition)) = &result
            && let Some(top) = recognition.predictions.first()
        {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            for name in &FORWARDED {
                if let Some(value) = forward.get(name) {
                    headers.insert(name.clone(), value.clone());
                }
            }
            let headers = without_credentials(&headers);
            let expected = Expected::Known(Top1::Label(top.label.clone()));
            self.mirror(
                &active,
                Compare::Labels,
                Method::POST,
                path,
                headers,
                bytes,
                expected,
            );
        }
        result
    }

    fn candidate_failed(&self, model: &str, error: &str) {
        self.metrics.request(model, CANDIDATE, false);
        tracing::debug!(
            error,
            "the candidate failed a recognition; answered by stable"
        );
    }

    /// Sends a copy of a request stable answered to the candidate, in a task of its own,
    /// and counts how their top-1 compare; dropped (and counted) when the budget is spent.
    #[allow(clippy::too_many_arguments)]
    fn mirror(
        &self,
        active: &Active,
        compare: Compare,
        method: Method,
        target: &str,
        headers: HeaderMap,
        body: Bytes,
        expected: Expected,
    ) {
        let Some(candidate) = active.candidate.clone() else {
            return;
        };
        let model = active.config.model.clone();
        // Stable's answer, when the shadow's task reads its top-1 from it, is held as long
        // as the request body: both count against the budget.
        let Some(admitted) = self.mirrors.admit(body.len() + expected.held_bytes()) else {
            self.metrics.mirrored(&model, "dropped");
            return;
        };
        let metrics = self.metrics.clone();
        let target = target.to_string();
        tokio::spawn(async move {
            let _admitted = admitted;
            let Some(expected) = expected.top1(compare) else {
                return;
            };
            // Within the candidate's own deadline, so a silent candidate is a timeout here.
            let limit = mirror::TIMEOUT.min(candidate.policy().timeout.mul_f32(0.9));
            let shadow =
                candidate.forward(method, &target, headers, body, mirror::MAX_ANSWER_BYTES);
            let outcome = match tokio::time::timeout(limit, shadow).await {
                Err(_) => "timeout",
                Ok(Ok(answer)) if answer.status.is_success() => match compare.top1(&answer.body) {
                    Some(top) if top == expected => "agree",
                    Some(_) => "disagree",
                    None => "error",
                },
                Ok(_) => "error",
            };
            metrics.mirrored(&model, outcome);
        });
    }
}

/// Stable's top-1 for a mirror: known, or read (in the mirror's task) from its answer.
enum Expected {
    Known(Top1),
    In(Bytes),
}

impl Expected {
    /// Bytes this holds until the shadow request ends.
    fn held_bytes(&self) -> usize {
        match self {
            Expected::Known(_) => 0,
            Expected::In(body) => body.len(),
        }
    }

    fn top1(self, compare: Compare) -> Option<Top1> {
        match self {
            Expected::Known(top) => Some(top),
            Expected::In(body) => compare.top1(&body),
        }
    }
}

/// A candidate's answer that stable gives instead: it is down, not ready or saturated, or
/// it refuses the front door's call (it wants credentials it is never given).
fn falls_back(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || refuses_the_front_door(status)
}

/// 401 or 403 from the candidate: it checks keys, and the caller's are not sent to it.
fn refuses_the_front_door(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// A candidate's calls: one attempt (stable is the retry), within half the downstream
/// timeout (at least a second), so a candidate that hangs delays the caller by that much at
/// most before stable answers (all of it within the request's own timeout).
fn candidate_policy(policy: CallPolicy) -> CallPolicy {
    CallPolicy {
        timeout: (policy.timeout / 2).max(Duration::from_secs(1)),
        retries: 0,
        ..policy
    }
}

#[cfg(test)]
mod tests;
