//! Ledger entries from the done/ and failed/ records, the source of truth
//! (`ccl-delegate ledger rebuild`).

use std::fs;
use std::path::Path;

use crate::ledger::Entry;
use crate::queue::{self, Queue};
use crate::record::Record;

/// What one project's records gave.
#[derive(Debug, Default)]
pub struct Found {
    pub entries: Vec<Entry>,
    pub done: usize,
    pub failed: usize,
    /// Files in done/ or failed/ that are not records of ours.
    pub skipped: Vec<String>,
}

/// How many bytes of a record the frontmatter fits in.
const HEAD_BYTES: u64 = 64 * 1024;

/// The entries of one project's records.
pub fn from_records(dir: &Path) -> anyhow::Result<Found> {
    let q = Queue::at(dir);
    let project = crate::inflight::project_key(dir);
    let mut found = Found::default();
    for (sub, done) in [(&q.done, true), (&q.failed, false)] {
        let rd = match fs::read_dir(sub) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => anyhow::bail!("cannot list {}: {e}", sub.display()),
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| queue::is_task_name(n))
            .collect();
        names.sort();
        for name in names {
            let p = sub.join(&name);
            match entry_of(&p, &name, &project) {
                Some(e) => {
                    if done {
                        found.done += 1;
                    } else {
                        found.failed += 1;
                    }
                    found.entries.extend(e);
                }
                None => found.skipped.push(p.display().to_string()),
            }
        }
    }
    Ok(found)
}

fn read_head(p: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    f.take(HEAD_BYTES).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// `a.2.md` was written for task `a.md` when `done/a.md` existed.
fn task_of(file: &str) -> String {
    let stem = file.strip_suffix(".md").unwrap_or(file);
    match stem.rsplit_once('.') {
        Some((base, n)) if !base.is_empty() && n.parse::<u32>().is_ok_and(|n| n >= 2) => {
            format!("{base}.md")
        }
        _ => file.to_string(),
    }
}

fn entry_of(p: &Path, name: &str, project: &str) -> Option<Vec<Entry>> {
    let head = read_head(p)?;
    // The name in the record is exact; read the whole file for it only
    // when the file name may carry a `.N` of its own.
    let task = if task_of(name) != name {
        crate::queue::read_nofollow(p, crate::fsread::Kind::Record)
            .ok()
            .flatten()
            .and_then(|(bytes, _)| Record::parse(&bytes)?.task_name(&bytes))
            .unwrap_or_else(|| task_of(name))
    } else {
        name.to_string()
    };
    entries_from_record(project, &task, &head)
}

/// The entries of a record: one per earlier job of its failover chain
/// (`attempts`, under each one's provider, cost 0: an ended job reports
/// none), then the record's own. The earlier jobs are dated by the record's
/// end, the closest time it keeps (their ends lie between its
/// `delegated_at` and that).
pub fn entries_from_record(project: &str, task: &str, record: &[u8]) -> Option<Vec<Entry>> {
    let last = entry_from_record(project, task, record)?;
    let r = Record::parse_head(record)?;
    let mut out: Vec<Entry> = r
        .attempts
        .iter()
        .map(|a| Entry::of_attempt(a, project, task, &last.delegated_at, &last.finished_at))
        .collect();
    out.push(last);
    Some(out)
}

/// The ledger entry of a record (its frontmatter suffices): what `reap`
/// appends right after writing the record, and what a rebuild reads back.
/// `project` is the [`crate::inflight::project_key`] of its project.
pub fn entry_from_record(project: &str, task: &str, record: &[u8]) -> Option<Entry> {
    let r = Record::parse_head(record)?;
    let completed = r.status.as_deref() == Some("completed");
    let finished_at = if completed {
        r.completed_at.clone()
    } else {
        r.failed_at.clone()
    }?;
    let finished_at = crate::ledger::utc(&finished_at)?;
    Some(Entry {
        job_id: r.job_id.clone(),
        project: project.to_string(),
        task: task.to_string(),
        provider: r.provider.clone().unwrap_or_else(|| "unknown".into()),
        model: r.model.clone(),
        status: if completed {
            "completed".into()
        } else {
            r.failed_reason.clone().unwrap_or_else(|| "failed".into())
        },
        cost_cad: if completed {
            crate::ledger::sane_cost(r.cost_cad.unwrap_or(0.0))
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
    use crate::record::{self, Completed, Failure, Tokens};

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
        let e = super::entry_from_record("/p", "a.md", &done).unwrap();
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
        let f = Failure {
            provider: "gpu",
            reason: "expired",
            job_id: Some("j-2"),
            delegated_at: "2026-11-24T10:00:00Z",
            failed_at: "2026-11-24T10:30:00Z",
            details: b"late",
        };
        let failed = record::render_failed(&f, "b.md", Some(b"t"));
        let e = super::entry_from_record("/p", "b.md", &failed).unwrap();
        assert_eq!(
            (e.status.as_str(), e.cost_cad, e.job_id.as_deref()),
            ("expired", 0.0, Some("j-2"))
        );
        assert!(super::entry_from_record("/p", "c.md", b"not a record").is_none());
    }

    #[test]
    fn a_record_after_failover_gives_an_entry_per_job() {
        let a = |p: &str, j: &str, s: &str| crate::marker::Attempt {
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
        let got: Vec<_> = super::entries_from_record("/p", "a.md", &done)
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
    fn numbered_record_names_map_back_to_their_task() {
        for (file, task) in [
            ("a.md", "a.md"),
            ("a.2.md", "a.md"),
            ("a.17.md", "a.md"),
            ("v1.0.md", "v1.0.md"),
            ("x.1.md", "x.1.md"),
            (".2.md", ".2.md"),
        ] {
            assert_eq!(super::task_of(file), task, "{file}");
        }
    }
}
