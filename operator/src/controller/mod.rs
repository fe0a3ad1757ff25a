//! Module order, one way: each module imports only modules before it, never one after it
//! (issue 19; re-exports count).
//! - leaves: `quantity`, `status`, `rollout`, `served`, `traffic`, `exposition`, `leader`,
//!   `canary` (the analysis: `figures`, `stats`, `window`, `live`);
//! - `crd` (`rollout`, `runtime`, `monitoring` → `model`, `pipeline`) → `validate`,
//!   `verdict`, `metrics`, `quality`;
//! - `build`: `meta`, `pod` → `model::identity`, `pipeline::identity` → `canary`, `device`,
//!   `sizing`, `inputs`, `network`, `monitoring` → `model` (`fetch` → `deployment`) →
//!   `pipeline` (`config`, `storage` → `workloads`, `routes`); then `apply`, `render`,
//!   `crdgen`;
//! - `controller`: `pods` → this module (`Context`, `Error`) → `observe`, `model_status`,
//!   `canary::clock` → `canary::read` → `quality` → `canary::traffic` → `canary` →
//!   `canary::window` → `model` → `pipeline` → `run`. The model controller calls the canary; the canary never
//!   names the model controller.
//!
//! The reconcilers. Each is a short pipeline: fetch what the resource references →
//! validate → build the children (pure, [`crate::build`]) → apply ([`crate::apply`]) →
//! status. Only the fetch, apply and status steps touch the API.

pub mod canary;
pub mod job_progress;
pub mod model;
pub mod model_status;
pub mod observe;
pub mod pipeline;
pub mod pods;
pub mod quality;
pub mod recognition_job;
pub mod referrers;
pub mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use tracing::warn;

use crate::apply::{self, ApplyError, Child, Outcome};
use crate::build::pod::Platform;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::status::{Clock, Cond, reasons};
use crate::validate::Invalid;

/// Resync period of a healthy resource (changes arrive by watch before that).
pub const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] Invalid),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("reading {what}: {source}")]
    Fetch {
        what: &'static str,
        source: kube::Error,
    },
    #[error("{0} has no namespace or uid yet")]
    Incomplete(String),
}

impl Error {
    /// A stable, bounded name for metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => reasons::INVALID_SPEC,
            Error::Apply(e) => e.reason(),
            Error::Fetch { .. } => "FetchFailed",
            Error::Incomplete(_) => "Incomplete",
        }
    }

    /// Spec errors wait for the spec to change; everything else is retried.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::InvalidSpec(_))
    }
}

/// What the cluster serves, found by discovery at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterApis {
    /// `gateway.networking.k8s.io/v1` HTTPRoutes.
    pub gateway_api: bool,
    /// `monitoring.coreos.com/v1` ServiceMonitors (the Prometheus Operator).
    pub service_monitors: bool,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub platform: Platform,
    /// The cluster serves `gateway.networking.k8s.io/v1` HTTPRoutes.
    pub gateway_api: bool,
    /// The cluster serves `monitoring.coreos.com/v1` ServiceMonitors.
    pub service_monitors: bool,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// How pods' own HTTP answers are read (`pods/proxy` unless [`Context::with_pods`]).
    pods: Arc<dyn pods::PodHttp>,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    /// Reconciles in a row that found a rollout stuck, per object.
    stuck: Mutex<HashMap<String, u32>>,
    /// The operator may list Nodes (not when it watches only some namespaces).
    pub read_nodes: bool,
    /// Whether this replica leads: every write checks it ([`Context::not_leading`]), and a
    /// lost Lease cancels the reconciles in flight ([`instrumented`]).
    pub leadership: Leadership,
}

impl Context {
    /// `instance` names this operator replica in events (its pod name).
    pub fn new(
        client: Client,
        platform: Platform,
        apis: ClusterApis,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: apply::FIELD_MANAGER.into(),
                instance,
            },
        );
        Context {
            pods: Arc::new(pods::ApiServerProxy(client.clone())),
            client,
            platform,
            gateway_api: apis.gateway_api,
            service_monitors: apis.service_monitors,
            metrics,
            clock,
            recorder,
            failures: Mutex::new(HashMap::new()),
            stuck: Mutex::new(HashMap::new()),
            read_nodes: true,
            leadership: Leadership::default(),
        }
    }

    /// Writes only while `leadership` says this replica leads.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }

    /// `NotLeading` once the Lease is lost: the one check before every write.
    fn not_leading<K: Resource<DynamicType = ()>>(&self, name: &str) -> Option<ApplyError> {
        (!self.leadership.is_leading()).then(|| ApplyError::NotLeading {
            kind: K::kind(&()).into_owned(),
            name: name.to_string(),
        })
    }

    /// Writes the status of `owner` ([`apply::patch_status`]).
    pub async fn patch_status<K: Child, S: serde::Serialize>(
        &self,
        owner: &K,
        status: &S,
    ) -> Result<(), ApplyError> {
        if let Some(refused) = self.not_leading::<K>(&owner.name_any()) {
            return Err(refused);
        }
        apply::patch_status(&self.client, owner, status).await
    }

    /// Watching only some namespaces: no Node is read (a Role cannot grant it).
    pub fn without_nodes(mut self) -> Self {
        self.read_nodes = false;
        self
    }

    /// This context reading pods' own HTTP answers with `pods` instead of `pods/proxy`.
    pub fn with_pods(mut self, pods: Arc<dyn pods::PodHttp>) -> Self {
        self.pods = pods;
        self
    }

    /// `GET {path}` on `pod`'s server port (see [`pods::PodHttp`]).
    pub async fn pod_get(&self, ns: &str, pod: &str, path: &str) -> Result<(u16, String), String> {
        self.pods.get(ns, pod, path).await
    }

    /// `GET {path}` on `pod`'s server port as `ask` says (see [`pods::PodHttp::get_as`]).
    pub async fn pod_get_as(
        &self,
        ns: &str,
        pod: &str,
        path: &str,
        ask: pods::Ask<'_>,
    ) -> Result<(u16, String), String> {
        self.pods.get_as(ns, pod, path, ask).await
    }

    /// Publishes an event about `object`; a failure to publish is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        if !self.leadership.is_leading() {
            return;
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            warn!(%error, reason, "could not publish an event");
        }
    }

    /// Applies one child, counting the outcome; `changes` collects what changed.
    pub async fn apply<K: Child>(
        &self,
        desired: &K,
        changes: &mut Vec<String>,
    ) -> Result<K, ApplyError> {
        if let Some(refused) = self.not_leading::<K>(&desired.name_any()) {
            return Err(refused);
        }
        let (outcome, live) = apply::apply(&self.client, desired).await?;
        let kind = K::kind(&());
        let word = match outcome {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        };
        self.metrics.applied(&kind, word);
        if outcome != Outcome::Unchanged {
            changes.push(format!("{word} {kind} {}", live.name_any()));
        }
        Ok(live)
    }

    /// Hands a Deployment's `spec.replicas` to the HPA ([`apply::hand_over_replicas`]).
    pub async fn hand_over_replicas(
        &self,
        live: &k8s_openapi::api::apps::v1::Deployment,
    ) -> Result<(), ApplyError> {
        if let Some(refused) =
            self.not_leading::<k8s_openapi::api::apps::v1::Deployment>(&live.name_any())
        {
            return Err(refused);
        }
        apply::hand_over_replicas(&self.client, live).await?;
        self.metrics.applied("Deployment", "updated");
        Ok(())
    }

    /// Deletes the optional children of kind `K` that the spec no longer wants.
    pub async fn prune<K: Child>(
        &self,
        owner_ns: &str,
        owner_name: &str,
        owner_uid: &str,
        keep: &[String],
        changes: &mut Vec<String>,
    ) -> Result<(), ApplyError> {
        if let Some(refused) = self.not_leading::<K>(owner_name) {
            return Err(refused);
        }
        let selector = format!(
            "{}={owner_name},{}={}",
            crate::build::meta::LABEL_INSTANCE,
            crate::build::meta::LABEL_MANAGED_BY,
            crate::build::meta::MANAGED_BY
        );
        let deleted = apply::prune::<K>(&self.client, owner_ns, &selector, owner_uid, keep).await?;
        let kind = K::kind(&());
        for name in deleted {
            self.metrics.applied(&kind, "deleted");
            changes.push(format!("deleted {kind} {name}"));
        }
        Ok(())
    }

    fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        // 5 s, 10 s, 20 s … capped at 5 minutes.
        Duration::from_secs(5u64.saturating_mul(1 << (*n - 1).min(6)).min(300))
    }

    /// The requeue delay for an object whose rollout is stuck: 15 s, 30 s, 60 s … capped at
    /// 5 minutes (pod changes still arrive by watch at once).
    pub fn stalled(&self, key: &str) -> Duration {
        let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        let n = stuck.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(15u64.saturating_mul(1 << (*n - 1).min(5)).min(300))
    }

    /// The object's rollout is no longer stuck.
    pub fn unstalled(&self, key: &str) {
        let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        stuck.remove(key);
    }

    fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }
}

/// `k=v,k=v` for a list call's label selector.
pub fn label_selector(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A Warning event when `ready` newly reports a failure (its reason or message differs
/// from what the status said before), so a stuck rollout is announced once, not on every
/// reconcile.
pub async fn warn_on_new_failure<K: Resource<DynamicType = ()>>(
    object: &K,
    ctx: &Context,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ready: &Cond,
    failed: bool,
) {
    if !failed {
        return;
    }
    let said_before = previous
        .iter()
        .any(|c| c.type_ == ready.type_ && c.reason == ready.reason && c.message == ready.message);
    if !said_before {
        ctx.event(
            object,
            EventType::Warning,
            &ready.reason,
            ready.message.clone(),
        )
        .await;
    }
}

pub(crate) fn key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The controllers' error policy: spec errors wait for a change, others back off
/// exponentially per object (never a hot loop).
pub fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    if error.is_permanent() {
        return Action::await_change();
    }
    Action::requeue(ctx.backoff(&key(object.as_ref())))
}

/// Runs one reconcile with metrics, events on failure and the backoff bookkeeping.
pub async fn instrumented<K, F>(object: &K, ctx: &Context, work: F) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<Action, Error>>,
{
    let kind = K::kind(&());
    let start = std::time::Instant::now();
    // A lost Lease cancels the reconcile at its next await (a write already sent cannot
    // be recalled; every later one is refused by [`Context::not_leading`]).
    let result = tokio::select! {
        result = work => result,
        () = ctx.leadership.lost() => Err(Error::Apply(ApplyError::NotLeading {
            kind: kind.to_string(),
            name: object.name_any(),
        })),
    };
    ctx.metrics.reconciled(&kind, start.elapsed());
    match &result {
        Ok(_) => ctx.succeeded(&key(object)),
        Err(Error::Apply(ApplyError::NotLeading { .. })) => {
            warn!(kind = %kind, name = %object.name_any(), "reconcile stopped: the Lease is lost");
        }
        Err(error) => {
            ctx.metrics.failed(&kind, error.reason());
            warn!(kind = %kind, name = %object.name_any(), %error, "reconcile failed");
            ctx.event(
                object,
                EventType::Warning,
                error.reason(),
                error.to_string(),
            )
            .await;
        }
    }
    result
}
