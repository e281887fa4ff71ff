//! The providers a task can run on: `claude-code` (run locally) and the
//! secutools providers. One type for the routing table, the policy keys,
//! the failover chains and the request; markers and records hold the name
//! ([`Provider::as_str`]).

use std::fmt;

use serde::Deserialize;

/// Where a task runs. `ClaudeCode` means "run locally"; the others are
/// secutools providers, the only ones a policy key or a chain may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Never read from the config: no key names it.
    #[serde(skip)]
    ClaudeCode,
    Gpu,
    Gemini,
    Claude,
    Auto,
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
            why.contains("expected one of `gpu`, `gemini`, `claude`, `auto`"),
            "{why}"
        );
        let read: Result<Provider, _> = serde_yaml::from_str("claudecode");
        assert!(read.is_err());
    }
}
