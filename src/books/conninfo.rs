//! The fleet database's connection string: the libpq forms (a
//! `postgres://` URL or `key=value` words), with the two settings the
//! client crate does not take handled here (`sslmode` `verify-ca` and
//! `verify-full`, `sslrootcert`), and a form to show with any password
//! masked.
//!
//! Hand-written because the crate's own parser refuses those sslmode values
//! and has no masking; everything else (hosts, ports, user, dbname,
//! `target_session_attrs`, ...) is passed to it unchanged.

use percent_encoding::percent_decode_str;

/// libpq's sslmode values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries without TLS first: the nearest is prefer.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// A connection string taken apart.
#[derive(Debug, PartialEq)]
pub struct ConnInfo {
    /// What the client crate parses: the string without `sslmode` and
    /// `sslrootcert`.
    pub for_crate: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<String>,
    /// Whether the string holds a password itself.
    pub has_password: bool,
}

/// Takes a connection string apart; an error names what is wrong, never
/// the string itself (it may hold a password).
pub fn parse(s: &str) -> Result<ConnInfo, String> {
    let s = s.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        parse_url(s)
    } else {
        parse_words(s)
    }
}

fn parse_url(s: &str) -> Result<ConnInfo, String> {
    let (base, query) = match s.split_once('?') {
        Some((b, q)) => (b, q),
        None => (s, ""),
    };
    let mut sslmode = SslMode::Prefer;
    let mut sslrootcert = None;
    let mut has_password = userinfo(base).is_some_and(|u| u.contains(':'));
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode_str(v).decode_utf8_lossy().into_owned();
        match k {
            "sslmode" => {
                sslmode = SslMode::parse(&v)
                    .ok_or_else(|| format!("unknown sslmode `{}`", crate::text::clip(&v, 20)))?
            }
            "sslrootcert" => sslrootcert = Some(v),
            "password" => {
                has_password = true;
                kept.push(pair);
            }
            _ => kept.push(pair),
        }
    }
    let mut for_crate = base.to_string();
    if !kept.is_empty() {
        for_crate.push('?');
        for_crate.push_str(&kept.join("&"));
    }
    Ok(ConnInfo {
        for_crate,
        sslmode,
        sslrootcert,
        has_password,
    })
}

/// The `user:password` part of a URL, if any.
fn userinfo(base: &str) -> Option<&str> {
    let rest = base.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    authority.rsplit_once('@').map(|(u, _)| u)
}

/// `key=value` words; a value may be single-quoted, with `\'` and `\\`.
fn words(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!(
                "`{}` has no value (expected key=value)",
                crate::text::clip(&key, 40)
            ));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err("an unterminated quoted value".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.extend(chars.next());
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn parse_words(s: &str) -> Result<ConnInfo, String> {
    let mut sslmode = SslMode::Prefer;
    let mut sslrootcert = None;
    let mut has_password = false;
    let mut kept = Vec::new();
    for (k, v) in words(s)? {
        match k.as_str() {
            "sslmode" => {
                sslmode = SslMode::parse(&v)
                    .ok_or_else(|| format!("unknown sslmode `{}`", crate::text::clip(&v, 20)))?
            }
            "sslrootcert" => sslrootcert = Some(v),
            _ => {
                has_password |= k == "password";
                kept.push(format!("{k}={}", quote(&v)));
            }
        }
    }
    Ok(ConnInfo {
        for_crate: kept.join(" "),
        sslmode,
        sslrootcert,
        has_password,
    })
}

/// The string as it may be shown: a password inside it becomes `***`.
pub fn masked(s: &str) -> String {
    let s = s.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        let (base, query) = match s.split_once('?') {
            Some((b, q)) => (b.to_string(), Some(q)),
            None => (s.to_string(), None),
        };
        let mut base = base;
        if let Some(u) = userinfo(&base)
            && let Some((user, _)) = u.split_once(':')
        {
            base = base.replacen(u, &format!("{user}:***"), 1);
        }
        let query = query.map(|q| {
            q.split('&')
                .map(|p| match p.split_once('=') {
                    Some(("password", _)) => "password=***".to_string(),
                    _ => p.to_string(),
                })
                .collect::<Vec<_>>()
                .join("&")
        });
        let shown = match query {
            Some(q) => format!("{base}?{q}"),
            None => base,
        };
        return crate::text::clip(&shown, 300);
    }
    match words(s) {
        Ok(ws) => ws
            .into_iter()
            .map(|(k, v)| {
                if k == "password" {
                    "password=***".to_string()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => "(an unreadable connection string)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_words_lose_what_the_crate_refuses() {
        let c = parse("postgres://ccl:s3cr%40t@db1:5432,db2/ccl?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&target_session_attrs=read-write").unwrap();
        assert_eq!(
            c.for_crate,
            "postgres://ccl:s3cr%40t@db1:5432,db2/ccl?target_session_attrs=read-write"
        );
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        assert!(c.has_password);
        let w = parse("host=/run/pg dbname='my db' sslmode=verify-ca user=ccl").unwrap();
        assert_eq!(w.for_crate, "host='/run/pg' dbname='my db' user='ccl'");
        assert_eq!(w.sslmode, SslMode::VerifyCa);
        assert!(!w.has_password);
        assert_eq!(parse("host=x").unwrap().sslmode, SslMode::Prefer);
        assert!(
            parse("sslmode=sometimes")
                .unwrap_err()
                .contains("sometimes")
        );
        assert!(parse("host").is_err());
        assert!(parse("password='abc").is_err());
    }

    #[test]
    fn passwords_are_masked_wherever_they_are() {
        let rows = [
            ("postgres://ccl:hunter2@db/ccl", "postgres://ccl:***@db/ccl"),
            (
                "postgresql://ccl@db/ccl?password=hunter2&sslmode=require",
                "postgresql://ccl@db/ccl?password=***&sslmode=require",
            ),
            (
                "host=db password=hunter2 user=u",
                "host=db password=*** user=u",
            ),
            ("host=db password='hun ter2'", "host=db password=***"),
            ("postgres://db/ccl", "postgres://db/ccl"),
        ];
        for (s, want) in rows {
            let m = masked(s);
            assert_eq!(m, want);
            assert!(!m.contains("hunter2") && !m.contains("hun ter2"));
        }
    }
}
