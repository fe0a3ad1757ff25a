//! A step's window, kept per pod (docs/rollouts.md, "Windows"): each pod's figures when
//! the window opened (its base) and when last read, so that pods may come, go and restart
//! without corrupting the window, and a pod that could not be read is named instead of
//! being read as zeros.
//!
//! - A pod first read after the window opened counts from zero when its process started
//!   after the window opened (a new pod), from that first reading otherwise.
//! - A pod that is gone keeps, in `departed`, what it served until its last reading.
//! - A restart — another process start time, another pod uid, or a counter lower than at
//!   the last reading (a counter reset, as Prometheus' `rate()` reads one) — moves what
//!   the old process served to `departed` and counts the new one from zero.
//! - A ready pod that could not be read keeps its last reading and is reported unread:
//!   the window is incomplete.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::figures::Figures;

/// One pod's part of a window.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTally<T> {
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// When its process started (Unix seconds, its `process_start_time_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<f64>,
    /// Its figures when it entered the window.
    pub base: T,
    /// Its figures when last read.
    pub last: T,
}

/// A window's figures for one set of pods (a revision's, or the front doors').
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Tally<T> {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodTally<T>>,
    /// What pods that left, or processes that restarted, served within the window.
    pub departed: T,
}

/// A pod's `/metrics` as read now.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading<T> {
    pub started: Option<f64>,
    pub figures: T,
}

/// One running pod, as this reconcile found it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRead<T> {
    pub pod: String,
    pub uid: String,
    /// Whether it is ready (its Service sends it traffic).
    pub ready: bool,
    /// Its figures, or why they could not be read.
    pub read: Result<Reading<T>, String>,
}

/// The ready pods of `reads` that could not be read, as `pod (why)`.
pub fn unread<T>(reads: &[PodRead<T>]) -> Vec<String> {
    reads
        .iter()
        .filter(|r| r.ready)
        .filter_map(|r| {
            r.read
                .as_ref()
                .err()
                .map(|why| format!("{} ({why})", r.pod))
        })
        .collect()
}

fn restarted<T: Figures>(known: &PodTally<T>, uid: &str, now: &Reading<T>) -> bool {
    let other_process = match (known.started, now.started) {
        (Some(before), Some(now)) => before != now,
        _ => false,
    };
    known.uid != uid || other_process || now.figures.reset_since(&known.last)
}

impl<T: Figures> Tally<T> {
    /// A window opening now: every pod read counts from its reading. `None` (the window
    /// cannot open) while a ready pod could not be read.
    pub fn open(reads: &[PodRead<T>]) -> Option<Tally<T>> {
        if !unread(reads).is_empty() {
            return None;
        }
        let pods = reads
            .iter()
            .filter_map(|r| {
                let now = r.read.as_ref().ok()?;
                Some(PodTally {
                    pod: r.pod.clone(),
                    uid: r.uid.clone(),
                    started: now.started,
                    base: now.figures.clone(),
                    last: now.figures.clone(),
                })
            })
            .collect();
        Some(Tally {
            pods,
            departed: T::default(),
        })
    }

    /// Takes this reconcile's readings into the window opened at `opened` (Unix seconds);
    /// `reads` holds every running pod. Returns the ready pods that could not be read.
    pub fn update(&mut self, reads: &[PodRead<T>], opened: f64) -> Vec<String> {
        let mut departed = std::mem::take(&mut self.departed);
        let mut kept = Vec::new();
        for known in std::mem::take(&mut self.pods) {
            match reads.iter().find(|r| r.pod == known.pod) {
                Some(_) => kept.push(known),
                None => departed.add(&known.last.since(&known.base)),
            }
        }
        for r in reads {
            let Ok(now) = &r.read else {
                continue;
            };
            match kept.iter_mut().find(|k| k.pod == r.pod) {
                Some(known) if restarted(known, &r.uid, now) => {
                    departed.add(&known.last.since(&known.base));
                    *known = PodTally {
                        pod: r.pod.clone(),
                        uid: r.uid.clone(),
                        started: now.started,
                        base: T::default(),
                        last: now.figures.clone(),
                    };
                }
                Some(known) => {
                    known.last = now.figures.clone();
                    known.started = now.started.or(known.started);
                }
                None => {
                    let new_process = now.started.is_some_and(|s| s >= opened);
                    kept.push(PodTally {
                        pod: r.pod.clone(),
                        uid: r.uid.clone(),
                        started: now.started,
                        base: if new_process {
                            T::default()
                        } else {
                            now.figures.clone()
                        },
                        last: now.figures.clone(),
                    });
                }
            }
        }
        self.pods = kept;
        self.departed = departed;
        unread(reads)
    }

    /// What the window holds: what departed plus each pod's change since its base.
    pub fn total(&self) -> T {
        let mut total = self.departed.clone();
        for p in &self.pods {
            total.add(&p.last.since(&p.base));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::figures::Mirrored;

    fn m(agree: f64, disagree: f64) -> Mirrored {
        Mirrored { agree, disagree }
    }

    fn read(pod: &str, started: f64, figures: Mirrored) -> PodRead<Mirrored> {
        PodRead {
            pod: pod.into(),
            uid: format!("uid-{pod}"),
            ready: true,
            read: Ok(Reading {
                started: Some(started),
                figures,
            }),
        }
    }

    fn failed(pod: &str, ready: bool) -> PodRead<Mirrored> {
        PodRead {
            pod: pod.into(),
            uid: format!("uid-{pod}"),
            ready,
            read: Err("HTTP 503".into()),
        }
    }

    const OPENED: f64 = 1000.0;

    #[test]
    fn a_window_counts_each_pods_change_since_it_opened() {
        let mut t = Tally::open(&[
            read("a", 10.0, m(100.0, 5.0)),
            read("b", 20.0, m(50.0, 0.0)),
        ])
        .expect("opens");
        assert_eq!(t.total(), m(0.0, 0.0));
        let unread = t.update(
            &[
                read("a", 10.0, m(130.0, 6.0)),
                read("b", 20.0, m(60.0, 0.0)),
            ],
            OPENED,
        );
        assert!(unread.is_empty());
        assert_eq!(t.total(), m(40.0, 1.0));
    }

    #[test]
    fn a_pod_that_leaves_keeps_what_it_served() {
        // The HPA removes pod b: summing the pods left would lose its 10, or (with the
        // old sum-then-subtract) go below the base and count everything from zero.
        let mut t = Tally::open(&[
            read("a", 10.0, m(100.0, 0.0)),
            read("b", 20.0, m(50.0, 0.0)),
        ])
        .expect("opens");
        t.update(
            &[
                read("a", 10.0, m(110.0, 0.0)),
                read("b", 20.0, m(60.0, 0.0)),
            ],
            OPENED,
        );
        t.update(&[read("a", 10.0, m(115.0, 0.0))], OPENED);
        assert_eq!(t.total(), m(25.0, 0.0));
        assert_eq!(t.pods.len(), 1);
        assert_eq!(t.departed, m(10.0, 0.0));
    }

    #[test]
    fn a_new_pod_counts_from_zero_an_old_unseen_one_from_its_first_reading() {
        let mut t = Tally::open(&[read("a", 10.0, m(100.0, 0.0))]).expect("opens");
        t.update(
            &[
                read("a", 10.0, m(100.0, 0.0)),
                // Started after the window opened: everything it served is in the window.
                read("new", OPENED + 5.0, m(7.0, 1.0)),
                // Started before: what it served before the window is not.
                read("old", 5.0, m(500.0, 20.0)),
            ],
            OPENED,
        );
        assert_eq!(t.total(), m(7.0, 1.0));
    }

    #[test]
    fn a_process_started_as_the_window_opened_counts_whole() {
        let mut t = Tally::open(&[]).expect("opens");
        t.update(&[read("new", OPENED, m(3.0, 0.0))], OPENED);
        assert_eq!(t.total(), m(3.0, 0.0));
        // A first reading without a start time: from that reading on.
        let mut unknown = read("unknown", 0.0, m(9.0, 0.0));
        if let Ok(r) = &mut unknown.read {
            r.started = None;
        }
        t.update(&[read("new", OPENED, m(3.0, 0.0)), unknown], OPENED);
        assert_eq!(t.total(), m(3.0, 0.0));
    }

    #[test]
    fn a_start_time_first_reported_late_is_kept() {
        let mut first = read("a", 0.0, m(10.0, 0.0));
        if let Ok(r) = &mut first.read {
            r.started = None;
        }
        let mut t = Tally::open(&[first]).expect("opens");
        t.update(&[read("a", 10.0, m(20.0, 0.0))], OPENED);
        assert_eq!(t.pods[0].started, Some(10.0));
        // The start time it reported then tells a later restart apart.
        t.update(&[read("a", 2000.0, m(25.0, 0.0))], OPENED);
        assert_eq!(t.total(), m(10.0 + 25.0, 0.0));
    }

    #[test]
    fn a_restart_keeps_the_old_process_and_counts_the_new_one_from_zero() {
        let mut t = Tally::open(&[read("a", 10.0, m(100.0, 0.0))]).expect("opens");
        t.update(&[read("a", 10.0, m(150.0, 2.0))], OPENED);
        // Restarted and already past its old figures: only the start time tells.
        t.update(&[read("a", 1100.0, m(170.0, 3.0))], OPENED);
        assert_eq!(t.total(), m(50.0 + 170.0, 2.0 + 3.0));
        // Restarted again, counters lower: a counter reset.
        let mut reset = Tally::open(&[read("a", 10.0, m(100.0, 0.0))]).expect("opens");
        reset.update(&[read("a", 10.0, m(150.0, 0.0))], OPENED);
        let mut no_start = read("a", 0.0, m(30.0, 0.0));
        if let Ok(r) = &mut no_start.read {
            r.started = None;
        }
        reset.update(&[no_start], OPENED);
        assert_eq!(reset.total(), m(80.0, 0.0));
        // Another pod under the same name (another uid).
        let mut renamed = Tally::open(&[read("a", 10.0, m(100.0, 0.0))]).expect("opens");
        let mut other = read("a", 10.0, m(120.0, 0.0));
        other.uid = "uid-other".into();
        renamed.update(&[other], OPENED);
        assert_eq!(renamed.total(), m(120.0, 0.0));
    }

    #[test]
    fn a_failed_scrape_is_named_and_keeps_the_last_reading() {
        assert_eq!(
            Tally::open(&[read("a", 10.0, m(1.0, 0.0)), failed("b", true)]),
            None,
            "no window opens on an incomplete reading"
        );
        let mut t = Tally::open(&[read("a", 10.0, m(100.0, 0.0)), failed("idle", false)])
            .expect("a pod that is not ready takes no traffic");
        t.update(&[read("a", 10.0, m(120.0, 1.0))], OPENED);
        let unread = t.update(&[failed("a", true)], OPENED);
        assert_eq!(unread, vec!["a (HTTP 503)".to_string()]);
        assert_eq!(t.total(), m(20.0, 1.0), "not read as zeros");
        let unread = t.update(&[failed("a", false)], OPENED);
        assert!(
            unread.is_empty(),
            "a pod that is not ready is not waited for"
        );
        t.update(&[read("a", 10.0, m(125.0, 1.0))], OPENED);
        assert_eq!(t.total(), m(25.0, 1.0));
    }
}
