//! Background chores that run on a clock until shutdown: the disk check, the state flusher, retention,
//! metrics upkeep, the API keys' use persister.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `chore` every `period`, the first time `first` from now, until `stop` is cancelled. A chore that
/// overruns delays the next one rather than bunching them; a chore in progress is finished, not
/// cancelled.
pub async fn every<F, Fut>(first: Duration, period: Duration, stop: &CancellationToken, mut chore: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => chore().await,
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(
        first: Duration,
        period: Duration,
    ) -> (CancellationToken, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, runs) = (stop.clone(), runs.clone());
            tokio::spawn(async move {
                every(first, period, &stop, || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    std::future::ready(())
                })
                .await
            })
        };
        (stop, runs, task)
    }

    #[tokio::test]
    async fn runs_again_and_again_until_stopped() {
        let (stop, runs, task) = counting(Duration::ZERO, Duration::from_millis(5));
        for _ in 0..2000 {
            if runs.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(runs.load(Ordering::SeqCst) >= 3);
        stop.cancel();
        assert!(tokio::time::timeout(Duration::from_secs(10), task).await.is_ok(), "did not stop");
    }

    #[tokio::test]
    async fn nothing_runs_before_first_and_a_stop_ends_the_wait() {
        let (stop, runs, task) = counting(Duration::from_secs(3600), Duration::from_secs(3600));
        tokio::task::yield_now().await;
        stop.cancel();
        assert!(tokio::time::timeout(Duration::from_secs(10), task).await.is_ok(), "did not stop");
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }
}
