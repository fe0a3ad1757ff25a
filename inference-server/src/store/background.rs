//! The store role's work on a timer, off the request path: reading the live quality into
//! the `sightline_quality_*` gauges ([`sightline_store::quality_gauges`]) and deleting
//! feedback older than the retention ([`sightline_store::retention`]). Each runs in a task
//! of its own: a slow or failing database delays only the next read, never a request.

use std::time::Duration;

use sightline_quality::Window;
use tokio::time::MissedTickBehavior;

use super::quality_gauges::QualityGauges;
use super::retention::PURGE_BATCH;
use super::{ResultStore, now_ms};
use crate::cli::FeedbackArgs;

/// The windows the gauges show (7 days would re-count a week of answers every refresh).
pub const GAUGE_WINDOWS: [Window; 2] = [Window::Hour, Window::Day];
/// Refreshes a window's figures may miss before they are removed rather than shown stale.
pub const STALE_AFTER_REFRESHES: u32 = 5;

/// Starts the gauges' refresh (unless `--quality-refresh-secs 0`) and the retention
/// (unless `--feedback-retention 0`).
pub fn start(results: &ResultStore, gauges: &QualityGauges, args: &FeedbackArgs) {
    if args.quality_refresh_secs > 0 {
        gauges.start(&GAUGE_WINDOWS);
        tokio::spawn(refresh_gauges(
            results.clone(),
            gauges.clone(),
            Duration::from_secs(args.quality_refresh_secs),
            usize::from(args.quality_top_classes),
        ));
    }
    if let Some(keep) = args.feedback_retention.0 {
        tokio::spawn(purge(
            results.clone(),
            keep,
            Duration::from_secs(args.feedback_purge_interval_secs.max(1)),
        ));
    }
}

async fn refresh_gauges(results: ResultStore, gauges: QualityGauges, every: Duration, top: usize) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stale_ms = i64::try_from((every * STALE_AFTER_REFRESHES).as_millis()).unwrap_or(i64::MAX);
    let mut last_good = [None::<i64>; GAUGE_WINDOWS.len()];
    loop {
        ticks.tick().await;
        for (window, last_good) in GAUGE_WINDOWS.into_iter().zip(last_good.iter_mut()) {
            refresh_once(&results, &gauges, window, top, every, stale_ms, last_good).await;
        }
    }
}

/// One read of `window` into the gauges; a failure is logged and counted, and figures
/// older than `stale_ms` are removed.
pub async fn refresh_once(
    results: &ResultStore,
    gauges: &QualityGauges,
    window: Window,
    top: usize,
    limit: Duration,
    stale_ms: i64,
    last_good: &mut Option<i64>,
) {
    let now = now_ms();
    let read = tokio::time::timeout(limit, results.quality_of_all(now - window.millis())).await;
    match read {
        Ok(Ok(read)) => {
            gauges.show(window, &read, now, top);
            *last_good = Some(now);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, window = window.as_str(), "live quality not read; the gauges keep their last read time");
            gauges.failed(window);
        }
        Err(_) => {
            tracing::warn!(
                window = window.as_str(),
                ?limit,
                "live quality read too slow; the gauges keep their last read time"
            );
            gauges.failed(window);
        }
    }
    if last_good.is_some_and(|at| now - at > stale_ms) {
        tracing::warn!(
            window = window.as_str(),
            "live quality figures too old to show; removed until a read succeeds"
        );
        gauges.expire(window);
        *last_good = None;
    }
}

async fn purge(results: ResultStore, keep: Duration, every: Duration) {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let before = now_ms().saturating_sub(keep_ms);
        match results.purge_feedback(before, PURGE_BATCH).await {
            Ok(purged) if purged.current + purged.history > 0 => tracing::info!(
                current = purged.current,
                history = purged.history,
                "feedback older than the retention deleted"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "feedback retention: delete failed; again at the next purge")
            }
        }
    }
}
