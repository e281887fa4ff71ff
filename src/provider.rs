//! The providers a task can run on: `claude-code` (run locally) and the
//! secutools providers. One type for the routing table, the policy keys,
//! the failover chains and the request; markers and records hold the name
//! ([`Provider::as_str`]).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer};

/// Where a task runs. `ClaudeCode` means "run locally"; the others are
/// secutools providers, the only ones a policy key or a chain may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Provider {
    /// Never read from the config: no key names it.
    ClaudeCode,
    Gpu,
    Gemini,
    Claude,
    Auto,
}

/// The names of [`Provider::ALL`], as a config key or a chain names them.
pub const NAMES: [&str; 4] = ["gpu", "gemini", "claude", "auto"];

/// One of `table`'s names, exactly as written, else serde's "unknown
/// variant" with `names`. Read as a string so that a refused name keeps
/// its place in the error's path (a config key: `max_in_flight.al`).
pub fn deserialize_named<'de, D, T: Copy>(
    d: D,
    table: &[(&str, T)],
    names: &'static [&'static str],
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    table
        .iter()
        .find(|(n, _)| *n == s)
        .map(|&(_, v)| v)
        .ok_or_else(|| de::Error::unknown_variant(&crate::text::clip(&s, 40), names))
}

/// A config's provider name: one of [`NAMES`], lower case.
impl<'de> Deserialize<'de> for Provider {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Provider, D::Error> {
        let table = Provider::ALL.map(|p| (p.as_str(), p));
        deserialize_named(d, &table, &NAMES)
    }
}

impl Provider {
    /// The providers a job can be sent to (every one but `claude-code`).
    pub const ALL: [Provider; 4] = [
        Provider::Gpu,
        Provider::Gemini,
        Provider::Claude,
        Provider::Auto,
    ];

    /// The name printed by `decide` and written in markers and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::ClaudeCode => "claude-code",
            Provider::Gpu => "gpu",
            Provider::Gemini => "gemini",
            Provider::Claude => "claude",
            Provider::Auto => "auto",
        }
    }

    /// Whether the task goes to secutools (everything but `claude-code`).
    pub fn delegates(self) -> bool {
        self != Provider::ClaudeCode
    }

    /// The `preferred_ai` to send to secutools: `None` for `auto` (let the
    /// service choose) and for `claude-code` (nothing is sent).
    pub fn api_name(self) -> Option<&'static str> {
        match self {
            Provider::Gpu | Provider::Gemini | Provider::Claude => Some(self.as_str()),
            Provider::Auto | Provider::ClaudeCode => None,
        }
    }

    /// A provider a job can be sent to ([`Provider::ALL`]), by name: case
    /// and surrounding white space ignored. `claude-code` is none.
    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// Any provider by name, `claude-code` included (a task's
    /// `preferred_ai`): case and surrounding white space ignored.
    pub fn named(name: &str) -> Option<Provider> {
        if Provider::ClaudeCode
            .as_str()
            .eq_ignore_ascii_case(name.trim())
        {
            return Some(Provider::ClaudeCode);
        }
        Provider::parse(name)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        use Provider::*;
        let all = [ClaudeCode, Gpu, Gemini, Claude, Auto];
        for p in all {
            let name = format!(" {} ", p.as_str().to_uppercase());
            assert_eq!(Provider::named(&name), Some(p));
            assert_eq!(Provider::parse(&name), Some(p).filter(|p| p.delegates()));
        }
        assert_eq!(Provider::named("openai"), None);
        // The config names the four a job can be sent to, as before.
        let read: Result<Provider, _> = serde_yaml::from_str("claude-code");
        let why = read.unwrap_err().to_string();
        assert!(
            why.contains(
                "unknown variant `claude-code`, expected one of `gpu`, `gemini`, `claude`, `auto`"
            ),
            "{why}"
        );
        let read: Result<Provider, _> = serde_yaml::from_str("claudecode");
        assert!(read.is_err());
    }
}
