//! What is wrong with a config file, said in this tool's own words.
//!
//! The file is read in three steps, each with its own kind of refusal:
//! YAML syntax (the one door, `frontmatter::from_yaml`, into a
//! [`Tree`](crate::yaml_tree::Tree)); a key given twice in one mapping (found in the tree); then
//! the settings read from the tree with [`Refusal`] as serde's error type,
//! so that each refusal arrives as a serde call (unknown field, wrong type
//! with the kind of what was found, ...) and with its path from
//! `serde_path_to_error`. No message of another crate is read for its
//! words. A message never shows a line of the file, and no value but the
//! number a policy key refuses (its own sentence, clipped and escaped):
//! `--config` pointed at a key file, or at a symlink to /etc/shadow, must
//! not print a secret.

use std::fmt;

use serde::de::{self, Expected, Unexpected};
use serde_path_to_error::Segment;

use crate::frontmatter::YamlError;
use crate::yaml_tree::Duplicate;

/// A refusal of the settings, as serde reports it, keeping only what may
/// be shown: kinds and key names, never a value (but our own sentences).
#[derive(Debug)]
pub enum Refusal {
    /// A sentence of this tool's own types (the policy keys' rules).
    Ours(String),
    /// A value of the wrong kind (`a string` where a number is wanted).
    WrongType {
        found: &'static str,
    },
    /// A value of the right kind, out of range (`retries: -1`).
    OutOfRange,
    /// A list or mapping with the wrong number of entries.
    WrongLength(usize),
    /// A name not among `valid`, where a provider (or `all`) is wanted.
    UnknownName {
        name: String,
        valid: &'static [&'static str],
    },
    /// A key not among `valid`.
    UnknownKey {
        name: String,
        valid: &'static [&'static str],
    },
    MissingKey(&'static str),
    DuplicateKey(&'static str),
}

impl de::Error for Refusal {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refusal::Ours(msg.to_string())
    }
    fn invalid_type(unexp: Unexpected, _: &dyn Expected) -> Self {
        Refusal::WrongType {
            found: kind(&unexp),
        }
    }
    fn invalid_value(_: Unexpected, _: &dyn Expected) -> Self {
        Refusal::OutOfRange
    }
    fn invalid_length(len: usize, _: &dyn Expected) -> Self {
        Refusal::WrongLength(len)
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Refusal::UnknownName {
            name: variant.to_string(),
            valid: expected,
        }
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Refusal::UnknownKey {
            name: field.to_string(),
            valid: expected,
        }
    }
    fn missing_field(field: &'static str) -> Self {
        Refusal::MissingKey(field)
    }
    fn duplicate_field(field: &'static str) -> Self {
        Refusal::DuplicateKey(field)
    }
}

/// Only for `std::error::Error`: what a person sees is [`describe`]'s.
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the config file is not valid")
    }
}

impl std::error::Error for Refusal {}

/// The kind of a value serde names, never the value.
fn kind(found: &Unexpected) -> &'static str {
    match found {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) => "an integer",
        Unexpected::Float(_) => "a number",
        Unexpected::Char(_) | Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit | Unexpected::Option => "null",
        Unexpected::Seq => "a list",
        Unexpected::Map => "a mapping",
        Unexpected::Enum
        | Unexpected::UnitVariant
        | Unexpected::NewtypeVariant
        | Unexpected::TupleVariant
        | Unexpected::StructVariant => "a tagged value",
        Unexpected::NewtypeStruct | Unexpected::Other(_) => "something else",
    }
}

/// A YAML syntax error (or a text too complex to parse): its line, and
/// libyaml's sentence when it cannot quote the file.
pub fn describe_syntax(e: &YamlError) -> String {
    let e = match e {
        YamlError::TooComplex(why) => {
            return format!("too complex to parse safely ({why}); is it the right file?");
        }
        YamlError::Yaml(e) => e,
    };
    let msg = e.to_string();
    let line = e.location().map(|at| at.line());
    // libyaml's syntax errors are fixed sentences; one that could hold a
    // piece of the file (any other character) is not shown.
    let safe = msg
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b" ,':".contains(&b));
    let what = if safe {
        format!("not valid YAML: {msg}")
    } else {
        "not valid YAML".to_string()
    };
    format!("{}{what}", line_prefix(line))
}

/// A key given twice in one mapping: said at its second line.
pub fn describe_duplicate(d: &Duplicate, text: &str) -> String {
    let keys: Vec<&str> = d.path.iter().map(String::as_str).collect();
    match d.key.as_str().filter(|k| looks_like_key(k)) {
        Some(k) => {
            let line = nth_line_after(text, &keys, k, 2);
            let shown = dotted(&keys, k);
            format!(
                "{}key `{shown}` is given twice; keep one",
                line_prefix(line)
            )
        }
        None => format!(
            "{}a key is given twice (not shown); keep one",
            line_prefix(path_line(text, &keys))
        ),
    }
}

/// A refusal of the settings, at `path`: the problem in words and its line.
pub fn describe(path: &serde_path_to_error::Path, refusal: &Refusal, text: &str) -> String {
    let mut keys: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    // An unknown key or name is the last segment of its own path: the
    // place is the mapping that holds it.
    let mut shown = path.to_string();
    if let Refusal::UnknownKey { name, .. } | Refusal::UnknownName { name, .. } = refusal
        && keys.last() == Some(&name.as_str())
        && matches!(path.iter().next_back(), Some(Segment::Map { .. }))
    {
        keys.pop();
        shown = keys.join(".");
    }
    let at = |extra: Option<&str>| {
        let mut ks = keys.clone();
        ks.extend(extra);
        if ks.is_empty() {
            first_content_line(text)
        } else {
            path_line(text, &ks).or_else(|| path_line(text, &keys))
        }
    };
    let (what, line) = match refusal {
        Refusal::UnknownKey { name, valid } => (unknown_key(&keys, name, valid), at(Some(name))),
        Refusal::UnknownName { name, valid } => (unknown_name(&shown, name, valid), at(Some(name))),
        Refusal::WrongType { found } => (wrong_type(path, &keys, found), at(None)),
        Refusal::OutOfRange => (format!("{shown} must be {}", wanted(path, &keys)), at(None)),
        Refusal::WrongLength(n) => (
            format!(
                "{shown} has {n} entries; it must be {}",
                wanted(path, &keys)
            ),
            at(None),
        ),
        Refusal::MissingKey(k) => (format!("`{shown}` is missing its key `{k}`"), at(None)),
        Refusal::DuplicateKey(k) => {
            let line = nth_line_after(text, &keys, k, 2);
            (
                format!("key `{}` is given twice; keep one", dotted(&keys, k)),
                line,
            )
        }
        Refusal::Ours(sentence) => (ours(&shown, &keys, sentence), at(None)),
    };
    format!("{}{what}", line_prefix(line))
}

fn unknown_key(keys: &[&str], name: &str, valid: &[&str]) -> String {
    let list = format!("; the keys are {}", valid.join(", "));
    if !looks_like_key(name) {
        return format!("a key that is not a config key (not shown){list}");
    }
    format!(
        "unknown key `{}`{}{list}",
        dotted(keys, name),
        nearest(name, valid)
    )
}

/// An unknown name where a provider (or `all`) is wanted: a map key of
/// `budget.providers`, `max_in_flight` or `fallback`, or a chain's entry.
fn unknown_name(shown: &str, name: &str, valid: &[&str]) -> String {
    let name_like = (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-');
    let (said, hint) = if name_like {
        (format!("`{name}`"), nearest(name, valid))
    } else {
        ("(not shown)".to_string(), String::new())
    };
    let list = if valid.contains(&"all") {
        format!("the keys are {}", valid.join(", "))
    } else {
        format!("the providers are {}", valid.join(", "))
    };
    let place = if shown.is_empty() || shown == "." {
        String::new()
    } else {
        format!("{shown}: ")
    };
    format!("{place}unknown provider {said}{hint}; {list}")
}

fn wrong_type(path: &serde_path_to_error::Path, keys: &[&str], found: &str) -> String {
    let wanted = wanted(path, keys);
    if keys.is_empty() && !ends_in_index(path) {
        format!("the file must be {wanted}, not {found}; is it the right file?")
    } else {
        format!("{path} must be {wanted}, not {found}")
    }
}

/// A policy key's own sentence (the rule and the value as read, clipped
/// and escaped there); anywhere else a custom message is not ours to show.
fn ours(shown: &str, keys: &[&str], sentence: &str) -> String {
    match keys.first() {
        Some(top) if crate::policy::KEYS.contains(top) => {
            format!("{shown}: {}", crate::text::clip(sentence, 300))
        }
        _ => format!("{shown} has a value that cannot be used"),
    }
}

const CAD: &str = "an amount of CAD from 0 to 1000000000, like 20.00";
const MAPPING: &str = "a mapping of its keys";

/// What the value at a path must be, in words.
fn wanted(path: &serde_path_to_error::Path, keys: &[&str]) -> &'static str {
    let in_list = ends_in_index(path);
    match keys {
        [] if in_list => "a mapping of config keys",
        [] => "a mapping of config keys (`key: value` lines)",
        ["projects"] if !in_list => "a list of project directories",
        ["retries" | "concurrency"] => "a whole number",
        ["budget"] | ["budget", "providers"] | ["budget", "providers", _] => MAPPING,
        ["max_in_flight" | "fallback" | "fleet"] => MAPPING,
        ["budget", _] | ["budget", "providers", _, _] => CAD,
        ["max_in_flight", _] => "a whole number of jobs at or above 0, like 5",
        ["fallback", _] => "a provider or a list of them, like [gemini, claude]",
        [_] | ["fleet", _] => "a string",
        _ => "another kind of value",
    }
}

fn ends_in_index(path: &serde_path_to_error::Path) -> bool {
    matches!(path.iter().next_back(), Some(Segment::Seq { .. }))
}

/// ` (did you mean `x`?)` when a valid name is close to `name`.
fn nearest(name: &str, valid: &[&str]) -> String {
    let name = name.to_ascii_lowercase();
    valid
        .iter()
        .map(|v| (strsim::levenshtein(&name, v), *v))
        .min()
        .filter(|&(d, v)| d <= 3.min(v.len().saturating_sub(1)).max(1))
        .map(|(_, v)| format!(" (did you mean `{v}`?)"))
        .unwrap_or_default()
}

fn dotted(keys: &[&str], key: &str) -> String {
    keys.iter()
        .copied()
        .chain([key])
        .collect::<Vec<_>>()
        .join(".")
}

pub fn line_prefix(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// A key name as written in a config file: short, lower case and `_`.
fn looks_like_key(k: &str) -> bool {
    (1..=40).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Does this line set `key` (plain or quoted) at its start, after
/// indentation or a list's `- `?
fn sets_key(line: &str, key: &str) -> bool {
    let l = line.trim_start();
    let l = l.strip_prefix("- ").map_or(l, str::trim_start);
    let (l, quote) = match l.strip_prefix(['"', '\'']) {
        Some(rest) => (rest, &l[..1]),
        None => (l, ""),
    };
    l.strip_prefix(key)
        .and_then(|r| r.strip_prefix(quote))
        .is_some_and(|r| r.trim_start().starts_with(':'))
}

/// The 1-based line of the last of `keys` found, each looked for after the
/// one before it (`budget`, then its `daily_cad`).
pub fn path_line(text: &str, keys: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for k in keys {
        match (from..lines.len()).find(|&i| sets_key(lines[i], k)) {
            Some(i) => {
                found = Some(i + 1);
                from = i + 1;
            }
            None => break,
        }
    }
    found
}

/// The `nth` line setting `key` after the path `keys` leading to it.
fn nth_line_after(text: &str, keys: &[&str], key: &str, nth: usize) -> Option<usize> {
    let from = path_line(text, keys).unwrap_or(0);
    text.lines()
        .enumerate()
        .skip(from)
        .filter(|(_, l)| sets_key(l, key))
        .nth(nth - 1)
        .map(|(i, _)| i + 1)
}

/// The first line that is not blank or a comment (where a file that is
/// not a mapping goes wrong).
fn first_content_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "---"
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_lines_follow_nesting() {
        let text = "retries: 1\nfleet:\n  host: a\nbudget:\n  providers:\n    claude: {x: 1}\n  daily_cad: 2\n";
        let rows: &[(&[&str], Option<usize>)] = &[
            (&["retries"], Some(1)),
            (&["budget", "daily_cad"], Some(7)),
            (&["budget", "providers", "claude"], Some(6)),
            (&["budget", "providers", "claude", "x"], Some(6)),
            (&["host"], Some(3)),
            (&["nope"], None),
        ];
        for (keys, want) in rows {
            assert_eq!(path_line(text, keys), *want, "{keys:?}");
        }
    }

    #[test]
    fn nearest_names_only_close_ones() {
        let valid = ["all", "gpu", "gemini", "claude", "auto"];
        let rows = [
            ("gemni", " (did you mean `gemini`?)"),
            ("al", " (did you mean `all`?)"),
            ("Claude", " (did you mean `claude`?)"),
            ("openai", ""),
            ("x", ""),
        ];
        for (name, want) in rows {
            assert_eq!(nearest(name, &valid), want, "{name}");
        }
    }
}
