//! When to try again: `Retry-After` (RFC 9110 §10.2.3) and full-jitter
//! exponential backoff, both capped.

use std::time::{Duration, SystemTime};

/// `Retry-After`: delta seconds, or an HTTP date in any of the three forms
/// a recipient must accept (IMF-fixdate, RFC 850, asctime) turned into the
/// time left from `now` (zero if past). Anything else: `None`.
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only overflow can fail; a huge value is capped later.
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How long to wait before retry number `attempt` (0-based): the server's
/// `Retry-After` if it gave one, else uniform in
/// `[0, min(cap, base * 2^attempt)]`; never more than `cap`.
pub(super) fn retry_wait(
    attempt: u32,
    retry_after: Option<Duration>,
    base: Duration,
    cap: Duration,
) -> Duration {
    match retry_after {
        Some(d) => d.min(cap),
        None => jitter(base.saturating_mul(2u32.saturating_pow(attempt)).min(cap)),
    }
}

/// Uniform in `[0, ceiling]`.
fn jitter(ceiling: Duration) -> Duration {
    let n = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn retry_after_parsing() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_700); // 1994-11-06 08:48:20
        let in_77s = Some(Duration::from_secs(77));
        for (value, want) in [
            ("0", Some(Duration::ZERO)),
            (" 120 ", Some(Duration::from_secs(120))),
            (
                "99999999999999999999999",
                Some(Duration::from_secs(u64::MAX)),
            ),
            // The three forms of RFC 9110 §5.6.7, all 08:49:37 GMT that day.
            ("Sun, 06 Nov 1994 08:49:37 GMT", in_77s),
            ("Sunday, 06-Nov-94 08:49:37 GMT", in_77s),
            ("Sun Nov  6 08:49:37 1994", in_77s),
            // In the past: no wait.
            ("Sat, 05 Nov 1994 08:49:37 GMT", Some(Duration::ZERO)),
            ("Saturday, 05-Nov-94 08:49:37 GMT", Some(Duration::ZERO)),
            ("Sat Nov  5 08:49:37 1994", Some(Duration::ZERO)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
            ("", None),
            ("-1", None),
            ("1.5", None),
            ("soon", None),
            ("Sun, 06 Nov 1994 08:49:37 UTC", None),
            ("Sun, 6 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994  08:49:37 GMT", None),
            ("Sun, 31 Nov 1994 08:49:37 GMT", None),
            ("Sun, 29 Feb 1900 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 24:00:00 GMT", None),
            ("Sun, 06 Nov 1994 08:49 GMT", None),
            ("Xyz, 06 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 Foo 1994 08:49:37 GMT", None),
            ("Sunday, 06-Nov-94 08:49:37 UTC", None),
            ("Sun Nov 06 08:49:37 1994 GMT", None),
        ] {
            assert_eq!(parse_retry_after(value, now), want, "{value:?}");
        }
        // A date a leap day later than a fixed point: the calendar is right.
        assert_eq!(
            parse_retry_after(
                "Tue, 29 Feb 2000 23:59:59 GMT",
                UNIX_EPOCH + Duration::from_secs(951_868_700)
            ),
            Some(Duration::from_secs(99))
        );
    }

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let w0 = retry_wait(0, None, base, cap);
            assert!(w0 <= Duration::from_millis(200));
            assert!(retry_wait(2, None, base, cap) <= Duration::from_millis(800));
            assert!(retry_wait(40, None, base, cap) <= cap);
            seen.insert(w0);
        }
        // Spread over the range, not a constant.
        assert!(seen.len() > 100, "{}", seen.len());
        assert_eq!(
            retry_wait(0, Some(Duration::from_secs(3600)), base, cap),
            cap
        );
        assert_eq!(
            retry_wait(5, Some(Duration::from_millis(7)), base, cap),
            Duration::from_millis(7)
        );
        assert_eq!(retry_wait(3, None, Duration::ZERO, cap), Duration::ZERO);
        assert!(retry_wait(0, None, Duration::MAX, Duration::MAX) <= Duration::MAX);
    }
}
