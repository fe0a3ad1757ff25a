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

    /// Reads the file and applies what changed since the last read.
    pub async fn reload(&self) {
        let Some(path) = &self.file else {
            return;
        };
        let now = match file::read(path).await {
            Ok(None) => Seen::Absent,
            Ok(Some(bytes)) => Seen::Contents(bytes),
            Err(e) => Seen::Unreadable(e.to_string()),
        };
        // One reload at a time, each change acted on (and logged) once.
        let mut seen = self.seen.lock().await;
        if seen.as_ref() == Some(&now) {
            return;
        }
        let shown = path.display().to_string();
        match &now {
            Seen::Absent => {
                self.metrics.reload("absent");
                tracing::info!(file = %shown, "no traffic file: every recognition goes to --recognize-url");
                self.install(TrafficConfig::stable_only(), None);
            }
            Seen::Unreadable(error) => {
                self.metrics.reload("invalid");
                tracing::warn!(file = %shown, %error, "cannot read the traffic file; keeping the last good one");
            }
            Seen::Contents(bytes) => {
                match TrafficConfig::parse(bytes).and_then(|config| self.apply(config)) {
                    Ok(()) => {
                        self.metrics.reload("applied");
                        let c = self.config();
                        tracing::info!(
                            file = %shown,
                            model = %c.model,
                            stable = c.stable.as_deref().unwrap_or(self.fallback.base()),
                            candidate = c.candidate.as_deref().unwrap_or("none"),
                            revision = c.revision.as_deref().unwrap_or("none"),
                            candidate_weight = c.candidate_weight.percent(),
                            mirror_percent = c.mirror_percent.percent(),
                            "traffic file applied"
                        );
                    }
                    Err(error) => {
                        self.metrics.reload("invalid");
                        tracing::warn!(file = %shown, %error, "malformed traffic file; keeping the last good one");
                    }
                }
            }
        }
        *seen = Some(now);
    }

    /// Applies a checked traffic file: the services it names (those already known are
    /// kept, with their circuit breakers), then the weights.
    pub fn apply(&self, config: TrafficConfig) -> Result<(), TrafficFileError> {
        for (field, url) in [("stable", &config.stable), ("candidate", &config.candidate)] {
            if let Some(url) = url
                && !self.hosts.allows(url)
            {
                return Err(TrafficFileError::HostNotAllowed {
                    field,
                    value: url.chars().take(200).collect(),
                });
            }
        }
        let current = self.active();
        let reuse = |url: &str, known: &[Option<&Arc<Downstream>>]| {
            known
                .iter()
                .flatten()
                .find(|d| d.base() == url)
                .map(|d| Arc::clone(d))
        };
        let stable = match &config.stable {
            None => self.fallback.clone(),
            Some(url) => match reuse(url, &[Some(&self.fallback), Some(&current.stable)]) {
                Some(known) => known,
                None => self.downstream("recognize", url, self.policy)?,
            },
        };
        let candidate = match &config.candidate {
            None => None,
            Some(url) => Some(match reuse(url, &[current.candidate.as_ref()]) {
                Some(known) => known,
                None => self.downstream("recognize-canary", url, candidate_policy(self.policy))?,
            }),
        };
        self.install(config, Some((stable, candidate)));
        Ok(())
    }

    fn downstream(
        &self,
        component: &'static str,
        url: &str,
        policy: CallPolicy,
    ) -> Result<Arc<Downstream>, TrafficFileError> {
        Downstream::new(component, url, policy, self.pipeline_metrics.clone())
            .map(Arc::new)
            .map_err(|e| match e {
                DownstreamConfigError::Url(_) | DownstreamConfigError::Client(_) => {
                    TrafficFileError::Url {
                        field: if component == "recognize" {
                            "stable"
                        } else {
                            "candidate"
                        },
                        value: format!("{url} ({e})"),
                    }
                }
            })
    }

    /// Makes `config` the one applied; `services` are its stable and candidate (`None`:
    /// the fallback alone).
    fn install(
        &self,
        config: TrafficConfig,
        services: Option<(Arc<Downstream>, Option<Arc<Downstream>>)>,
    ) {
        let (stable, candidate) = services.unwrap_or_else(|| (self.fallback.clone(), None));
        self.metrics.generation(&config.model, config.generation);
        self.metrics.weights(
            &config.model,
            config.candidate_weight.percent(),
            config.mirror_percent.percent(),
        );
        let active = Arc::new(Active {
            config,
            stable,
            candidate,
        });
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = active;
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

impl Traffic {
    /// The traffic file applied now, for `/readyz`.
    pub fn applied(&self) -> AppliedTraffic {
        let c = self.config();
        AppliedTraffic {
            model: c.model,
            generation: c.generation,
            candidate_weight: Percent(c.candidate_weight.percent()),
            mirror_percent: Percent(c.mirror_percent.percent()),
            revision: c.revision,
        }
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

/// Reads the file every [`POLL_INTERVAL`] while the [`Traffic`] lives.
async fn watch(traffic: Weak<Traffic>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(traffic) = traffic.upgrade() else {
            return;
        };
        traffic.reload().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(file: Option<PathBuf>) -> Traffic {
        let fallback = Downstream::new(
            "recognize",
            "http://recognize:8080",
            CallPolicy::default(),
            crate::metrics::Metrics::new("").pipeline,
        )
        .expect("a downstream");
        // The hosts these tests' files name (a front door's --traffic-hosts).
        let hosts = ["recognize", "canary", "c", "other-stable"].map(String::from);
        Traffic {
            file,
            hosts: AllowedHosts::parse(&hosts).expect("hosts"),
            ..Traffic::fixed(Arc::new(fallback), FrontDoorMetrics::unregistered())
        }
    }

    fn write(path: &std::path::Path, text: &str) {
        std::fs::write(path, text).expect("write the traffic file");
    }

    #[tokio::test]
    async fn the_file_applies_changes_keeps_the_last_good_one_and_falls_back_when_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("traffic.json");
        let t = traffic(Some(path.clone()));

        t.reload().await;
        assert_eq!(t.config(), TrafficConfig::stable_only(), "absent");
        assert_eq!(t.stable().base(), "http://recognize:8080");

        write(
            &path,
            r#"{"model":"m","stable":"http://recognize:8080","candidate":"http://canary:8080",
                "candidateWeight":20,"mirrorPercent":10,"revision":"r1"}"#,
        );
        t.reload().await;
        let c = t.config();
        assert_eq!(c.candidate_weight.percent(), 20.0);
        assert!(
            Arc::ptr_eq(&t.stable(), &t.fallback),
            "the same service keeps its client and breaker"
        );
        let canary = t.active().candidate.clone().expect("a candidate");
        assert_eq!(canary.base(), "http://canary:8080");
        assert_eq!(canary.policy().retries, 0);

        // A malformed file changes nothing.
        write(&path, r#"{"model":"m","candidateWeight":"#);
        t.reload().await;
        assert_eq!(t.config(), c);

        // Weights move live; the candidate's service is kept.
        write(
            &path,
            r#"{"model":"m","stable":"http://other-stable:8080","candidate":"http://canary:8080",
                "candidateWeight":150,"mirrorPercent":0}"#,
        );
        t.reload().await;
        assert_eq!(t.config().candidate_weight.percent(), 100.0, "clamped");
        assert_eq!(t.stable().base(), "http://other-stable:8080");
        let same = t.active().candidate.clone().expect("a candidate");
        assert!(Arc::ptr_eq(&same, &canary));

        std::fs::remove_file(&path).expect("remove");
        t.reload().await;
        assert_eq!(t.config(), TrafficConfig::stable_only());
        assert!(Arc::ptr_eq(&t.stable(), &t.fallback));
    }

    #[test]
    fn a_mirror_counts_stables_answer_in_its_budget() {
        let t = traffic(None);
        let answer = Expected::In(Bytes::from(vec![b' '; mirror::MAX_BYTES_IN_FLIGHT]));
        assert_eq!(answer.held_bytes(), mirror::MAX_BYTES_IN_FLIGHT);
        // A 1 KiB body with a 32 MiB answer from stable is over the 32 MiB budget.
        assert!(t.mirrors.admit(1024 + answer.held_bytes()).is_none());
        let known = Expected::Known(Top1::Label("red".into()));
        assert!(t.mirrors.admit(1024 + known.held_bytes()).is_some());
    }

    #[tokio::test]
    async fn a_file_naming_another_host_is_refused_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("traffic.json");
        let t = traffic(Some(path.clone()));
        write(
            &path,
            r#"{"model":"m","candidate":"http://canary:8080","candidateWeight":20}"#,
        );
        t.reload().await;
        let good = t.config();
        write(
            &path,
            r#"{"model":"m","candidate":"http://attacker.example:8080","candidateWeight":100}"#,
        );
        t.reload().await;
        assert_eq!(t.config(), good, "the last good file stays");
        write(&path, r#"{"model":"m","stable":"http://attacker.example"}"#);
        t.reload().await;
        assert_eq!(t.config(), good);
    }

    #[tokio::test]
    async fn a_malformed_file_at_start_means_stable_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("traffic.json");
        write(&path, r#"{"candidateWeight": 50}"#);
        let t = traffic(Some(path));
        t.reload().await;
        assert_eq!(t.config(), TrafficConfig::stable_only());
        assert_eq!(t.route(&t.active()), Route::Stable { mirror: false });
    }

    #[tokio::test]
    async fn a_symlink_swap_is_seen() {
        // What the kubelet does to a mounted ConfigMap: the file is a link through `..data`,
        // which is replaced by a rename.
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let version = |name: &str, weight: u32| {
            let d = root.join(name);
            std::fs::create_dir(&d).expect("mkdir");
            write(
                &d.join("traffic.json"),
                &format!(r#"{{"candidate":"http://c:1","candidateWeight":{weight}}}"#),
            );
        };
        version("..v1", 10);
        std::os::unix::fs::symlink("..v1", root.join("..data")).expect("link");
        std::os::unix::fs::symlink("..data/traffic.json", root.join("traffic.json")).expect("link");
        let t = traffic(Some(root.join("traffic.json")));
        t.reload().await;
        assert_eq!(t.config().candidate_weight.percent(), 10.0);
        version("..v2", 30);
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).expect("link");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
        std::fs::remove_dir_all(root.join("..v1")).expect("remove the old version");
        t.reload().await;
        assert_eq!(t.config().candidate_weight.percent(), 30.0);
    }
}
