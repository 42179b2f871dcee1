//! Per-endpoint statistics: attempt counts, error rates and latency percentiles over the last hour and
//! day, and the failure run that auto-disabling and failure notifications follow.
//!
//! Kept in memory by the endpoint's dispatcher (cheap to update: a few additions per attempt), read by
//! the stats API, and persisted (`S` E) every minute and at shutdown, so a restart loses at most a
//! minute of counts. Memory: 36 slots of ~120 bytes per endpoint that has had attempts.

use crate::model::{EndpointStatsRecord, StatsSlot};

/// Upper edges of the latency buckets, in ms; one more bucket holds everything slower.
pub const LATENCY_BUCKETS_MS: [u64; 27] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000,
    7_500, 10_000, 15_000, 30_000, 60_000,
];
const RECENT_SLOT_MS: u64 = 5 * 60_000;
const RECENT_SLOTS: usize = 12;
const HOUR_MS: u64 = 3_600_000;
const HOURS: usize = 24;

/// Counts over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowStats {
    pub succeeded: u64,
    pub failed: u64,
    /// The latency bucket edges (ms) under which half and 99 % of the attempts finished; `None` without
    /// attempts. Slower than the last edge reads as that edge.
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

impl WindowStats {
    pub fn attempts(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// Failed / attempts, 0 without attempts.
    pub fn error_rate(&self) -> f64 {
        if self.attempts() == 0 { 0.0 } else { self.failed as f64 / self.attempts() as f64 }
    }
}

/// Records one finished attempt (not a test send).
pub fn record(stats: &mut EndpointStatsRecord, sent_at: u64, succeeded: bool, duration_ms: u64) {
    let finished = sent_at.saturating_add(duration_ms);
    stats.last_triggered_at = Some(stats.last_triggered_at.map_or(sent_at, |t| t.max(sent_at)));
    if succeeded {
        stats.last_success_at = Some(finished);
        stats.failing_since = None;
    } else {
        stats.last_failure_at = Some(finished);
        stats.failing_since.get_or_insert(sent_at);
    }
    let bucket =
        LATENCY_BUCKETS_MS.iter().position(|edge| duration_ms <= *edge).unwrap_or(LATENCY_BUCKETS_MS.len());
    for (slots, len, slot_ms) in
        [(&mut stats.recent, RECENT_SLOTS, RECENT_SLOT_MS), (&mut stats.hours, HOURS, HOUR_MS)]
    {
        if slots.len() != len {
            slots.resize_with(len, StatsSlot::default);
        }
        let epoch = sent_at / slot_ms;
        let slot = &mut slots[(epoch % len as u64) as usize];
        if slot.epoch != epoch {
            *slot =
                StatsSlot { epoch, succeeded: 0, failed: 0, latency: vec![0; LATENCY_BUCKETS_MS.len() + 1] };
        }
        if slot.latency.len() != LATENCY_BUCKETS_MS.len() + 1 {
            slot.latency.resize(LATENCY_BUCKETS_MS.len() + 1, 0);
        }
        if succeeded {
            slot.succeeded = slot.succeeded.saturating_add(1);
        } else {
            slot.failed = slot.failed.saturating_add(1);
        }
        slot.latency[bucket] = slot.latency[bucket].saturating_add(1);
    }
}

/// The last hour (12 five-minute slots, the current one included) as of `now`.
pub fn last_hour(stats: &EndpointStatsRecord, now: u64) -> WindowStats {
    window(&stats.recent, now / RECENT_SLOT_MS, RECENT_SLOTS as u64)
}

/// The last 24 hours (hourly slots, the current one included) as of `now`.
pub fn last_day(stats: &EndpointStatsRecord, now: u64) -> WindowStats {
    window(&stats.hours, now / HOUR_MS, HOURS as u64)
}

fn window(slots: &[StatsSlot], current: u64, len: u64) -> WindowStats {
    let mut out = WindowStats::default();
    let mut latency = vec![0u64; LATENCY_BUCKETS_MS.len() + 1];
    for slot in slots.iter().filter(|s| s.epoch <= current && s.epoch + len > current) {
        out.succeeded += u64::from(slot.succeeded);
        out.failed += u64::from(slot.failed);
        for (sum, n) in latency.iter_mut().zip(&slot.latency) {
            *sum += u64::from(*n);
        }
    }
    let total: u64 = latency.iter().sum();
    let percentile = |p: f64| -> Option<u64> {
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(
                    LATENCY_BUCKETS_MS
                        .get(i)
                        .copied()
                        .unwrap_or(LATENCY_BUCKETS_MS[LATENCY_BUCKETS_MS.len() - 1]),
                );
            }
        }
        None
    };
    out.p50_ms = percentile(0.50);
    out.p99_ms = percentile(0.99);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_790_000_000_000;

    #[test]
    fn counts_rates_and_percentiles_over_the_hour_and_the_day() {
        let mut s = EndpointStatsRecord::default();
        for i in 0..98 {
            record(&mut s, T0 + i, true, 4);
        }
        record(&mut s, T0 + 100, false, 900);
        record(&mut s, T0 + 101, false, 40_000);
        let h = last_hour(&s, T0 + 1_000);
        assert_eq!((h.succeeded, h.failed), (98, 2));
        assert!((h.error_rate() - 0.02).abs() < 1e-9);
        assert_eq!(h.p50_ms, Some(5), "4 ms falls under the 5 ms edge");
        assert_eq!(h.p99_ms, Some(1_000), "the 99th of 100 is the 900 ms one");
        assert_eq!(last_day(&s, T0 + 1_000), h);
        assert_eq!(s.failing_since, Some(T0 + 100));
        assert_eq!(s.last_triggered_at, Some(T0 + 101));
    }

    #[test]
    fn old_slots_leave_the_window_and_a_success_ends_the_failure_run() {
        let mut s = EndpointStatsRecord::default();
        record(&mut s, T0, false, 10);
        let two_hours = T0 + 2 * HOUR_MS;
        assert_eq!(last_hour(&s, two_hours).attempts(), 0, "older than an hour");
        assert_eq!(last_day(&s, two_hours).failed, 1);
        assert_eq!(last_day(&s, T0 + 25 * HOUR_MS).attempts(), 0, "older than a day");
        record(&mut s, two_hours, true, 10);
        assert_eq!(s.failing_since, None);
        assert_eq!(last_day(&s, two_hours).attempts(), 2);
        // A slot reused a day later starts from zero.
        record(&mut s, T0 + 24 * HOUR_MS, true, 10);
        assert_eq!(last_day(&s, T0 + 24 * HOUR_MS).attempts(), 2);
        assert_eq!(last_hour(&s, T0 + 24 * HOUR_MS).attempts(), 1);
    }

    #[test]
    fn an_empty_window_has_no_percentiles_and_no_error_rate() {
        let w = last_hour(&EndpointStatsRecord::default(), T0);
        assert_eq!((w.p50_ms, w.p99_ms, w.error_rate()), (None, None, 0.0));
    }
}
