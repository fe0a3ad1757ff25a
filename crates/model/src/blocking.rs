//! CPU work on the blocking pool under a concurrency bound that holds for as long as the
//! work runs.
//!
//! A semaphore permit held by the async caller is released when the caller's future is
//! dropped — a client that hangs up, a request timeout — while the blocking task it started
//! keeps running: the bound then counts only the callers still waiting, and decodes of
//! images whose clients left pile up beyond it (six hung-up 40-megapixel decodes took twice
//! the memory of six that waited). [`run_holding`] moves the permit into the blocking task,
//! so it is given back when the work ends, whoever still waits for it.

use tokio::sync::OwnedSemaphorePermit;

/// Runs `work` on the blocking pool, holding `permit` until `work` returns. The result is
/// the task's join result (an `Err` when `work` panicked).
pub async fn run_holding<T: Send + 'static>(
    permit: OwnedSemaphorePermit,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_permit_outlives_a_caller_that_went_away() {
        let bound = Arc::new(Semaphore::new(1));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let caller = {
            let bound = bound.clone();
            tokio::spawn(async move {
                let permit = bound.acquire_owned().await.expect("a permit");
                run_holding(permit, move || released.recv().is_ok()).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(bound.available_permits(), 0, "the work holds the permit");
        caller.abort();
        let _ = caller.await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            bound.available_permits(),
            0,
            "the caller left but the work still runs: the permit is still taken"
        );
        release.send(()).expect("release the work");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while bound.available_permits() == 0 {
            assert!(std::time::Instant::now() < deadline, "never given back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
