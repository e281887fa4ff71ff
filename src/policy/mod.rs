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

pub use crate::provider::Provider;

/// The largest amount a cap or an estimate takes, in CAD: far above any
/// real budget, and small enough that every amount prints in a few digits.
pub const MAX_CAD: f64 = 1_000_000_000.0;

/// The error of a value a policy key refuses: the value as read (clipped,
/// escaped), what is wrong with it and the rule, in words. The YAML
/// parser puts the key's path before it and its line after it.
fn refuse<E: de::Error>(value: impl fmt::Display, problem: &str, rule: &str) -> E {
    E::custom(format_args!(
        "{} {problem} ({rule})",
        crate::text::clip(&value.to_string(), 40)
    ))
}

/// A float as YAML writes it: `.inf`, `-.inf`, `.nan`, else the shortest
/// form that reads back (`1e300`, `-2.5`).
fn yaml_float(v: f64) -> String {
    if v.is_nan() {
        ".nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { ".inf" } else { "-.inf" }.into()
    } else {
        format!("{v:?}")
    }
}

/// An amount of CAD in a cap: a finite number from 0 to [`MAX_CAD`]; `-0.0`
/// is 0.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Cad(pub f64);

const CAD_RULE: &str = "expected a number from 0 to 1000000000, like 20.00";

impl Cad {
    /// The amount, or the words of what is wrong with it (`shown`: the
    /// value as written).
    fn judge<E: de::Error>(v: f64, shown: impl fmt::Display) -> Result<Cad, E> {
        if v.is_nan() {
            Err(refuse(shown, "is not a number", CAD_RULE))
        } else if v.is_infinite() {
            Err(refuse(shown, "is not a finite amount of CAD", CAD_RULE))
        } else if v < 0.0 {
            Err(refuse(shown, "is below 0", CAD_RULE))
        } else if v > MAX_CAD {
            Err(refuse(shown, "is too large", "at most 1000000000 CAD"))
        } else {
            // -0.0 compares equal to 0 and would print as `-0.0000`.
            Ok(Cad(if v == 0.0 { 0.0 } else { v }))
        }
    }
}

impl<'de> Deserialize<'de> for Cad {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cad, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cad;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an amount of CAD from 0 to 1000000000, like 20.00")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cad, E> {
                Cad::judge(v, yaml_float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Cad, E> {
                Err(refuse(v, "is not a number", CAD_RULE))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cad, E> {
                Cad::judge(v as f64, v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cad, E> {
                Cad::judge(v as f64, v)
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Cad, E> {
                Cad::judge(v as f64, v)
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Cad, E> {
                Cad::judge(v as f64, v)
            }
            /// A scalar YAML does not read as a number: `1e400` (beyond
            /// f64), `inf`, a quoted number, a word.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cad, E> {
                match v.trim().parse::<f64>() {
                    Ok(x) if !x.is_finite() => Cad::judge(x, v),
                    Ok(_) => Err(refuse(
                        v,
                        "is text, not a number: write it without quotes or leading zeros",
                        CAD_RULE,
                    )),
                    Err(_) => Err(refuse(v, "is not a number", CAD_RULE)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A count of jobs in flight: a whole number from 0 to `u64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count(pub u64);

const COUNT_RULE: &str = "expected a whole number of jobs at or above 0, like 5";
const COUNT_MAX_RULE: &str = "at most 18446744073709551615 jobs";

impl Count {
    /// A number YAML read as a float: a whole one in range is taken
    /// (`5.0`, `1e3`).
    fn judge_f64<E: de::Error>(v: f64, shown: impl fmt::Display) -> Result<Count, E> {
        // 2^64: the first whole number above u64::MAX, exact as an f64.
        const ABOVE: f64 = 18_446_744_073_709_551_616.0;
        if v.is_nan() {
            Err(refuse(shown, "is not a number", COUNT_RULE))
        } else if v < 0.0 {
            Err(refuse(shown, "is below 0", COUNT_RULE))
        } else if v >= ABOVE {
            Err(refuse(shown, "is too large", COUNT_MAX_RULE))
        } else if v.fract() != 0.0 {
            Err(refuse(shown, "is not a whole number", COUNT_RULE))
        } else {
            Ok(Count(v as u64))
        }
    }
}

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
                    .map_err(|_| refuse(v, "is below 0", COUNT_RULE))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Count, E> {
                u64::try_from(v)
                    .map(Count)
                    .map_err(|_| refuse(v, "is too large", COUNT_MAX_RULE))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Count, E> {
                match u64::try_from(v) {
                    Ok(n) => Ok(Count(n)),
                    Err(_) if v < 0 => Err(refuse(v, "is below 0", COUNT_RULE)),
                    Err(_) => Err(refuse(v, "is too large", COUNT_MAX_RULE)),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                Count::judge_f64(v, yaml_float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Count, E> {
                Err(refuse(v, "is not a number", COUNT_RULE))
            }
            /// A scalar YAML does not read as a number: `1e400`, a quoted
            /// number, a word.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
                match v.trim().parse::<f64>() {
                    Ok(x) if x.is_infinite() => Count::judge_f64(x, v),
                    Ok(x) if !x.is_nan() => Err(refuse(
                        v,
                        "is text, not a number: write it without quotes or leading zeros",
                        COUNT_RULE,
                    )),
                    _ => Err(refuse(v, "is not a number", COUNT_RULE)),
                }
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitKey {
    All,
    Gpu,
    Gemini,
    Claude,
    Auto,
}

impl<'de> Deserialize<'de> for LimitKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LimitKey, D::Error> {
        use LimitKey as L;
        const NAMES: [&str; 5] = ["all", "gpu", "gemini", "claude", "auto"];
        let table = [
            ("all", L::All),
            ("gpu", L::Gpu),
            ("gemini", L::Gemini),
            ("claude", L::Claude),
            ("auto", L::Auto),
        ];
        crate::provider::deserialize_named(d, &table, &NAMES)
    }
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
                    de::Error::unknown_variant(&crate::text::clip(n, 40), &crate::provider::NAMES)
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

/// The config keys this module reads: a value under one of them is judged
/// here, and its error is one of this module's sentences.
pub const KEYS: [&str; 3] = ["budget", "max_in_flight", "fallback"];

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
            // A number is judged as a number: the key, the value as
            // written, the rule in words.
            (
                "budget:\n  daily_cad: 1e400\n",
                &[
                    "budget.daily_cad: 1e400 is not a finite amount of CAD (expected a number from 0 to 1000000000, like 20.00)",
                    "line 2",
                ],
            ),
            (
                "budget:\n  daily_cad: -1\n",
                &["budget.daily_cad: -1 is below 0 (expected a number"],
            ),
            (
                "budget:\n  daily_cad: -0.5\n",
                &["budget.daily_cad: -0.5 is below 0"],
            ),
            (
                "budget:\n  daily_cad: lots\n",
                &["budget.daily_cad: lots is not a number (expected"],
            ),
            (
                "budget:\n  daily_cad: '20'\n",
                &["budget.daily_cad: 20 is text, not a number", "line 2"],
            ),
            (
                "budget:\n  daily_cad: true\n",
                &["budget.daily_cad: true is not a number"],
            ),
            (
                "budget:\n  monthly_cad: 1e300\n",
                &[
                    "budget.monthly_cad: 1e300 is too large (at most 1000000000 CAD)",
                    "line 2",
                ],
            ),
            (
                "budget:\n  monthly_cad: 1000000000.01\n",
                &["1000000000.01 is too large (at most 1000000000 CAD)"],
            ),
            (
                "budget:\n  monthly_cad: 100000000000000000000000\n",
                &["100000000000000000000000 is too large"],
            ),
            (
                "budget:\n  providers:\n    gpu: {estimate_cad: -.inf}\n",
                &[
                    "budget.providers.gpu.estimate_cad: -.inf is not a finite amount of CAD",
                    "line 3",
                ],
            ),
            (
                "budget:\n  providers:\n    claude: {daily_cad: .nan}\n",
                &["budget.providers.claude.daily_cad: .nan is not a number"],
            ),
            (
                "budget:\n  daily_cad: \"\\e[2J\\u202e%s\"\n",
                &[
                    "budget.daily_cad: \\x1b[2J\\u{202e}xxx",
                    "…",
                    "is not a number",
                ],
            ),
            (
                "max_in_flight: {all: 18446744073709551616}\n",
                &[
                    "max_in_flight.all: 18446744073709551616 is too large (at most 18446744073709551615 jobs)",
                    "line 1",
                ],
            ),
            (
                "max_in_flight: {all: -18446744073709551617}\n",
                &["max_in_flight.all: -18446744073709551617 is below 0"],
            ),
            (
                "max_in_flight:\n  all: -3\n",
                &[
                    "max_in_flight.all: -3 is below 0 (expected a whole number of jobs at or above 0, like 5)",
                ],
            ),
            (
                "max_in_flight:\n  claude: 2.5\n",
                &["max_in_flight.claude: 2.5 is not a whole number"],
            ),
            (
                "max_in_flight:\n  gpu: 1e30\n",
                &["max_in_flight.gpu: 1e30 is too large"],
            ),
            (
                "max_in_flight:\n  gpu: 1e400\n",
                &["max_in_flight.gpu: 1e400 is too large", "line 2"],
            ),
            (
                "max_in_flight:\n  gpu: many\n",
                &["max_in_flight.gpu: many is not a number"],
            ),
        ];
        let long = "x".repeat(200);
        for (yaml, words) in rows {
            let yaml = yaml.replace("%s", &long);
            let e = parse(&yaml).expect_err(&yaml);
            for w in *words {
                assert!(e.contains(w), "{yaml:?}: {e:?} lacks {w:?}");
            }
            // A number is never said to be of the wrong type.
            for bad in [
                "not a string",
                "not an integer",
                "invalid type",
                "invalid value",
            ] {
                assert!(!e.contains(bad), "{yaml:?}: {e:?} holds {bad:?}");
            }
            assert!(!e.chars().any(crate::text::is_unsafe_char), "{e:?}");
            assert!(e.len() < 400, "{e:?}");
        }
    }

    #[test]
    fn numbers_in_range_are_taken_and_minus_zero_is_zero() {
        let f = parse(
            "budget:\n  daily_cad: -0.0\n  monthly_cad: 1000000000\n  providers:\n    gpu: {estimate_cad: 0}\n\
             max_in_flight: {all: 18446744073709551615, claude: 5.0, gpu: 1e3, gemini: 0}\n",
        )
        .unwrap();
        let b = f.budget.unwrap();
        let zero = b.daily_cad.unwrap().0;
        assert!(zero == 0.0 && zero.is_sign_positive(), "{zero:?}");
        assert_eq!(format!("{zero:.4}"), "0.0000");
        assert_eq!(b.monthly_cad, Some(Cad(MAX_CAD)));
        assert_eq!(b.providers[&Provider::Gpu].estimate_cad, Some(Cad(0.0)));
        let l = f.max_in_flight.unwrap();
        assert_eq!(l[&LimitKey::All], Count(u64::MAX));
        assert_eq!(l[&LimitKey::Claude], Count(5));
        assert_eq!(l[&LimitKey::Gpu], Count(1000));
        assert_eq!(l[&LimitKey::Gemini], Count(0));
        // The bounds the sentences name are the ones applied.
        assert_eq!(MAX_CAD.to_string(), "1000000000");
        assert!(CAD_RULE.contains(&MAX_CAD.to_string()));
        assert!(COUNT_MAX_RULE.contains(&u64::MAX.to_string()));
    }
}
