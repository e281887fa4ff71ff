//! The API URL rules: https, or plain http for a loopback host only; no
//! credentials, query or fragment; the key never shown.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::error::{ClientError, ConfigField, config_error};
use crate::text::clip;

/// `Some((normalised base, is plain http))`, or why not.
pub(super) fn normalise_base_url(url: &str) -> Result<(String, bool), ClientError> {
    let shown = clip(&hide_userinfo(url), 200);
    let refuse = |why: &str| {
        config_error(
            ConfigField::Url,
            &format!("invalid API URL {shown:?}: {why}"),
        )
    };
    if url.is_empty() {
        return Err(config_error(ConfigField::Url, "the API URL is empty"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse("it contains spaces or control characters"));
    }
    if url.contains('#') {
        return Err(refuse("it has a fragment"));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| refuse(&format!("cannot parse it ({e})")))?;
    let scheme = uri
        .scheme_str()
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| refuse("expected https://host"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| refuse("expected https://host"))?;
    if authority.as_str().contains('@') {
        return Err(refuse("credentials in the URL are not supported"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(refuse("no host"));
    }
    if uri.query().is_some() {
        return Err(refuse("it has a query string"));
    }
    let plain_http = match scheme.as_str() {
        "https" => false,
        "http" if is_loopback_host(host) => true,
        "http" => {
            return Err(refuse(
                "plain http:// is allowed only for loopback hosts (127.0.0.0/8, ::1, localhost); use https://",
            ));
        }
        _ => return Err(refuse("expected https:// (or http:// for a loopback host)")),
    };
    let path = uri.path().trim_end_matches('/');
    Ok((
        format!("{scheme}://{}{path}", authority.as_str()),
        plain_http,
    ))
}

/// `url` with any `user:password@` replaced by `***@`, for messages.
fn hide_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// `localhost`, `127.0.0.0/8`, `[::1]`.
fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback());
    }
    host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_validation() {
        let ok = |u: &str| normalise_base_url(u).map(|(b, _)| b);
        assert_eq!(
            ok("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(ok("http://127.3.4.5/").unwrap(), "http://127.3.4.5");
        assert_eq!(ok("http://[::1]:8080").unwrap(), "http://[::1]:8080");
        assert_eq!(ok("http://localhost").unwrap(), "http://localhost");
        assert_eq!(ok("HTTP://LocalHost:9/").unwrap(), "http://LocalHost:9");
        assert_eq!(
            ok("https://secutools.example.org/").unwrap(),
            "https://secutools.example.org"
        );
        assert_eq!(
            ok("https://example.org:8443/prefix/").unwrap(),
            "https://example.org:8443/prefix"
        );
        assert!(normalise_base_url("http://localhost").unwrap().1);
        assert!(!normalise_base_url("https://localhost").unwrap().1);
        for bad in [
            "",
            "http://example.org",
            "http://128.0.0.1",
            "http://[::2]:80",
            "http://localhost.example.org",
            "http://0.0.0.0:80",
            "ftp://example.org",
            "example.org",
            "/api",
            "https://user:pw@example.org",
            "https://example.org/?x=1",
            "https://example.org/#frag",
            "https://exa mple.org",
            "https://example.org\n",
        ] {
            let e = normalise_base_url(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    ClientError::Config {
                        field: ConfigField::Url,
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
        let e = normalise_base_url("http://example.org")
            .unwrap_err()
            .to_string();
        assert!(e.contains("loopback"), "{e}");
        for with_pw in [
            "https://u:pw@example.org",
            "http://u:pw@example.org/x",
            "https://u:pw@exa mple.org",
        ] {
            let e = normalise_base_url(with_pw).unwrap_err().to_string();
            assert!(!e.contains("pw"), "{e}");
            assert!(e.contains("***@"), "{e}");
        }
    }
}
