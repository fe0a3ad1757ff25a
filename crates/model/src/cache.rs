//! The recognize role's result cache: the same image bytes through the same model and
//! preprocessing give the same scores, so they are computed once.
//!
//! - **Key:** SHA-256 over the model's digest, its preprocessing settings and the image
//!   bytes ([`KeyPrefix`]); another model, another digest or other preprocessing is another
//!   key, never a stale answer.
//! - **Bounded in bytes** (`--cache-bytes`; 0 turns the cache off): each entry counts its
//!   score row plus [`ENTRY_OVERHEAD`]; the least recently used entries are evicted to make
//!   room, and an entry larger than the whole cache is not kept.
//! - **Single flight:** while one request (the leader) computes a key, identical requests
//!   wait for its answer instead of running the model again. A leader's error is never
//!   stored; it is handed to the requests waiting on it only when it is a property of the
//!   input ([`Shareable`]: an image that does not decode fails the same way for everyone).
//!   A transient one (the queue was full, the worker stopped, inference failed) is the
//!   leader's alone: the waiters arrive again and one of them leads a computation of its
//!   own, so each gets its own answer or its own error. A leader that goes away without an
//!   answer (its client hung up) wakes them the same way. Nobody waits on a computation
//!   that no longer runs.
//!
//! Hits (stored answers and answers shared in flight), misses, evictions and the bytes held
//! are exported as `sightline_cache_*` ([`crate::metrics::InferenceMetrics`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::metrics::InferenceMetrics;

/// `--cache-bytes` by default: 64 MiB, some 16 000 answers of a 1000-class model.
pub const DEFAULT_BYTES: usize = 64 * 1024 * 1024;

/// What an entry costs besides its scores: the key (in the map and in the recency index),
/// the map's slots, the shared row's header.
pub const ENTRY_OVERHEAD: usize = 128;

/// Changes whenever the same bytes, model and settings would give other scores (how an
/// image becomes a tensor is versioned in [`crate::model_config::Preprocess::digest`]).
const KEY_VERSION: &[u8] = b"sightline-result-cache-v2\0";

/// One model output row, shared between the cache and the answers made from it.
pub type Scores = Arc<[f32]>;

/// A cache key: SHA-256 of the model, the preprocessing and the image bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

/// The part of every key that one model shares (its digest and preprocessing), hashed once.
#[derive(Clone)]
pub struct KeyPrefix(Sha256);

impl KeyPrefix {
    /// `preprocess_sha256` is [`crate::model_config::Preprocess::digest`] of the model's settings.
    pub fn new(model_sha256: &str, preprocess_sha256: &str) -> KeyPrefix {
        let mut hasher = Sha256::new();
        hasher.update(KEY_VERSION);
        for part in [model_sha256, preprocess_sha256] {
            hasher.update(part.as_bytes());
            hasher.update(b"\0");
        }
        KeyPrefix(hasher)
    }

    /// The key of `image` for this model.
    pub fn key(&self, image: &[u8]) -> CacheKey {
        let mut hasher = self.0.clone();
        hasher.update(image);
        CacheKey(hasher.finalize().into())
    }
}

/// Whether a failed computation's error may be handed to the requests that waited on it:
/// true when any computation of the same key would fail the same way (a property of the
/// input), false when another attempt could succeed (a full queue, a stopped worker).
pub trait Shareable {
    fn is_shareable(&self) -> bool;
}

/// Counts since the cache was made (the metrics hold the same, per model).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub entries: usize,
    pub bytes: usize,
}

/// A bounded, least-recently-used map from [`CacheKey`] to [`Scores`] with single-flight
/// computation. `E` is the computation's error, handed to the requests that waited on it.
pub struct ResultCache<E> {
    capacity: usize,
    state: Mutex<State<E>>,
    metrics: InferenceMetrics,
}

type Outcome<E> = Option<Result<Scores, E>>;

struct State<E> {
    entries: HashMap<CacheKey, Stored>,
    /// Recency: the oldest use first.
    order: BTreeMap<u64, CacheKey>,
    clock: u64,
    flights: HashMap<CacheKey, Flight<E>>,
    next_flight: u64,
    stats: CacheStats,
}

struct Stored {
    scores: Scores,
    used: u64,
}

struct Flight<E> {
    id: u64,
    answer: watch::Receiver<Outcome<E>>,
}

/// What a request finds when it arrives.
enum Arrival<'a, E> {
    Hit(Scores),
    Wait(watch::Receiver<Outcome<E>>),
    Lead(Leader<'a, E>),
}

/// The leader's side of a flight. Dropped before [`ResultCache::finish`] (its request was
/// cancelled), it removes the flight, and the closed channel wakes the waiters.
struct Leader<'a, E> {
    cache: &'a ResultCache<E>,
    key: CacheKey,
    id: u64,
    answer: watch::Sender<Outcome<E>>,
}

fn entry_bytes(scores: &[f32]) -> usize {
    std::mem::size_of_val(scores) + ENTRY_OVERHEAD
}

impl<E: Clone + Shareable> ResultCache<E> {
    /// A cache of at most `capacity` bytes; `None` for 0 (no cache, no single flight).
    pub fn new(capacity: usize, metrics: InferenceMetrics) -> Option<ResultCache<E>> {
        if capacity == 0 {
            return None;
        }
        metrics.cache_enabled();
        Some(ResultCache {
            capacity,
            state: Mutex::new(State {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                clock: 0,
                flights: HashMap::new(),
                next_flight: 0,
                stats: CacheStats::default(),
            }),
            metrics,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    fn lock(&self) -> MutexGuard<'_, State<E>> {
        // Nothing panics while holding it; a poisoned lock still holds a consistent map.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scores for `key`: stored, shared from an identical request in flight, or
    /// computed now by `compute` (and then stored).
    pub async fn get_or_compute<F, Fut>(&self, key: CacheKey, compute: F) -> Result<Scores, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Scores, E>>,
    {
        loop {
            match self.arrive(key) {
                Arrival::Hit(scores) => return Ok(scores),
                Arrival::Lead(leader) => {
                    let outcome = compute().await;
                    self.finish(leader, &outcome);
                    return outcome;
                }
                Arrival::Wait(mut answer) => {
                    let shared = match answer.wait_for(Option::is_some).await {
                        Ok(outcome) => outcome.clone(),
                        // The leader went away without an answer: arrive again.
                        Err(_) => None,
                    };
                    // The leader's transient failure is its own: arrive again.
                    let shared = shared.filter(|o| o.as_ref().err().is_none_or(E::is_shareable));
                    if let Some(outcome) = shared {
                        self.lock().stats.hits += 1;
                        self.metrics.cache_hit();
                        return outcome;
                    }
                }
            }
        }
    }

    fn arrive(&self, key: CacheKey) -> Arrival<'_, E> {
        let mut state = self.lock();
        let state = &mut *state;
        state.clock += 1;
        let now = state.clock;
        if let Some(stored) = state.entries.get_mut(&key) {
            state.order.remove(&stored.used);
            stored.used = now;
            state.order.insert(now, key);
            state.stats.hits += 1;
            self.metrics.cache_hit();
            return Arrival::Hit(stored.scores.clone());
        }
        if let Some(flight) = state.flights.get(&key) {
            return Arrival::Wait(flight.answer.clone());
        }
        state.next_flight += 1;
        let id = state.next_flight;
        let (answer, waiting) = watch::channel(None);
        state.flights.insert(
            key,
            Flight {
                id,
                answer: waiting,
            },
        );
        state.stats.misses += 1;
        self.metrics.cache_miss();
        Arrival::Lead(Leader {
            cache: self,
            key,
            id,
            answer,
        })
    }

    /// Stores a success, ends the flight, and hands the outcome to its waiters.
    fn finish(&self, leader: Leader<'_, E>, outcome: &Result<Scores, E>) {
        {
            let mut state = self.lock();
            if let Ok(scores) = outcome {
                self.store(&mut state, leader.key, scores.clone());
            }
            state.end_flight(leader.key, leader.id);
        }
        leader.answer.send_replace(Some(outcome.clone()));
        // Dropping `leader` now finds its flight gone.
    }

    fn store(&self, state: &mut State<E>, key: CacheKey, scores: Scores) {
        let size = entry_bytes(&scores);
        if size > self.capacity {
            return;
        }
        if let Some(old) = state.entries.remove(&key) {
            state.order.remove(&old.used);
            state.stats.bytes -= entry_bytes(&old.scores);
        }
        let mut evicted = 0;
        while state.stats.bytes + size > self.capacity {
            let Some((_, oldest)) = state.order.pop_first() else {
                break;
            };
            if let Some(gone) = state.entries.remove(&oldest) {
                state.stats.bytes -= entry_bytes(&gone.scores);
                evicted += 1;
            }
        }
        state.clock += 1;
        let used = state.clock;
        state.order.insert(used, key);
        state.entries.insert(key, Stored { scores, used });
        state.stats.bytes += size;
        state.stats.evictions += evicted;
        state.stats.entries = state.entries.len();
        if evicted > 0 {
            self.metrics.cache_evicted(evicted);
        }
        self.metrics.cache_bytes(state.stats.bytes);
    }
}

impl<E> State<E> {
    fn end_flight(&mut self, key: CacheKey, id: u64) {
        if self.flights.get(&key).is_some_and(|f| f.id == id) {
            self.flights.remove(&key);
        }
    }
}

impl<E> Drop for Leader<'_, E> {
    fn drop(&mut self) {
        // After `finish` a no-op. Otherwise the request was cancelled: forget the flight, and
        // the sender dropped with `self` wakes the waiters to arrive again.
        let mut state = self.cache.state.lock().unwrap_or_else(|p| p.into_inner());
        state.end_flight(self.key, self.id);
    }
}

#[cfg(test)]
mod tests;
