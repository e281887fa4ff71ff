//! The files in done/ and failed/: written for a person and a program alike,
//! with the original task recoverable byte for byte as the file's last
//! `task_bytes` bytes.
//!
//! The frontmatter is produced by serde_yaml from a struct, never by string
//! formatting, so text from the server is data: it cannot add a key.

use serde::{Deserialize, Serialize};

use crate::marker::Attempt;

/// What a finished job brought back.
pub struct Completed<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub cost_cad: f64,
    pub job_id: &'a str,
    pub delegated_at: &'a str,
    pub completed_at: &'a str,
    pub response: &'a str,
}

/// The tokens a job used, when the service said.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokens {
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
}

/// Why a delegation failed.
pub struct Failure<'a> {
    pub provider: &'a str,
    pub reason: &'a str,
    pub job_id: Option<&'a str>,
    pub delegated_at: &'a str,
    pub failed_at: &'a str,
    /// What went wrong, for a person.
    pub details: &'a [u8],
}

#[derive(Serialize)]
struct DoneHead<'a> {
    status: &'static str,
    provider: &'a str,
    model: &'a str,
    cost_cad: f64,
    job_id: &'a str,
    delegated_at: &'a str,
    completed_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_out: Option<u64>,
    /// The earlier jobs of a failover chain, one mapping each.
    #[serde(skip_serializing_if = "<[Attempt]>::is_empty")]
    attempts: &'a [Attempt],
    task_bytes: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    task_missing: bool,
}

#[derive(Serialize)]
struct FailedHead<'a> {
    status: &'static str,
    provider: &'a str,
    failed_reason: &'a str,
    job_id: Option<&'a str>,
    delegated_at: &'a str,
    failed_at: &'a str,
    /// The earlier jobs of a failover chain, one mapping each.
    #[serde(skip_serializing_if = "<[Attempt]>::is_empty")]
    attempts: &'a [Attempt],
    task_bytes: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    task_missing: bool,
}

fn frontmatter(out: &mut Vec<u8>, head: &impl Serialize) {
    out.extend_from_slice(b"---\n");
    let yaml = serde_yaml::to_string(head).expect("record frontmatter always serializes");
    out.extend_from_slice(yaml.as_bytes());
    out.extend_from_slice(b"---\n");
}

fn line_end(out: &mut Vec<u8>) {
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
}

fn original(out: &mut Vec<u8>, task_name: &str, task: Option<&[u8]>) {
    out.extend_from_slice(format!("## Original task ({task_name})\n").as_bytes());
    if let Some(t) = task {
        out.extend_from_slice(t);
    }
}

/// `done/<id>.md`. `task` is `None` when the task had vanished.
#[cfg(test)]
pub fn render_done(c: &Completed, task_name: &str, task: Option<&[u8]>) -> Vec<u8> {
    render_done_with_tokens(c, Tokens::default(), task_name, task)
}

/// `done/<id>.md` with the tokens the service reported.
#[cfg(test)]
pub fn render_done_with_tokens(
    c: &Completed,
    tokens: Tokens,
    task_name: &str,
    task: Option<&[u8]>,
) -> Vec<u8> {
    render_done_after(c, tokens, &[], task_name, task)
}

/// `done/<id>.md` reached after a failover: `attempts` are the earlier
/// jobs of the chain.
pub fn render_done_after(
    c: &Completed,
    tokens: Tokens,
    attempts: &[Attempt],
    task_name: &str,
    task: Option<&[u8]>,
) -> Vec<u8> {
    let head = DoneHead {
        attempts,
        status: "completed",
        provider: c.provider,
        model: c.model,
        cost_cad: c.cost_cad,
        job_id: c.job_id,
        delegated_at: c.delegated_at,
        completed_at: c.completed_at,
        tokens_in: tokens.tokens_in,
        tokens_out: tokens.tokens_out,
        task_bytes: task.map_or(0, <[u8]>::len),
        task_missing: task.is_none(),
    };
    let mut out = Vec::with_capacity(512 + c.response.len() + head.task_bytes);
    frontmatter(&mut out, &head);
    out.extend_from_slice(b"# Result (delegated to secutools)\n");
    out.extend_from_slice(c.response.as_bytes());
    line_end(&mut out);
    out.extend_from_slice(b"---\n");
    out.extend_from_slice(
        format!(
            "provider: {}, cost_cad: {:.4}\n",
            one_line(c.provider),
            c.cost_cad
        )
        .as_bytes(),
    );
    original(&mut out, task_name, task);
    out
}

/// `failed/<id>.md`.
#[cfg(test)]
pub fn render_failed(f: &Failure, task_name: &str, task: Option<&[u8]>) -> Vec<u8> {
    render_failed_after(f, &[], task_name, task)
}

/// `failed/<id>.md` reached after a failover.
pub fn render_failed_after(
    f: &Failure,
    attempts: &[Attempt],
    task_name: &str,
    task: Option<&[u8]>,
) -> Vec<u8> {
    let head = FailedHead {
        attempts,
        status: "failed",
        provider: f.provider,
        failed_reason: f.reason,
        job_id: f.job_id,
        delegated_at: f.delegated_at,
        failed_at: f.failed_at,
        task_bytes: task.map_or(0, <[u8]>::len),
        task_missing: task.is_none(),
    };
    let mut out = Vec::with_capacity(512 + f.details.len() + head.task_bytes);
    frontmatter(&mut out, &head);
    out.extend_from_slice(b"# Delegation failed\n");
    out.extend_from_slice(f.details);
    line_end(&mut out);
    out.extend_from_slice(b"---\n");
    original(&mut out, task_name, task);
    out
}

fn one_line(s: &str) -> String {
    crate::text::clip(s, 200)
}

/// The frontmatter of a done/failed file, as read back.
#[derive(Debug, Default, Deserialize)]
pub struct Record {
    pub status: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub cost_cad: Option<f64>,
    pub job_id: Option<String>,
    pub failed_reason: Option<String>,
    pub delegated_at: Option<String>,
    pub completed_at: Option<String>,
    pub failed_at: Option<String>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    #[serde(default)]
    pub task_bytes: usize,
    #[serde(default)]
    pub task_missing: bool,
    /// The earlier jobs of a failover chain.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

impl Record {
    /// Reads a whole record; `None` when it is not one of ours.
    pub fn parse(bytes: &[u8]) -> Option<Record> {
        Record::parse_head(bytes).filter(|r| r.task_bytes <= bytes.len())
    }

    /// Reads the frontmatter at the start of a record (the rest of the file
    /// may be cut off); `None` when it is not one of ours.
    pub fn parse_head(bytes: &[u8]) -> Option<Record> {
        // Only the frontmatter must be UTF-8: the details and the original
        // task that follow it may be any bytes (or cut mid-character), so
        // split the valid prefix.
        let text = match std::str::from_utf8(bytes) {
            Ok(_) => bytes,
            Err(e) => &bytes[..e.valid_up_to()],
        };
        let split = crate::frontmatter::split(text);
        if split.head.is_empty() {
            return None;
        }
        let yaml = std::str::from_utf8(split.head).ok()?;
        // Through the guard: a crafted record must not make `status` or
        // `reap` slow.
        let r: Record = crate::frontmatter::from_yaml(yaml_block(yaml)?).ok()?;
        r.status.is_some().then_some(r)
    }

    /// The original task: the file's last `task_bytes` bytes.
    pub fn original<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[bytes.len().saturating_sub(self.task_bytes)..]
    }

    /// The task's file name, from the `## Original task (<name>)` line that
    /// precedes the original bytes.
    pub fn task_name(&self, bytes: &[u8]) -> Option<String> {
        let before = &bytes[..bytes.len().saturating_sub(self.task_bytes)];
        let before = before.strip_suffix(b"\n")?;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = std::str::from_utf8(&before[line_start..]).ok()?;
        let name = line.strip_prefix("## Original task (")?.strip_suffix(')')?;
        crate::names::is_task_name(name).then(|| name.to_string())
    }
}

/// The YAML between the opening and closing lines of a frontmatter head.
fn yaml_block(head: &str) -> Option<&str> {
    let head = head.strip_prefix('\u{feff}').unwrap_or(head);
    let after_open = &head[head.find('\n')? + 1..];
    let body = after_open.trim_end_matches(['\r', '\n']);
    let close = body.rfind('\n').map_or(0, |i| i + 1);
    Some(&after_open[..close])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_file_has_the_design_layout_and_gives_back_the_task() {
        let task = b"---\nallow_delegation: true\n---\nDo it.\r\nno newline";
        let c = Completed {
            provider: "gemini",
            model: "gemini-2.5-pro",
            cost_cad: 0.0123,
            job_id: "j-123",
            delegated_at: "2026-11-24T10:00:00Z",
            completed_at: "2026-11-24T10:03:10Z",
            response: "The answer.",
        };
        let out = render_done(&c, "a.md", Some(task));
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with(
            "---\nstatus: completed\nprovider: gemini\nmodel: gemini-2.5-pro\ncost_cad: 0.0123\njob_id: j-123\n"
        ), "{text}");
        assert!(text.contains("task_bytes: 49\n---\n# Result (delegated to secutools)\nThe answer.\n---\nprovider: gemini, cost_cad: 0.0123\n## Original task (a.md)\n"), "{text}");
        let r = Record::parse(&out).unwrap();
        assert_eq!(r.original(&out), task);
        assert_eq!(r.job_id.as_deref(), Some("j-123"));
        assert_eq!(r.task_name(&out).as_deref(), Some("a.md"));
    }

    #[test]
    fn tokens_are_written_when_the_service_gave_them() {
        let c = Completed {
            provider: "claude",
            model: "m",
            cost_cad: 0.5,
            job_id: "j-9",
            delegated_at: "2026-11-24T10:00:00Z",
            completed_at: "2026-11-24T10:00:05Z",
            response: "r",
        };
        let t = Tokens {
            tokens_in: Some(120),
            tokens_out: Some(45),
        };
        let out = render_done_with_tokens(&c, t, "a.md", Some(b"x"));
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains("completed_at: 2026-11-24T10:00:05Z\ntokens_in: 120\ntokens_out: 45\ntask_bytes: 1\n"),
            "{text}"
        );
        let r = Record::parse(&out).unwrap();
        assert_eq!((r.tokens_in, r.tokens_out), (Some(120), Some(45)));
        let plain = render_done(&c, "a.md", Some(b"x"));
        assert!(!String::from_utf8(plain).unwrap().contains("tokens"));
    }

    #[test]
    fn a_task_that_is_not_utf8_is_read_back() {
        // The record is found again (a killed run's trace is recognised),
        // whatever bytes follow its frontmatter.
        let task = b"bad \xff byte\n";
        let f = Failure {
            provider: "gpu",
            reason: "corrupt marker",
            job_id: None,
            delegated_at: "2026-11-24T10:00:00Z",
            failed_at: "2026-11-24T10:00:00Z",
            details: b"marker bytes: \xfe\n",
        };
        let out = render_failed(&f, "b.md", Some(task));
        let r = Record::parse(&out).expect("parsed despite the non-UTF-8 tail");
        assert_eq!(r.original(&out), task);
        assert_eq!(r.failed_reason.as_deref(), Some("corrupt marker"));
        assert_eq!(r.task_name(&out).as_deref(), Some("b.md"));
    }

    #[test]
    fn hostile_server_strings_cannot_add_keys() {
        let evil = "x\n---\nstatus: completed\ninjected: true\n...\n";
        let c = Completed {
            provider: evil,
            model: "m\r\ninjected: 1",
            cost_cad: 1.0,
            job_id: "j-1",
            delegated_at: "2026-11-24T10:00:00Z",
            completed_at: "2026-11-24T10:00:00Z",
            response: evil,
        };
        let out = render_done(&c, "a.md", Some(b"t"));
        let split = crate::frontmatter::split(&out);
        let yaml = yaml_block(std::str::from_utf8(split.head).unwrap()).unwrap();
        let map: serde_yaml::Mapping = serde_yaml::from_str(yaml).unwrap();
        let keys: Vec<_> = map
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "status",
                "provider",
                "model",
                "cost_cad",
                "job_id",
                "delegated_at",
                "completed_at",
                "task_bytes"
            ]
        );
        assert_eq!(map["provider"].as_str(), Some(evil));
        assert_eq!(Record::parse(&out).unwrap().original(&out), b"t");
    }
}
