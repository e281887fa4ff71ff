//! What `reap` keeps in the books: each finished job's ledger entry,
//! booked with the release of its reservation once its record is durable
//! and before its task goes; entries the books could not take, kept beside
//! the queue until a run can book them; and each project's reservations
//! reconciled with its markers under its queue lock.
//!
//! The owed entries (`<project>/.agent-queue/.ccl-delegate.owed/`) are
//! hand-written because no store is at hand when the books are not: they
//! are written on the queue's own file system, which just took the record,
//! so a full or broken state directory never stops a task from moving.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::books::{Entry, Reservation};
use crate::marker::{Marker, State};
use crate::names::project_key;
use crate::queue::{Queue, shown};

/// The directory of a queue's owed entries.
pub(super) const OWED_DIR: &str = ".ccl-delegate.owed";

/// Entries the books could not take, and the reservations they release.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Owed {
    entries: Vec<Entry>,
    keys: Vec<String>,
}

/// The entries of a record, as `ledger rebuild` would read them back.
pub(super) fn entries(
    q: &Queue,
    task: &OsStr,
    record: &[u8],
    requested: Option<&str>,
) -> Option<Vec<Entry>> {
    crate::books::entries_from_record(
        &project_key(&q.project),
        &task.to_string_lossy(),
        record,
        requested,
    )
}

fn owed_dir(q: &Queue) -> PathBuf {
    q.root.join(OWED_DIR)
}

/// Keeps entries for a later run, durably: a new file, synced, renamed
/// into place, its directory synced.
fn keep_owed(q: &Queue, owed: &Owed) -> anyhow::Result<()> {
    let dir = owed_dir(q);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".ccl-delegate-tmp-")
        .tempfile_in(&dir)?;
    tmp.write_all(&serde_json::to_vec(owed)?)?;
    tmp.as_file().sync_all()?;
    let name = format!(
        "{}-{:016x}.json",
        crate::timestamp::now().replace(':', ""),
        fastrand::u64(..)
    );
    tmp.persist_noclobber(dir.join(name)).map_err(|e| e.error)?;
    crate::queue::sync_dir(&dir)?;
    Ok(())
}

impl Ctx<'_> {
    /// Books the entries of records now durable, releasing their jobs'
    /// reservations. When the books cannot take them, they are kept beside
    /// the queue and the tasks still go; `Err` only when even that failed
    /// (the tasks and markers then stay, and the next run finds the
    /// records).
    pub(super) fn book_records(
        &self,
        q: &Queue,
        entries: Vec<Entry>,
        keys: Vec<String>,
    ) -> anyhow::Result<()> {
        if entries.is_empty() && keys.is_empty() {
            return Ok(());
        }
        let booked = self.with_books(|b| {
            #[cfg(feature = "failpoints")]
            crate::failpoint::hit("ledger").map_err(|e| {
                anyhow::anyhow!("cannot write the books {}: {e}", b.path().display())
            })?;
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            b.book(&entries, &keys)
        });
        let Err(e) = booked else { return Ok(()) };
        self.books_failed(&e);
        keep_owed(q, &Owed { entries, keys }).map_err(|k| {
            anyhow::anyhow!(
                "{e:#}; cannot keep its entries in {} either: {k:#}; the task stays and the next reap books it",
                shown(&owed_dir(q))
            )
        })
    }

    /// Books what earlier runs owe for a project, then forgets it.
    fn pay_owed(&self, q: &Queue) {
        let dir = owed_dir(q);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for f in rd.flatten() {
            let path = f.path();
            let name = f.file_name();
            if !name.to_string_lossy().ends_with(".json") {
                continue;
            }
            let owed = crate::queue::read_nofollow(&path, crate::fsread::Kind::State)
                .ok()
                .flatten()
                .and_then(|(b, _)| serde_json::from_slice::<Owed>(&b).ok());
            let Some(owed) = owed else {
                self.ui.warn(format_args!(
                    "{}: not a list of owed entries; left for a person ({})",
                    shown(&path),
                    crate::books::REBUILD_HINT
                ));
                continue;
            };
            let keys: Vec<&str> = owed.keys.iter().map(String::as_str).collect();
            match self.with_books(|b| b.book(&owed.entries, &keys)) {
                Ok(_) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    self.books_failed(&e);
                    return;
                }
            }
        }
    }

    /// At the end of a run: what is owed is booked, and the reservations of
    /// every project this run went through (with whether it saw markers
    /// there), and of every project the books hold reservations of, are
    /// made the markers found, each under its project's queue lock, so
    /// that no submit is between its admission and its marker meanwhile.
    /// A marker deleted by hand stops counting here; a project that is
    /// gone counts nothing.
    pub(super) fn reconcile(&self, projects: &[(PathBuf, bool)]) {
        for (dir, _) in projects {
            let q = Queue::at(dir);
            if owed_dir(&q).is_dir() {
                self.pay_owed(&q);
            }
        }
        let any_markers = projects.iter().any(|(_, m)| *m);
        let books_there = self.books.lock().map(|g| g.is_some()).unwrap_or(false)
            || std::fs::symlink_metadata(crate::books::path(&self.settings.state_dir)).is_ok();
        // No markers and no books: nothing to reconcile (an idle reap stays
        // a few stats, and never connects to a fleet's database).
        if !any_markers && !books_there {
            return;
        }
        let reserved = match self.with_books(|b| b.reserved_projects()) {
            Ok(r) => r,
            Err(e) => {
                self.books_failed(&e);
                return;
            }
        };
        let reserved = self.push_to_fleet(any_markers, reserved);
        let mut todo: Vec<PathBuf> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (dir, had) in projects {
            if !*had && reserved.is_empty() {
                continue;
            }
            let key = project_key(dir);
            if *had || reserved.contains(&key) {
                todo.push(dir.clone());
            }
            seen.insert(key);
        }
        for key in reserved.iter().filter(|k| !seen.contains(*k)) {
            todo.push(PathBuf::from(key));
        }
        for dir in todo {
            self.reconcile_project(&dir);
        }
        self.tidy_books();
    }

    /// What this run wrote to the books is emptied from their write-ahead
    /// log into the store, so that the next run opens them without reading
    /// the log back (an idle cron reap stays cheap). Never waits for
    /// another run; a failure is only said with -v (the books stay whole).
    fn tidy_books(&self) {
        let mut g = self.books.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Err(e)) = g.as_mut().map(crate::books::Books::checkpoint) {
            self.ui.info(format_args!(
                "cannot empty the books' write-ahead log: {e:#}"
            ));
        }
    }

    fn reconcile_project(&self, dir: &Path) {
        let q = Queue::at(dir).with_lock_timeout(self.settings.lock_timeout);
        let key = project_key(&q.project);
        let gone = !q.inbox.is_dir();
        let lock = if gone {
            None
        } else {
            match q.lock() {
                Ok(l) => Some(l),
                Err(e) => {
                    self.ui.warn(format_args!(
                        "cannot reconcile the jobs in flight of {}: {e:#}; the next reap tries again",
                        shown(dir)
                    ));
                    return;
                }
            }
        };
        // Listed again under the lock, whatever the run saw at its start:
        // a submit may have admitted a job and written its marker since.
        let markers = if gone {
            Ok(Vec::new())
        } else {
            in_flight(&q, &key)
        };
        let markers = match markers {
            Ok(m) => m,
            Err(e) => {
                self.ui.warn(format_args!(
                    "cannot reconcile the jobs in flight of {}: {e}; the next reap tries again",
                    shown(dir)
                ));
                return;
            }
        };
        if let Err(e) = self.with_books(|b| b.reconcile(&key, &markers)) {
            self.books_failed(&e);
        }
        if self.settings.fleet.is_some()
            && !self.fleet_said.load(std::sync::atomic::Ordering::Relaxed)
            && let Some(Err(e)) = self.with_fleet(|f| f.reconcile(&key, &markers))
        {
            self.fleet_failed(&e);
        }
        drop(lock);
    }

    /// With a fleet: pushes what the database lacks, when this run has
    /// anything to tell it (markers seen, entries or released keys not
    /// pushed, reservations of this host); an idle run never connects.
    /// Answers the projects to reconcile: `reserved` and, from the
    /// database, those this host holds reservations of there.
    fn push_to_fleet(&self, any_markers: bool, mut reserved: Vec<String>) -> Vec<String> {
        if self.settings.fleet.is_none() {
            return reserved;
        }
        let needed = any_markers
            || self.fleet.lock().map(|g| g.is_some()).unwrap_or(false)
            || self
                .with_books(|b| Ok(b.has_unpushed()? || b.has_reservations()?))
                .unwrap_or(true);
        if !needed {
            return reserved;
        }
        let policy = &self.settings.policy;
        let pushed = self.with_fleet(|f| {
            self.with_books(|b| crate::books::sync::push(b, f, policy))?;
            f.reserved_projects()
        });
        match pushed {
            Some(Ok(theirs)) => {
                for p in theirs {
                    if !reserved.contains(&p) {
                        reserved.push(p);
                    }
                }
            }
            Some(Err(e)) => self.fleet_failed(&e),
            None => {}
        }
        reserved
    }
}

/// The jobs in flight of a project, from its markers: pending or
/// submitted, not a step a limit deferred (it holds no job). A corrupt
/// marker counts nothing: the reap moves it to failed/.
pub(crate) fn in_flight(q: &Queue, project: &str) -> std::io::Result<Vec<Reservation>> {
    let mut out = Vec::new();
    for task in q.marked_tasks()? {
        let Ok(Some(bytes)) = q.read_marker(&task) else {
            continue;
        };
        let Ok(m) = Marker::parse(&bytes) else {
            continue;
        };
        if !matches!(m.state, State::Pending | State::Submitted) || m.deferred {
            continue;
        }
        let key = match (&m.job_id, m.idempotency_key.is_empty()) {
            (_, false) => m.idempotency_key.clone(),
            // A marker of the earlier Go implementation has no key.
            (Some(j), true) => format!("job:{j}"),
            (None, true) => continue,
        };
        // As admission writes them: the provider's own name whatever its
        // case in the file (a marker of the Go implementation, one edited
        // by hand), the start in UTC (the fleet compares it as text).
        out.push(Reservation {
            key,
            project: project.to_string(),
            task: task.to_string_lossy().into_owned(),
            provider: crate::books::counted_provider(&m.provider, None).0,
            job_id: m.job_id.clone().filter(|_| m.state == State::Submitted),
            started_at: crate::books::utc(&m.started_at).unwrap_or_else(|| m.started_at.clone()),
        });
    }
    Ok(out)
}
