//! Prometheus metrics: one registry per process, each component registers its own
//! families. Labels are bounded: route templates, method, status class, model name,
//! device, reason — never ids, URLs or error text.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
pub use sightline_model::metrics::{Decoding, InferenceMetrics};
pub use sightline_store::metrics::StoreMetrics;
pub use sightline_store::quality_gauges::QualityGauges;
use sightline_telemetry::{
    F64Gauge, HistogramFamily, ModelLabels, latency_histogram, request_latency_histogram,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

fn upload_size_histogram() -> Histogram {
    // 1 KiB … 64 MiB
    Histogram::new(exponential_buckets(1024.0, 4.0, 9))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerInfoLabels {
    pub role: String,
    pub version: String,
}

/// The process-wide registry plus the families every role shares.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    info: Family<ServerInfoLabels, Gauge>,
    pub http: HttpMetrics,
    pub inference: InferenceMetrics,
    pub pipeline: PipelineMetrics,
    pub store: StoreMetrics,
    /// Filled by the store role only (`crate::store::background`).
    pub quality: QualityGauges,
    pub front_door: FrontDoorMetrics,
}

impl Metrics {
    /// Builds the registry for a process serving `model` (empty for roles without one):
    /// the `sightline_*` families plus the conventional `process_*` ones.
    pub fn new(model: &str) -> Metrics {
        let mut root = Registry::default();
        sightline_telemetry::exposition::register_process_metrics(&mut root);
        let registry = root.sub_registry_with_prefix("sightline");
        let info = Family::<ServerInfoLabels, Gauge>::default();
        registry.register(
            "server_info",
            "The role this sightline-server process runs and its version (value is always 1)",
            info.clone(),
        );
        let http = HttpMetrics::register(registry);
        let inference = InferenceMetrics::register(registry, model);
        let pipeline = PipelineMetrics::register(registry);
        let store = StoreMetrics::register(registry);
        let quality = QualityGauges::register(registry);
        let front_door = FrontDoorMetrics::register(registry);
        Metrics {
            registry: Arc::new(root),
            info,
            http,
            inference,
            pipeline,
            store,
            quality,
            front_door,
        }
    }

    /// Records which role this process runs (`sightline_server_info{role, version}`).
    pub fn set_role(&self, role: &str) {
        self.info.clear();
        self.info
            .get_or_create(&ServerInfoLabels {
                role: role.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Requests and latency per route template.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: HistogramFamily<RouteLabels>,
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> HttpMetrics {
        let requests = Family::<HttpLabels, Counter>::default();
        let duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(request_latency_histogram);
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status class",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request received to response headers sent, by route template",
            duration.clone(),
        );
        HttpMetrics { requests, duration }
    }

    /// Counts one answered request. `route` is a route template (or `unmatched`); the
    /// method and status become labels from fixed sets, so whatever a caller sends, even
    /// unauthenticated (a 401 or a 405 is counted too), adds no series.
    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        let status_class = match status / 100 {
            class @ 1..=5 => format!("{class}xx"),
            _ => "other".to_string(),
        };
        self.requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method: method.to_string(),
                status_class,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method: method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// The HTTP methods the API uses (case-sensitive, as RFC 9110 defines them), else `other`.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DownstreamLabels {
    pub downstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DownstreamOutcomeLabels {
    pub downstream: String,
    pub outcome: String,
}

/// The upload and store roles and the calls between services.
#[derive(Clone)]
pub struct PipelineMetrics {
    images: Family<OutcomeLabels, Counter>,
    results: Family<OutcomeLabels, Counter>,
    calls: Family<DownstreamOutcomeLabels, Counter>,
    call_duration: HistogramFamily<DownstreamLabels>,
    breaker_open: Family<DownstreamLabels, Gauge>,
    auth_rejected: Family<OutcomeLabels, Counter>,
    upload_size: HistogramFamily<OutcomeLabels>,
    uploads_rejected: Family<ReasonLabels, Counter>,
}

impl PipelineMetrics {
    fn register(registry: &mut Registry) -> PipelineMetrics {
        let m = PipelineMetrics {
            images: Family::default(),
            results: Family::default(),
            calls: Family::default(),
            call_duration: Family::new_with_constructor(latency_histogram),
            breaker_open: Family::default(),
            auth_rejected: Family::default(),
            upload_size: Family::new_with_constructor(upload_size_histogram),
            uploads_rejected: Family::default(),
        };
        registry.register(
            "images_stored",
            "Images accepted by the upload role, by outcome (new, existing)",
            m.images.clone(),
        );
        registry.register(
            "results_saved",
            "Results saved by the store role, by outcome (new, existing)",
            m.results.clone(),
        );
        registry.register(
            "downstream_calls",
            "Calls to other services, by downstream and outcome (ok, refused, retry, unavailable, circuit_open)",
            m.calls.clone(),
        );
        registry.register(
            "downstream_call_duration_seconds",
            "Time of one attempt of a call to another service",
            m.call_duration.clone(),
        );
        registry.register(
            "circuit_breaker_open",
            "1 while the circuit breaker to a downstream is open",
            m.breaker_open.clone(),
        );
        registry.register(
            "upload_size_bytes",
            "Size of the images accepted by the upload role, by outcome (new, existing)",
            m.upload_size.clone(),
        );
        registry.register(
            "uploads_rejected",
            "Uploads refused, by reason (too_large, unsupported_format, malformed, store_unavailable, internal)",
            m.uploads_rejected.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests refused by authentication or rate limiting, by reason",
            m.auth_rejected.clone(),
        );
        m
    }

    fn outcome(new: bool) -> OutcomeLabels {
        OutcomeLabels {
            outcome: if new { "new" } else { "existing" }.to_string(),
        }
    }

    /// An accepted upload of `bytes` bytes (`new`: not stored before).
    pub fn image_stored(&self, new: bool, bytes: usize) {
        self.images.get_or_create(&Self::outcome(new)).inc();
        self.upload_size
            .get_or_create(&Self::outcome(new))
            .observe(bytes as f64);
    }

    /// A refused upload; `reason` is one of a fixed set (see the family's help).
    pub fn upload_rejected(&self, reason: &'static str) {
        self.uploads_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn result_saved(&self, new: bool) {
        self.results.get_or_create(&Self::outcome(new)).inc();
    }

    pub fn downstream_call(&self, downstream: &'static str, outcome: &'static str) {
        self.calls
            .get_or_create(&DownstreamOutcomeLabels {
                downstream: downstream.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn downstream_latency(&self, downstream: &'static str, elapsed: Duration) {
        self.call_duration
            .get_or_create(&DownstreamLabels {
                downstream: downstream.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn breaker_open(&self, downstream: &'static str, open: bool) {
        self.breaker_open
            .get_or_create(&DownstreamLabels {
                downstream: downstream.to_string(),
            })
            .set(i64::from(open));
    }

    pub fn auth_rejected(&self, reason: &'static str) {
        self.auth_rejected
            .get_or_create(&OutcomeLabels {
                outcome: reason.to_string(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub model: String,
    /// `stable` or `candidate` (never the revision's digest).
    pub revision: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelOutcomeLabels {
    pub model: String,
    pub outcome: String,
}

/// The front door's traffic split and mirroring ([`crate::pipeline::traffic`]). The
/// operator reads `sightline_frontdoor_mirrored_total{model,outcome}` from each front door
/// to decide a canary's top-1 agreement: keep its name and labels.
#[derive(Clone)]
pub struct FrontDoorMetrics {
    requests: Family<RevisionLabels, Counter>,
    mirrored: Family<ModelOutcomeLabels, Counter>,
    candidate_weight: Family<ModelLabels, F64Gauge>,
    mirror_percent: Family<ModelLabels, F64Gauge>,
    reloads: Family<OutcomeLabels, Counter>,
    generation: Family<ModelLabels, Gauge>,
}

impl FrontDoorMetrics {
    /// The outcomes of a mirrored request (label values).
    pub const MIRRORED: [&'static str; 5] = ["agree", "disagree", "error", "timeout", "dropped"];

    fn families() -> FrontDoorMetrics {
        FrontDoorMetrics {
            requests: Family::default(),
            mirrored: Family::default(),
            candidate_weight: Family::default(),
            mirror_percent: Family::default(),
            reloads: Family::default(),
            generation: Family::default(),
        }
    }

    fn register(registry: &mut Registry) -> FrontDoorMetrics {
        let m = Self::families();
        registry.register(
            "frontdoor_requests",
            "Recognitions the front door forwarded, by model, revision (stable, candidate) and \
             outcome (ok: an answer below 500; error: none, or a 5xx — a candidate's is then \
             retried on stable)",
            m.requests.clone(),
        );
        registry.register(
            "frontdoor_mirrored",
            "Stable recognitions mirrored to the candidate, by model and outcome (agree, \
             disagree: the top-1 answers compared; error, timeout; dropped: over the bound on \
             mirrors in flight)",
            m.mirrored.clone(),
        );
        registry.register(
            "frontdoor_candidate_weight",
            "Percent of recognitions sent to the candidate revision (from the traffic file)",
            m.candidate_weight.clone(),
        );
        registry.register(
            "frontdoor_mirror_percent",
            "Percent of stable recognitions mirrored to the candidate (from the traffic file)",
            m.mirror_percent.clone(),
        );
        registry.register(
            "frontdoor_traffic_reloads",
            "Changes of the traffic file seen, by outcome (applied; absent: everything to \
             --recognize-url; invalid: unreadable or malformed, the last good one kept)",
            m.reloads.clone(),
        );
        registry.register(
            "frontdoor_traffic_generation",
            "The generation of the traffic file applied (the operator's count of routing \
             changes; it waits for every front door to report one before acting on it)",
            m.generation.clone(),
        );
        m
    }

    /// Families that belong to no registry (for tests).
    pub fn unregistered() -> FrontDoorMetrics {
        Self::families()
    }

    /// A forwarded recognition's answer from `revision` (`stable` or `candidate`).
    pub fn request(&self, model: &str, revision: &'static str, ok: bool) {
        self.requests
            .get_or_create(&RevisionLabels {
                model: model.to_string(),
                revision: revision.to_string(),
                outcome: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
    }

    /// A mirrored request's outcome, one of [`FrontDoorMetrics::MIRRORED`].
    pub fn mirrored(&self, model: &str, outcome: &'static str) {
        self.mirrored
            .get_or_create(&ModelOutcomeLabels {
                model: model.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The weights now applied for `model` (the series of a previous model are dropped),
    /// with zero series for every request and mirror outcome, so rates have data before
    /// the first event.
    pub fn weights(&self, model: &str, candidate_weight: f64, mirror_percent: f64) {
        let labels = ModelLabels {
            model: model.to_string(),
        };
        self.candidate_weight.clear();
        self.mirror_percent.clear();
        self.candidate_weight
            .get_or_create(&labels)
            .set(candidate_weight);
        self.mirror_percent
            .get_or_create(&labels)
            .set(mirror_percent);
        for revision in ["stable", "candidate"] {
            for outcome in ["ok", "error"] {
                self.requests
                    .get_or_create(&RevisionLabels {
                        model: model.to_string(),
                        revision: revision.to_string(),
                        outcome: outcome.to_string(),
                    })
                    .inc_by(0);
            }
        }
        for outcome in Self::MIRRORED {
            self.mirrored
                .get_or_create(&ModelOutcomeLabels {
                    model: model.to_string(),
                    outcome: outcome.to_string(),
                })
                .inc_by(0);
        }
    }

    /// The generation of the traffic file applied now (the only series).
    pub fn generation(&self, model: &str, generation: u64) {
        self.generation.clear();
        self.generation
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// A change of the traffic file: `applied`, `absent` or `invalid`.
    pub fn reload(&self, outcome: &'static str) {
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests;
