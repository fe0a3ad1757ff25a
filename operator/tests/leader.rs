//! Leader election holds no zombie leaders: the leader steps down as soon as another
//! replica holds the Lease, and within the renew deadline (before the Lease can expire for
//! a standby) when it cannot reach the API server.

mod support;

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sightline_operator::leader::{LeaseLock, SteppedDown, keep_leading};
use support::Cluster;

#[tokio::test]
async fn the_leader_steps_down_when_another_replica_holds_the_lease() {
    let cluster = Cluster::new().await;
    let lease = Duration::from_secs(3);
    let a = LeaseLock::new(cluster.admin.clone(), "ops", "lead", "a", lease);
    let b = LeaseLock::new(cluster.admin.clone(), "ops", "lead", "b", lease);
    assert!(a.try_acquire(Timestamp::now()).await.expect("a"));
    // b takes it as if a had stopped renewing long ago.
    let later = Timestamp::now() + SignedDuration::from_secs(60);
    assert!(b.try_acquire(later).await.expect("b"));
    let outcome = tokio::time::timeout(Duration::from_secs(10), keep_leading(&a))
        .await
        .expect("a notices within a retry period");
    assert_eq!(outcome, SteppedDown::Taken);
}

#[tokio::test(start_paused = true)]
async fn the_leader_steps_down_before_its_lease_can_expire_when_the_api_is_gone() {
    // An API server that answers every request with 503.
    let gone = tower::service_fn(|_: http::Request<kube::client::Body>| async {
        let body = support::status_body(503, "ServiceUnavailable", "etcd is down");
        Ok::<_, std::convert::Infallible>(
            http::Response::builder()
                .status(503)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(body.into_bytes()))
                .expect("response"),
        )
    });
    let client = kube::Client::new(gone, "default");
    let lease = Duration::from_secs(15);
    let lock = LeaseLock::new(client, "ops", "lead", "a", lease);
    let started = tokio::time::Instant::now();
    let outcome = keep_leading(&lock).await;
    let held = started.elapsed();
    assert!(
        matches!(&outcome, SteppedDown::DeadlinePassed(e) if e.contains("etcd is down")),
        "{outcome:?}"
    );
    assert!(
        held >= lock.renew_deadline() && held < lease,
        "stepped down after {held:?}: must be past the renew deadline and before the lease ends"
    );
}
