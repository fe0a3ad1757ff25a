//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator replicas can run
//! and only one reconciles. Each attempt reads the Lease and takes it when it is free,
//! expired, or already ours; the write is a replace carrying the read `resourceVersion`,
//! so two candidates racing for it cannot both win (the loser gets a 409 Conflict).
//!
//! Holding it follows client-go's timing: the leader retries its renewal every
//! [`LeaseLock::retry_period`] and steps down once it has gone [`LeaseLock::renew_deadline`]
//! (two thirds of the lease, 10 s of 15 s) without a successful renewal — well before a
//! standby may take the expired Lease — so two leaders never overlap ([`keep_leading`]).
//!
//! Expiry is judged as client-go's `LeaderElector` judges it: by this replica's own clock
//! at the moment it **observed** the holder's record change, never by comparing the
//! holder's `renewTime` (written by another machine's clock) with the local clock. A
//! holder whose clock runs behind is not robbed while it renews; one whose clock runs
//! ahead and stops renewing is taken over a lease duration after its last change was seen.
//!
//! Losing the lease stops the reconcilers from writing: [`Leadership`] is shared with
//! them, in-flight reconciles are cancelled and every write checks it first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

#[derive(Debug, thiserror::Error)]
#[error("lease {name}: {source}")]
pub struct LeaseError {
    name: String,
    source: kube::Error,
}

/// One candidate for one Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The holder's record as last seen, and when (this replica's clock).
    observed: Arc<Mutex<Option<(LeaseSpec, Timestamp)>>>,
}

/// The parts of a Lease record whose change shows the holder is alive (client-go compares
/// the whole `LeaderElectionRecord`).
fn record(spec: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: spec.holder_identity.clone(),
        lease_duration_seconds: spec.lease_duration_seconds,
        acquire_time: spec.acquire_time.clone(),
        renew_time: spec.renew_time.clone(),
        lease_transitions: spec.lease_transitions,
        ..LeaseSpec::default()
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// The outcome of a write: `true` when it went through, `false` when another candidate's
/// write came first (409 Conflict).
fn won(written: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match written {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observed: Arc::default(),
        }
    }

    /// Notes the record seen at `now`; the time it was first seen as it is.
    fn observe(&self, spec: &LeaseSpec, now: Timestamp) -> Timestamp {
        let seen = record(spec);
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        match observed.as_ref() {
            Some((last, at)) if *last == seen => *at,
            _ => {
                *observed = Some((seen, now));
                now
            }
        }
    }

    /// How often a standby tries to take the Lease: a third of the lease duration.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// How often the leader renews (and retries a failed renewal): client-go's 2 s, less
    /// for short leases.
    pub fn retry_period(&self) -> Duration {
        (self.duration / 7).min(Duration::from_secs(2))
    }

    /// How long the leader may go without a successful renewal before it steps down: two
    /// thirds of the lease (client-go: 10 s of 15 s), so it stops before anyone else may
    /// take the Lease.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn err(&self, source: kube::Error) -> LeaseError {
        LeaseError {
            name: self.name.clone(),
            source,
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to take or renew the Lease, `now` being this replica's own clock;
    /// `true` when this candidate holds it afterwards.
    pub async fn try_acquire(&self, now: Timestamp) -> Result<bool, LeaseError> {
        let Some(mut lease) = self.read().await? else {
            let spec = self.spec(now, None, 0);
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec.clone()),
            };
            let won = won(self.api.create(&PostParams::default(), &lease).await)
                .map_err(|e| self.err(e))?;
            if won {
                self.observe(&spec, now);
            }
            return Ok(won);
        };
        let current = lease.spec.clone().unwrap_or_default();
        let holder = current.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let seen_at = self.observe(&current, now);
        let ttl = SignedDuration::from_secs(i64::from(current.lease_duration_seconds.unwrap_or(0)));
        let expired = seen_at + ttl <= now;
        if !(ours || holder.is_empty() || expired) {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { current.acquire_time } else { None };
        let spec = self.spec(now, acquired, transitions);
        lease.spec = Some(spec.clone());
        let won = won(self.replace(&lease).await).map_err(|e| self.err(e))?;
        if won {
            self.observe(&spec, now);
        }
        Ok(won)
    }

    async fn read(&self) -> Result<Option<Lease>, LeaseError> {
        self.api.get_opt(&self.name).await.map_err(|e| self.err(e))
    }

    /// Writes `lease` back; the read `resourceVersion` it carries makes a racing write lose.
    async fn replace(&self, lease: &Lease) -> Result<Lease, kube::Error> {
        self.api
            .replace(&self.name, &PostParams::default(), lease)
            .await
    }

    /// Gives the Lease up (on shutdown), so another replica need not wait for it to expire.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self.read().await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        lease.spec = Some(spec);
        // Lost a race: someone else holds it now, which is what releasing is for.
        won(self.replace(&lease).await)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

/// Whether this replica leads, shared by the lease renewal (which ends it) and the
/// reconcilers (which stop writing when it ends).
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: tokio::sync::watch::Sender<bool>,
}

impl Default for Leadership {
    /// Leading (a single replica, a test).
    fn default() -> Self {
        Leadership {
            leading: tokio::sync::watch::Sender::new(true),
        }
    }
}

impl Leadership {
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// The Lease is lost: every reconcile stops writing.
    pub fn step_down(&self) {
        self.leading.send_replace(false);
    }

    /// Resolves once the Lease is lost.
    pub async fn lost(&self) {
        let mut leading = self.leading.subscribe();
        let _ = leading.wait_for(|leads| !leads).await;
    }
}

/// Why the leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SteppedDown {
    /// Another replica holds the Lease now.
    Taken,
    /// No renewal succeeded within the renew deadline (the last error, in words).
    DeadlinePassed(String),
}

/// Renews `lock` every retry period until it cannot: returns when another replica took
/// the Lease or when the renew deadline passed without a successful renewal. Each attempt
/// is bounded by the retry period, so a hung API call cannot stretch the deadline.
pub async fn keep_leading(lock: &LeaseLock) -> SteppedDown {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(lock.retry_period()).await;
        let now = k8s_openapi::jiff::Timestamp::now();
        let attempt = tokio::time::timeout(lock.retry_period(), lock.try_acquire(now)).await;
        let error = match attempt {
            Ok(Ok(true)) => {
                renewed = tokio::time::Instant::now();
                continue;
            }
            Ok(Ok(false)) => return SteppedDown::Taken,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the renewal did not finish within the retry period".to_string(),
        };
        tracing::warn!(%error, "cannot renew the leader Lease");
        if renewed.elapsed() >= lock.renew_deadline() {
            return SteppedDown::DeadlinePassed(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_leader_gives_up_well_before_the_lease_expires() {
        let client = kube::Client::new(
            tower::service_fn(|_: http::Request<kube::client::Body>| async {
                Err::<http::Response<kube::client::Body>, std::io::Error>(std::io::Error::other(
                    "unused",
                ))
            }),
            "default",
        );
        let lock = LeaseLock::new(client, "ns", "lease", "me", Duration::from_secs(15));
        assert_eq!(lock.renew_deadline(), Duration::from_secs(10));
        assert_eq!(lock.retry_period(), Duration::from_secs(2));
        assert!(lock.renew_deadline() + lock.retry_period() < Duration::from_secs(15));
    }
}
