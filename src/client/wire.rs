//! What travels on the wire: the submission body, the answers as the
//! caller sees them, the id rules, and the lenient reading of untrusted
//! fields (a result's cost and token counts).

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::USER_AGENT;
use super::error::ClientError;
use crate::text::clip;

/// Largest submission body sent. A bigger one is refused before the
/// pending marker is written ([`check_body_size`]); a server would refuse it
/// anyway (`413`), maybe only after reading part of it.
pub const MAX_REQUEST_BODY_BYTES: u64 = 32 * 1024 * 1024;

/// A cost at or above this (CAD) is taken as a wrong value, not a price.
pub const MAX_COST_CAD: f64 = 1_000_000.0;

/// The body of `POST /api/v1/jobs`.
#[derive(Clone, Debug, Serialize)]
pub struct SubmitRequest {
    #[serde(rename = "type")]
    kind: &'static str,
    /// `low`, `normal` or `high`.
    pub priority: String,
    pub prompt: String,
    /// `gpu`, `gemini` or `claude`; omitted (`None`) for auto.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_ai: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complexity_hint: Option<String>,
    source: &'static str,
    pub metadata: SubmitMetadata,
}

/// `metadata` of a submission.
#[derive(Clone, Debug, Serialize)]
pub struct SubmitMetadata {
    /// The project directory's name.
    pub project: String,
    /// `<id>.md`.
    pub task: String,
}

impl SubmitRequest {
    /// An `analyze` request from `ccl-delegate/<version>`.
    pub fn new(
        priority: String,
        prompt: String,
        preferred_ai: Option<String>,
        complexity_hint: Option<String>,
        project: String,
        task: String,
    ) -> SubmitRequest {
        SubmitRequest {
            kind: "analyze",
            priority,
            prompt,
            preferred_ai,
            complexity_hint,
            source: USER_AGENT,
            metadata: SubmitMetadata { project, task },
        }
    }
}

/// The answer to a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: String,
    /// `200 OK`: the idempotency key was seen before; no new job was created.
    pub replayed: bool,
}

/// A job's state, as the service names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    Expired,
    /// A status the contract does not know: not terminal.
    Unknown(String),
}

impl Status {
    pub fn parse(s: &str) -> Status {
        match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            "expired" => Status::Expired,
            other => Status::Unknown(other.to_string()),
        }
    }

    /// `completed`, `failed`, `cancelled` and `expired` are terminal.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::Expired
        )
    }

    /// The service's word; an unknown one as received.
    pub fn as_str(&self) -> &str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::Unknown(s) => s,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Unknown(s) => write!(f, "unknown status {:?}", clip(s, 64)),
            known => f.write_str(known.as_str()),
        }
    }
}

/// `GET /api/v1/jobs/{id}` (and the answer to a cancel).
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    pub job_id: String,
    pub status: Status,
    pub error: Option<String>,
    pub provider: Option<String>,
    /// The service's whole object, unknown fields included (`get --json`).
    pub raw: serde_json::Value,
}

/// `GET /api/v1/jobs/{id}/result`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    pub job_id: String,
    pub provider: String,
    pub model: String,
    pub response: String,
    /// The job's cost; `0.0` when the service gave no usable cost (see
    /// `cost_note`).
    pub cost_cad: f64,
    /// Set when the service's `cost_cad` was missing or not a finite number
    /// in `[0, 1 000 000)`: what it was (escaped, clipped), for one warning
    /// naming the job. `cost_cad` is then `0.0`.
    pub cost_note: Option<String>,
    /// Token counts when the service gave them as non-negative integers;
    /// anything else is dropped.
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    /// The service's whole object (a number JSON can carry but `f64`
    /// cannot, like `1e400`, is kept as its text in a string).
    pub raw: serde_json::Value,
}

pub use crate::names::{valid_idempotency_key, valid_job_id};

/// The submission would be refused for its size: over
/// [`MAX_REQUEST_BODY_BYTES`] of JSON. Nothing is sent; callers check
/// before they write a pending marker.
pub fn check_body_size(req: &SubmitRequest) -> Result<(), ClientError> {
    body_size_rule(encoded_len(req))
}

/// `bytes` of JSON body against [`MAX_REQUEST_BODY_BYTES`].
pub(super) fn body_size_rule(bytes: u64) -> Result<(), ClientError> {
    if bytes > MAX_REQUEST_BODY_BYTES {
        Err(ClientError::TooLarge {
            bytes,
            limit: MAX_REQUEST_BODY_BYTES,
        })
    } else {
        Ok(())
    }
}

/// The length of `req` as JSON, counted without building it.
fn encoded_len(req: &SubmitRequest) -> u64 {
    struct Count(u64);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Strings and options only: encoding cannot fail.
    let _ = serde_json::to_writer(&mut c, req);
    c.0
}

/// `cost_cad` under the design's rule ("Untrusted bytes"): a finite number
/// in `[0, 1 000 000)` is the cost; anything else (missing, null, a string,
/// negative, absurd) is unknown, taken as `0.0`, with a note saying what it
/// was.
pub(super) fn cost_of(v: Option<&Value>) -> (f64, Option<String>) {
    let refused = |shown: &str| {
        Some(format!(
            "cost_cad {} is not a finite number in [0, 1000000); taken as 0",
            clip(shown, 40)
        ))
    };
    match v {
        None | Some(Value::Null) => (0.0, Some("no cost_cad in the answer; taken as 0".into())),
        Some(Value::Number(n)) => match n.as_f64() {
            // `+ 0.0` turns a `-0` into `0`.
            Some(c) if c.is_finite() && (0.0..MAX_COST_CAD).contains(&c) => (c + 0.0, None),
            _ => (0.0, refused(&n.to_string())),
        },
        // JSON text: a string's controls come escaped.
        Some(other) => (0.0, refused(&other.to_string())),
    }
}

/// A token count: a non-negative integer, else dropped.
pub(super) fn count_of(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

/// `body` as a JSON object. A body serde_json refuses only for a number it
/// cannot hold (`1e400`: JSON allows it, `f64` does not) is read again
/// with each such top-level value kept as its JSON text in a string, so
/// that one odd field never costs the whole answer.
pub(super) fn parse_object(body: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err("expected a JSON object".into()),
        Err(strict) => lenient_object(body).ok_or_else(|| format!("malformed JSON: {strict}")),
    }
}

fn lenient_object(body: &[u8]) -> Option<Value> {
    struct Fields(Vec<(String, Box<RawValue>)>);
    impl<'de> Deserialize<'de> for Fields {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Fields;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Fields, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = map.next_entry()? {
                        out.push(entry);
                    }
                    Ok(Fields(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    let Fields(fields) = serde_json::from_slice(body).ok()?;
    let mut map = serde_json::Map::with_capacity(fields.len());
    for (key, raw) in fields {
        let value = serde_json::from_str(raw.get())
            .unwrap_or_else(|_| Value::String(raw.get().to_string()));
        map.insert(key, value);
    }
    Some(Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::client::tests::submit_request;

    const IDEM: &str = "ccl-0123456789abcdef0123";

    #[test]
    fn job_id_validation() {
        for ok in ["j-1", "a", "A.b_c-9", "...", "a..b", &"x".repeat(128)] {
            assert!(valid_job_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a b",
            "é",
            "a\n",
            "a%2f",
            &"x".repeat(129),
        ] {
            assert!(!valid_job_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn idempotency_key_validation() {
        for ok in [
            IDEM,
            "0123456789abcdef",
            "A_B-C_D-E_F-G_H-",
            &"k".repeat(128),
        ] {
            assert!(valid_idempotency_key(ok), "{ok}");
        }
        for bad in [
            "",
            "0123456789abcde",
            "0123456789abcde.",
            "0123456789abcdef ",
            "0123456789/abcdef",
            &"k".repeat(129),
        ] {
            assert!(!valid_idempotency_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn status_parsing() {
        for (s, st, terminal) in [
            ("queued", Status::Queued, false),
            ("running", Status::Running, false),
            ("completed", Status::Completed, true),
            ("failed", Status::Failed, true),
            ("cancelled", Status::Cancelled, true),
            ("expired", Status::Expired, true),
        ] {
            let parsed = Status::parse(s);
            assert_eq!(parsed, st);
            assert_eq!(parsed.is_terminal(), terminal);
            assert_eq!(parsed.as_str(), s);
        }
        let u = Status::parse("Paused\u{1b}[31m");
        assert_eq!(u, Status::Unknown("Paused\u{1b}[31m".into()));
        assert!(!u.is_terminal());
        assert!(!u.to_string().contains('\u{1b}'));
        assert!(!Status::parse("COMPLETED").is_terminal());
    }

    #[test]
    fn submit_request_serialises_per_contract() {
        let v = serde_json::to_value(submit_request()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "analyze",
                "priority": "normal",
                "prompt": "Task: t1.md\n\nDo X.\n\nProvide a complete, self-contained answer.",
                "preferred_ai": "gemini",
                "source": format!("ccl-delegate/{}", env!("CARGO_PKG_VERSION")),
                "metadata": {"project": "proj", "task": "t1.md"}
            })
        );
        let mut r = submit_request();
        r.preferred_ai = None;
        r.complexity_hint = Some("hard".into());
        let v = serde_json::to_value(r).unwrap();
        assert!(v.get("preferred_ai").is_none());
        assert_eq!(v["complexity_hint"], "hard");
    }

    #[test]
    fn a_cost_is_a_finite_number_in_range_else_unknown_with_a_note() {
        use serde_json::json;
        for (v, cost, note) in [
            (Some(json!(0.0123)), 0.0123, None),
            (Some(json!(0)), 0.0, None),
            (Some(json!(-0.0)), 0.0, None),
            (Some(json!(999_999.99)), 999_999.99, None),
            (Some(json!(1_000_000)), 0.0, Some("cost_cad 1000000 is not")),
            (Some(json!(1e308)), 0.0, Some("cost_cad 1e+308 is not")),
            (Some(json!(-0.5)), 0.0, Some("cost_cad -0.5 is not")),
            (Some(json!("0.5")), 0.0, Some(r#"cost_cad "0.5" is not"#)),
            (Some(json!("NaN")), 0.0, Some(r#"cost_cad "NaN" is not"#)),
            (Some(json!(true)), 0.0, Some("cost_cad true is not")),
            (
                Some(json!({"cad": 1})),
                0.0,
                Some(r#"cost_cad {"cad":1} is not"#),
            ),
            (Some(Value::Null), 0.0, Some("no cost_cad")),
            (None, 0.0, Some("no cost_cad")),
        ] {
            let (got, got_note) = cost_of(v.as_ref());
            assert_eq!(got.to_bits(), f64::to_bits(cost), "{v:?}");
            match (note, &got_note) {
                (None, None) => {}
                (Some(start), Some(n)) => {
                    assert!(n.starts_with(start), "{v:?}: {n}");
                    assert!(n.ends_with("taken as 0"), "{n}");
                }
                _ => panic!("{v:?}: {got_note:?}"),
            }
        }
        // A hostile string is escaped and clipped in the note.
        let (_, n) = cost_of(Some(&json!(format!(
            "\u{1b}[2J\u{202e}{}",
            "9".repeat(500)
        ))));
        let n = n.unwrap();
        assert!(!n.chars().any(crate::text::is_unsafe_char), "{n:?}");
        assert!(n.contains("\\u001b[2J"), "{n}");
        assert!(n.chars().count() < 120, "{n}");
    }

    #[test]
    fn a_token_count_is_a_non_negative_integer_else_dropped() {
        use serde_json::json;
        for (v, want) in [
            (json!(12), Some(12)),
            (json!(0), Some(0)),
            (json!(-5), None),
            (json!(1.5), None),
            (json!("12"), None),
            (json!(null), None),
            (json!([1]), None),
        ] {
            assert_eq!(count_of(Some(&v)), want, "{v}");
        }
        assert_eq!(count_of(None), None);
    }

    #[test]
    fn a_number_beyond_f64_costs_only_its_field() {
        let v = parse_object(
            br#"{"job_id":"j-1","cost_cad":1e400,"deep":{"x":-1e999},"response":"Hi","n":[1]}"#,
        )
        .unwrap();
        assert_eq!(v["cost_cad"], "1e400");
        assert_eq!(v["deep"], r#"{"x":-1e999}"#);
        assert_eq!(v["response"], "Hi");
        assert_eq!(v["n"][0], 1);
        // Key order is kept.
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["job_id", "cost_cad", "deep", "response", "n"]);
        for bad in [
            &b"not json"[..],
            b"[1e400]",
            b"{\"a\":1e400",
            b"{\"a\":NaN}",
            b"[1]",
        ] {
            assert!(
                parse_object(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_submission_over_32_mib_is_too_large() {
        let mut r = submit_request();
        assert!(check_body_size(&r).is_ok());
        r.prompt.clear();
        let overhead = serde_json::to_vec(&r).unwrap().len();
        r.prompt = "x".repeat(MAX_REQUEST_BODY_BYTES as usize - overhead);
        assert_eq!(
            serde_json::to_vec(&r).unwrap().len() as u64,
            MAX_REQUEST_BODY_BYTES
        );
        assert!(check_body_size(&r).is_ok());
        r.prompt.push('x');
        let e = check_body_size(&r).unwrap_err();
        assert!(
            matches!(e, ClientError::TooLarge { bytes, limit }
                if bytes == MAX_REQUEST_BODY_BYTES + 1 && limit == MAX_REQUEST_BODY_BYTES),
            "{e:?}"
        );
        assert!(e.nothing_created());
        assert!(e.to_string().contains("over the limit of 32 MiB"), "{e}");
        // Escaping counts: a prompt of control characters grows sixfold.
        r.prompt = "\u{1}".repeat(6 * 1024 * 1024);
        assert!(check_body_size(&r).is_err());
    }
}
