//! Records: a finished task placed in done/ or failed/ (many under one
//! lock), a record already there found again, a failed one put back.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::fsio::{fault, remove, sync_dir_if_present};
use super::{
    Finishing, Kind, Outcome, Prepared, Queue, QueueLock, TaskNote, check_real_dir, read_nofollow,
    sync_dir,
};

impl Queue {
    /// A record of this job already in done/ or failed/ (a run stopped
    /// before removing the task and marker): finish the removals under the
    /// queue lock, so that a run finishing while the service is down still
    /// leaves the task in one place. `None` when there is no such record
    /// (the common case costs two failed opens, no lock).
    ///
    /// `durable` is called with the record once it is durable and before
    /// the task goes; its error keeps the task and marker. `job_id` is
    /// `None` for a marker with no job (a failover step a limit deferred,
    /// which a budget may end in failed/).
    pub fn finish_recorded_then(
        &self,
        task: impl AsRef<OsStr>,
        seen: &[u8],
        job_id: Option<&str>,
        durable: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<PathBuf>> {
        let task = task.as_ref();
        if self.existing_record(task, job_id, None).is_none() {
            return Ok(None);
        }
        let lock = self.lock()?;
        if self.read_marker(task)?.as_deref() != Some(seen) {
            return Ok(None);
        }
        let original = match fs::symlink_metadata(self.task_path(task)) {
            Ok(meta) if meta.file_type().is_symlink() => None,
            _ => self.read_task(task)?.map(|(bytes, _)| bytes),
        };
        let Some(path) = self.existing_record(task, job_id, original.as_deref()) else {
            return Ok(None);
        };
        // The run that wrote it may have died before syncing its directory.
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        durable(&path)?;
        self.remove_task_and_marker(&lock, task)?;
        Ok(Some(path))
    }

    /// Under the queue lock, before a record is written: is the marker
    /// still the one acted on (`seen`), and is the record already there?
    pub fn prepare(
        &self,
        _lock: &QueueLock,
        task: impl AsRef<OsStr>,
        seen: &[u8],
        job_id: Option<&str>,
    ) -> anyhow::Result<Prepared> {
        let task = task.as_ref();
        let now = match self.read_marker(task) {
            Ok(now) => now,
            // An unreadable marker (a symlink) counts as no bytes.
            Err(_) if seen.is_empty() => Some(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if now.as_deref() != Some(seen) {
            return Ok(Prepared::Changed);
        }
        let task_path = self.task_path(task);
        let (original, mode, note) = match fs::symlink_metadata(&task_path) {
            Ok(meta) if meta.file_type().is_symlink() => (None, 0o644, Some(TaskNote::Symlink)),
            _ => match self
                .read_task(task)
                .with_context(|| format!("cannot read {}", task_path.display()))?
            {
                Some((bytes, mode)) => (Some(bytes), mode, None),
                None => (None, 0o644, None),
            },
        };
        if let Some(existing) = self.existing_record(task, job_id, original.as_deref()) {
            return Ok(Prepared::Recorded(existing));
        }
        if let (Some(_), Some(_)) = (job_id, &original)
            && let Some(existing) = self.existing_record(task, job_id, None)
        {
            return Ok(Prepared::Stale(existing));
        }
        let note = note.or_else(|| {
            (original.is_none() && fs::symlink_metadata(&task_path).is_err())
                .then_some(TaskNote::Vanished)
        });
        Ok(Prepared::Write {
            original,
            mode,
            note,
        })
    }

    /// Moves finished tasks out of the inbox, under one lock: each one's
    /// record written as a new file in done/ or failed/ (never replacing
    /// one), then its task and marker removed. Every task goes
    /// through the same durable steps in the same order (its record written
    /// to a temporary file and fsynced, renamed into place without replacing,
    /// the directory fsynced; only then its task and marker removed and the
    /// inbox fsynced), but each directory is fsynced once for the whole
    /// batch: a reap finishing many jobs pays about one fsync per record
    /// instead of three. An item whose `record` is `None` already has its
    /// record durable and only needs the removals. Gives, per item, the
    /// record written (`None` for removals only) or why that task was not
    /// finished; a failing item never stops the others, and no task is
    /// removed before its record is durable.
    ///
    /// The second value is a failed sync of the inbox after the removals:
    /// those tasks are finished (their records are durable), but the run
    ///
    /// `durable` is called once the records are durable and before any task
    /// goes (the ledger is written there); an item it sets to `Err` keeps
    /// its task and marker.
    pub fn finish_many_then(
        &self,
        lock: &QueueLock,
        items: &[Finishing<'_>],
        durable: impl FnOnce(&mut [anyhow::Result<Option<PathBuf>>]),
    ) -> (Vec<anyhow::Result<Option<PathBuf>>>, Option<anyhow::Error>) {
        let mut results: Vec<anyhow::Result<Option<PathBuf>>> =
            items.iter().map(|_| Ok(None)).collect();
        // A record found already written may still sit only in the page
        // cache (its run died before syncing its directory): make it
        // durable before its task goes.
        if items.iter().any(|i| i.record.is_none()) {
            for dir in [&self.done, &self.failed] {
                if let Err(e) = sync_dir_if_present(dir) {
                    for (item, result) in items.iter().zip(results.iter_mut()) {
                        if item.record.is_none() {
                            *result = Err(anyhow::anyhow!("{e:#}"));
                        }
                    }
                }
            }
        }
        for (item, result) in items.iter().zip(results.iter_mut()) {
            if let Some((outcome, record, mode)) = item.record {
                *result = self
                    .place_record(item.task, outcome, record, mode)
                    .map(Some);
            }
        }
        for outcome in [Outcome::Done, Outcome::Failed] {
            let placed = |i: usize| matches!(items[i].record, Some((o, ..)) if o == outcome);
            if !(0..items.len()).any(|i| placed(i) && results[i].is_ok()) {
                continue;
            }
            if let Err(e) = sync_dir(self.outcome_dir(outcome)) {
                for (i, result) in results.iter_mut().enumerate() {
                    if placed(i) && result.is_ok() {
                        *result = Err(anyhow::anyhow!("{e:#}"));
                    }
                }
            }
        }
        durable(&mut results);
        let mut removed = false;
        for (i, item) in items.iter().enumerate() {
            if results[i].is_ok() {
                match self.remove_task_and_marker_unsynced(lock, item.task) {
                    Ok(()) => removed = true,
                    Err(e) => results[i] = Err(e),
                }
            }
        }
        let inbox_sync = if removed {
            sync_dir(&self.inbox).err()
        } else {
            None
        };
        (results, inbox_sync)
    }

    /// Writes a record as a new, synced file in done/ or failed/: `<id>.md`,
    /// or `<id>.N.md` when that is taken. Its directory is not synced yet.
    fn place_record(
        &self,
        task: impl AsRef<OsStr>,
        outcome: Outcome,
        record: &[u8],
        mode: u32,
    ) -> anyhow::Result<PathBuf> {
        let task = task.as_ref();
        let dir = self.outcome_dir(outcome);
        self.ensure_dir(dir)?;
        let mut tmp = self.writer().tmp(record, mode)?;
        let mut n = 1u32;
        loop {
            let target = dir.join(record_name(task, n));
            fault("rename")?;
            match tmp.persist_noclobber(&target) {
                Ok(_) => return Ok(target),
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                    tmp = e.file;
                    n += 1;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e.error)
                        .context(format!("cannot write {}", target.display())));
                }
            }
        }
    }

    /// Finishes the removals of a task whose record is already durable.
    fn remove_task_and_marker(
        &self,
        lock: &QueueLock,
        task: impl AsRef<OsStr>,
    ) -> anyhow::Result<()> {
        let task = task.as_ref();
        self.remove_task_and_marker_unsynced(lock, task)?;
        sync_dir(&self.inbox)
    }

    fn remove_task_and_marker_unsynced(
        &self,
        _lock: &QueueLock,
        task: impl AsRef<OsStr>,
    ) -> anyhow::Result<()> {
        let task = task.as_ref();
        let task_path = self.task_path(task);
        match fs::symlink_metadata(&task_path) {
            // A symlinked task is never moved; it stays for a person.
            Ok(m) if m.file_type().is_symlink() => {}
            _ => remove(&task_path)?,
        }
        remove(&self.marker_path(task))
    }

    /// A record already in done/ or failed/ for this task and this job (the
    /// trace of a run killed before it removed the task, or between removing
    /// the task and the marker), if any: same job id (or none), and the same
    /// original task unless the task is already gone.
    pub fn existing_record(
        &self,
        task: impl AsRef<OsStr>,
        job_id: Option<&str>,
        original: Option<&[u8]>,
    ) -> Option<PathBuf> {
        let task = task.as_ref();
        for dir in [&self.done, &self.failed] {
            // A symlinked done/ or failed/ is never followed, not even to
            // read: a record found through it would end the task.
            if check_real_dir(dir).is_err() {
                continue;
            }
            // The scan goes past one missing name: a person may have moved
            // `<id>.md` away while `<id>.2.md` still awaits its removals.
            let mut missing = 0;
            for n in 1u32..=100_000 {
                let path = dir.join(record_name(task, n));
                let bytes = match read_nofollow(&path, Kind::Record) {
                    Ok(Some((bytes, _))) => bytes,
                    Ok(None) => {
                        missing += 1;
                        if missing == 2 {
                            break;
                        }
                        continue;
                    }
                    // Taken by something that is no record (a symlink, a
                    // directory): the writer skips such names too.
                    Err(_) => continue,
                };
                missing = 0;
                let Some(r) = crate::record::Record::parse(&bytes) else {
                    continue;
                };
                // With the task still there its bytes must match too, so a
                // task edited in the inbox is never dropped for an old copy.
                let same = r.job_id.as_deref() == job_id
                    && original.is_none_or(|t| r.original(&bytes) == t);
                if same {
                    return Some(path);
                }
            }
        }
        None
    }

    /// Puts the original task of a failed record back into the inbox,
    /// without replacing an inbox task, then removes the record.
    pub fn requeue(
        &self,
        _lock: &QueueLock,
        record_path: &Path,
        task: impl AsRef<OsStr>,
        original: &[u8],
        mode: u32,
    ) -> anyhow::Result<PathBuf> {
        let task = task.as_ref();
        let target = self.task_path(task);
        // A requeue that failed after restoring the task left it beside the
        // record: this run only finishes the removal.
        let restored =
            matches!(read_nofollow(&target, Kind::Task), Ok(Some((b, _))) if b == original);
        if !restored {
            let writer = self.writer();
            let tmp = writer.tmp(original, mode)?;
            if !writer.persist(tmp, &target, false)? {
                return Err(anyhow::anyhow!(
                    "{} already exists; move it away first, nothing was changed",
                    target.display()
                ));
            }
        }
        sync_dir(&self.inbox)?;
        remove(record_path)?;
        sync_dir(&self.failed)?;
        Ok(target)
    }

    fn outcome_dir(&self, outcome: Outcome) -> &Path {
        match outcome {
            Outcome::Done => &self.done,
            Outcome::Failed => &self.failed,
        }
    }

    /// Creates done/ or failed/ when missing; refuses a symlink.
    fn ensure_dir(&self, dir: &Path) -> anyhow::Result<()> {
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(dir)
                    .or_else(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                sync_dir(&self.root)?;
                check_real_dir(dir)
            }
            _ => check_real_dir(dir),
        }
    }
}

/// The name of a task's record in done/ or failed/: `<id>.md`, then
/// `<id>.2.md`, `<id>.3.md`, ...
fn record_name(task: &OsStr, n: u32) -> OsString {
    let bytes = task.as_bytes();
    let stem = bytes.strip_suffix(b".md").unwrap_or(bytes);
    let mut name = stem.to_vec();
    if n > 1 {
        name.extend_from_slice(format!(".{n}").as_bytes());
    }
    name.extend_from_slice(b".md");
    OsString::from_vec(name)
}
