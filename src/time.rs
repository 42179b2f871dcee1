//! Time: the wall clock as stored (unix milliseconds) and as shown (RFC 3339 UTC with milliseconds), and
//! the scheduling clock that timers use.
//!
//! Two clocks, for two purposes. What people read — `received_at`, an attempt's `sent_at`, the
//! `webhook-timestamp` a receiver checks against its own clock — is wall time ([`now_ms`]). What decides
//! *when* hookd acts — a retry's due time — is [`clock_ms`]: the wall clock read once, at its first use
//! early in the run, plus the monotonic time elapsed since. A step of the wall clock while hookd runs
//! (an operator's `date -s`, a VM resumed, NTP stepping) moves no timer; the values are still unix
//! milliseconds, so due times stored in the retry queue keep their meaning across a restart, where the
//! clock is anchored to the wall clock again.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (the wall clock: for what people read).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The scheduling clock in unix milliseconds: the wall clock at the anchor plus monotonic time since.
/// Equal to [`now_ms`] until the wall clock is stepped; it never goes back.
pub fn clock_ms() -> u64 {
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    let (wall, at) = ANCHOR.get_or_init(|| (now_ms(), Instant::now()));
    wall.saturating_add(at.elapsed().as_millis() as u64)
}

/// Unix time in microseconds.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// `2026-11-22T18:13:22.536Z`.
pub fn format_ms(ms: u64) -> String {
    display_ms(ms).to_string()
}

/// [`format_ms`] without the allocation: write it where it goes.
pub fn display_ms(ms: u64) -> impl std::fmt::Display {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Parses an RFC 3339 time (`Z` or a numeric offset) into unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    // Offsets first: humantime's weak parser would silently ignore a trailing `+02:00`.
    let has_offset = s.len() > 6 && matches!(s.as_bytes()[s.len() - 6], b'+' | b'-');
    let t = if has_offset { parse_with_offset(s)? } else { humantime::parse_rfc3339_weak(s).ok()? };
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}

/// humantime only reads UTC; accept `…+02:00` too by shifting to UTC.
fn parse_with_offset(s: &str) -> Option<SystemTime> {
    if s.len() < 6 {
        return None;
    }
    let (head, off) = s.split_at(s.len() - 6);
    let sign = match off.as_bytes()[0] {
        b'+' => 1i64,
        b'-' => -1i64,
        _ => return None,
    };
    let hours: i64 = off.get(1..3)?.parse().ok()?;
    let minutes: i64 = off.get(4..6)?.parse().ok()?;
    if off.as_bytes().get(3) != Some(&b':') || hours > 23 || minutes > 59 {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(head).ok()?;
    let shift = Duration::from_secs(((hours * 60 + minutes) * 60) as u64);
    if sign > 0 { local.checked_sub(shift) } else { local.checked_add(shift) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduling_clock_starts_at_the_wall_clock_and_never_goes_back() {
        let wall = now_ms();
        let a = clock_ms();
        let b = clock_ms();
        assert!(b >= a, "{b} < {a}");
        // Anchored at the first use in this test process: within a minute of the wall clock.
        assert!(a.abs_diff(wall) < 60_000, "clock {a}, wall {wall}");
    }

    #[test]
    fn formats_with_milliseconds_and_z() {
        assert_eq!(format_ms(1_795_371_202_536), "2026-11-22T18:13:22.536Z");
    }

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_rfc3339("2026-11-22T18:13:22.536Z"), Some(1_795_371_202_536));
        assert_eq!(parse_rfc3339("2026-11-22T20:13:22.536+02:00"), Some(1_795_371_202_536));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-11-22T18:13:22+25:00"), None);
        assert_eq!(parse_rfc3339("2026-11-22T18:13:22.536-01:30"), Some(1_795_371_202_536 + 5_400_000));
    }
}
