//! The marker file `inbox/<id>.md.delegated`: its JSON, in this tool's
//! format and in the earlier Go implementation's.
//!
//! A marker is data from disk and may be anything: parsing never panics, and
//! paths inside it are kept only for display. The task a marker governs is
//! always the marker's own path minus `.delegated`.

use serde::{Deserialize, Serialize};

pub const SUFFIX: &str = ".delegated";

/// A marker's clock may run this far ahead of ours; beyond it, `reap`
/// resets `started_at` to now, or no age rule would ever apply.
pub const FUTURE_SLACK: std::time::Duration = std::time::Duration::from_secs(5 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Written before the POST; the job id is not known yet.
    Pending,
    /// The service accepted the job; `job_id` is set.
    Submitted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub version: u32,
    pub state: State,
    pub project: String,
    pub task_file: String,
    pub job_id: Option<String>,
    pub provider: String,
    pub priority: String,
    pub idempotency_key: String,
    pub started_at: String,
    pub poll_errors: u64,
    pub last_error: Option<String>,
    /// The earlier jobs of a failover chain (policy.md), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// The providers left to fail over to, in order: fixed at submit, so a
    /// config change later does not alter a job in flight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    /// A failover step a limit deferred: this pending marker was never
    /// sent, so admission is checked again before it is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
    /// When the current job of a chain was first sent (`started_at` stays
    /// the first submission's): the service's 404 lag counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
}

/// One earlier job of a failover chain, as the marker and records keep it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    pub provider: String,
    pub job_id: Option<String>,
    pub status: String,
    pub error: Option<String>,
}

/// Every field optional: what we accept from disk, either format.
#[derive(Deserialize)]
struct Loose {
    version: Option<u32>,
    state: Option<String>,
    project: Option<String>,
    task_file: Option<String>,
    job_id: Option<String>,
    provider: Option<String>,
    priority: Option<String>,
    idempotency_key: Option<String>,
    started_at: Option<String>,
    poll_errors: Option<u64>,
    last_error: Option<String>,
    attempts: Option<serde_json::Value>,
    fallback: Option<serde_json::Value>,
    deferred: Option<bool>,
    sent_at: Option<String>,
}

impl Marker {
    /// Parses a marker's bytes. `Err` names what is wrong, for the
    /// `corrupt marker` reason.
    pub fn parse(bytes: &[u8]) -> Result<Marker, String> {
        let l: Loose =
            serde_json::from_slice(bytes).map_err(|e| format!("not marker JSON: {e}"))?;
        let job_id = l.job_id.filter(|j| !j.is_empty());
        if let Some(j) = &job_id
            && !crate::names::valid_job_id(j)
        {
            return Err(format!(
                "job_id {:?} is not a valid job id",
                crate::text::clip(j, 80)
            ));
        }
        let state = match (l.version, l.state.as_deref()) {
            // The Go implementation wrote no version and no state: its
            // markers always carry a job id.
            (None, None) => State::Submitted,
            (_, Some("pending")) => State::Pending,
            (_, Some("submitted")) => State::Submitted,
            (_, Some(other)) => {
                return Err(format!("unknown state {:?}", crate::text::clip(other, 40)));
            }
            (Some(_), None) => return Err("no state".into()),
        };
        if let Some(v) = l.version
            && v != 1
        {
            return Err(format!("unknown marker version {v}"));
        }
        if state == State::Submitted && job_id.is_none() {
            return Err("submitted marker without a job_id".into());
        }
        let key = l.idempotency_key.unwrap_or_default();
        if state == State::Pending && !crate::names::valid_idempotency_key(&key) {
            return Err("pending marker without a valid idempotency_key".into());
        }
        let started_at = l.started_at.unwrap_or_default();
        if crate::timestamp::parse(&started_at).is_none() {
            return Err(format!(
                "started_at {:?} is not an RFC 3339 time",
                crate::text::clip(&started_at, 40)
            ));
        }
        let attempts = match l.attempts {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => parse_attempts(v)?,
        };
        let fallback = match l.fallback {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => parse_chain(v)?,
        };
        let sent_at = l.sent_at.filter(|t| crate::timestamp::parse(t).is_some());
        Ok(Marker {
            version: 1,
            state,
            project: l.project.unwrap_or_default(),
            task_file: l.task_file.unwrap_or_default(),
            job_id,
            provider: l.provider.unwrap_or_else(|| "auto".into()),
            priority: l.priority.unwrap_or_else(|| "normal".into()),
            idempotency_key: key,
            started_at,
            poll_errors: l.poll_errors.unwrap_or(0),
            last_error: l.last_error,
            attempts,
            fallback,
            deferred: l.deferred.unwrap_or(false),
            sent_at,
        })
    }

    /// The marker a submit writes before its POST: pending, no job id yet,
    /// started now.
    pub fn pending(
        project: String,
        task_file: String,
        provider: crate::provider::Provider,
        priority: String,
        idempotency_key: String,
        fallback: Vec<String>,
    ) -> Marker {
        Marker {
            version: 1,
            state: State::Pending,
            project,
            task_file,
            job_id: None,
            provider: provider.as_str().to_string(),
            priority,
            idempotency_key,
            started_at: crate::timestamp::now(),
            poll_errors: 0,
            last_error: None,
            attempts: Vec::new(),
            fallback,
            deferred: false,
            sent_at: None,
        }
    }

    /// The attempt in flight and the most the chain can take (`2/3`).
    pub fn attempt_of(&self) -> (usize, usize) {
        let n = self.attempts.len() + 1;
        (n, n + self.fallback.len())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a marker always serializes");
        v.push(b'\n');
        v
    }

    /// `started_at` lies more than [`FUTURE_SLACK`] ahead of now.
    pub fn started_in_future(&self) -> bool {
        self.started()
            .duration_since(std::time::SystemTime::now())
            .is_ok_and(|ahead| ahead > FUTURE_SLACK)
    }

    pub fn started(&self) -> std::time::SystemTime {
        crate::timestamp::parse(&self.started_at).unwrap_or(std::time::UNIX_EPOCH)
    }
}

/// A marker's `attempts`: a list of mappings of exactly the four keys,
/// strings (the job id and error may be null). Anything else makes the
/// marker corrupt: a history that cannot be trusted is not acted on.
fn parse_attempts(v: serde_json::Value) -> Result<Vec<Attempt>, String> {
    let list: Vec<Attempt> = serde_json::from_value(v)
        .map_err(|e| format!("attempts is not a list of earlier jobs: {e}"))?;
    if list.len() > 64 {
        return Err(format!("attempts holds {} jobs, more than 64", list.len()));
    }
    for a in &list {
        if let Some(j) = &a.job_id
            && !crate::names::valid_job_id(j)
        {
            return Err(format!(
                "attempts: job_id {:?} is not a valid job id",
                crate::text::clip(j, 80)
            ));
        }
    }
    Ok(list)
}

/// A marker's `fallback`: a list of at most 4 known providers.
fn parse_chain(v: serde_json::Value) -> Result<Vec<String>, String> {
    let bad = || "fallback is not a list of at most 4 providers".to_string();
    let list: Vec<String> = serde_json::from_value(v).map_err(|_| bad())?;
    if list.len() > crate::policy::MAX_CHAIN
        || list
            .iter()
            .any(|p| crate::provider::Provider::parse(p).is_none_or(|q| q.as_str() != p))
    {
        return Err(bad());
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_markers_as_submitted() {
        let go = br#"{"project":"/home/u/p","task_file":"/home/u/p/.agent-queue/inbox/a.md",
            "job_id":"j-9","provider":"gemini","started_at":"2026-11-24T10:00:00.123-05:00"}"#;
        let m = Marker::parse(go).unwrap();
        assert_eq!(m.state, State::Submitted);
        assert_eq!(m.job_id.as_deref(), Some("j-9"));
        assert_eq!(m.provider, "gemini");
    }

    #[test]
    fn round_trips_and_refuses_broken_markers() {
        let m = Marker {
            version: 1,
            state: State::Pending,
            project: "p".into(),
            task_file: "a.md".into(),
            job_id: None,
            provider: "gpu".into(),
            priority: "high".into(),
            idempotency_key: "ccl-0123456789abcdef".into(),
            started_at: "2026-11-24T10:00:00Z".into(),
            poll_errors: 0,
            last_error: None,
            attempts: Vec::new(),
            fallback: Vec::new(),
            deferred: false,
            sent_at: None,
        };
        assert_eq!(Marker::parse(&m.to_bytes()).unwrap(), m);
        // Without a chain the bytes are those of a marker from before
        // failover existed.
        assert!(!String::from_utf8_lossy(&m.to_bytes()).contains("attempts"));
        let chained = Marker {
            attempts: vec![Attempt {
                provider: "gemini".into(),
                job_id: Some("j-1".into()),
                status: "failed".into(),
                error: Some("model overloaded\n---\nx: 1".into()),
            }],
            fallback: vec!["claude".into()],
            deferred: true,
            sent_at: Some("2026-11-24T10:05:00Z".into()),
            ..m.clone()
        };
        assert_eq!(Marker::parse(&chained.to_bytes()).unwrap(), chained);
        assert_eq!(chained.attempt_of(), (2, 3));
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            br#"{"version":1,"state":"submitted","started_at":"2026-11-24T10:00:00Z"}"#,
            br#"{"version":1,"state":"pending","started_at":"2026-11-24T10:00:00Z"}"#,
            br#"{"job_id":"../../x","started_at":"2026-11-24T10:00:00Z"}"#,
            br#"{"job_id":"j-1","started_at":"soon"}"#,
            b"\xff\xfe",
            br#"{"job_id":"j-1","started_at":"2026-11-24T10:00:00Z","attempts":{"a":1}}"#,
            br#"{"job_id":"j-1","started_at":"2026-11-24T10:00:00Z","attempts":[{"provider":"gpu"}]}"#,
            br#"{"job_id":"j-1","started_at":"2026-11-24T10:00:00Z","attempts":[{"provider":"gpu","job_id":"j","status":"failed","error":null,"x":1}]}"#,
            br#"{"job_id":"j-1","started_at":"2026-11-24T10:00:00Z","attempts":"gemini"}"#,
            br#"{"job_id":"j-1","started_at":"2026-11-24T10:00:00Z","fallback":["openai"]}"#,
            br#"{"job_id":"j-1","started_at":"2026-11-24T10:00:00Z","fallback":"claude"}"#,
        ] {
            assert!(
                Marker::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
