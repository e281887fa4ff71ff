//! The spending and limit keys of the config (`budget`, `max_in_flight`,
//! `fallback`, policy.md), their validation, and the admission decision.
//!
//! The keys are deserialized straight from the config file, so every error
//! (a negative cap, a word where a number belongs, an unknown provider or
//! key) comes out of the YAML parser with the key's path and line.

pub mod admit;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

pub use admit::{Counts, Decision, Spending, admit};

/// A provider a job can be sent to (`claude-code` never is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Gpu,
    Gemini,
    Claude,
    Auto,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::Gpu,
        Provider::Gemini,
        Provider::Claude,
        Provider::Auto,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Gpu => "gpu",
            Provider::Gemini => "gemini",
            Provider::Claude => "claude",
            Provider::Auto => "auto",
        }
    }

    /// Case and surrounding space ignored, as for `preferred_ai`.
    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of CAD in a cap: a finite number at or above 0.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Cad(pub f64);

impl<'de> Deserialize<'de> for Cad {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cad, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cad;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an amount of CAD at or above 0, like 20.00")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cad, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(Cad(v))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cad, E> {
                Ok(Cad(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cad, E> {
                if v >= 0 {
                    Ok(Cad(v as f64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Signed(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A count of jobs in flight: a whole number at or above 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count(pub u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number of jobs at or above 0, like 5")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                u64::try_from(v)
                    .map(Count)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// A daily and a monthly cap (either may be absent), and for a provider
/// the price to assume before any of its jobs completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    pub daily_cad: Option<Cad>,
    pub monthly_cad: Option<Cad>,
    pub estimate_cad: Option<Cad>,
}

/// `budget:` in the config.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub daily_cad: Option<Cad>,
    pub monthly_cad: Option<Cad>,
    #[serde(default)]
    pub providers: BTreeMap<Provider, Caps>,
}

/// The keys of `max_in_flight:`: `all` or a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    All,
    Gpu,
    Gemini,
    Claude,
    Auto,
}

/// `max_in_flight:` in the config.
pub type Limits = BTreeMap<LimitKey, Count>;

/// A chain of providers: a list, or one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain(pub Vec<Provider>);

/// At most this many entries in a fallback chain (policy.md).
pub const MAX_CHAIN: usize = 4;

impl<'de> Deserialize<'de> for Chain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Chain, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let names = match Raw::deserialize(d).map_err(|_| {
            de::Error::custom(
                "expected a provider (gpu, gemini, claude, auto) or a list of them, like [gemini, claude]",
            )
        })? {
            Raw::One(p) => vec![p],
            Raw::Many(v) => v,
        };
        let v = names
            .iter()
            .map(|n| {
                Provider::parse(n).ok_or_else(|| {
                    de::Error::custom(format!(
                        "unknown provider `{}` (expected gpu, gemini, claude or auto)",
                        crate::text::clip(n, 40)
                    ))
                })
            })
            .collect::<Result<Vec<_>, D::Error>>()?;
        if v.len() > MAX_CHAIN {
            return Err(de::Error::custom(format!(
                "a fallback chain has at most {MAX_CHAIN} entries, this one has {}",
                v.len()
            )));
        }
        Ok(Chain(v))
    }
}

/// `fallback:` in the config: a default chain per first provider.
pub type Fallback = BTreeMap<Provider, Chain>;

/// Budgets, limits and default chains, as configured (all empty when the
/// config has none of the keys: then nothing here changes any behaviour).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub budget: Budget,
    pub max_in_flight: Limits,
    pub fallback: Fallback,
}

/// Which spending window a cap covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Window {
    Daily,
    Monthly,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Daily => "daily",
            Window::Monthly => "monthly",
        }
    }
}

/// One configured cap: `None` as provider means all providers together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cap {
    pub window: Window,
    pub provider: Option<Provider>,
    pub limit: f64,
}

impl Cap {
    /// `all` or the provider, as the messages and the report name it.
    pub fn scope(&self) -> &'static str {
        self.provider.map_or("all", Provider::as_str)
    }
}

impl Policy {
    /// Whether `submit` has anything to check (no lock, no reads when not).
    pub fn admission_applies(&self) -> bool {
        !self.caps().is_empty() || !self.max_in_flight.is_empty()
    }

    /// Every configured cap: the all-provider ones first (daily, monthly),
    /// then each provider's, in provider order.
    pub fn caps(&self) -> Vec<Cap> {
        let mut out = Vec::new();
        let mut push = |provider, caps: &Caps| {
            for (window, c) in [
                (Window::Daily, caps.daily_cad),
                (Window::Monthly, caps.monthly_cad),
            ] {
                if let Some(Cad(limit)) = c {
                    out.push(Cap {
                        window,
                        provider,
                        limit,
                    });
                }
            }
        };
        push(
            None,
            &Caps {
                daily_cad: self.budget.daily_cad,
                monthly_cad: self.budget.monthly_cad,
                estimate_cad: None,
            },
        );
        for (p, caps) in &self.budget.providers {
            push(Some(*p), caps);
        }
        out
    }

    /// The default chain after a first job on `first`.
    pub fn chain_after(&self, first: Provider) -> &[Provider] {
        self.fallback.get(&first).map_or(&[], |c| &c.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        budget: Option<Budget>,
        max_in_flight: Option<Limits>,
        fallback: Option<Fallback>,
    }

    fn parse(yaml: &str) -> Result<File, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_keys_parse() {
        let f = parse(
            "budget:\n  daily_cad: 20.00\n  monthly_cad: 300\n  providers:\n    claude: {daily_cad: 5.00}\n\
             max_in_flight:\n  all: 50\n  claude: 5\n\
             fallback:\n  gemini: [claude]\n  gpu: claude\n",
        )
        .unwrap();
        let b = f.budget.unwrap();
        assert_eq!(b.daily_cad, Some(Cad(20.0)));
        assert_eq!(b.monthly_cad, Some(Cad(300.0)));
        assert_eq!(b.providers[&Provider::Claude].daily_cad, Some(Cad(5.0)));
        let l = f.max_in_flight.unwrap();
        assert_eq!(l[&LimitKey::All], Count(50));
        assert_eq!(l[&LimitKey::Claude], Count(5));
        let fb = f.fallback.unwrap();
        assert_eq!(fb[&Provider::Gpu], Chain(vec![Provider::Claude]));
        let p = Policy {
            budget: b,
            max_in_flight: l,
            fallback: fb,
        };
        let caps: Vec<_> = p
            .caps()
            .iter()
            .map(|c| format!("{} {} {}", c.scope(), c.window.as_str(), c.limit))
            .collect();
        assert_eq!(caps, ["all daily 20", "all monthly 300", "claude daily 5"]);
        assert!(p.admission_applies());
        assert!(!Policy::default().admission_applies());
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        // (yaml, words the error must hold)
        let rows: &[(&str, &[&str])] = &[
            (
                "budget:\n  daily_cad: -1\n",
                &["budget.daily_cad", "line 2", "-1"],
            ),
            (
                "budget:\n  daily_cad: lots\n",
                &["budget.daily_cad", "line 2"],
            ),
            ("budget:\n  weekly_cad: 1\n", &["weekly_cad", "line 2"]),
            (
                "budget:\n  providers:\n    openai: {daily_cad: 1}\n",
                &["openai", "line 3"],
            ),
            (
                "budget:\n  providers:\n    claude: {daily_cad: .nan}\n",
                &["daily_cad", "line 3"],
            ),
            (
                "budget:\n  providers:\n    claude: {yearly: 1}\n",
                &["yearly", "line 3"],
            ),
            (
                "max_in_flight:\n  all: -3\n",
                &["max_in_flight.all", "line 2"],
            ),
            (
                "max_in_flight:\n  claude: 2.5\n",
                &["max_in_flight.claude", "line 2"],
            ),
            ("max_in_flight:\n  everyone: 2\n", &["everyone", "line 2"]),
            (
                "fallback:\n  gemini: [claude, openai]\n",
                &["fallback", "openai", "line 2"],
            ),
            (
                "fallback:\n  gemini: [claude, claude, claude, claude, claude]\n",
                &["at most 4"],
            ),
        ];
        for (yaml, words) in rows {
            let e = parse(yaml).expect_err(yaml);
            for w in *words {
                assert!(e.contains(w), "{yaml:?}: {e:?} lacks {w:?}");
            }
        }
    }
}
