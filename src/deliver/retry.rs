//! Whether an attempt calls for another one ([`classify`]), and when ([`next_delay`]). Pure functions.
//!
//! The rules (API.md, "Delivery"): any 2xx is a success. 410 Gone disables the endpoint; the delivery itself
//! is kept and retried like any failure, so re-enabling the endpoint resumes it. Every other status —
//! redirects are never followed, so 3xx included — and every transport error is retried. On 429 and 503
//! the receiver's `Retry-After` sets a floor on the next delay (capped at the policy's `max_ms`).
//!
//! Backoff: delay n = min(max_ms, initial_ms × 2^(n-1)) for the n-th attempt made, ±20 % uniform jitter,
//! never above max_ms; `max_attempts` counts the first attempt. All arithmetic saturates: no input panics.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use rand::Rng;

use crate::deliver::client::{Response, SendError};
use crate::model::RetryPolicy;

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done: the receiver took it.
    Success,
    /// Try again after the backoff delay, and not before `retry_after` if the receiver asked.
    Retry { reason: RetryReason, retry_after: Option<Duration> },
    /// The receiver says the endpoint is gone for good: disable the endpoint, keep the delivery.
    RetryAndDisable { reason: RetryReason },
}

/// Why an attempt failed, in the few words that go into attempt history, logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// The receiver answered with a status that is not 2xx.
    Status(u16),
    Timeout,
    Connect,
    Tls,
    Dns,
    /// The destination resolved to an address the SSRF guard refuses.
    Blocked,
    /// The connection broke the HTTP protocol or closed mid-exchange.
    Protocol,
    /// The endpoint's URL does not parse (it may be fixed before the next attempt).
    InvalidUrl,
    /// The endpoint's URL has a scheme that is not allowed (`http://` while only `https://` is).
    Scheme,
}

impl RetryReason {
    fn from_send_error(err: &SendError) -> RetryReason {
        match err {
            SendError::InvalidUrl(_) => RetryReason::InvalidUrl,
            SendError::SchemeNotAllowed(_) => RetryReason::Scheme,
            SendError::Blocked { .. } => RetryReason::Blocked,
            SendError::Dns(_) => RetryReason::Dns,
            SendError::Connect(_) => RetryReason::Connect,
            SendError::Tls(_) => RetryReason::Tls,
            SendError::Timeout => RetryReason::Timeout,
            SendError::Protocol(_) => RetryReason::Protocol,
        }
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self {
            RetryReason::Status(code) => return write!(f, "status {code}"),
            RetryReason::Timeout => "timeout",
            RetryReason::Connect => "connect",
            RetryReason::Tls => "tls",
            RetryReason::Dns => "dns",
            RetryReason::Blocked => "blocked",
            RetryReason::Protocol => "protocol",
            RetryReason::InvalidUrl => "invalid url",
            RetryReason::Scheme => "scheme not allowed",
        };
        f.write_str(word)
    }
}

/// Classifies the outcome of one attempt. `now` is the time the response arrived, for a `Retry-After` date.
pub fn classify(outcome: &Result<Response, SendError>, now: SystemTime) -> Verdict {
    let response = match outcome {
        Ok(response) => response,
        Err(err) => return Verdict::Retry { reason: RetryReason::from_send_error(err), retry_after: None },
    };
    let status = response.status;
    if status.is_success() {
        return Verdict::Success;
    }
    let reason = RetryReason::Status(status.as_u16());
    if status == StatusCode::GONE {
        return Verdict::RetryAndDisable { reason };
    }
    let retry_after = match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            response.headers.get(http::header::RETRY_AFTER).and_then(|v| parse_retry_after(v, now))
        }
        _ => None,
    };
    Verdict::Retry { reason, retry_after }
}

/// The delay before the next attempt, or `None` when the policy's attempts are used up.
///
/// `attempts_made` counts the attempt that just failed (1 after the first). `retry_after`, if the receiver
/// sent one, is a floor on the delay, itself capped at `max_ms` so a receiver cannot park a delivery forever.
pub fn next_delay(
    policy: &RetryPolicy,
    attempts_made: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Option<Duration> {
    if attempts_made >= policy.max_attempts {
        return None;
    }
    let base = base_delay_ms(policy, attempts_made);
    // ±20 %: a uniform pick in [base - base/5, base + base/5], then capped.
    let spread = base / 5;
    let jittered = (base - spread).saturating_add(rng.random_range(0..=2 * spread)).min(policy.max_ms);
    let floor =
        retry_after.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).min(policy.max_ms));
    Some(Duration::from_millis(jittered.max(floor)))
}

/// The un-jittered delay after the `attempts_made`-th attempt: min(max_ms, initial_ms × 2^(n-1)).
fn base_delay_ms(policy: &RetryPolicy, attempts_made: u32) -> u64 {
    let exponent = attempts_made.saturating_sub(1);
    let factor = 1u64.checked_shl(exponent).unwrap_or(u64::MAX);
    policy.initial_ms.saturating_mul(factor).min(policy.max_ms)
}

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date, which counts from `now` (a date in
/// the past means "now"). Anything else is ignored (`None`).
pub fn parse_retry_after(v: &http::HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than u64 holds is still "a very long time"; next_delay caps it anyway.
        return Some(Duration::from_secs(s.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn response(status: u16, headers: &[(&str, &str)]) -> Result<Response, SendError> {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        Ok(Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: bytes::Bytes::new(),
            truncated: false,
        })
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn policy(max_attempts: u32, initial_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy { max_attempts, initial_ms, max_ms }
    }

    #[test]
    fn every_2xx_is_a_success() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(classify(&response(code, &[]), at(0)), Verdict::Success, "{code}");
        }
    }

    #[test]
    fn gone_disables_the_endpoint() {
        assert_eq!(
            classify(&response(410, &[]), at(0)),
            Verdict::RetryAndDisable { reason: RetryReason::Status(410) }
        );
    }

    #[test]
    fn redirects_client_and_server_errors_are_retried() {
        for code in [100, 301, 302, 304, 307, 400, 401, 404, 409, 422, 500, 502, 504] {
            assert_eq!(
                classify(&response(code, &[("retry-after", "30")]), at(0)),
                Verdict::Retry { reason: RetryReason::Status(code), retry_after: None },
                "{code} must retry, and only 429/503 honour Retry-After"
            );
        }
    }

    #[test]
    fn too_many_requests_and_unavailable_carry_retry_after() {
        for code in [429, 503] {
            assert_eq!(
                classify(&response(code, &[("retry-after", "30")]), at(0)),
                Verdict::Retry {
                    reason: RetryReason::Status(code),
                    retry_after: Some(Duration::from_secs(30))
                }
            );
            assert_eq!(
                classify(&response(code, &[]), at(0)),
                Verdict::Retry { reason: RetryReason::Status(code), retry_after: None }
            );
        }
    }

    #[test]
    fn transport_errors_are_retried_with_their_reason() {
        let cases = [
            (SendError::Timeout, RetryReason::Timeout),
            (SendError::SchemeNotAllowed("http".into()), RetryReason::Scheme),
            (
                SendError::Blocked { host: "localhost".into(), addr: [127, 0, 0, 1].into() },
                RetryReason::Blocked,
            ),
            (SendError::Connect(std::io::Error::other("refused").into()), RetryReason::Connect),
            (SendError::Tls(std::io::Error::other("bad cert").into()), RetryReason::Tls),
            (SendError::Dns(std::io::Error::other("nxdomain").into()), RetryReason::Dns),
            (SendError::Protocol(std::io::Error::other("eof").into()), RetryReason::Protocol),
        ];
        for (err, reason) in cases {
            assert_eq!(classify(&Err(err), at(0)), Verdict::Retry { reason, retry_after: None });
        }
    }

    #[test]
    fn reasons_display_short() {
        assert_eq!(RetryReason::Status(503).to_string(), "status 503");
        assert_eq!(RetryReason::Timeout.to_string(), "timeout");
        assert_eq!(RetryReason::Blocked.to_string(), "blocked");
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = at(1_700_000_000);
        let parse = |s: &str| parse_retry_after(&http::HeaderValue::from_str(s).unwrap(), now);
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse("99999999999999999999999"), Some(Duration::from_secs(u64::MAX)));
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse(&in_90s), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse(&past), Some(Duration::ZERO));
        // The obsolete date formats HTTP still allows.
        assert_eq!(parse("Tuesday, 14-Nov-23 22:13:20 GMT"), Some(Duration::ZERO));
        for garbage in ["", "soon", "-5", "1.5", "+3", "12s", "Tue, 99 Nov 2023 22:13:20 GMT"] {
            assert_eq!(parse(garbage), None, "{garbage:?}");
        }
        let not_utf8 = http::HeaderValue::from_bytes(b"\xff12").unwrap();
        assert_eq!(parse_retry_after(&not_utf8, now), None);
    }

    #[test]
    fn attempts_run_out_at_max_attempts() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = policy(3, 1_000, 60_000);
        assert!(next_delay(&p, 1, None, &mut rng).is_some());
        assert!(next_delay(&p, 2, None, &mut rng).is_some());
        assert_eq!(next_delay(&p, 3, None, &mut rng), None);
        assert_eq!(next_delay(&p, u32::MAX, None, &mut rng), None);
        assert_eq!(next_delay(&policy(0, 1_000, 60_000), 0, None, &mut rng), None);
        // A single attempt means no retry at all.
        assert_eq!(next_delay(&policy(1, 1_000, 60_000), 1, None, &mut rng), None);
    }

    #[test]
    fn the_base_delay_doubles_up_to_the_cap() {
        let p = policy(100, 5_000, 21_600_000);
        let bases: Vec<u64> = (1..=14).map(|n| base_delay_ms(&p, n)).collect();
        assert_eq!(bases[..4], [5_000, 10_000, 20_000, 40_000]);
        assert_eq!(bases[12], 5_000 << 12);
        assert_eq!(bases[13], 21_600_000);
        assert_eq!(base_delay_ms(&p, 99), 21_600_000);
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_max() {
        let mut rng = StdRng::seed_from_u64(2);
        let p = policy(10, 1_000, 60_000);
        let d = next_delay(&p, 1, Some(Duration::from_secs(30)), &mut rng).unwrap();
        assert_eq!(d, Duration::from_secs(30));
        let d = next_delay(&p, 1, Some(Duration::from_secs(86_400)), &mut rng).unwrap();
        assert_eq!(d, Duration::from_millis(60_000));
        let d = next_delay(&p, 1, Some(Duration::MAX), &mut rng).unwrap();
        assert_eq!(d, Duration::from_millis(60_000));
        // A Retry-After shorter than the backoff changes nothing.
        let d = next_delay(&p, 1, Some(Duration::from_millis(1)), &mut rng).unwrap();
        assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1_200), "{d:?}");
    }

    #[test]
    fn the_default_policy_keeps_trying_for_more_than_a_day_even_with_minimal_jitter() {
        let p = RetryPolicy::default();
        // Every delay at its lowest: -20 %.
        let least_total_ms: u64 = (1..p.max_attempts).map(|n| base_delay_ms(&p, n) * 4 / 5).sum();
        assert!(least_total_ms >= 24 * 3_600_000, "{least_total_ms} ms");
        // And the real thing, with random jitter, agrees.
        let mut rng = StdRng::seed_from_u64(3);
        let total: Duration = (1..).map_while(|n| next_delay(&p, n, None, &mut rng)).sum();
        assert!(total >= Duration::from_millis(least_total_ms), "{total:?}");
        assert_eq!((1..).map_while(|n| next_delay(&p, n, None, &mut rng)).count(), 17);
    }

    fn any_policy() -> impl Strategy<Value = RetryPolicy> {
        (any::<u32>(), any::<u64>(), any::<u64>())
            .prop_map(|(max_attempts, initial_ms, max_ms)| RetryPolicy { max_attempts, initial_ms, max_ms })
    }

    proptest! {
        #[test]
        fn jitter_stays_within_twenty_percent_and_under_the_cap(
            initial_ms in 0u64..10_000_000,
            max_ms in 0u64..100_000_000,
            n in 1u32..80,
            seed in any::<u64>(),
        ) {
            let p = policy(u32::MAX, initial_ms, max_ms);
            let base = base_delay_ms(&p, n);
            let d = next_delay(&p, n, None, &mut StdRng::seed_from_u64(seed)).unwrap();
            let ms = u64::try_from(d.as_millis()).unwrap();
            prop_assert!(ms <= max_ms);
            prop_assert!(ms >= base - base / 5, "{ms} < 80 % of {base}");
            prop_assert!(ms <= base + base / 5, "{ms} > 120 % of {base}");
        }

        #[test]
        fn the_base_delay_never_shrinks(p in any_policy(), n in 1u32..200) {
            prop_assert!(base_delay_ms(&p, n) <= base_delay_ms(&p, n + 1));
            prop_assert!(base_delay_ms(&p, n) <= p.max_ms);
        }

        #[test]
        fn next_delay_never_panics_and_respects_the_cap(
            p in any_policy(),
            n in any::<u32>(),
            retry_after_ms in proptest::option::of(any::<u64>()),
            seed in any::<u64>(),
        ) {
            let retry_after = retry_after_ms.map(Duration::from_millis);
            let d = next_delay(&p, n, retry_after, &mut StdRng::seed_from_u64(seed));
            prop_assert_eq!(d.is_none(), n >= p.max_attempts);
            if let Some(d) = d {
                prop_assert!(d <= Duration::from_millis(p.max_ms));
                if let Some(ra) = retry_after {
                    prop_assert!(d >= ra.min(Duration::from_millis(p.max_ms)));
                }
            }
        }

        #[test]
        fn retry_after_seconds_round_trip(secs in any::<u64>()) {
            let v = http::HeaderValue::from(secs);
            prop_assert_eq!(parse_retry_after(&v, at(0)), Some(Duration::from_secs(secs)));
        }

        #[test]
        fn retry_after_never_panics_on_garbage(s in "[ -~]{0,40}", now in any::<u32>()) {
            if let Ok(v) = http::HeaderValue::from_str(&s) {
                let _ = parse_retry_after(&v, at(u64::from(now)));
            }
        }
    }
}
