//! SIMULATION of what a canary's pods report through `pods/proxy`, driven only by traffic
//! that can happen: recognitions enter through the front door, which routes them by the
//! traffic file it applies — not by the one the operator last wrote — so a step's weight
//! reaches the pods only once the kubelet projected the ConfigMap. Small and named, one
//! rule per function:
//!
//! - [`Fleet::project_traffic`]: the kubelet updates a mounted ConfigMap "eventually",
//!   within its sync period plus its cache's TTL
//!   (<https://kubernetes.io/docs/concepts/configuration/configmap/#mounted-configmaps-are-updated-automatically>);
//!   the test says when. The front door re-reads the file every second and reports the
//!   generation it applies on `/readyz` (inference-server/src/pipeline/traffic).
//! - [`Fleet::serve`]: the front door's split, exact to one request
//!   (inference-server/src/pipeline/traffic/split.rs), mirrors a share of the stable
//!   recognitions (never at 100 %: a mirror copies a stable request); kube-proxy spreads
//!   each revision's requests over its ready pods.
//! - [`Fleet::restart`]: a restarted process counts from zero with a new
//!   `process_start_time_seconds` — a counter reset, which Prometheus' `rate()` reads as
//!   such (<https://prometheus.io/docs/prometheus/latest/querying/functions/#rate>).
//! - [`Fleet::fail_scrapes`]: a pod whose server does not answer `/metrics`: the API
//!   server's proxy answers 503 (Prometheus would record `up == 0` for the scrape).
//!
//! Each pod's `/metrics` is rendered in `sightline-server`'s own text format and buckets.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sightline_operator::status::Clock;

use super::{Cluster, NS, TestClock};

/// The recognize server's request latency buckets.
fn bounds() -> Vec<f64> {
    sightline_telemetry::request_latency_bounds()
}

/// How one revision answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Seconds each recognition takes.
    pub latency: f64,
    /// The revision's first recognition, and every `n`th after it, is answered 5xx.
    pub error_every: Option<u64>,
    /// Whether its top-1 equals the stable answer's on a mirrored request.
    pub agrees: bool,
}

impl Behaviour {
    /// The stable revision's (and a good candidate's): 8 ms, no errors.
    pub fn good() -> Behaviour {
        Behaviour {
            latency: 0.008,
            error_every: None,
            agrees: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Stable,
    Candidate,
    FrontDoor,
}

/// One pod's server.
#[derive(Debug, Clone)]
struct SimPod {
    role: Role,
    uid: String,
    started: f64,
    ok: u64,
    errors: u64,
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: Vec<u64>,
    agree: u64,
    disagree: u64,
    scrapes_fail: bool,
}

impl SimPod {
    fn new(role: Role, uid: String, started: f64) -> SimPod {
        SimPod {
            role,
            uid,
            started,
            ok: 0,
            errors: 0,
            buckets: vec![0; bounds().len() + 1],
            agree: 0,
            disagree: 0,
            scrapes_fail: false,
        }
    }

    fn recognize(&mut self, behaviour: &Behaviour, error: bool) {
        if error {
            self.errors += 1;
        } else {
            self.ok += 1;
        }
        let i = bounds()
            .iter()
            .position(|b| behaviour.latency <= *b)
            .unwrap_or(bounds().len());
        self.buckets[i] += 1;
    }

    /// `/metrics` as `sightline-server` writes it.
    fn metrics(&self, model: &str) -> String {
        let mut out = String::new();
        if self.role == Role::FrontDoor {
            for (outcome, n) in [("agree", self.agree), ("disagree", self.disagree)] {
                out.push_str(&format!(
                    "sightline_frontdoor_mirrored_total{{model=\"{model}\",outcome=\"{outcome}\"}} {n}\n"
                ));
            }
        } else {
            let route = "route=\"/api/v1/recognize\",method=\"POST\"";
            for (class, n) in [("2xx", self.ok), ("5xx", self.errors)] {
                out.push_str(&format!(
                    "sightline_http_requests_total{{{route},status_class=\"{class}\"}} {n}\n"
                ));
            }
            out.push_str(
                "sightline_http_requests_total{route=\"/readyz\",method=\"GET\",status_class=\"2xx\"} 99\n",
            );
            let mut cumulative = 0;
            let les = bounds()
                .into_iter()
                .map(|b| b.to_string())
                .chain(["+Inf".to_string()]);
            for (le, n) in les.zip(&self.buckets) {
                cumulative += n;
                out.push_str(&format!(
                    "sightline_http_request_duration_seconds_bucket{{{route},le=\"{le}\"}} {cumulative}\n"
                ));
            }
        }
        out.push_str(&format!("process_start_time_seconds {}\n", self.started));
        out
    }
}

/// The traffic file a front door applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub generation: u64,
    pub candidate_weight: f64,
    pub mirror_percent: f64,
}

/// The pods of one model's canary and its pipeline's front doors, as their servers would
/// report them.
pub struct Fleet {
    clock: Arc<TestClock>,
    model: String,
    stable_prefix: String,
    candidate_prefix: String,
    door_prefix: String,
    pods: BTreeMap<String, SimPod>,
    pub applied: Applied,
    pub stable: Behaviour,
    pub candidate: Behaviour,
    /// What the split owes each side (the split is exact to one request).
    carry: (f64, f64),
    /// Recognitions each revision answered so far (kube-proxy's round robin, and which
    /// one errs).
    served: (u64, u64),
}

impl Fleet {
    /// `model`'s stable pods are `{model}-recognize-*`, the candidate's
    /// `{model}-recognize-canary-*`, the front doors `{pipeline}-upload-*`.
    pub fn new(clock: Arc<TestClock>, model: &str, pipeline: &str) -> Fleet {
        Fleet {
            clock,
            model: model.into(),
            stable_prefix: format!("{model}-recognize-"),
            candidate_prefix: format!("{model}-recognize-canary-"),
            door_prefix: format!("{pipeline}-upload-"),
            pods: BTreeMap::new(),
            applied: Applied::default(),
            stable: Behaviour::good(),
            candidate: Behaviour::good(),
            carry: (0.0, 0.0),
            served: (0, 0),
        }
    }

    fn now(&self) -> f64 {
        self.clock.now().as_second() as f64
    }

    fn role(&self, name: &str) -> Option<Role> {
        if name.starts_with(&self.candidate_prefix) {
            Some(Role::Candidate)
        } else if name.starts_with(&self.stable_prefix) {
            Some(Role::Stable)
        } else if name.starts_with(&self.door_prefix) {
            Some(Role::FrontDoor)
        } else {
            None
        }
    }

    /// The traffic file in the model's ConfigMap now.
    async fn written(&self, cluster: &Cluster) -> Applied {
        let cm = Api::<ConfigMap>::namespaced(cluster.admin.clone(), NS)
            .get_opt(&format!("{}-traffic", self.model))
            .await
            .expect("get the traffic ConfigMap");
        let text = cm
            .and_then(|c| c.data)
            .and_then(|d| d.get("traffic.json").cloned())
            .unwrap_or_else(|| "{}".into());
        let file: Value = serde_json::from_str(&text).expect("traffic.json");
        Applied {
            generation: file["generation"].as_u64().unwrap_or(0),
            candidate_weight: file["candidateWeight"].as_f64().unwrap_or(0.0),
            mirror_percent: file["mirrorPercent"].as_f64().unwrap_or(0.0),
        }
    }

    /// Takes in the pods that run now: a new pod (or a new uid under a known name)
    /// starts a process from zero; a pod gone is forgotten. A new front door mounts the
    /// ConfigMap as it is now. Then publishes what every pod answers.
    pub async fn sync(&mut self, cluster: &Cluster) {
        let pods = Api::<Pod>::namespaced(cluster.admin.clone(), NS)
            .list(&ListParams::default())
            .await
            .expect("pods")
            .items;
        let now = self.now();
        let mut seen = BTreeMap::new();
        for pod in &pods {
            let name = pod.name_any();
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let (Some(role), true) = (self.role(&name), running) else {
                continue;
            };
            let uid = pod.uid().unwrap_or_default();
            let pod = match self.pods.remove(&name) {
                Some(known) if known.uid == uid => known,
                _ => SimPod::new(role, uid, now),
            };
            seen.insert(name, pod);
        }
        let new_door = seen
            .iter()
            .any(|(n, p)| p.role == Role::FrontDoor && !self.pods.contains_key(n));
        self.pods = seen;
        if new_door || self.applied == Applied::default() {
            self.applied = self.written(cluster).await;
        }
        self.publish(cluster);
    }

    /// The kubelet projects the ConfigMap into the front doors, which apply it.
    pub async fn project_traffic(&mut self, cluster: &Cluster) {
        self.applied = self.written(cluster).await;
        self.publish(cluster);
    }

    fn names(&self, role: Role) -> Vec<String> {
        self.pods
            .iter()
            .filter(|(_, p)| p.role == role)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// `n` recognitions through the front door, routed by the traffic it applies.
    pub fn serve(&mut self, cluster: &Cluster, n: u64) {
        let candidates = self.names(Role::Candidate);
        let stables = self.names(Role::Stable);
        let doors = self.names(Role::FrontDoor);
        let weight = if candidates.is_empty() {
            0.0
        } else {
            self.applied.candidate_weight / 100.0
        };
        let owed = self.carry.0 + n as f64 * weight;
        let to_candidate = (owed.floor() as u64).min(n);
        self.carry.0 = owed - to_candidate as f64;
        let to_stable = n - to_candidate;
        let mirror = if candidates.is_empty() {
            0.0
        } else {
            self.applied.mirror_percent / 100.0
        };
        let owed = self.carry.1 + to_stable as f64 * mirror;
        let mirrored = owed.floor() as u64;
        self.carry.1 = owed - mirrored as f64;
        for i in 0..to_candidate {
            let k = self.served.1 + i;
            let error = self
                .candidate
                .error_every
                .is_some_and(|e| k.is_multiple_of(e));
            let behaviour = self.candidate.clone();
            let name = &candidates[(k as usize) % candidates.len()];
            if let Some(pod) = self.pods.get_mut(name) {
                pod.recognize(&behaviour, error);
            }
        }
        for i in 0..to_stable {
            let behaviour = self.stable.clone();
            let name = &stables[((self.served.0 + i) as usize) % stables.len()];
            if let Some(pod) = self.pods.get_mut(name) {
                pod.recognize(&behaviour, false);
            }
        }
        for i in 0..mirrored {
            let agrees = self.candidate.agrees;
            let name = &doors[(i as usize) % doors.len()];
            if let Some(pod) = self.pods.get_mut(name) {
                if agrees {
                    pod.agree += 1;
                } else {
                    pod.disagree += 1;
                }
            }
        }
        self.served.0 += to_stable;
        self.served.1 += to_candidate;
        self.publish(cluster);
    }

    /// The pod named `name` restarts: its process counts from zero.
    pub fn restart(&mut self, cluster: &Cluster, name: &str) {
        let now = self.now();
        let pod = self.pods.get_mut(name).expect("a known pod");
        *pod = SimPod::new(pod.role, pod.uid.clone(), now);
        self.publish(cluster);
    }

    /// The ReplicaSet controller deletes pod `name` (its Deployment scaled down, e.g. by
    /// the HPA): it serves nothing more.
    pub async fn remove_pod(&mut self, cluster: &Cluster, name: &str) {
        Api::<Pod>::namespaced(cluster.admin.clone(), NS)
            .delete(name, &Default::default())
            .await
            .expect("delete the pod");
        self.pods.remove(name);
    }

    /// The pod named `name` stops (or starts again) answering `/metrics`.
    pub fn fail_scrapes(&mut self, cluster: &Cluster, name: &str, failing: bool) {
        self.pods.get_mut(name).expect("a known pod").scrapes_fail = failing;
        self.publish(cluster);
    }

    /// The names of the pods of a role: `stable`, `candidate` or `door`.
    pub fn pods(&self, role: &str) -> Vec<String> {
        self.names(match role {
            "stable" => Role::Stable,
            "candidate" => Role::Candidate,
            _ => Role::FrontDoor,
        })
    }

    /// What each pod answers through `pods/proxy` now.
    fn publish(&self, cluster: &Cluster) {
        for (name, pod) in &self.pods {
            if pod.scrapes_fail {
                let body = super::status_body(
                    503,
                    "ServiceUnavailable",
                    "error trying to reach service: dial tcp: i/o timeout",
                );
                cluster.answer_pod(name, "/metrics", 503, body);
            } else {
                cluster.answer_pod(name, "/metrics", 200, pod.metrics(&self.model));
            }
            if pod.role == Role::FrontDoor {
                let traffic = json!({"model": self.model, "generation": self.applied.generation,
                    "candidateWeight": self.applied.candidate_weight,
                    "mirrorPercent": self.applied.mirror_percent});
                let body = json!({"status": "ready", "traffic": traffic}).to_string();
                cluster.answer_pod(name, "/readyz", 200, body);
            }
        }
    }
}
