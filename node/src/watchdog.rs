//! The runtime watchdog: a task that asks to wake every [`PERIOD`] and measures how late it
//! wakes. A late wake means the runtime's workers were busy or blocked (a synchronous disk
//! write, a long computation) and every task on them, Raft's election timers and SIP
//! retransmissions included, was late by as much.
//!
//! Each lateness goes to the `carillon_runtime_lag_seconds` histogram; one over
//! [`STALL_WARN`] is also logged as a warning with its length, so a stall can be lined up
//! with the other logs of that moment.
#![allow(clippy::disallowed_methods)] // measures the runtime against the wall clock

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

/// How often the watchdog asks to wake.
pub const PERIOD: Duration = Duration::from_millis(10);
/// A wake this late is logged as a stall.
pub const STALL_WARN: Duration = Duration::from_millis(100);
/// The histogram's name.
pub const LAG_METRIC: &str = "carillon_runtime_lag_seconds";

/// Runs until the runtime shuts down. `on_wake` hears how late every wake was, for a
/// benchmark's own report.
pub async fn run(mut on_wake: impl FnMut(Duration) + Send) {
    let mut ticks = tokio::time::interval(PERIOD);
    // After a stall, measure the next wake from its own deadline, not a burst of catch-ups.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let due = ticks.tick().await;
        let late = Instant::now().saturating_duration_since(due);
        metrics::histogram!(LAG_METRIC).record(late.as_secs_f64());
        on_wake(late);
        if late >= STALL_WARN {
            tracing::warn!(
                late_ms = late.as_millis() as u64,
                "the runtime stalled: a task blocked its worker or the machine is overloaded"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_worker_is_reported_as_a_stall() {
        let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let dog = tokio::spawn(run(move |late| {
            if late >= STALL_WARN {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(late)
            }
        }));
        // Let it take its first tick, then block the only worker.
        tokio::time::sleep(Duration::from_millis(30)).await;
        std::thread::sleep(Duration::from_millis(250));
        tokio::time::sleep(Duration::from_millis(30)).await;
        dog.abort();
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(seen.len(), 1, "one stall, reported once: {seen:?}");
        assert!(
            seen[0] >= Duration::from_millis(200),
            "the stall's length is about the block's: {seen:?}"
        );
    }
}
