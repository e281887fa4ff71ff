//! RFC 3339 timestamps as markers and result files hold them.

use std::time::{Duration, SystemTime};

/// As stored: `YYYY-MM-DDTHH:MM:SSZ`. A time outside the years 1970 to
/// 9999 (a window's bound from a long `--since`, a far `--until`) is
/// clamped to that range, which holds every time the tool stores.
pub fn format(t: SystemTime) -> String {
    let t = t.clamp(SystemTime::UNIX_EPOCH, latest());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// 9999-12-31T23:59:59Z, the last time [`format`] writes.
fn latest() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799)
}

pub fn now() -> String {
    format(SystemTime::now())
}

/// Parses RFC 3339 with `Z` or a numeric offset and optional fractions, as
/// both this tool and the earlier Go implementation wrote them.
pub fn parse(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if let Ok(t) = humantime::parse_rfc3339_weak(s.trim_end_matches(['Z', 'z']))
        && (s.ends_with(['Z', 'z']) || !has_offset(s))
    {
        return Some(t);
    }
    // `...+05:30` / `...-04:00`: parse the local part, then shift to UTC.
    if s.len() < 6 || !s.is_char_boundary(s.len() - 6) {
        return None;
    }
    let (local, off) = s.split_at(s.len() - 6);
    let sign = match off.as_bytes()[0] {
        b'+' => 1i64,
        b'-' => -1i64,
        _ => return None,
    };
    let hh: u64 = off.get(1..3)?.parse().ok()?;
    let mm: u64 = off.get(4..6)?.parse().ok()?;
    if off.as_bytes()[3] != b':' || hh > 23 || mm > 59 {
        return None;
    }
    let t = humantime::parse_rfc3339_weak(local).ok()?;
    let shift = Duration::from_secs(hh * 3600 + mm * 60);
    if sign > 0 {
        t.checked_sub(shift)
    } else {
        t.checked_add(shift)
    }
}

fn has_offset(s: &str) -> bool {
    s.len() > 6 && {
        let b = s.as_bytes()[s.len() - 6];
        (b == b'+' || b == b'-') && s.as_bytes()[s.len() - 3] == b':'
    }
}

/// How long ago `t` was; zero for times in the future.
pub fn age(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_offsets_and_fractions() {
        let z = parse("2026-11-24T10:00:00Z").unwrap();
        assert_eq!(parse("2026-11-24T11:00:00+01:00"), Some(z));
        assert_eq!(parse("2026-11-24T05:00:00-05:00"), Some(z));
        assert_eq!(parse("2026-11-24T10:00:00.000000000Z"), Some(z));
        assert!(parse("2026-11-24T10:00:00.5-05:00").is_some());
        assert_eq!(format(z), "2026-11-24T10:00:00Z");
        assert_eq!(parse("yesterday"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("é€€€€€€"), None);
    }
}
