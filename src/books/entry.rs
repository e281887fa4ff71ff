//! One ledger entry: a job that ended (policy.md "The ledger"), and how it
//! is read from a record, the source of truth.

use serde::{Deserialize, Serialize};

use crate::marker::Attempt;
use crate::policy::Provider;
use crate::record::Record;

/// One job that ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub job_id: Option<String>,
    /// The project directory, absolute ([`crate::names::project_key`]).
    pub project: String,
    /// `<id>.md`.
    pub task: String,
    /// The provider the job counts under: the service's answer when it
    /// names a provider the tool knows (canonical), else the requested one.
    pub provider: String,
    /// What the service said the provider was, when that is not the
    /// counted name as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub said_provider: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// `completed`, or a failed record's reason (`failed`, `cancelled`,
    /// `expired`, `not found`, `timeout`, `corrupt marker`, ...).
    pub status: String,
    /// 0 when unknown.
    #[serde(default)]
    pub cost_cad: f64,
    #[serde(default)]
    pub tokens_in: Option<u64>,
    #[serde(default)]
    pub tokens_out: Option<u64>,
    #[serde(default)]
    pub delegated_at: String,
    /// RFC 3339, UTC (`Z`): the windows are UTC days and months.
    pub finished_at: String,
    /// An earlier job of a failover chain (no record of its own: its
    /// task's record names it in `attempts`). Counted by `report` and the
    /// budgets like any job; `status` totals records, so it skips these.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub step: bool,
}

/// The provider a job counts under, and what the service said when that
/// differs: a known name (case and blanks ignored) counts as its canonical
/// self; an unknown one under the provider asked for (policy.md).
pub fn counted_provider(said: &str, requested: Option<&str>) -> (String, Option<String>) {
    let differs = |canon: &str| (said != canon && !said.is_empty()).then(|| clip(said));
    if let Some(p) = Provider::parse(said) {
        return (p.as_str().to_string(), differs(p.as_str()));
    }
    if let Some(p) = requested.and_then(Provider::parse) {
        return (p.as_str().to_string(), differs(p.as_str()));
    }
    let name = said.trim();
    if name.is_empty() {
        ("unknown".into(), None)
    } else {
        (clip(name), None)
    }
}

fn clip(s: &str) -> String {
    crate::text::clip(s, 80)
}

impl Entry {
    /// The entry of an earlier job of a failover chain: under its own
    /// provider, cost 0 (an ended job reports none), dated as the caller
    /// knows best.
    pub fn of_attempt(
        a: &Attempt,
        project: &str,
        task: &str,
        delegated_at: &str,
        finished_at: &str,
    ) -> Entry {
        let (provider, said_provider) = counted_provider(&a.provider, None);
        Entry {
            job_id: a.job_id.clone(),
            project: project.to_string(),
            task: task.to_string(),
            provider,
            said_provider,
            model: None,
            status: a.status.clone(),
            cost_cad: 0.0,
            tokens_in: None,
            tokens_out: None,
            delegated_at: delegated_at.to_string(),
            finished_at: utc(finished_at).unwrap_or_else(|| finished_at.to_string()),
            step: true,
        }
    }

    pub fn is_completed(&self) -> bool {
        self.status == "completed"
    }

    /// Seconds from delegation to the end, for a completed job.
    pub fn turnaround(&self) -> Option<i64> {
        if !self.is_completed() {
            return None;
        }
        let from = crate::timestamp::parse(&self.delegated_at)?;
        let to = crate::timestamp::parse(&self.finished_at)?;
        Some(to.duration_since(from).unwrap_or_default().as_secs() as i64)
    }
}

/// A cost that is not a finite number in [0, 1 000 000) counts as unknown (0),
/// as for records.
pub fn sane_cost(c: f64) -> f64 {
    if c.is_finite() && (0.0..1_000_000.0).contains(&c) {
        c
    } else {
        0.0
    }
}

/// A time as `YYYY-MM-DDTHH:MM:SSZ`, so that days and months are its first
/// 10 and 7 bytes and times compare as strings.
pub fn utc(t: &str) -> Option<String> {
    // The fast path takes only exactly that shape, digit for digit: a
    // string from a record or a hostile file may hold anything.
    const SHAPE: &[u8; 20] = b"dddd-dd-ddTdd:dd:ddZ";
    let b = t.as_bytes();
    if b.len() == 20
        && b.iter().zip(SHAPE).all(|(&c, &want)| {
            if want == b'd' {
                c.is_ascii_digit()
            } else {
                c == want
            }
        })
    {
        return Some(t.to_string());
    }
    crate::timestamp::parse(t).map(crate::timestamp::format)
}

/// The entries of a record: one per earlier job of its failover chain
/// (`attempts`, under each one's provider, cost 0: an ended job reports
/// none), then the record's own when it names a job or ended without one
/// for a reason of its own. A chain a budget ended after a deferred step
/// made no job of its last provider: that step is no entry (only jobs the
/// service made are jobs). The earlier jobs are dated by the record's end,
/// the closest time it keeps.
///
/// `requested`: the provider the last job was asked for, when known (a
/// rebuild does not know it: the record keeps the service's answer).
pub fn entries_from_record(
    project: &str,
    task: &str,
    record: &[u8],
    requested: Option<&str>,
) -> Option<Vec<Entry>> {
    let last = entry_from_record(project, task, record, requested)?;
    let r = Record::parse_head(record)?;
    let mut out: Vec<Entry> = r
        .attempts
        .iter()
        .map(|a| Entry::of_attempt(a, project, task, &last.delegated_at, &last.finished_at))
        .collect();
    let never_a_job = last.job_id.is_none() && last.status == "budget" && !r.attempts.is_empty();
    if never_a_job {
        // The record stands for the last job that ran: its entry is the
        // record's own, so `status` (which totals records) and `report`
        // count the same job.
        if let Some(e) = out.last_mut() {
            e.step = false;
        }
    } else {
        out.push(last);
    }
    Some(out)
}

/// The ledger entry of a record's own job (its frontmatter suffices).
/// `project` is the [`crate::names::project_key`] of its project.
pub fn entry_from_record(
    project: &str,
    task: &str,
    record: &[u8],
    requested: Option<&str>,
) -> Option<Entry> {
    let r = Record::parse_head(record)?;
    let completed = r.status.as_deref() == Some("completed");
    let finished_at = if completed {
        r.completed_at.clone()
    } else {
        r.failed_at.clone()
    }?;
    let finished_at = utc(&finished_at)?;
    let said = r.provider.clone().unwrap_or_default();
    let (provider, said_provider) = counted_provider(&said, requested);
    Some(Entry {
        job_id: r.job_id.clone(),
        project: project.to_string(),
        task: task.to_string(),
        provider,
        said_provider,
        model: r.model.clone(),
        status: if completed {
            "completed".into()
        } else {
            r.failed_reason.clone().unwrap_or_else(|| "failed".into())
        },
        cost_cad: if completed {
            sane_cost(r.cost_cad.unwrap_or(0.0))
        } else {
            0.0
        },
        tokens_in: r.tokens_in,
        tokens_out: r.tokens_out,
        delegated_at: r.delegated_at.clone().unwrap_or_default(),
        finished_at,
        step: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{self, Completed, Failure, Tokens};

    #[test]
    fn providers_count_under_their_canonical_name() {
        let rows = [
            ("claude", Some("gemini"), "claude", None),
            ("Claude", None, "claude", Some("Claude")),
            (" GPU ", Some("claude"), "gpu", Some(" GPU ")),
            (
                "anthropic-opus",
                Some("claude"),
                "claude",
                Some("anthropic-opus"),
            ),
            ("anthropic-opus", None, "anthropic-opus", None),
            ("", Some("gemini"), "gemini", None),
            ("", None, "unknown", None),
        ];
        for (said, req, want, kept) in rows {
            let (p, s) = counted_provider(said, req);
            assert_eq!((p.as_str(), s.as_deref()), (want, kept), "{said:?}");
        }
    }

    #[test]
    fn records_give_their_entries() {
        let c = Completed {
            provider: "claude",
            model: "opus",
            cost_cad: 0.25,
            job_id: "j-1",
            delegated_at: "2026-11-24T10:00:00Z",
            completed_at: "2026-11-24T11:00:00+01:00",
            response: "r",
        };
        let t = Tokens {
            tokens_in: Some(3),
            tokens_out: Some(4),
        };
        let done = record::render_done_with_tokens(&c, t, "a.md", Some(b"task"));
        let e = entry_from_record("/p", "a.md", &done, None).unwrap();
        assert_eq!(
            (
                e.status.as_str(),
                e.cost_cad,
                e.tokens_in,
                e.finished_at.as_str()
            ),
            ("completed", 0.25, Some(3), "2026-11-24T10:00:00Z")
        );
        assert_eq!(e.model.as_deref(), Some("opus"));
        assert_eq!(e.turnaround(), Some(0));
        let f = Failure {
            provider: "gpu",
            reason: "expired",
            job_id: Some("j-2"),
            delegated_at: "2026-11-24T10:00:00Z",
            failed_at: "2026-11-24T10:30:00Z",
            details: b"late",
        };
        let failed = record::render_failed(&f, "b.md", Some(b"t"));
        let e = entry_from_record("/p", "b.md", &failed, None).unwrap();
        assert_eq!(
            (e.status.as_str(), e.cost_cad, e.job_id.as_deref()),
            ("expired", 0.0, Some("j-2"))
        );
        assert!(entry_from_record("/p", "c.md", b"not a record", None).is_none());
    }

    #[test]
    fn a_record_after_failover_gives_an_entry_per_job() {
        let a = |p: &str, j: &str, s: &str| Attempt {
            provider: p.into(),
            job_id: Some(j.into()),
            status: s.into(),
            error: Some("x\nstatus: completed".into()),
        };
        let attempts = [a("gemini", "j-1", "failed"), a("claude", "j-2", "expired")];
        let c = Completed {
            provider: "gpu",
            model: "m",
            cost_cad: 0.5,
            job_id: "j-3",
            delegated_at: "2026-11-24T10:00:00Z",
            completed_at: "2026-11-24T10:09:00Z",
            response: "r",
        };
        let done = record::render_done_after(&c, Tokens::default(), &attempts, "a.md", Some(b"t"));
        let got: Vec<_> = entries_from_record("/p", "a.md", &done, None)
            .unwrap()
            .into_iter()
            .map(|e| (e.job_id.unwrap(), e.provider, e.status, e.cost_cad))
            .collect();
        let want = |j: &str, p: &str, s: &str, c| (j.to_string(), p.to_string(), s.to_string(), c);
        assert_eq!(
            got,
            vec![
                want("j-1", "gemini", "failed", 0.0),
                want("j-2", "claude", "expired", 0.0),
                want("j-3", "gpu", "completed", 0.5)
            ]
        );
    }

    #[test]
    fn times_of_any_bytes_never_panic_and_only_real_ones_count() {
        for ok in ["2026-11-24T10:00:00Z", "2026-11-24T11:00:00+01:00"] {
            assert_eq!(utc(ok).as_deref(), Some("2026-11-24T10:00:00Z"), "{ok}");
        }
        for bad in ["2026-1\u{e9}24T10:00:00Z", "2026-xx-24T10:00:00Z", "", "Z"] {
            assert_eq!(utc(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_costs_count_as_zero() {
        for (c, want) in [(0.5, 0.5), (-1.0, 0.0), (f64::NAN, 0.0), (2e6, 0.0)] {
            assert_eq!(sane_cost(c), want);
        }
    }
}
