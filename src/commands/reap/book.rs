//! What `reap` keeps under the state directory: each finished job's ledger
//! entry (written after its record is durable, before its task goes) and
//! the in-flight index, recounted from each project's markers.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::config::Settings;
use crate::inflight::{Counts, project_key};
use crate::ledger::{self, Entry};
use crate::marker::{Marker, State};
use crate::policy::admission::Admission;
use crate::queue::Queue;

/// How an append that failed is taken.
#[derive(Debug, PartialEq)]
pub(super) enum Failed {
    /// The ledger is damaged (not a regular file): a warning, and the
    /// tasks still go; `ledger rebuild` makes it whole from the records.
    Damaged(String),
    /// The write failed (ENOSPC, EIO, the lock held too long): the tasks
    /// and markers stay, so the next run finds the records and counts each
    /// job once (`record_once`).
    Retry(String),
}

/// Which of the two a failure is: only a ledger path that holds something
/// other than a regular file is "damaged"; anything else may pass.
pub(super) fn classify(ledger_is_odd: bool, e: &anyhow::Error) -> Failed {
    if ledger_is_odd {
        Failed::Damaged(format!("{e:#}"))
    } else {
        Failed::Retry(format!(
            "{e:#}; the task stays and the next reap writes its ledger entry"
        ))
    }
}

pub(super) fn ledger_is_odd(state_dir: &Path) -> bool {
    std::fs::symlink_metadata(ledger::path(state_dir)).is_ok_and(|m| !m.is_file())
}

/// The entry of a record, as `ledger rebuild` would read it back.
pub(super) fn entry(q: &Queue, task: &OsStr, record: &[u8]) -> Option<Entry> {
    crate::ledger::rebuild::entry_from_record(
        &project_key(&q.project),
        &task.to_string_lossy(),
        record,
    )
}

/// Appends `new` (records this run wrote) and, once each, `recovered`
/// (records an interrupted run wrote), under the admission lock.
pub(super) fn write(settings: &Settings, new: &[Entry], recovered: &[Entry]) -> Result<(), Failed> {
    if new.is_empty() && recovered.is_empty() {
        return Ok(());
    }
    let dir = &settings.state_dir;
    let r = (|| {
        #[cfg(feature = "failpoints")]
        crate::failpoint::hit("ledger")
            .map_err(|e| anyhow::anyhow!("cannot append to the ledger: {e}"))?;
        let adm = Admission::lock(dir, settings.lock_timeout)?;
        ledger::append(&adm, new)?;
        ledger::record_once(&adm, recovered)?;
        anyhow::Ok(())
    })();
    r.map_err(|e| classify(ledger_is_odd(dir), &e))
}

/// The markers pending or submitted in a project, per provider (a corrupt
/// marker counts nothing: the reap moves it to failed/).
fn count_markers(q: &Queue) -> std::io::Result<Counts> {
    let mut counts = Counts::new();
    for task in q.marked_tasks()? {
        let Ok(Some(bytes)) = q.read_marker(&task) else {
            continue;
        };
        if let Ok(m) = Marker::parse(&bytes)
            && matches!(m.state, State::Pending | State::Submitted)
        {
            *counts.entry(m.provider).or_default() += 1;
        }
    }
    Ok(counts)
}

/// Recounts the in-flight index of the projects this run went through
/// (with whether it saw markers there) from their markers, once the run
/// is done, in one rewrite under the admission lock. No queue lock: the
/// `+1`s submits appended since `since` are applied again on top
/// ([`Admission::reconcile_all`]), so a job is never counted zero times.
/// A marker deleted by hand stops counting here.
pub(super) fn reconcile(
    settings: &Settings,
    since: u64,
    projects: &[(PathBuf, bool)],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut counted = Vec::with_capacity(projects.len());
    for (dir, had_markers) in projects {
        let q = Queue::at(dir);
        let counts = if *had_markers {
            count_markers(&q)
        } else {
            Ok(Counts::new())
        };
        match counts {
            Ok(c) => counted.push((q.project, c)),
            Err(e) => problems.push(format!(
                "cannot recount the jobs in flight of {}: {e}; the next reap tries again",
                crate::queue::shown(dir)
            )),
        }
    }
    // Nothing in flight and no index: nothing to write (a reap of queues
    // without markers stays a few stats).
    let no_index = crate::inflight::InFlight::len_now(&settings.state_dir) == 0;
    if no_index && counted.iter().all(|(_, c)| c.is_empty()) {
        return problems;
    }
    // The other projects the index names (a project a submit delegated
    // from that this reap does not go through): recounted too, so that a
    // marker deleted by hand stops counting wherever it was, and a project
    // that is gone counts nothing.
    let reaped: std::collections::HashSet<String> =
        counted.iter().map(|(p, _)| project_key(p)).collect();
    let index = crate::inflight::InFlight::load(&settings.state_dir, &mut Vec::new());
    for key in index.projects.keys().filter(|k| !reaped.contains(*k)) {
        let q = Queue::at(Path::new(key));
        let counts = if q.inbox.is_dir() {
            count_markers(&q)
        } else {
            Ok(Counts::new())
        };
        match counts {
            Ok(c) => counted.push((q.project, c)),
            Err(e) => problems.push(format!(
                "cannot recount the jobs in flight of {}: {e}; the next reap tries again",
                crate::queue::shown(Path::new(key))
            )),
        }
    }
    if counted.is_empty() {
        return problems;
    }
    let r = Admission::lock(&settings.state_dir, settings.lock_timeout).and_then(|adm| {
        adm.reconcile_all(counted.iter().map(|(p, c)| (p.as_path(), c.clone())), since)
    });
    if let Err(e) = r {
        problems.push(format!(
            "cannot recount the jobs in flight: {e:#}; the next reap tries again"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ledger_that_is_not_a_file_lets_the_tasks_go() {
        let e = anyhow::anyhow!("cannot append to the ledger /s/ledger.jsonl: No space left");
        let table = [(true, true), (false, false)];
        for (odd, damaged) in table {
            let got = classify(odd, &e);
            assert_eq!(matches!(got, Failed::Damaged(_)), damaged, "{odd}");
            let (Failed::Damaged(m) | Failed::Retry(m)) = got;
            assert!(m.contains("ledger.jsonl"), "{m}");
        }
    }
}
