//! Splitting a task file into its YAML frontmatter and its body.
//!
//! The contract is the design's "Task frontmatter and routing": strict UTF-8,
//! one leading BOM skipped, LF and CRLF accepted, the frontmatter opens only
//! when the first line is exactly `---` and closes at the first later line
//! that is exactly `---` or `...` (trailing spaces or tabs allowed on both).
//! The block is YAML 1.2; it must be a mapping (empty or comment-only is the
//! empty mapping). The body is the bytes after the closing line, verbatim.
//!
//! Lines are scanned on bytes; serde_yaml is only called on the block between
//! the two delimiter lines, so splitting a small task takes microseconds and a
//! large one takes time linear in its size.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, Visitor};
use serde_yaml::{Mapping, Value};

/// The result of splitting a task file.
///
/// `head` followed by `body` is always exactly the input bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Split<'a> {
    /// BOM (if any) + opening line + YAML block + closing line, including the
    /// closing line's line end (if it has one). Empty when the file has no
    /// delimited frontmatter: no opening line, no closing line, or not UTF-8.
    /// When both delimiter lines are found but the YAML between them is
    /// invalid, `head` still holds the delimited block and `meta` is `Err`.
    pub head: &'a [u8],
    /// The rest of the file, verbatim (CRLF kept). The whole input, BOM
    /// included, when `head` is empty.
    pub body: &'a [u8],
    /// The routing keys. `Ok(Meta::default())` when there is no frontmatter.
    pub meta: Result<Meta, Problem>,
}

/// Why a task's frontmatter could not be used. The task then routes as if it
/// had no keys; the caller prints the problem as a warning naming the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file is not UTF-8; `offset` is the first byte that is not.
    NotUtf8 { offset: usize },
    /// The file opens frontmatter with `---` but never closes it.
    NoClosingLine,
    /// The block is YAML but not a mapping: `"a scalar"` or `"a list"`.
    NotAMapping(&'static str),
    /// The block is not valid YAML: syntax error, several documents, unknown
    /// alias, nesting deeper than 128. The message is serde_yaml's, with line
    /// numbers counted in the task file.
    Yaml(String),
    /// The block would take serde_yaml super-linear time or memory: aliases
    /// that expand too far, or too many `[`/`{` for its size (see the two
    /// checks of `parse_value` in this module).
    TooComplex(String),
    /// A mapping in the block (or a `--set` key) appears twice; the key as
    /// written by serde_yaml (strings quoted), and where it is when nested.
    DuplicateKey(String),
    /// A `--set KEY=VALUE` whose VALUE is not a single YAML scalar.
    BadValue { key: String, why: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotUtf8 { offset } => {
                write!(f, "not valid UTF-8 (first bad byte at offset {offset})")
            }
            Problem::NoClosingLine => f.write_str("frontmatter has no closing `---` or `...` line"),
            Problem::NotAMapping(what) => write!(f, "frontmatter is {what}, not a mapping"),
            Problem::Yaml(msg) => write!(f, "frontmatter is not valid YAML: {msg}"),
            Problem::TooComplex(why) => {
                write!(f, "frontmatter is too complex to parse safely: {why}")
            }
            Problem::DuplicateKey(key) => write!(f, "duplicate key {key}"),
            Problem::BadValue { key, why } => write!(f, "--set {key}: {why}"),
        }
    }
}

impl std::error::Error for Problem {}

/// The frontmatter keys that matter to `ccl-delegate`; all others are ignored.
///
/// The three routing keys keep their YAML value as written, because routing
/// distinguishes a boolean `false` from the string `"false"`, `null`, and so
/// on. `complexity_hint` and `priority` are text: see [`Meta::from_mapping`].
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Meta {
    pub needs_claude_code: Option<Field>,
    pub preferred_ai: Option<Field>,
    pub allow_delegation: Option<Field>,
    pub complexity_hint: Option<String>,
    /// Raw; [`crate::route::priority`] validates it.
    pub priority: Option<String>,
    /// Raw, as written; [`crate::route::fallback`] reads it. Never routes.
    pub fallback: Option<Field>,
    /// Keys that are not routing keys but look like one (a typo, another
    /// case): ignored for routing, and worth a warning.
    pub near_misses: Vec<NearMiss>,
    /// The frontmatter could not be read (said in a warning): no key
    /// counts, the task routes as if it had none.
    pub unreadable: bool,
}

/// A routing key's value as routing sees it: YAML's own types stay in this
/// module, so routing is a function of plain data.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    Null,
    Bool(bool),
    Str(String),
    List(Vec<Field>),
    /// A number, a mapping or a tagged value (`!foo gpu` is not a string),
    /// named for messages.
    Other(&'static str),
}

impl Field {
    fn of(v: &Value) -> Field {
        match v {
            Value::Null => Field::Null,
            Value::Bool(b) => Field::Bool(*b),
            Value::String(s) => Field::Str(s.clone()),
            Value::Sequence(items) => Field::List(items.iter().map(Field::of).collect()),
            Value::Number(_) => Field::Other("a number or boolean"),
            Value::Mapping(_) => Field::Other("a mapping"),
            Value::Tagged(_) => Field::Other("a tagged value"),
        }
    }
}

/// A frontmatter key that resembles a routing key it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss {
    /// The key as written in the task.
    pub key: String,
    /// The routing key it resembles.
    pub like: &'static str,
}

impl fmt::Display for NearMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key `{}` looks like the routing key `{}` but is not it, so it is ignored; spell it `{}` if it is meant to route",
            crate::text::clip(&self.key, 60),
            self.like,
            self.like
        )
    }
}

/// Every key that routes a task: those of the design's table, and the
/// policy's `fallback` chain.
pub const ROUTING_KEYS: [&str; 6] = [
    NEEDS_CLAUDE_CODE,
    PREFERRED_AI,
    ALLOW_DELEGATION,
    COMPLEXITY_HINT,
    PRIORITY,
    FALLBACK,
];

/// How far (Damerau-Levenshtein, case ignored) a key may be from a routing
/// key to count as a misspelling of it. The routing keys are at least 8
/// characters long and 3 or more apart from each other.
const NEAR_MISS_DISTANCE: usize = 2;

/// The routing key `key` is probably a misspelling of, if any: a name
/// (letters, digits, `_`, `-`, space) near one. A routing key itself, spelt
/// exactly, is none.
pub fn near_miss(key: &str) -> Option<&'static str> {
    let name_like = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_- ".contains(&b));
    if ROUTING_KEYS.contains(&key) || key.len() > 40 || !name_like {
        return None;
    }
    let lower = key.to_lowercase();
    ROUTING_KEYS
        .into_iter()
        .find(|k| strsim::damerau_levenshtein(&lower, k) <= NEAR_MISS_DISTANCE)
}

pub const NEEDS_CLAUDE_CODE: &str = "needs_claude_code";
pub const PREFERRED_AI: &str = "preferred_ai";
pub const ALLOW_DELEGATION: &str = "allow_delegation";
pub const COMPLEXITY_HINT: &str = "complexity_hint";
pub const PRIORITY: &str = "priority";
pub const FALLBACK: &str = "fallback";

impl Meta {
    /// Picks the known keys out of a frontmatter mapping. Keys must be plain
    /// strings spelled exactly as above; anything else is ignored.
    ///
    /// `complexity_hint`: a string, number or boolean becomes its text;
    /// `null`, a list, a mapping or a tagged value is ignored (`None`).
    ///
    /// `priority`: any value present is kept as text so that
    /// [`crate::route::priority`] can reject it: a string as is, a number or
    /// boolean as written, `null` as `"null"`, a list or mapping as
    /// `"a list"` / `"a mapping"`, a tagged value as `"!tag value"`.
    pub fn from_mapping(m: &Mapping) -> Meta {
        Meta {
            needs_claude_code: m.get(NEEDS_CLAUDE_CODE).map(Field::of),
            preferred_ai: m.get(PREFERRED_AI).map(Field::of),
            allow_delegation: m.get(ALLOW_DELEGATION).map(Field::of),
            complexity_hint: m.get(COMPLEXITY_HINT).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Bool(_) | Value::Number(_) => Some(text_of(v)),
                Value::Null | Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => None,
            }),
            priority: m.get(PRIORITY).map(text_of),
            fallback: m.get(FALLBACK).map(Field::of),
            near_misses: m
                .keys()
                .filter_map(Value::as_str)
                .filter_map(|key| {
                    near_miss(key).map(|like| NearMiss {
                        key: key.to_owned(),
                        like,
                    })
                })
                .collect(),
            unreadable: false,
        }
    }

    /// Builds a `Meta` from `decide --set KEY=VALUE` pairs, exactly as if the
    /// pairs were the lines of a frontmatter: each VALUE is parsed as one
    /// YAML 1.2 scalar (`false` is a boolean, `"false"` a string, an empty
    /// VALUE or `~` is `null`), unknown keys are ignored, and a key given
    /// twice is [`Problem::DuplicateKey`]. A VALUE that is a list, a mapping
    /// or not valid YAML is [`Problem::BadValue`] (quote it to pass text).
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Meta, Problem> {
        let mut m = Mapping::new();
        for (key, text) in pairs {
            let bad = |why: String| Problem::BadValue {
                key: key.clone(),
                why,
            };
            let value = parse_value(text).map_err(|e| bad(e.to_string()))?;
            match kind(&value) {
                "a scalar" => {}
                other => return Err(bad(format!("is {other}, not a scalar"))),
            }
            if m.insert(Value::String(key.clone()), value).is_some() {
                return Err(Problem::DuplicateKey(format!("{key:?}")));
            }
        }
        Ok(Meta::from_mapping(&m))
    }
}

/// A value as text, for the text keys: see [`Meta::from_mapping`].
fn text_of(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("{} {}", t.tag, text_of(&t.value)),
    }
}

fn untagged(mut v: Value) -> Value {
    while let Value::Tagged(t) = v {
        v = t.value;
    }
    v
}

/// `"a scalar"`, `"a list"` or `"a mapping"`, looking through tags.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(t) => kind(&t.value),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => "a scalar",
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A file that begins with two byte order marks: the second hides a
/// frontmatter that would otherwise open (one BOM is skipped, as the
/// design says). Worth a warning: the task routes as if it had no keys.
pub fn second_bom(input: &[u8]) -> bool {
    input.starts_with(BOM) && input[BOM.len()..].starts_with(BOM)
}

/// Splits a task file. Never panics; `head` + `body` == `input` always.
pub fn split(input: &[u8]) -> Split<'_> {
    let none = |meta| Split {
        head: &input[..0],
        body: input,
        meta,
    };
    let text = match std::str::from_utf8(input) {
        Ok(text) => text,
        Err(e) => {
            return none(Err(Problem::NotUtf8 {
                offset: e.valid_up_to(),
            }));
        }
    };
    let start = if input.starts_with(BOM) { BOM.len() } else { 0 };
    let mut lines = Lines {
        bytes: input,
        pos: start,
    };
    match lines.next() {
        Some(line) if is_marker(line.content, b"---") => {}
        _ => return none(Ok(Meta::default())),
    }
    let block_start = lines.pos;
    for line in lines {
        if is_marker(line.content, b"---") || is_marker(line.content, b"...") {
            // The YAML handed to serde_yaml starts with the opening `---`
            // line (a YAML document start marker), so that the line numbers
            // in its error messages are the task file's line numbers.
            let yaml = &text[start..line.start];
            let (head, body) = input.split_at(line.end);
            return Split {
                head,
                body,
                meta: parse_block(yaml, block_start - start),
            };
        }
    }
    none(Err(Problem::NoClosingLine))
}

/// One line: `content` excludes the line end (`\n` or `\r\n`); `start..end`
/// are the offsets of the whole line, line end included.
struct Line<'a> {
    content: &'a [u8],
    start: usize,
    end: usize,
}

struct Lines<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        let rest = self.bytes.get(self.pos..).filter(|r| !r.is_empty())?;
        let start = self.pos;
        let (content, len) = match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                let content = &rest[..nl];
                (content.strip_suffix(b"\r").unwrap_or(content), nl + 1)
            }
            None => (rest, rest.len()),
        };
        self.pos += len;
        Some(Line {
            content,
            start,
            end: self.pos,
        })
    }
}

/// `line` is exactly `marker` followed by nothing but spaces and tabs.
fn is_marker(line: &[u8], marker: &[u8]) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.iter().all(|&b| b == b' ' || b == b'\t'))
}

/// Parses the YAML block (`yaml` begins with the opening `---` line, which is
/// `opener_len` bytes long) into the routing keys.
fn parse_block(yaml: &str, opener_len: usize) -> Result<Meta, Problem> {
    // An empty block needs no parser.
    if yaml[opener_len..]
        .trim_start_matches([' ', '\t', '\r', '\n'])
        .is_empty()
    {
        return Ok(Meta::default());
    }
    match parse_value(yaml) {
        // The text parsed (the guard walked it) but its `Value` was
        // refused: a key given twice.
        Err(YamlError::Yaml(e)) => {
            Err(duplicate_key(yaml)
                .map_or_else(|| Problem::Yaml(e.to_string()), Problem::DuplicateKey))
        }
        // A document of comments only, or a lone `~`, is Null to serde_yaml:
        // tell the two apart by asking for a mapping, which accepts the
        // former (an empty plain scalar) and refuses the latter.
        Ok(Value::Null) => match serde_yaml::from_str::<Mapping>(yaml) {
            Ok(m) => Ok(Meta::from_mapping(&m)),
            Err(_) => Err(Problem::NotAMapping("a scalar")),
        },
        // A tag on the whole mapping (`!foo` on the first line) is ignored.
        Ok(v) => match untagged(v) {
            Value::Mapping(m) => Ok(Meta::from_mapping(&m)),
            Value::Sequence(_) => Err(Problem::NotAMapping("a list")),
            _ => Err(Problem::NotAMapping("a scalar")),
        },
        Err(e) => Err(e.into_problem()),
    }
}

/// Why YAML was refused: the parser's error (which says where), or the
/// guard's reason (see [`from_yaml`]).
#[derive(Debug)]
pub enum YamlError {
    Yaml(serde_yaml::Error),
    TooComplex(String),
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            YamlError::Yaml(e) => e.fmt(f),
            YamlError::TooComplex(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for YamlError {}

impl YamlError {
    fn into_problem(self) -> Problem {
        match self {
            YamlError::Yaml(e) => Problem::Yaml(e.to_string()),
            YamlError::TooComplex(why) => Problem::TooComplex(why),
        }
    }
}

/// Values a YAML text may produce, counting each alias expansion again:
/// a fixed allowance plus a few per byte. Without aliases a YAML text has at
/// most about one value per byte, so only alias expansion can reach it.
fn value_budget(len: usize) -> usize {
    4096 + 4 * len
}

/// Bound on [`flow_cost`]: about 0.1 s of libyaml scanning at worst (8192
/// nested `[` in a release build). Any text of up to 8000 bytes is under it,
/// whatever it holds; longer ones are refused only when they hold many `[`
/// or `{` early on (a 100 KB text may hold about 300 of them).
const FLOW_COST_BUDGET: u64 = 1 << 25;

/// An upper bound on the work libyaml's scanner does for `yaml`.
///
/// Why the YAML crate's own limits do not suffice: its recursion limit
/// (128) is applied by the parser, after the scanner has tokenised the
/// flow collections, and the scanner keeps one "simple key" per open flow
/// collection (`[` or `{`), walked for every token; nothing bounds that.
/// Measured with yaml_serde 0.10.7 (libyaml-rs 0.3.0), release build, a
/// text of nothing but `[` parsed to a `Value`: 100 KB takes 0.67 s and
/// 18.7 MB, 400 KB 2.0 s and 67 MB, 1 MB (the config file's size limit)
/// 7.3 s and 164 MB, each ending in "recursion limit exceeded at line 1
/// column 129"; with this check first, the 100 KB and 1 MB texts are
/// refused in under 50 µs and 2.2 MB, and libyaml never runs (an older
/// serde_yaml 0.9 took 16 s on the 100 KB text). The depth at a byte is at most the number of
/// `[` and `{` before it, whatever quoting or comments say (closers are not
/// subtracted: a `]` inside a string would make that unsafe), and there are
/// no more tokens than bytes; the sum over bytes bounds the work.
fn flow_cost(yaml: &str) -> u64 {
    let mut open = 0u64;
    let mut cost = 0u64;
    for &b in yaml.as_bytes() {
        open += u64::from(b == b'[' || b == b'{');
        cost += open;
    }
    cost
}

/// Parses one YAML document into a `Value`, refusing inputs that would make
/// serde_yaml 0.9 / libyaml take super-linear time or memory:
///
/// - Too many flow collections for the text's size: see [`flow_cost`].
/// - Alias bombs. serde_yaml refuses nested "billion laughs" aliases (its
///   "repetition limit": at most 100 alias jumps per event), but not a flat
///   quadratic bomb: `a: &a [x, x, ... x]` then `b: [*a, *a, ... *a]` builds
///   n² values from 5n bytes (30 KB of YAML: 10 s and 3.6 GB). So first walk
///   the document without building anything, counting the values alias
///   expansion would create, and stop at a budget linear in the input
///   ([`value_budget`]); only then build it.
fn parse_value(yaml: &str) -> Result<Value, YamlError> {
    from_yaml(yaml)
}

/// The one door for YAML this tool reads (task frontmatter, record heads,
/// the config file, and any later file): the two checks of [`parse_value`]
/// first, then serde_yaml into `T`.
pub fn from_yaml<T: serde::de::DeserializeOwned>(yaml: &str) -> Result<T, YamlError> {
    guard(yaml)?;
    serde_yaml::from_str::<T>(yaml).map_err(YamlError::Yaml)
}

/// Refuses a text that would make serde_yaml super-linear; see [`parse_value`].
fn guard(yaml: &str) -> Result<(), YamlError> {
    let cost = flow_cost(yaml);
    if cost > FLOW_COST_BUDGET {
        let open = yaml.bytes().filter(|&b| b == b'[' || b == b'{').count();
        return Err(YamlError::TooComplex(format!(
            "{open} `[` or `{{` in {} bytes: too many flow collections for its size",
            yaml.len(),
        )));
    }
    let limit = value_budget(yaml.len());
    let counter = Counter {
        left: Cell::new(limit),
        exhausted: Cell::new(false),
    };
    if let Err(e) = Budget(&counter).deserialize(serde_yaml::Deserializer::from_str(yaml)) {
        if counter.exhausted.get() {
            return Err(YamlError::TooComplex(format!(
                "its aliases expand to more than {limit} values"
            )));
        }
        return Err(YamlError::Yaml(e));
    }
    Ok(())
}

/// A key given twice, as [`Problem::DuplicateKey`] shows it: `"k"` (a
/// string, quoted), `5`, `true`, `null`, or a list or mapping used as a
/// key; `KEY in PATH` when nested. Found in the document's tree, once
/// serde_yaml has refused to build its `Value` of a text that parsed.
fn duplicate_key(yaml: &str) -> Option<String> {
    use crate::yaml_tree::Tree;
    let d = serde_yaml::from_str::<Tree>(yaml).ok()?.duplicate_key()?;
    let key = match &d.key {
        Tree::Str(s) => format!("{s:?}"),
        Tree::Null => "null".to_owned(),
        Tree::Bool(b) => format!("`{b}`"),
        Tree::U64(n) => n.to_string(),
        Tree::I64(n) => n.to_string(),
        Tree::U128(n) => n.to_string(),
        Tree::I128(n) => n.to_string(),
        Tree::F64(n) => n.to_string(),
        Tree::Seq(_) | Tree::Map(_) => "(a list or mapping used as a key)".to_owned(),
    };
    if d.path.is_empty() {
        Some(key)
    } else {
        Some(format!("{key} in {}", d.path.join(".")))
    }
}

struct Counter {
    left: Cell<usize>,
    exhausted: Cell<bool>,
}

/// Walks a document like `IgnoredAny`, spending one unit per value.
#[derive(Clone, Copy)]
struct Budget<'c>(&'c Counter);

impl Budget<'_> {
    fn spend<E: de::Error>(self) -> Result<(), E> {
        match self.0.left.get().checked_sub(1) {
            Some(left) => {
                self.0.left.set(left);
                Ok(())
            }
            None => {
                self.0.exhausted.set(true);
                Err(E::custom("alias expansion budget exhausted"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Budget<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budget<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.spend()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.spend()
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.spend()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.spend()
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.spend()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.spend()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.spend()
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        self.spend()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.spend()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.spend()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.spend()?;
        self.deserialize(d)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.spend()?;
        self.deserialize(d)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend()?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    /// serde_yaml hands a value with a custom tag (`!foo x`) to `visit_enum`.
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess;
        self.spend()?;
        let (IgnoredAny, contents) = data.variant::<IgnoredAny>()?;
        contents.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Field {
        Field::Str(v.to_owned())
    }

    /// What a test expects of `meta`.
    #[derive(Debug)]
    enum M {
        /// Ok, with these routing keys (`preferred_ai`, `allow_delegation`).
        Keys(Box<Meta>),
        /// Err, matching this predicate.
        Bad(fn(&Problem) -> bool),
    }

    fn ok() -> M {
        M::Keys(Box::default())
    }

    fn pa(v: Field) -> M {
        M::Keys(Box::new(Meta {
            preferred_ai: Some(v),
            ..Meta::default()
        }))
    }

    #[test]
    fn table() {
        // (name, input, head length, expected meta)
        let yes_meta = Meta {
            preferred_ai: Some(s("yes")),
            allow_delegation: Some(s("on")),
            needs_claude_code: Some(s("no")),
            complexity_hint: Some("y".into()),
            priority: Some("off".into()),
            fallback: None,
            near_misses: Vec::new(),
            unreadable: false,
        };
        let rows: Vec<(&str, &[u8], usize, M)> = vec![
            ("no frontmatter", b"# Task\nbody\n", 0, ok()),
            ("empty input", b"", 0, ok()),
            ("simple", b"---\npreferred_ai: gpu\n---\nbody\n", 26, pa(s("gpu"))),
            ("no closer", b"---\npreferred_ai: gpu\nbody\n", 0, M::Bad(|p| *p == Problem::NoClosingLine)),
            ("opener alone", b"---\n", 0, M::Bad(|p| *p == Problem::NoClosingLine)),
            ("opener alone no newline", b"---", 0, M::Bad(|p| *p == Problem::NoClosingLine)),
            ("scalar", b"---\njust text\n---\nbody", 18, M::Bad(|p| *p == Problem::NotAMapping("a scalar"))),
            ("null scalar", b"---\n~\n---\n", 10, M::Bad(|p| *p == Problem::NotAMapping("a scalar"))),
            ("tagged scalar", b"---\n!foo x\n---\n", 15, M::Bad(|p| *p == Problem::NotAMapping("a scalar"))),
            ("list", b"---\n- a\n- b\n---\n", 16, M::Bad(|p| *p == Problem::NotAMapping("a list"))),
            ("duplicate key", b"---\na: 1\na: 2\n---\n", 18, M::Bad(|p| *p == Problem::DuplicateKey("\"a\"".into()))),
            ("duplicate routing key", b"---\npreferred_ai: gpu\npreferred_ai: gemini\n---\n", 47, M::Bad(|p| *p == Problem::DuplicateKey("\"preferred_ai\"".into()))),
            ("nested duplicate key", b"---\nx:\n  b: 1\n  b: 2\n---\n", 25, M::Bad(|p| *p == Problem::DuplicateKey("\"b\" in x".into()))),
            ("duplicate flow key", b"---\n{a: 1, a: 2}\n---\n", 21, M::Bad(|p| matches!(p, Problem::DuplicateKey(_)))),
            ("duplicate number key", b"---\n1: a\n0x1: b\n---\n", 20, M::Bad(|p| *p == Problem::DuplicateKey("1".into()))),
            ("duplicate null key", b"---\n~: a\nnull: b\n---\n", 21, M::Bad(|p| *p == Problem::DuplicateKey("null".into()))),
            ("same text, different types", b"---\n1: a\n\"1\": b\n---\n", 20, ok()),
            ("syntax error", b"---\na: [1\n---\n", 14, M::Bad(|p| matches!(p, Problem::Yaml(m) if m.contains("line 3")))),
            ("tab indentation", b"---\na: 1\n\tb: 2\n---\n", 19, M::Bad(|p| matches!(p, Problem::Yaml(_)))),
            ("unknown alias", b"---\na: *nope\n---\n", 17, M::Bad(|p| matches!(p, Problem::Yaml(m) if m.contains("unknown anchor")))),
            ("second document inside", b"---\na: 1\n--- b: 2\n---\n", 22, M::Bad(|p| matches!(p, Problem::Yaml(m) if m.contains("more than one document")))),
            ("control character", b"---\na: \x01\n---\n", 13, M::Bad(|p| matches!(p, Problem::Yaml(_)))),
            ("BOM", b"\xEF\xBB\xBF---\npreferred_ai: gpu\n---\nbody", 29, pa(s("gpu"))),
            ("BOM, no frontmatter", b"\xEF\xBB\xBFbody\n", 0, ok()),
            ("two BOMs", b"\xEF\xBB\xBF\xEF\xBB\xBF---\na: 1\n---\n", 0, ok()),
            ("CRLF", b"---\r\npreferred_ai: gpu\r\n---\r\nbody\r\nmore\r\n", 29, pa(s("gpu"))),
            ("... closer", b"---\npreferred_ai: gpu\n...\nbody\n", 26, pa(s("gpu"))),
            ("... closer with trailing space", b"---\npreferred_ai: gpu\n... \t\nbody\n", 28, pa(s("gpu"))),
            ("invalid UTF-8", b"---\na: 1\n---\nbad \xFF\n", 0, M::Bad(|p| *p == Problem::NotUtf8 { offset: 17 })),
            ("invalid UTF-8 in frontmatter", b"---\na: \xC3\n---\n", 0, M::Bad(|p| *p == Problem::NotUtf8 { offset: 7 })),
            ("BOM then invalid UTF-8", b"\xEF\xBB\xBF\x80", 0, M::Bad(|p| *p == Problem::NotUtf8 { offset: 3 })),
            ("YAML 1.2 yes/no/on/off/y", b"---\npreferred_ai: yes\nallow_delegation: on\nneeds_claude_code: no\ncomplexity_hint: y\npriority: off\n---\n", 102, M::Keys(Box::new(yes_meta))),
            ("YAML 1.2 booleans", b"---\npreferred_ai: True\n---\n", 27, pa(Field::Bool(true))),
            ("---- opener", b"----\na: 1\n---\n", 0, ok()),
            ("--- x opener", b"--- x\na: 1\n---\n", 0, ok()),
            ("--- # comment opener", b"--- # c\na: 1\n---\n", 0, ok()),
            ("blank first line", b"\n---\na: 1\n---\n", 0, ok()),
            ("space before ---", b" ---\na: 1\n---\n", 0, ok()),
            ("+++ opener", b"+++\na = 1\n+++\n", 0, ok()),
            ("CR-only line ends", b"---\ra: 1\r---\r", 0, ok()),
            ("trailing spaces on ---", b"--- \t \npreferred_ai: gpu\n---\t\nbody", 30, pa(s("gpu"))),
            ("trailing spaces, CRLF", b"---  \r\npreferred_ai: gpu\r\n--- \r\nbody", 32, pa(s("gpu"))),
            ("---x is not a closer", b"---\na: |\n  ---x\n---\n", 20, ok()),
            ("---- is not a closer", b"---\na: 1\n----\n---\n", 18, M::Bad(|p| matches!(p, Problem::Yaml(_)))),
            ("indented --- is not a closer", b"---\na: |\n  ---\n---\n", 19, ok()),
            ("empty block", b"---\n---\nbody\n", 8, ok()),
            ("empty block, ... closer", b"---\n...\n", 8, ok()),
            ("blank lines only", b"---\n\n  \n\t\n---\n", 14, ok()),
            ("comment-only block", b"---\n# a comment\n  # another\n---\nbody", 32, ok()),
            ("closer at EOF without newline", b"---\npreferred_ai: gpu\n---", 25, pa(s("gpu"))),
            ("closer at EOF, trailing space", b"---\npreferred_ai: gpu\n...  ", 27, pa(s("gpu"))),
            ("closer at EOF, CR but no LF", b"---\npreferred_ai: gpu\n---\r", 0, M::Bad(|p| *p == Problem::NoClosingLine)),
            ("body with CRLF kept", b"---\n---\r\nline 1\r\nline 2\r\n\r\n", 9, ok()),
            ("body holding --- lines", b"---\na: 1\n---\nbody\n---\nmore\n---\n", 13, ok()),
            ("tags", b"---\npreferred_ai: !foo gpu\nb: !!str 5\n---\n", 42, pa(Field::Other("a tagged value"))),
            ("core tag resolves", b"---\npreferred_ai: !!str gpu\n---\n", 32, pa(s("gpu"))),
            ("tagged mapping", b"---\n!foo\npreferred_ai: gpu\n---\n", 31, pa(s("gpu"))),
            ("anchors and aliases", b"---\nx: &g gpu\npreferred_ai: *g\n---\n", 35, pa(s("gpu"))),
            ("merge key is an ordinary key", b"---\n<<: {preferred_ai: gpu}\n---\n", 32, ok()),
            ("%YAML directive in block", b"---\n%YAML 1.1\na: 1\n---\n", 23, M::Bad(|p| matches!(p, Problem::Yaml(_)))),
            ("flow mapping", b"---\n{preferred_ai: gpu}\n---\n", 28, pa(s("gpu"))),
            ("null value", b"---\npreferred_ai:\n---\n", 22, pa(Field::Null)),
            ("non-string key ignored", b"---\n? [preferred_ai]\n: gpu\n---\n", 31, ok()),
        ];
        for (name, input, head_len, want) in rows {
            let got = split(input);
            assert_eq!(got.head.len(), head_len, "{name}: head");
            assert_eq!(got.head, &input[..head_len], "{name}: head bytes");
            assert_eq!(got.body, &input[head_len..], "{name}: body bytes");
            match (&want, &got.meta) {
                (M::Keys(want), Ok(meta)) => assert_eq!(meta, &**want, "{name}: meta"),
                (M::Bad(pred), Err(p)) => assert!(pred(p), "{name}: unexpected problem {p:?}"),
                _ => panic!("{name}: expected {want:?}, got {:?}", got.meta),
            }
        }
    }

    #[test]
    fn text_keys() {
        let got =
            split(b"---\ncomplexity_hint: Refactor the parser\npriority: HIGH\nother: 1\n---\n");
        assert_eq!(
            got.meta,
            Ok(Meta {
                complexity_hint: Some("Refactor the parser".into()),
                priority: Some("HIGH".into()),
                ..Meta::default()
            })
        );
        let got = split(b"---\ncomplexity_hint: 42\npriority: ~\n---\n");
        let meta = got.meta.unwrap();
        assert_eq!(meta.complexity_hint.as_deref(), Some("42"));
        assert_eq!(meta.priority.as_deref(), Some("null"));
        let meta = split(b"---\ncomplexity_hint: [a]\npriority: [low]\n---\n")
            .meta
            .unwrap();
        assert_eq!(meta.complexity_hint, None);
        assert_eq!(meta.priority.as_deref(), Some("a list"));
        let meta = split(b"---\ncomplexity_hint:\npriority: !x low\n---\n")
            .meta
            .unwrap();
        assert_eq!(meta.complexity_hint, None);
        assert_eq!(meta.priority.as_deref(), Some("!x low"));
    }

    #[test]
    fn yaml_errors_use_file_line_numbers() {
        let got = split(b"---\na: 1\nb: [1\nc: 2\n---\n");
        let Err(Problem::Yaml(msg)) = got.meta else {
            panic!("{:?}", got.meta)
        };
        // The flow sequence opens on file line 3.
        assert!(msg.contains("at line 3 column 4"), "{msg}");
        let shown = Problem::Yaml(msg).to_string();
        assert!(
            shown.starts_with("frontmatter is not valid YAML: "),
            "{shown}"
        );
    }

    #[test]
    fn problems_display() {
        assert_eq!(
            Problem::NoClosingLine.to_string(),
            "frontmatter has no closing `---` or `...` line"
        );
        assert_eq!(
            Problem::NotAMapping("a list").to_string(),
            "frontmatter is a list, not a mapping"
        );
        assert_eq!(
            Problem::NotUtf8 { offset: 7 }.to_string(),
            "not valid UTF-8 (first bad byte at offset 7)"
        );
        assert_eq!(
            Problem::DuplicateKey("\"a\"".into()).to_string(),
            "duplicate key \"a\""
        );
    }

    fn billion_laughs(levels: char) -> String {
        let mut y = String::from("a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
        let mut prev = 'a';
        for n in 'b'..=levels {
            let refs = vec![format!("*{prev}"); 9].join(",");
            y.push_str(&format!("{n}: &{n} [{refs}]\n"));
            prev = n;
        }
        y
    }

    /// serde_yaml 0.9 refuses a nested "billion laughs" by itself (its
    /// "repetition limit"); this pins that behaviour in case it changes.
    #[test]
    fn serde_yaml_refuses_billion_laughs() {
        let t = std::time::Instant::now();
        let got = serde_yaml::from_str::<Value>(&billion_laughs('j'));
        assert_eq!(got.unwrap_err().to_string(), "repetition limit exceeded");
        assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
    }

    #[test]
    fn billion_laughs_is_refused_quickly() {
        let y = format!("---\n{}---\n", billion_laughs('j'));
        let t = std::time::Instant::now();
        let got = split(y.as_bytes());
        assert!(
            matches!(&got.meta, Err(Problem::TooComplex(m)) if m.contains("aliases expand")),
            "{:?}",
            got.meta
        );
        assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
        // Three levels (9³ = 729 values) is within the budget.
        let y = format!("---\n{}---\n", billion_laughs('c'));
        assert_eq!(split(y.as_bytes()).meta, Ok(Meta::default()));
    }

    /// A flat quadratic alias bomb, which serde_yaml's limit lets through.
    #[test]
    fn quadratic_alias_bomb_is_refused_quickly() {
        let n = 6000; // 30 KB; unchecked serde_yaml: 10 s and 3.6 GB
        let y = format!(
            "---\na: &a [{}]\nb: [{}]\n---\n",
            "x,".repeat(n),
            "*a,".repeat(n)
        );
        let t = std::time::Instant::now();
        let got = split(y.as_bytes());
        let Err(Problem::TooComplex(msg)) = &got.meta else {
            panic!("{:?}", got.meta)
        };
        assert!(msg.contains("aliases expand to more than"), "{msg}");
        assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
    }

    #[test]
    fn modest_alias_use_is_fine() {
        let mut y = String::from("---\nbase: &b {x: 1, y: 2, z: [1, 2, 3]}\n");
        for i in 0..20 {
            y.push_str(&format!("k{i}: *b\n"));
        }
        y.push_str("preferred_ai: gemini\n---\n");
        assert_eq!(split(y.as_bytes()).meta, pa_meta("gemini"));
    }

    fn pa_meta(v: &str) -> Result<Meta, Problem> {
        Ok(Meta {
            preferred_ai: Some(s(v)),
            ..Meta::default()
        })
    }

    /// libyaml scans nested flow collections in tokens × depth time.
    #[test]
    fn deep_flow_nesting_is_refused_quickly() {
        for (open, close) in [("[", "]"), ("{a: ", "}"), ("[\n", "")] {
            let y = format!(
                "---\na: {}{}\n---\n",
                open.repeat(50_000),
                close.repeat(50_000)
            );
            let t = std::time::Instant::now();
            let got = split(y.as_bytes());
            assert!(
                matches!(&got.meta, Err(Problem::TooComplex(m)) if m.contains("too many flow")),
                "{:?}",
                got.meta
            );
            assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
        }
        // Within the budget, libyaml runs and serde_yaml's depth limit says no.
        let y = format!("---\na: {}{}\n---\n", "[".repeat(2000), "]".repeat(2000));
        let got = split(y.as_bytes());
        assert!(
            matches!(&got.meta, Err(Problem::Yaml(m)) if m.contains("recursion limit")),
            "{:?}",
            got.meta
        );
    }

    /// Any frontmatter up to 8000 bytes passes the flow check, whatever it holds,
    /// and so do longer ones with a few lists.
    #[test]
    fn flow_check_allows_ordinary_frontmatter() {
        assert!(flow_cost(&"[".repeat(8000)) <= FLOW_COST_BUDGET);
        let mut y = String::from("---\npreferred_ai: gemini\n");
        for i in 0..300 {
            y.push_str(&format!("k{i}: [{{a: 1}}, [b]]\n"));
        }
        y.push_str("---\n");
        assert_eq!(split(y.as_bytes()).meta, pa_meta("gemini"));
        let mut y = String::from("---\npreferred_ai: gemini\ntags: [a, b, c]\n");
        for i in 0..5000 {
            y.push_str(&format!("k{i}: a fairly long value for key number {i}\n"));
        }
        y.push_str("---\n");
        assert!(y.len() > 200_000);
        assert_eq!(split(y.as_bytes()).meta, pa_meta("gemini"));
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let mut y = String::from("---\n");
        for depth in 0..1000 {
            y.push_str(&" ".repeat(depth));
            y.push_str("a:\n");
        }
        y.push_str("---\n");
        assert!(matches!(split(y.as_bytes()).meta, Err(Problem::Yaml(_))));
    }

    #[test]
    fn large_task_splits() {
        let mut big = b"---\npreferred_ai: gpu\n---\n".to_vec();
        let line = b"Some text of a long task, with --- and ... inside.\r\n";
        while big.len() < 10 << 20 {
            big.extend_from_slice(line);
        }
        let got = split(&big);
        assert_eq!(got.head.len(), 26);
        assert_eq!(got.meta, pa_meta("gpu"));
        // No closer: the whole 10 MB is scanned.
        let got = split(&big[4..]);
        assert_eq!(got.meta, Ok(Meta::default()));
        let mut open = b"---\n".to_vec();
        open.extend_from_slice(&big[26..]);
        assert_eq!(split(&open).meta, Err(Problem::NoClosingLine));
    }

    #[test]
    fn keys_near_a_routing_key_are_named() {
        // (key, the routing key it resembles)
        let rows: &[(&str, Option<&str>)] = &[
            ("allow_delegaton", Some("allow_delegation")),
            ("Allow_Delegation", Some("allow_delegation")),
            ("ALLOW-DELEGATION", Some("allow_delegation")),
            ("allow_delgeation", Some("allow_delegation")),
            ("preferred-ai", Some("preferred_ai")),
            ("prefered_ai", Some("preferred_ai")),
            ("needs_claude", None),
            ("need_claude_code", Some("needs_claude_code")),
            ("priorty", Some("priority")),
            ("Priority", Some("priority")),
            ("complexity", None),
            ("complexity_hnt", Some("complexity_hint")),
            ("fallbacks", Some("fallback")),
            ("allow_delegation", None),
            ("fallback", None),
            ("comple]xity_hint", None),
            ("priority\u{1b}", None),
            ("title", None),
            ("tags", None),
            ("author", None),
            ("", None),
        ];
        for &(key, like) in rows {
            assert_eq!(near_miss(key), like, "{key:?}");
        }
        let meta = split(b"---\nallow_delegaton: true\npreferred_ai: gpu\ntitle: x\n---\n")
            .meta
            .unwrap();
        assert_eq!(
            meta.near_misses,
            [NearMiss {
                key: "allow_delegaton".into(),
                like: ALLOW_DELEGATION
            }]
        );
        // Routing is unchanged: the misspelt key is ignored.
        assert_eq!(meta.preferred_ai, Some(s("gpu")));
        assert_eq!(meta.allow_delegation, None);
        let shown = meta.near_misses[0].to_string();
        assert!(
            shown
                .starts_with("key `allow_delegaton` looks like the routing key `allow_delegation`"),
            "{shown}"
        );
    }

    #[test]
    fn from_pairs() {
        let p = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let meta = Meta::from_pairs(&[
            p("preferred_ai", " Gemini "),
            p("allow_delegation", "true"),
            p("needs_claude_code", ""),
            p("complexity_hint", "small"),
            p("priority", "high"),
            p("unknown", "whatever"),
        ])
        .unwrap();
        assert_eq!(
            meta,
            Meta {
                preferred_ai: Some(s("Gemini")),
                allow_delegation: Some(Field::Bool(true)),
                needs_claude_code: Some(Field::Null),
                complexity_hint: Some("small".into()),
                priority: Some("high".into()),
                fallback: None,
                near_misses: Vec::new(),
                unreadable: false,
            }
        );
        let meta = Meta::from_pairs(&[p("allow_delegation", "\"true\""), p("preferred_ai", "yes")])
            .unwrap();
        assert_eq!(meta.allow_delegation, Some(s("true")));
        assert_eq!(meta.preferred_ai, Some(s("yes")));
        let meta =
            Meta::from_pairs(&[p("needs_claude_code", "false"), p("preferred_ai", "5")]).unwrap();
        assert_eq!(meta.needs_claude_code, Some(Field::Bool(false)));
        assert_eq!(meta.preferred_ai, Some(Field::Other("a number or boolean")));
        assert_eq!(Meta::from_pairs(&[]), Ok(Meta::default()));
        assert_eq!(
            Meta::from_pairs(&[p("preferred_ai", "gpu"), p("preferred_ai", "gemini")]),
            Err(Problem::DuplicateKey("\"preferred_ai\"".into()))
        );
        for bad in [
            "[gpu]",
            "a: b",
            "- x",
            "\"unterminated",
            "x\n---\ny",
            "*nope",
        ] {
            assert!(
                matches!(Meta::from_pairs(&[p("preferred_ai", bad)]), Err(Problem::BadValue { ref key, .. }) if key == "preferred_ai"),
                "{bad:?}"
            );
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// An independent model of where the frontmatter ends (the head length),
    /// written with `str` methods rather than the byte scanner.
    fn model_head_len(input: &[u8]) -> usize {
        let Ok(text) = std::str::from_utf8(input) else {
            return 0;
        };
        let bom = if text.starts_with('\u{feff}') { 3 } else { 0 };
        let is = |line: &str, marker: &str| {
            let content = match line.strip_suffix('\n') {
                Some(c) => c.strip_suffix('\r').unwrap_or(c),
                None => line,
            };
            content.trim_end_matches([' ', '\t']) == marker
        };
        let mut lines = text[bom..].split_inclusive('\n');
        let Some(first) = lines.next() else { return 0 };
        if !is(first, "---") {
            return 0;
        }
        let mut end = bom + first.len();
        for line in lines {
            end += line.len();
            if is(line, "---") || is(line, "...") {
                return end;
            }
        }
        0
    }

    fn check(input: &[u8]) -> Result<(), TestCaseError> {
        let got = split(input);
        prop_assert_eq!([got.head, got.body].concat(), input);
        prop_assert_eq!(got.head.len(), model_head_len(input));
        if got.head.is_empty() {
            prop_assert!(got.body.len() == input.len());
        } else {
            let head = got.head.strip_prefix(BOM).unwrap_or(got.head);
            prop_assert!(head.starts_with(b"---"));
        }
        match &got.meta {
            Err(Problem::NotUtf8 { offset }) => {
                prop_assert!(std::str::from_utf8(input).is_err());
                prop_assert!(std::str::from_utf8(&input[..*offset]).is_ok());
            }
            Err(Problem::NoClosingLine) => prop_assert!(got.head.is_empty()),
            Err(_) => prop_assert!(!got.head.is_empty()),
            Ok(_) => {}
        }
        let decision = crate::route::route_parsed(&got.meta);
        prop_assert!((1..=7).contains(&decision.rule));
        if got.meta.is_err() {
            prop_assert_eq!(decision.rule, 7);
        }
        Ok(())
    }

    const LINES: &[&[u8]] = &[
        b"---",
        b"...",
        b"--- ",
        b"---\t",
        b"... \t ",
        b"----",
        b"--- x",
        b"---x",
        b" ---",
        b"+++",
        b"",
        b" ",
        b"\t",
        b"\r",
        b"a: 1",
        b"a: 1",
        b"preferred_ai: gpu",
        b"preferred_ai: GPU",
        b"needs_claude_code: false",
        b"allow_delegation: true",
        b"priority: high",
        b"complexity_hint: x",
        b"yes: no",
        b"- x",
        b"  - y",
        b"x",
        b"~",
        b"[a, {b: c}]",
        b"[",
        b"]",
        b"{",
        b"a: &x [1, 2]",
        b"b: *x",
        b"c: *y",
        b"!tag",
        b"d: !!str 5",
        b"# comment",
        b"%YAML 1.2",
        b"e: |",
        b"f: \"unterminated",
        b"\xEF\xBB\xBF",
        b"\xEF\xBB\xBF---",
        b"\x00",
    ];
    /// How a generated input starts: mostly with an opening line.
    const OPENERS: &[&[u8]] = &[
        b"---\n",
        b"---\n",
        b"---\n",
        b"---\r\n",
        b"--- \t\n",
        b"---",
        b"",
        b"----\n",
    ];
    const ENDS: &[&[u8]] = &[b"\n", b"\n", b"\r\n", b"\r", b""];

    fn biased() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            proptest::sample::select(OPENERS),
            proptest::collection::vec(
                (
                    proptest::sample::select(LINES),
                    proptest::sample::select(ENDS),
                ),
                0..12,
            ),
            proptest::option::weighted(0.05, any::<proptest::sample::Index>()),
        )
            .prop_map(|(bom, opener, lines, bad_byte)| {
                let mut out = if bom { BOM.to_vec() } else { Vec::new() };
                out.extend_from_slice(opener);
                for (line, end) in lines {
                    out.extend_from_slice(line);
                    out.extend_from_slice(end);
                }
                if let Some(at) = bad_byte {
                    let at = at.index(out.len() + 1);
                    out.insert(at, 0xFF);
                }
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn any_bytes(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            check(&input)?;
        }

        #[test]
        fn any_text(input in "\\PC{0,300}") {
            check(input.as_bytes())?;
            let framed = format!("---\n{input}\n---\nbody");
            check(framed.as_bytes())?;
        }

        #[test]
        fn line_soup(input in biased()) {
            check(&input)?;
        }

        #[test]
        fn set_pairs(pairs in proptest::collection::vec(
            (proptest::sample::select(&["preferred_ai", "allow_delegation", "needs_claude_code", "priority", "complexity_hint", "x"][..]), "\\PC{0,20}"),
            0..4,
        )) {
            let pairs: Vec<(String, String)> =
                pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Ok(meta) = Meta::from_pairs(&pairs) {
                let d = crate::route::route(&meta);
                prop_assert!((1..=7).contains(&d.rule));
                let _ = crate::route::priority(&meta);
            }
        }
    }
}
