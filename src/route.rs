//! The routing table of the design's "Task frontmatter and routing": which
//! provider runs a task, decided from its frontmatter alone. Pure: no I/O.

use std::fmt;

use crate::frontmatter::{Field, Meta};

pub use crate::provider::Provider;

/// The provider and the number (1..=7) of the rule that chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub provider: Provider,
    pub rule: u8,
}

impl Decision {
    /// One line naming the rule, for `decide --explain`: [`rule_in_words`].
    pub fn explain(&self) -> &'static str {
        rule_in_words(self.rule)
    }

    /// [`Decision::explain`] with what the task held: the unknown value of
    /// rule 5, and for rule 7 whether the frontmatter could not be read
    /// (then no key counted, whatever it held).
    pub fn explain_for(&self, meta: &Meta) -> String {
        match self.rule {
            5 => match unknown_preferred(meta) {
                Some(why) => format!("rule 5: {why}: runs locally (fail-safe)"),
                None => rule_in_words(5).to_string(),
            },
            7 if meta.unreadable => "rule 7: the frontmatter could not be read (see the warning), so no routing key counts: runs locally".to_string(),
            r => rule_in_words(r).to_string(),
        }
    }
}

/// The values `preferred_ai` takes.
const PREFERRED: [&str; 5] = ["claude-code", "gpu", "gemini", "claude", "auto"];

/// What is wrong with `preferred_ai` when rule 5 applies to it: the value
/// and the nearest valid one.
pub fn unknown_preferred(meta: &Meta) -> Option<String> {
    let v = meta.preferred_ai.as_ref()?;
    let Field::Str(s) = v else {
        let what = match v {
            Field::Null => "empty",
            Field::Bool(_) => "a boolean",
            Field::List(_) => "a list",
            Field::Other(what) => what,
            Field::Str(_) => unreachable!("matched above"),
        };
        return Some(format!(
            "preferred_ai is {what}, not one of {}",
            PREFERRED.join(", ")
        ));
    };
    let t = s.trim().to_ascii_lowercase();
    if PREFERRED.contains(&t.as_str()) {
        return None;
    }
    let nearest = PREFERRED
        .iter()
        .map(|p| (strsim::levenshtein(&t, p), *p))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, p)| format!(" (did you mean `{p}`?)"))
        .unwrap_or_default();
    Some(format!(
        "preferred_ai `{}` is not one of {}{nearest}",
        crate::text::clip(s, 40),
        PREFERRED.join(", ")
    ))
}

/// A routing rule in words: its number, what matched and where the task
/// runs. For `decide --explain`, and for `submit` to say on stderr why it
/// printed `local <rule>`.
pub fn rule_in_words(rule: u8) -> &'static str {
    match rule {
        1 => "rule 1: needs_claude_code is present and not false: runs locally",
        2 => "rule 2: preferred_ai is claude-code: runs locally",
        3 => "rule 3: allow_delegation is present and not true: runs locally",
        4 => "rule 4: preferred_ai names a secutools provider: delegated to it",
        5 => "rule 5: preferred_ai has an unknown value: runs locally (fail-safe)",
        6 => {
            "rule 6: allow_delegation is true and preferred_ai is absent: delegated, the service picks the provider"
        }
        7 => "rule 7: no routing key: runs locally as before delegation existed",
        _ => "unknown rule",
    }
}

/// The routing table; the first rule that matches wins.
///
/// 1. `needs_claude_code` present and not boolean `false` → `claude-code`
/// 2. `preferred_ai` is the string `claude-code` → `claude-code`
/// 3. `allow_delegation` present and not boolean `true` → `claude-code`
/// 4. `preferred_ai` is the string `gpu`, `gemini`, `claude` or `auto` → that
/// 5. `preferred_ai` present with any other value → `claude-code`
/// 6. `allow_delegation: true` (so no `preferred_ai`) → `auto`
/// 7. none of these → `claude-code`
///
/// "Present" includes `null` (`key:` with no value). Strings compare with
/// case and surrounding white space ignored; only a real YAML boolean is a
/// boolean (`"false"` quoted is a string, and `no`/`off` are strings in YAML
/// 1.2). A tagged value (`!foo gpu`) is not a string.
pub fn route(meta: &Meta) -> Decision {
    let decide = |rule, provider| Decision { provider, rule };
    let preferred = meta.preferred_ai.as_ref().map(|v| match v {
        Field::Str(s) => Provider::named(s),
        _ => None,
    });
    if meta
        .needs_claude_code
        .as_ref()
        .is_some_and(|v| *v != Field::Bool(false))
    {
        return decide(1, Provider::ClaudeCode);
    }
    if preferred == Some(Some(Provider::ClaudeCode)) {
        return decide(2, Provider::ClaudeCode);
    }
    match &meta.allow_delegation {
        Some(Field::Bool(true)) | None => {}
        Some(_) => return decide(3, Provider::ClaudeCode),
    }
    match preferred {
        Some(Some(p)) => return decide(4, p),
        Some(None) => return decide(5, Provider::ClaudeCode),
        None => {}
    }
    if meta.allow_delegation.is_some() {
        return decide(6, Provider::Auto);
    }
    decide(7, Provider::ClaudeCode)
}

/// Routes the `meta` of a [`crate::frontmatter::Split`]: a task whose
/// frontmatter is invalid (or that is not UTF-8) routes as if it had no keys,
/// which is rule 7; the caller prints the problem as a warning.
#[cfg(test)]
pub fn route_parsed(meta: &Result<Meta, crate::frontmatter::Problem>) -> Decision {
    match meta {
        Ok(meta) => route(meta),
        Err(_) => route(&Meta::default()),
    }
}

/// A task's `fallback` key (policy.md "Failover"), read: the providers to
/// try in order after the first job, and a warning for each thing dropped.
/// It never changes routing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fallback {
    /// The task has a usable `fallback` key (a name, a list, or null / an
    /// empty list: no chain), which wins over the config's default chain.
    pub given: bool,
    pub chain: Vec<crate::policy::Provider>,
    /// Each names the entry dropped; the caller adds the file.
    pub warnings: Vec<String>,
}

impl Fallback {
    /// `gemini, then claude`, or `none`.
    pub fn words(chain: &[crate::policy::Provider]) -> String {
        if chain.is_empty() {
            return "none".into();
        }
        chain
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", then ")
    }
}

/// Names of unknown entries said one by one; beyond, a count.
const NAMED_DROPS: usize = 3;

/// Reads `fallback:`: a provider name or a list of them, at most
/// [`crate::policy::MAX_CHAIN`]. Unknown names (`claude-code` too: it is no
/// provider of the service) are dropped; anything else (a mapping, a
/// number, nested lists) is ignored as if the key were absent.
pub fn fallback(meta: &Meta) -> Fallback {
    use crate::policy::{MAX_CHAIN, Provider as P};
    let mut out = Fallback::default();
    let Some(v) = &meta.fallback else {
        return out;
    };
    let items: Vec<&Field> = match v {
        Field::Null => Vec::new(),
        Field::Str(_) => vec![v],
        Field::List(items) => items.iter().collect(),
        other => {
            let what = match other {
                Field::Other(what) => what,
                _ => "a number or boolean",
            };
            out.warnings.push(format!(
                "`fallback` is {what}, not a provider or a list of providers; ignored"
            ));
            return out;
        }
    };
    out.given = true;
    let mut dropped = 0usize;
    for (i, item) in items.iter().enumerate() {
        let known = match item {
            Field::Str(name) => P::parse(name).ok_or_else(|| {
                format!(
                    "`fallback` entry {} `{}` is not a provider (gpu, gemini, claude, auto); dropped",
                    i + 1,
                    crate::text::clip(name, 40)
                )
            }),
            _ => Err(format!(
                "`fallback` entry {} is not a provider name; dropped",
                i + 1
            )),
        };
        match known {
            Ok(p) => out.chain.push(p),
            Err(w) => {
                dropped += 1;
                if dropped <= NAMED_DROPS {
                    out.warnings.push(w);
                }
            }
        }
    }
    if dropped > NAMED_DROPS {
        out.warnings.push(format!(
            "`fallback`: {} more entries that are not providers dropped",
            dropped - NAMED_DROPS
        ));
    }
    if out.chain.len() > MAX_CHAIN {
        out.warnings.push(format!(
            "`fallback` names {} providers, at most {MAX_CHAIN} are followed; the rest dropped",
            out.chain.len()
        ));
        out.chain.truncate(MAX_CHAIN);
    }
    // Every entry dropped: the task meant to have a chain, so it gets the
    // config's default, as without the key (`[]` or null means none).
    if !items.is_empty() && out.chain.is_empty() {
        out.given = false;
    }
    out
}

/// A task's `priority`, forwarded to secutools.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// Parses `low`, `normal` or `high`: case and surrounding white space
    /// ignored. For `submit --priority P` as well as the frontmatter.
    pub fn parse(text: &str) -> Option<Priority> {
        let text = text.trim();
        [Priority::Low, Priority::Normal, Priority::High]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The task's priority: absent is `normal`; anything but `low`, `normal` or
/// `high` (case and surrounding white space ignored) is an error message.
pub fn priority(meta: &Meta) -> Result<Priority, String> {
    match &meta.priority {
        None => Ok(Priority::Normal),
        Some(text) => Priority::parse(text)
            .ok_or_else(|| format!("priority must be low, normal or high, not {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::frontmatter::split;

    /// Routes a frontmatter block given as YAML lines.
    fn route_yaml(yaml: &str) -> Decision {
        let task = format!("---\n{yaml}\n---\nbody\n");
        let got = split(task.as_bytes());
        route(
            got.meta
                .as_ref()
                .unwrap_or_else(|p| panic!("{yaml:?}: {p}")),
        )
    }

    #[test]
    fn fallback_values() {
        use crate::policy::Provider::*;
        let read = |yaml: &str| {
            let task = format!("---\npreferred_ai: gemini\n{yaml}\n---\nbody\n");
            let meta = split(task.as_bytes()).meta.unwrap();
            assert_eq!(route(&meta), route_yaml("preferred_ai: gemini"), "{yaml}");
            fallback(&meta)
        };
        // (frontmatter, given, chain, warnings)
        let rows: &[(&str, bool, &[crate::policy::Provider], usize)] = &[
            ("", false, &[], 0),
            ("fallback: claude", true, &[Claude], 0),
            ("fallback: [gemini, claude]", true, &[Gemini, Claude], 0),
            ("fallback: [GPU, ' auto ']", true, &[Gpu, Auto], 0),
            ("fallback: []", true, &[], 0),
            ("fallback:", true, &[], 0),
            ("fallback: [claude-code, claude]", true, &[Claude], 1),
            // every entry dropped: the config's default applies, as if absent
            ("fallback: [openai]", false, &[], 1),
            ("fallback: [claude-code, gpt4]", false, &[], 2),
            (
                "fallback: [gpu, gpu, gpu, gpu, gpu, claude]",
                true,
                &[Gpu, Gpu, Gpu, Gpu],
                1,
            ),
            ("fallback: {gemini: claude}", false, &[], 1),
            ("fallback: 3", false, &[], 1),
            ("fallback: [[gpu], claude]", true, &[Claude], 1),
            ("fallback: !x claude", false, &[], 1),
        ];
        for (yaml, given, chain, warnings) in rows {
            let f = read(yaml);
            assert_eq!(
                (f.given, f.chain.as_slice(), f.warnings.len()),
                (*given, *chain, *warnings),
                "{yaml}: {:?}",
                f.warnings
            );
        }
        let w = read("fallback: [claude-code]").warnings;
        assert!(w[0].contains("entry 1 `claude-code`"), "{w:?}");
        // 10 000 entries: a few warnings, never one per entry.
        let many = format!("fallback: [{}]", vec!["x"; 10_000].join(", "));
        let f = read(&many);
        assert_eq!(
            (f.chain.len(), f.warnings.len()),
            (0, 4),
            "{:?}",
            f.warnings
        );
        assert_eq!(Fallback::words(&[Gemini, Claude]), "gemini, then claude");
        assert_eq!(Fallback::words(&[]), "none");
    }

    #[test]
    fn table() {
        use Provider::*;
        // (frontmatter, provider, rule)
        let rows: &[(&str, Provider, u8)] = &[
            // One row per rule.
            ("needs_claude_code: true", ClaudeCode, 1),
            ("preferred_ai: claude-code", ClaudeCode, 2),
            ("allow_delegation: false", ClaudeCode, 3),
            ("preferred_ai: gpu", Gpu, 4),
            ("preferred_ai: gemini", Gemini, 4),
            ("preferred_ai: claude", Claude, 4),
            ("preferred_ai: auto", Auto, 4),
            ("preferred_ai: openai", ClaudeCode, 5),
            ("allow_delegation: true", Auto, 6),
            ("", ClaudeCode, 7),
            (
                "other: key\ncomplexity_hint: hard\npriority: high",
                ClaudeCode,
                7,
            ),
            // Rule 1: anything present but boolean false.
            ("needs_claude_code:", ClaudeCode, 1),
            ("needs_claude_code: ~", ClaudeCode, 1),
            ("needs_claude_code: \"false\"", ClaudeCode, 1),
            ("needs_claude_code: no", ClaudeCode, 1),
            ("needs_claude_code: 0", ClaudeCode, 1),
            ("needs_claude_code: []", ClaudeCode, 1),
            ("needs_claude_code: !foo false", ClaudeCode, 1),
            (
                "needs_claude_code: true\npreferred_ai: gpu\nallow_delegation: true",
                ClaudeCode,
                1,
            ),
            ("needs_claude_code: false", ClaudeCode, 7),
            ("needs_claude_code: False", ClaudeCode, 7),
            ("needs_claude_code: !!bool false", ClaudeCode, 7),
            ("needs_claude_code: false\npreferred_ai: GPU", Gpu, 4),
            ("needs_claude_code: false\nallow_delegation: true", Auto, 6),
            // Rule 2 beats rule 3; case and surrounding space ignored.
            (
                "preferred_ai: Claude-Code\nallow_delegation: false",
                ClaudeCode,
                2,
            ),
            ("preferred_ai: \" CLAUDE-CODE \"", ClaudeCode, 2),
            (
                "preferred_ai: claude-code\nallow_delegation: true",
                ClaudeCode,
                2,
            ),
            // Rule 3: anything present but boolean true.
            ("allow_delegation: \"true\"", ClaudeCode, 3),
            ("allow_delegation: yes", ClaudeCode, 3),
            ("allow_delegation:", ClaudeCode, 3),
            ("allow_delegation: 1", ClaudeCode, 3),
            ("allow_delegation: false\npreferred_ai: gpu", ClaudeCode, 3),
            (
                "allow_delegation: no\npreferred_ai: nonsense",
                ClaudeCode,
                3,
            ),
            ("allow_delegation: TRUE\npreferred_ai: gemini", Gemini, 4),
            // Rule 4: case and surrounding space ignored.
            ("preferred_ai: \" Gemini \"", Gemini, 4),
            ("preferred_ai: GPU", Gpu, 4),
            ("preferred_ai: \"\\tAuto\\n\"", Auto, 4),
            ("preferred_ai: !!str claude", Claude, 4),
            // Rule 5: any other value, strings or not.
            ("preferred_ai: 5", ClaudeCode, 5),
            ("preferred_ai:", ClaudeCode, 5),
            ("preferred_ai: ~", ClaudeCode, 5),
            ("preferred_ai: true", ClaudeCode, 5),
            ("preferred_ai: [gpu]", ClaudeCode, 5),
            ("preferred_ai: {gpu: 1}", ClaudeCode, 5),
            ("preferred_ai: \"\"", ClaudeCode, 5),
            ("preferred_ai: g p u", ClaudeCode, 5),
            ("preferred_ai: claude_code", ClaudeCode, 5),
            ("preferred_ai: !foo gpu", ClaudeCode, 5),
            ("preferred_ai: other\nallow_delegation: true", ClaudeCode, 5),
            // Keys are exact.
            ("Preferred_AI: gpu", ClaudeCode, 7),
            ("allow-delegation: true", ClaudeCode, 7),
        ];
        for &(yaml, provider, rule) in rows {
            let got = route_yaml(yaml);
            assert_eq!(got, Decision { provider, rule }, "{yaml:?}");
            assert!(got.explain().starts_with(&format!("rule {rule}: ")));
        }
    }

    #[test]
    fn invalid_frontmatter_routes_by_rule_7() {
        for task in [
            &b"---\npreferred_ai: gpu\n"[..],
            b"---\npreferred_ai: gpu\npreferred_ai: gpu\n---\n",
            b"---\n- preferred_ai: gpu\n---\n",
            b"---\npreferred_ai: gpu\n---\n\xFF",
        ] {
            let got = split(task);
            assert!(got.meta.is_err());
            assert_eq!(
                route_parsed(&got.meta),
                Decision {
                    provider: Provider::ClaudeCode,
                    rule: 7
                }
            );
        }
        let got = split(b"---\nallow_delegation: true\n---\n");
        assert_eq!(route_parsed(&got.meta).provider, Provider::Auto);
    }

    #[test]
    fn from_pairs_routes_like_a_file() {
        use Provider::*;
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: &[(Pairs, Provider, u8)] = &[
            (&[("allow_delegation", "true")], Auto, 6),
            (&[("allow_delegation", "\"true\"")], ClaudeCode, 3),
            (&[("preferred_ai", " Gemini ")], Gemini, 4),
            (&[("preferred_ai", "5")], ClaudeCode, 5),
            (
                &[("needs_claude_code", "false"), ("preferred_ai", "GPU")],
                Gpu,
                4,
            ),
            (&[("needs_claude_code", "")], ClaudeCode, 1),
            (&[], ClaudeCode, 7),
        ];
        for &(pairs, provider, rule) in cases {
            let owned: Vec<(String, String)> = pairs
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let meta = Meta::from_pairs(&owned).unwrap();
            assert_eq!(route(&meta), Decision { provider, rule }, "{pairs:?}");
        }
    }

    #[test]
    fn provider_names() {
        use Provider::*;
        let all = [ClaudeCode, Gpu, Gemini, Claude, Auto];
        let names: Vec<_> = all.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["claude-code", "gpu", "gemini", "claude", "auto"]);
        let delegates: Vec<_> = all.iter().map(|p| p.delegates()).collect();
        assert_eq!(delegates, [false, true, true, true, true]);
        let api: Vec<_> = all.iter().map(|p| p.api_name()).collect();
        assert_eq!(
            api,
            [None, Some("gpu"), Some("gemini"), Some("claude"), None]
        );
        for p in all {
            assert_eq!(
                Provider::named(&format!(" {} ", p.as_str().to_uppercase())),
                Some(p)
            );
        }
        assert_eq!(Provider::named("openai"), None);
        let explained: Vec<_> = (1..=7)
            .map(|rule| {
                Decision {
                    provider: ClaudeCode,
                    rule,
                }
                .explain()
            })
            .collect();
        assert_eq!(
            explained[3],
            "rule 4: preferred_ai names a secutools provider: delegated to it"
        );
        assert_eq!(
            rule_in_words(7),
            "rule 7: no routing key: runs locally as before delegation existed"
        );
        // A local rule says so; a delegating one does not.
        for rule in 1..=7u8 {
            let local = [1, 2, 3, 5, 7].contains(&rule);
            assert_eq!(
                rule_in_words(rule).contains("runs locally"),
                local,
                "{rule}"
            );
        }
        assert_eq!(
            Decision {
                provider: ClaudeCode,
                rule: 0
            }
            .explain(),
            "unknown rule"
        );
    }

    #[test]
    fn priorities() {
        let meta = |p: Option<&str>| Meta {
            priority: p.map(str::to_owned),
            ..Meta::default()
        };
        assert_eq!(priority(&meta(None)), Ok(Priority::Normal));
        assert_eq!(priority(&meta(Some("low"))), Ok(Priority::Low));
        assert_eq!(priority(&meta(Some(" HIGH "))), Ok(Priority::High));
        assert_eq!(priority(&meta(Some("Normal"))), Ok(Priority::Normal));
        for bad in ["", "urgent", "null", "a list", "1", "!x low", "lo w"] {
            let err = priority(&meta(Some(bad))).unwrap_err();
            assert!(err.contains("low, normal or high"), "{err}");
        }
        let from_file = |yaml: &str| {
            let task = format!("---\n{yaml}\n---\n");
            priority(&split(task.as_bytes()).meta.unwrap())
        };
        assert_eq!(from_file("priority: high"), Ok(Priority::High));
        assert_eq!(from_file("other: 1"), Ok(Priority::Normal));
        assert!(from_file("priority:").is_err());
        assert!(from_file("priority: [high]").is_err());
        assert!(from_file("priority: 3").is_err());
        assert_eq!(Priority::default().as_str(), "normal");
        assert_eq!(Priority::High.to_string(), "high");
    }
}
