//! Operator metrics (Prometheus text format at `/metrics`). Labels are bounded: a kind
//! (fixed set), a stable error reason (an enum variant's name), an apply outcome — never an
//! object name or error text.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    pub kind: String,
    pub outcome: String,
}

fn kind(kind: &str) -> KindLabels {
    KindLabels { kind: kind.into() }
}

/// Children per owner (uid → kind → count), summed into the `managed_objects` gauge.
type Owned = HashMap<String, BTreeMap<String, i64>>;

pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    applied: Family<ApplyLabels, Counter>,
    managed: Family<KindLabels, Gauge>,
    rollouts: Family<OutcomeLabels, Counter>,
    leader: Gauge,
    owned: Mutex<Owned>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// The outcomes a canary rollout ends with.
pub const ROLLOUT_OUTCOMES: [&str; 2] = ["Promoted", "RolledBack"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        crate::exposition::register_process_metrics(&mut root);
        let registry = root.sub_registry_with_prefix("sightline_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let applied = Family::<ApplyLabels, Counter>::default();
        let managed = Family::<KindLabels, Gauge>::default();
        let leader = Gauge::default();
        let rollouts = Family::<OutcomeLabels, Counter>::default();
        for outcome in ROLLOUT_OUTCOMES {
            let _ = rollouts.get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            });
        }
        registry.register(
            "rollouts",
            "Canary rollouts that ended, by outcome (Promoted, RolledBack)",
            rollouts.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciliations run, by custom resource kind",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations, by kind and stable reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            duration.clone(),
        );
        registry.register(
            "applied_objects",
            "Child objects applied, by kind and outcome (created, updated, unchanged, deleted)",
            applied.clone(),
        );
        registry.register(
            "managed_objects",
            "Objects the operator manages now: custom resources and their children, by kind",
            managed.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Metrics {
            registry: root,
            reconciles,
            errors,
            duration,
            applied,
            managed,
            rollouts,
            leader,
            owned: Mutex::new(HashMap::new()),
        }
    }

    /// Creates the reconcile series of `kinds` at zero, so dashboards and alerts see them
    /// before the first reconcile (and on a standby replica).
    pub fn preinit(&self, kinds: &[&str]) {
        for k in kinds {
            let _ = self.reconciles.get_or_create(&kind(k));
            let _ = self.duration.get_or_create(&kind(k));
        }
    }

    pub fn reconciled(&self, owner_kind: &str, took: Duration) {
        self.reconciles.get_or_create(&kind(owner_kind)).inc();
        self.duration
            .get_or_create(&kind(owner_kind))
            .observe(took.as_secs_f64());
    }

    pub fn failed(&self, owner_kind: &str, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: owner_kind.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn applied(&self, child_kind: &str, outcome: &str) {
        self.applied
            .get_or_create(&ApplyLabels {
                kind: child_kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A canary rollout ended with `outcome` (one of [`ROLLOUT_OUTCOMES`]).
    pub fn rollout_ended(&self, outcome: &str) {
        self.rollouts
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Records what one owner (by uid, of `owner_kind`) has now.
    pub fn owns(&self, owner_uid: &str, owner_kind: &str, children: &[&str]) {
        let mut counts = BTreeMap::from([(owner_kind.to_string(), 1)]);
        for child in children {
            *counts.entry((*child).to_string()).or_insert(0) += 1;
        }
        if let Ok(mut owned) = self.owned.lock() {
            owned.insert(owner_uid.to_string(), counts);
        }
    }

    /// Prometheus text; `live` (the uids of the custom resources that still exist) drops
    /// the owners deleted since.
    pub fn encode(&self, live: Option<&HashSet<String>>) -> String {
        if let Ok(mut owned) = self.owned.lock() {
            if let Some(live) = live {
                owned.retain(|uid, _| live.contains(uid));
            }
            let mut totals: BTreeMap<String, i64> = BTreeMap::new();
            for counts in owned.values() {
                for (k, n) in counts {
                    *totals.entry(k.clone()).or_insert(0) += n;
                }
            }
            self.managed.clear();
            for (k, n) in totals {
                self.managed.get_or_create(&kind(&k)).set(n);
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        crate::exposition::to_text_format(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_kinds_and_reasons_only() {
        let m = Metrics::new();
        m.reconciled("ImageModel", Duration::from_millis(12));
        m.failed("RecognitionPipeline", "ModelNotFound");
        m.applied("Deployment", "created");
        m.owns("uid-1", "ImageModel", &["Deployment", "Service"]);
        m.owns("uid-2", "ImageModel", &["Deployment"]);
        let text = m.encode(None);
        assert!(text.contains("sightline_operator_reconciles_total{kind=\"ImageModel\"} 1"));
        assert!(text.contains(
            "sightline_operator_reconcile_errors_total{kind=\"RecognitionPipeline\",reason=\"ModelNotFound\"} 1"
        ));
        assert!(text.contains("sightline_operator_managed_objects{kind=\"Deployment\"} 2"));
        let live = HashSet::from(["uid-1".to_string()]);
        let text = m.encode(Some(&live));
        assert!(text.contains("sightline_operator_managed_objects{kind=\"Deployment\"} 1"));
        assert!(text.contains("sightline_operator_reconcile_duration_seconds_bucket"));
        assert!(text.contains("sightline_operator_rollouts_total{outcome=\"RolledBack\"} 0"));
        m.rollout_ended("RolledBack");
        assert!(
            m.encode(None)
                .contains("sightline_operator_rollouts_total{outcome=\"RolledBack\"} 1")
        );
    }
}
