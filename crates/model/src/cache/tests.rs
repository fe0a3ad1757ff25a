use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::model_config::Preprocess;

/// The tests' errors stand for a property of the input: shared with the waiters.
impl Shareable for String {
    fn is_shareable(&self) -> bool {
        true
    }
}

fn cache(capacity: usize) -> Arc<ResultCache<String>> {
    Arc::new(ResultCache::new(capacity, InferenceMetrics::unregistered()).expect("enabled"))
}

fn key(n: u8) -> CacheKey {
    KeyPrefix::new("model", &Preprocess::default().digest()).key(&[n])
}

fn row(v: f32) -> Scores {
    vec![v; 3].into()
}

/// The bytes one 3-class entry costs.
const ENTRY: usize = 12 + ENTRY_OVERHEAD;

#[test]
fn the_key_covers_the_model_the_preprocessing_and_the_bytes() {
    let p = Preprocess::default().digest();
    let base = KeyPrefix::new("aaaa", &p).key(b"image");
    assert_eq!(base, KeyPrefix::new("aaaa", &p).key(b"image"));
    assert_ne!(base, KeyPrefix::new("bbbb", &p).key(b"image"), "digest");
    assert_ne!(base, KeyPrefix::new("aaaa", &p).key(b"imagf"), "bytes");
    let other = Preprocess {
        size: 225,
        ..Preprocess::default()
    };
    assert_ne!(
        base,
        KeyPrefix::new("aaaa", &other.digest()).key(b"image"),
        "preprocessing"
    );
}

#[test]
fn zero_bytes_is_no_cache() {
    assert!(ResultCache::<String>::new(0, InferenceMetrics::unregistered()).is_none());
}

#[tokio::test]
async fn a_hit_is_the_stored_answer_and_runs_nothing() {
    let cache = cache(1024);
    let runs = AtomicUsize::new(0);
    let compute = |v| {
        let runs = &runs;
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(row(v))
        }
    };
    let first = cache
        .get_or_compute(key(1), compute(0.5))
        .await
        .expect("miss");
    let again = cache
        .get_or_compute(key(1), compute(0.9))
        .await
        .expect("hit");
    assert_eq!(first, again, "the stored scores, not a new computation");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
    assert_eq!(stats.bytes, ENTRY);
}

#[tokio::test]
async fn the_byte_bound_holds_and_the_least_recently_used_goes_first() {
    let cache = cache(2 * ENTRY + ENTRY / 2);
    let put = |n: u8| {
        let cache = cache.clone();
        async move {
            cache
                .get_or_compute(key(n), || async move { Ok::<_, String>(row(f32::from(n))) })
                .await
                .expect("ok")
        }
    };
    put(1).await;
    put(2).await;
    put(1).await; // 1 is now more recent than 2
    put(3).await; // evicts 2
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.evictions), (2, 1));
    assert!(stats.bytes <= cache.capacity(), "{stats:?}");
    let misses = stats.misses;
    put(1).await;
    assert_eq!(cache.stats().misses, misses, "1 was kept");
    put(2).await;
    assert_eq!(cache.stats().misses, misses + 1, "2 was evicted");
    assert!(cache.stats().bytes <= cache.capacity());

    // An answer larger than the whole cache is returned, not kept.
    let tiny =
        ResultCache::<String>::new(ENTRY - 1, InferenceMetrics::unregistered()).expect("enabled");
    tiny.get_or_compute(key(9), || async { Ok(row(1.0)) })
        .await
        .expect("ok");
    assert_eq!(tiny.stats().entries, 0);
    assert_eq!(tiny.stats().bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_in_flight_share_one_computation() {
    let cache = cache(1024);
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                cache
                    .get_or_compute(key(7), || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, String>(row(0.25))
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task").expect("ok"), row(0.25));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.hits), (1, 15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_leader_hands_its_error_to_the_waiters_and_stores_nothing() {
    let cache = cache(1024);
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute(key(3), || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err::<Scores, _>("the model failed".to_string())
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiter = cache
        .get_or_compute(key(3), || async { Ok(row(1.0)) })
        .await;
    assert_eq!(waiter, Err("the model failed".to_string()));
    assert!(leader.await.expect("task").is_err());
    assert_eq!(cache.stats().entries, 0, "errors are not kept");
    // The next request computes again.
    let next = cache
        .get_or_compute(key(3), || async { Ok(row(2.0)) })
        .await;
    assert_eq!(next, Ok(row(2.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_transient_error_is_not_handed_to_the_waiters() {
    use crate::batching::InferError;
    use crate::serving::RecognizeError;
    let cache = Arc::new(
        ResultCache::<RecognizeError>::new(1024, InferenceMetrics::unregistered())
            .expect("enabled"),
    );
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute(key(5), || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(RecognizeError::Infer(InferError::QueueFull {
                        capacity: 64,
                    }))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiter = cache
        .get_or_compute(key(5), || async { Ok(row(5.0)) })
        .await;
    assert_eq!(
        waiter.ok(),
        Some(row(5.0)),
        "the waiter ran the model itself instead of taking the leader's full queue"
    );
    assert!(
        leader.await.expect("task").is_err(),
        "the leader's own error"
    );
    // A property of the input (an undecodable image) is the same for everyone: shared.
    let bad = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute(key(6), || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(RecognizeError::Image(
                        crate::preprocess::PreprocessError::UnsupportedFormat,
                    ))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let runs = AtomicUsize::new(0);
    let waiter = cache
        .get_or_compute(key(6), || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(row(6.0))
        })
        .await;
    assert!(waiter.is_err(), "the same bytes fail the same way");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(bad.await.expect("task").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_leaves_no_one_waiting() {
    let cache = cache(1024);
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute(key(4), std::future::pending::<Result<Scores, String>>)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute(key(4), || async { Ok(row(4.0)) })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    leader.abort();
    let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter does not hang")
        .expect("task");
    assert_eq!(answer, Ok(row(4.0)), "it led a computation of its own");
    assert_eq!(cache.stats().misses, 2);
}
