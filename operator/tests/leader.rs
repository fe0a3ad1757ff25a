//! Leader election holds no zombie leaders: the leader steps down as soon as another
//! replica holds the Lease, and within the renew deadline (before the Lease can expire for
//! a standby) when it cannot reach the API server. Expiry is judged by the standby's own
//! clock at observation (as client-go does), so skewed clocks neither steal a renewed
//! Lease nor keep a dead holder's; and a replica that lost the Lease writes nothing more.

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
    // b sees a's record, then takes it a lease duration later, as if a had stopped.
    let later = Timestamp::now() + SignedDuration::from_secs(60);
    assert!(!b.try_acquire(later).await.expect("b observes"));
    let expired = later + SignedDuration::from_secs(4);
    assert!(b.try_acquire(expired).await.expect("b"));
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

const T: i64 = 1_800_000_000;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(T + seconds).expect("time")
}

#[tokio::test]
async fn a_holder_whose_clock_runs_behind_keeps_the_lease_while_it_renews() {
    let cluster = Cluster::new().await;
    let lease = Duration::from_secs(15);
    let a = LeaseLock::new(cluster.admin.clone(), "ops", "lead", "a", lease);
    let b = LeaseLock::new(cluster.admin.clone(), "ops", "lead", "b", lease);
    // a's clock is an hour behind b's: its renewTime always looks an hour old to b.
    let behind = -3600;
    assert!(a.try_acquire(at(behind)).await.expect("a"));
    assert!(!b.try_acquire(at(0)).await.expect("b observes"));
    for second in (5..=60).step_by(5) {
        assert!(a.try_acquire(at(behind + second)).await.expect("a renews"));
        assert!(
            !b.try_acquire(at(second + 1)).await.expect("b"),
            "b took a renewed Lease at +{second} s"
        );
    }
}

#[tokio::test]
async fn a_holder_whose_clock_runs_ahead_is_replaced_a_lease_after_it_stops() {
    let cluster = Cluster::new().await;
    let lease = Duration::from_secs(15);
    let a = LeaseLock::new(cluster.admin.clone(), "ops", "lead", "a", lease);
    let b = LeaseLock::new(cluster.admin.clone(), "ops", "lead", "b", lease);
    // a's clock is an hour ahead; a renews once and dies.
    assert!(a.try_acquire(at(3600)).await.expect("a"));
    assert!(!b.try_acquire(at(0)).await.expect("b observes"));
    assert!(!b.try_acquire(at(14)).await.expect("b waits a lease"));
    assert!(
        b.try_acquire(at(16)).await.expect("b"),
        "nothing changed for a lease duration of b's own clock"
    );
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_writes_nothing_and_stops_what_it_was_doing() {
    use std::sync::Arc;

    use kube::api::PostParams;
    use sightline_operator::controller::{Error, instrumented, model};
    use sightline_operator::crd::ImageModel;
    use sightline_operator::leader::Leadership;

    let cluster = Cluster::new().await;
    let leadership = Leadership::default();
    let ctx = Arc::new(
        Arc::try_unwrap(cluster.context(support::full_apis()))
            .ok()
            .expect("context")
            .with_leadership(leadership.clone()),
    );
    let m = kube::Api::<ImageModel>::namespaced(cluster.admin.clone(), support::NS)
        .create(&PostParams::default(), &support::sample_model())
        .await
        .expect("model");
    // A reconcile in flight (waiting on something that never comes) is cancelled.
    let pending = tokio::spawn({
        let (m, ctx) = (m.clone(), ctx.clone());
        async move { instrumented(&m, &ctx, std::future::pending::<Result<_, Error>>()).await }
    });
    tokio::task::yield_now().await;
    leadership.step_down();
    let ended = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("cancelled at once")
        .expect("task");
    assert!(
        ended.is_err_and(|e| e.to_string().contains("lost the leader Lease")),
        "the reconcile ends as lost"
    );
    // A reconcile started now writes nothing at all.
    cluster.take_calls();
    let result = model::reconcile(Arc::new(m), ctx.clone()).await;
    assert!(result.is_err());
    let writes = cluster.take_writes();
    assert!(writes.is_empty(), "a former leader wrote: {writes:?}");
}
