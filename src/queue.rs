//! Every file transition of the queue, and why each is crash-safe.
//!
//! ```text
//! <project>/.agent-queue/
//!   inbox/<id>.md              task           (the dispatcher's)
//!   inbox/<id>.md.delegated    marker         (ours: the task is owned by a job)
//!   done/<id>[.N].md           result + original task
//!   failed/<id>[.N].md         reason + original task
//!   .ccl-delegate.lock         flock(2) lock: held while files change, never
//!                              across a network call; never deleted
//!   .ccl-delegate-tmp-*        a file being written (only while the lock is
//!                              held: any found by a lock holder is debris)
//! ```
//!
//! States of one task and the only transitions:
//!
//! ```text
//!  inbox            --create_marker-->  inbox + marker(pending)  (only beside its task)
//!  marker(pending)  --record_job_id-->  marker(submitted)      (job id known)
//!  marker(pending)  --remove_if_ours--> inbox                  (POST surely failed)
//!  marker           --update_marker_if--> marker               (a failed poll noted)
//!  marker(submitted) --fail_over-->     marker(pending)        (its job ended; the next
//!                                                               provider of its chain)
//!  stale marker     --remove_marker-->  inbox                  (its job's record exists
//!                                                               with another task)
//!  inbox + marker   --finish_many-->    done/ or failed/       (job finished)
//!  failed/          --requeue-->        inbox
//! ```
//!
//! Every transition holds the queue lock, waited for at most `lock_timeout`
//! (a lock held by hand must not block every run forever). Task names are
//! bytes (`OsStr`): a name that is not UTF-8 is handled like any other.
//!
//! Every new file is written under a temporary name in `.agent-queue/`,
//! fsynced, renamed into place without replacing anything (RENAME_NOREPLACE
//! via `tempfile::persist_noclobber`) or, for a marker update, over the old
//! marker, and the target directory is fsynced. So a file is either absent or
//! whole, at every instant. A file is removed only after its successor is
//! durable, and `finish_many` removes the task before the marker: a run
//! killed in between leaves a marker without its task (still skipped by the
//! dispatcher, and reaped next time), never a task without its marker whose
//! result is already in done/. A run killed after writing done/ but before
//! the removals leaves both; the next run finds the done/failed file that
//! already holds the marker's job id and the same original task, and only
//! finishes the removals. `finish_many` takes these steps for many tasks
//! under one hold of the lock, in the same order for each, with one fsync
//! per directory for the whole batch.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::error::{Code, fail};
use crate::fsread::Kind;
use crate::marker::{self, Marker};
pub use crate::names::{is_task_name, is_task_name_bytes};

pub use crate::names::QUEUE_DIR;

/// How long a lock is waited for unless the config says otherwise
/// (`lock_timeout`).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
pub const LOCK_NAME: &str = ".ccl-delegate.lock";
const TMP_PREFIX: &str = ".ccl-delegate-tmp-";

/// Where a finished task goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
}

/// One project's queue directories.
#[derive(Clone, Debug)]
pub struct Queue {
    pub project: PathBuf,
    pub root: PathBuf,
    pub inbox: PathBuf,
    pub done: PathBuf,
    pub failed: PathBuf,
    /// How long [`Queue::lock`] waits for the queue lock.
    pub lock_timeout: Duration,
}

/// One task of [`Queue::finish_many`].
pub struct Finishing<'a> {
    /// `<id>.md`.
    pub task: &'a OsStr,
    /// The record to write and its permission bits; `None` when it is
    /// already durable in done/ or failed/ and only the removals are left.
    pub record: Option<(Outcome, &'a [u8], u32)>,
}

/// What [`Queue::prepare`] found under the queue lock.
pub enum Prepared {
    /// Another run changed the marker meanwhile: leave everything.
    Changed,
    /// An interrupted run already wrote this record: only the removals
    /// are left.
    Recorded(PathBuf),
    /// Write the record: the original task (`None` when it vanished or is
    /// a symlink) and the permission bits the record gets.
    Write {
        original: Option<Vec<u8>>,
        mode: u32,
        note: Option<TaskNote>,
    },
    /// This job's record is already written, with another original task:
    /// the inbox task is a new one (a run died between removing the old
    /// task and its marker, and the id was reused) or was edited. Only the
    /// stale marker goes, handing the task back to the dispatcher.
    Stale(PathBuf),
}

/// Why a record is written without its original task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskNote {
    /// A symlink: never read or moved, left in place.
    Symlink,
    /// The task vanished while delegated (`task_missing: true`).
    Vanished,
}

/// Proof that the queue lock is held; mutating calls take it.
pub struct QueueLock {
    file: File,
    gate: std::sync::Arc<Gate>,
}

impl Drop for QueueLock {
    fn drop(&mut self) {
        // The flock(2) goes first, so the thread the gate lets in next
        // finds it free.
        let _ = self.file.unlock();
        self.gate.open();
    }
}

/// The threads of one process take a queue's lock in turn, waiting on a
/// condition variable: flock(2) locks of separate opens exclude each other
/// even within a process, and polling them (as across processes) would
/// make a reap's threads sleep while the lock is free.
#[derive(Default)]
struct Gate {
    busy: std::sync::Mutex<bool>,
    freed: std::sync::Condvar,
}

impl Gate {
    /// The gate of the lock file `path`, one per path in this process.
    fn of(path: &Path) -> std::sync::Arc<Gate> {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock};
        static GATES: OnceLock<Mutex<HashMap<PathBuf, Arc<Gate>>>> = OnceLock::new();
        let mut gates = GATES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        gates.entry(path.to_path_buf()).or_default().clone()
    }

    /// Waits until `deadline` at most; whether it got in.
    fn enter(&self, deadline: Instant) -> bool {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            busy = self
                .freed
                .wait_timeout(busy, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *busy = true;
        true
    }

    fn open(&self) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.freed.notify_one();
    }
}

impl Queue {
    /// The queue of a project directory (or of the `.agent-queue` itself).
    pub fn at(dir: &Path) -> Queue {
        let (project, root) = if dir.file_name().is_some_and(|n| n == QUEUE_DIR) {
            (
                dir.parent().map(Path::to_path_buf).unwrap_or_default(),
                dir.to_path_buf(),
            )
        } else {
            (dir.to_path_buf(), dir.join(QUEUE_DIR))
        };
        Queue {
            inbox: root.join("inbox"),
            done: root.join("done"),
            failed: root.join("failed"),
            project,
            root,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// The same queue, waiting at most `timeout` for its lock.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Queue {
        self.lock_timeout = timeout;
        self
    }

    /// The project's name, as sent in job metadata.
    pub fn project_name(&self) -> String {
        let abs = fs::canonicalize(&self.project).unwrap_or_else(|_| self.project.clone());
        abs.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| abs.display().to_string())
    }

    /// Resolves `<project>/.agent-queue/inbox/<id>.md` into its queue and the
    /// task's file name. Anything else, a path that does not exist
    /// included, is a usage error (exit 64), as `submit`'s step 1 says.
    pub fn of_task(path: &Path) -> anyhow::Result<(Queue, String)> {
        let shown = path.display();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_task_name(n))
            .ok_or_else(|| {
                fail(
                    Code::Usage,
                    format!(
                        "{shown}: not a task file: expected <project>/.agent-queue/inbox/<id>.md"
                    ),
                )
            })?
            .to_string();
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // The inbox and .agent-queue are judged by the path as given, so
        // that a symlinked inbox is refused rather than followed; only a
        // bare `x.md` (run inside the inbox) needs the real working dir.
        let in_queue = |inbox: &Path| {
            inbox.file_name().is_some_and(|n| n == "inbox")
                && inbox
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n == QUEUE_DIR)
        };
        let inbox = if in_queue(parent) {
            parent.to_path_buf()
        } else {
            fs::canonicalize(parent).map_err(|e| fail(Code::Usage, format!("{shown}: {e}")))?
        };
        if !in_queue(&inbox) {
            return Err(fail(
                Code::Usage,
                format!("{shown}: not in an .agent-queue/inbox/ directory"),
            ));
        }
        let project = inbox
            .parent()
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let project =
            fs::canonicalize(project).map_err(|e| fail(Code::Usage, format!("{shown}: {e}")))?;
        let queue = Queue::at(&project);
        queue
            .check_dirs()
            .map_err(|e| fail(Code::Usage, format!("{e:#}")))?;
        match fs::symlink_metadata(queue.inbox.join(&name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(fail(Code::Usage, format!("{shown}: no such task file")))
            }
            Err(e) => Err(fail(Code::Usage, format!("{shown}: {e}"))),
            Ok(m) if m.file_type().is_symlink() => Err(fail(
                Code::Usage,
                format!("{shown}: is a symbolic link; a symlinked task is never read or sent"),
            )),
            Ok(m) if !m.is_file() => Err(fail(Code::Usage, format!("{shown}: not a regular file"))),
            Ok(_) => Ok((queue, name)),
        }
    }

    /// The queue root and inbox must be real directories, not symlinks.
    pub fn check_dirs(&self) -> anyhow::Result<()> {
        for dir in [&self.root, &self.inbox] {
            check_real_dir(dir)?;
        }
        Ok(())
    }

    /// Takes the queue lock, waiting for it at most `lock_timeout` (a lock
    /// taken by hand, `flock(1)`, must not block every run forever): then
    /// exit 75, nothing changed. Held only while files change.
    pub fn lock(&self) -> anyhow::Result<QueueLock> {
        let path = self.root.join(LOCK_NAME);
        let file = open_lock_file(&path, libc::O_NOFOLLOW)
            .with_context(|| format!("cannot open the queue lock {}", shown(&path)))?;
        let deadline = Instant::now() + self.lock_timeout;
        let gate = Gate::of(&path);
        if !gate.enter(deadline) {
            return Err(self.held_too_long(&path));
        }
        match self.flock_until(&file, &path, deadline) {
            Ok(()) => Ok(QueueLock { file, gate }),
            Err(e) => {
                gate.open();
                Err(e)
            }
        }
    }

    /// Takes the flock(2) of `file`, polling until `deadline`.
    fn flock_until(&self, file: &File, path: &Path, deadline: Instant) -> anyhow::Result<()> {
        let mut pause = Duration::from_millis(2);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(()),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("cannot lock {}", shown(path)))
                    );
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.held_too_long(path));
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn held_too_long(&self, path: &Path) -> anyhow::Error {
        fail(
            Code::TempFail,
            format!(
                "{}: held by another process for more than lock_timeout ({}); nothing was changed; try again later, or see who holds it with `fuser -v {}`",
                shown(path),
                humantime::format_duration(self.lock_timeout),
                shown(path)
            ),
        )
    }

    /// Whether a killed run left temporary files (looked at without the lock).
    pub fn has_debris(&self) -> bool {
        fs::read_dir(&self.root).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
        })
    }

    /// Removes temporary files left by a killed run. Every writer holds the
    /// lock, so under the lock any temporary file is debris.
    pub fn sweep_debris(&self, _lock: &QueueLock) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// The task names (`<id>.md`) that have a marker, streamed from the
    /// inbox directory.
    /// The task is the marker's name minus `.delegated`, whatever bytes it
    /// holds: a name that is not UTF-8 is reaped like any other.
    pub fn marked_tasks(&self) -> io::Result<impl Iterator<Item = OsString> + use<>> {
        let entries = fs::read_dir(&self.inbox)?;
        Ok(entries.filter_map(|e| {
            let name = e.ok()?.file_name().into_vec();
            let task = name.strip_suffix(marker::SUFFIX.as_bytes())?;
            is_task_name_bytes(task).then(|| OsString::from_vec(task.to_vec()))
        }))
    }

    pub fn task_path(&self, task: impl AsRef<OsStr>) -> PathBuf {
        let task = task.as_ref();
        self.inbox.join(task)
    }

    pub fn marker_path(&self, task: impl AsRef<OsStr>) -> PathBuf {
        let task = task.as_ref();
        let mut name = task.to_os_string();
        name.push(marker::SUFFIX);
        self.inbox.join(name)
    }

    /// The task's bytes and permission bits; `None` when it does not exist.
    /// A symlink is never followed: it is an error.
    pub fn read_task(&self, task: impl AsRef<OsStr>) -> io::Result<Option<(Vec<u8>, u32)>> {
        let task = task.as_ref();
        read_nofollow(&self.task_path(task), Kind::Task)
    }

    /// The marker's bytes; `None` when there is none.
    pub fn read_marker(&self, task: impl AsRef<OsStr>) -> io::Result<Option<Vec<u8>>> {
        let task = task.as_ref();
        Ok(read_nofollow(&self.marker_path(task), Kind::Marker)?.map(|(b, _)| b))
    }

    /// Writes a new marker; `Ok(false)` when one is already there.
    pub fn create_marker(
        &self,
        _lock: &QueueLock,
        task: impl AsRef<OsStr>,
        m: &Marker,
    ) -> anyhow::Result<bool> {
        let task = task.as_ref();
        let target = self.marker_path(task);
        // A marker only beside its task: a reap may have finished the task
        // (and removed its marker) since the submitter read it.
        let task_path = self.task_path(task);
        if fs::symlink_metadata(&task_path).is_err() {
            if fs::symlink_metadata(&target).is_ok() {
                return Ok(false);
            }
            return Err(fail(
                Code::NoInput,
                format!(
                    "{}: no such task file any more (finished or moved meanwhile); nothing was written",
                    shown(&task_path)
                ),
            ));
        }
        let tmp = self.write_tmp(&m.to_bytes(), 0o644)?;
        match persist(tmp, &target, false)? {
            true => {
                sync_dir(&self.inbox)?;
                Ok(true)
            }
            false => Ok(false),
        }
    }

    /// Replaces a marker atomically (state change, poll errors).
    pub fn replace_marker(
        &self,
        _lock: &QueueLock,
        task: impl AsRef<OsStr>,
        m: &Marker,
    ) -> anyhow::Result<()> {
        let task = task.as_ref();
        let target = self.marker_path(task);
        let tmp = self.write_tmp(&m.to_bytes(), 0o644)?;
        persist(tmp, &target, true)?;
        sync_dir(&self.inbox)
    }

    /// Removes a marker: its task becomes the dispatcher's again.
    pub fn remove_marker(&self, _lock: &QueueLock, task: impl AsRef<OsStr>) -> anyhow::Result<()> {
        let task = task.as_ref();
        remove(&self.marker_path(task))?;
        sync_dir(&self.inbox)
    }

    /// Records the job id in a pending marker that is still ours (same
    /// idempotency key): `pending` -> `submitted`. Returns whether it did.
    pub fn record_job_id(
        &self,
        lock: &QueueLock,
        task: impl AsRef<OsStr>,
        key: &str,
        job_id: &str,
    ) -> anyhow::Result<bool> {
        let task = task.as_ref();
        let Some(bytes) = self.read_marker(task)? else {
            return Ok(false);
        };
        match Marker::parse(&bytes) {
            Ok(mut m) if m.state == marker::State::Pending && m.idempotency_key == key => {
                m.state = marker::State::Submitted;
                m.job_id = Some(job_id.to_string());
                m.poll_errors = 0;
                m.last_error = None;
                self.replace_marker(lock, task, &m)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Removes a pending marker after a submission that surely failed, if it
    /// is still the one with this idempotency key.
    pub fn remove_if_ours(
        &self,
        lock: &QueueLock,
        task: impl AsRef<OsStr>,
        key: &str,
    ) -> anyhow::Result<()> {
        let task = task.as_ref();
        if let Some(bytes) = self.read_marker(task)?
            && let Ok(m) = Marker::parse(&bytes)
            && m.state == marker::State::Pending
            && m.idempotency_key == key
        {
            self.remove_marker(lock, task)?;
        }
        Ok(())
    }

    /// Replaces the marker with `m` only if it still holds the bytes `seen`
    /// (another run may have changed it meanwhile). Returns whether it did.
    pub fn update_marker_if(
        &self,
        lock: &QueueLock,
        task: impl AsRef<OsStr>,
        seen: &[u8],
        m: &Marker,
    ) -> anyhow::Result<bool> {
        let task = task.as_ref();
        if self.read_marker(task)?.as_deref() != Some(seen) {
            return Ok(false);
        }
        self.replace_marker(lock, task, m)?;
        Ok(true)
    }

    /// Failover (policy.md): the marker of an ended job becomes the pending
    /// marker of the chain's next job, if it still holds the bytes `seen`.
    /// One atomic, durable replacement (temporary file fsynced, renamed
    /// over the marker, inbox fsynced): a run killed at any point leaves
    /// either the old marker (the step is taken again, with a new key, and
    /// the old key's job stays the ended one) or the new one (its POST is
    /// sent, or re-sent with its key, by a later reap). Returns whether it
    /// replaced it.
    pub fn fail_over(
        &self,
        lock: &QueueLock,
        task: impl AsRef<OsStr>,
        seen: &[u8],
        next: &Marker,
    ) -> anyhow::Result<bool> {
        debug_assert_eq!(next.state, marker::State::Pending);
        self.update_marker_if(lock, task, seen, next)
    }

    /// A record of this job already in done/ or failed/ (a run stopped
    /// before removing the task and marker): finish the removals under the
    /// queue lock, so that a run finishing while the service is down still
    /// leaves the task in one place. `None` when there is no such record
    /// (the common case costs two failed opens, no lock).
    pub fn finish_recorded(
        &self,
        task: impl AsRef<OsStr>,
        seen: &[u8],
        job_id: &str,
    ) -> anyhow::Result<Option<PathBuf>> {
        self.finish_recorded_then(task, seen, Some(job_id), |_| Ok(()))
    }

    /// [`Queue::finish_recorded`], calling `durable` with the record once
    /// it is durable and before the task goes; its error keeps the task
    /// and marker. `job_id` is `None` for a marker with no job (a failover
    /// step a limit deferred, which a budget may end in failed/).
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
    /// must report it.
    pub fn finish_many(
        &self,
        lock: &QueueLock,
        items: &[Finishing<'_>],
    ) -> (Vec<anyhow::Result<Option<PathBuf>>>, Option<anyhow::Error>) {
        self.finish_many_then(lock, items, |_| {})
    }

    /// [`Queue::finish_many`], calling `durable` once the records are
    /// durable and before any task goes (the ledger is written there); an
    /// item it sets to `Err` keeps its task and marker.
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
        let mut tmp = self.write_tmp(record, mode)?;
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
    pub fn remove_task_and_marker(
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
            let tmp = self.write_tmp(original, mode)?;
            if !persist(tmp, &target, false)? {
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

    /// A whole, synced temporary file in the queue root.
    fn write_tmp(&self, bytes: &[u8], mode: u32) -> anyhow::Result<tempfile::NamedTempFile> {
        let ctx = || format!("cannot write a temporary file in {}", self.root.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.root)
            .with_context(ctx)?;
        fault("write").with_context(ctx)?;
        tmp.write_all(bytes).with_context(ctx)?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode & 0o777))
            .with_context(ctx)?;
        fault("fsync").with_context(ctx)?;
        tmp.as_file().sync_all().with_context(ctx)?;
        Ok(tmp)
    }
}

/// Opens (creating) a lock file. Lock files are never truncated or deleted:
/// another process may hold a lock on them.
pub fn open_lock_file(path: &Path, extra_flags: i32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | extra_flags)
        .open(path)
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

/// A path as printed in a message: bytes that are not UTF-8 as `\xNN`,
/// control and bidi characters blanked ([`crate::text::clip`]), so one
/// line stays one line whatever the name holds.
pub fn shown(path: &Path) -> String {
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    crate::text::clip(&out, 4096)
}

pub fn check_real_dir(dir: &Path) -> anyhow::Result<()> {
    let m = fs::symlink_metadata(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    if m.file_type().is_symlink() {
        anyhow::bail!(
            "{} is a symbolic link; queue directories are never followed through links",
            dir.display()
        );
    }
    if !m.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    Ok(())
}

/// Renames a synced temporary file into place. `replace: false` never
/// replaces an existing file and answers `Ok(false)` instead.
fn persist(tmp: tempfile::NamedTempFile, target: &Path, replace: bool) -> anyhow::Result<bool> {
    fault("rename").with_context(|| format!("cannot write {}", target.display()))?;
    let r = if replace {
        tmp.persist(target).map(drop)
    } else {
        tmp.persist_noclobber(target).map(drop)
    };
    match r {
        Ok(()) => Ok(true),
        Err(e) if !replace && e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => {
            Err(anyhow::Error::new(e.error).context(format!("cannot write {}", target.display())))
        }
    }
}

/// [`sync_dir`], for a directory that may not exist yet.
fn sync_dir_if_present(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() { sync_dir(dir) } else { Ok(()) }
}

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    let ctx = || format!("cannot sync directory {}", dir.display());
    fault("dirsync").with_context(ctx)?;
    File::open(dir).and_then(|d| d.sync_all()).with_context(ctx)
}

fn remove(path: &Path) -> anyhow::Result<()> {
    let ctx = || format!("cannot remove {}", path.display());
    fault("unlink").with_context(ctx)?;
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(ctx),
        _ => Ok(()),
    }
}

/// Reads a regular file without following a symlink at its last component,
/// through the one reader (`fsread`): a marker is capped as a marker, a task
/// or record as a record; the mode is the permission bits only.
pub fn read_nofollow(path: &Path, kind: crate::fsread::Kind) -> io::Result<Option<(Vec<u8>, u32)>> {
    Ok(crate::fsread::read(path, kind)?.map(|c| (c.bytes, c.mode)))
}

/// Fault injection for the crash tests: with the `failpoints` feature,
/// `CCL_DELEGATE_FAILPOINT=<step>[:<n>][:enospc]` makes the n-th (default
/// first) `<step>` (write, fsync, rename, dirsync, unlink) fail. Without the
/// feature this is nothing.
#[cfg(feature = "failpoints")]
fn fault(step: &'static str) -> io::Result<()> {
    crate::failpoint::hit(step)
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
fn fault(_step: &'static str) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threads of one process take a queue lock in turn: a waiter gets
    /// it as soon as it is freed (not after a polling pause), and one held
    /// longer than `lock_timeout` is an exit-75 error.
    #[test]
    fn threads_take_the_queue_lock_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(QUEUE_DIR).join("inbox")).unwrap();
        let q = Queue::at(dir.path()).with_lock_timeout(Duration::from_secs(5));
        let held = q.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let q2 = q.clone();
            s.spawn(move || {
                let _l = q2.lock().unwrap();
                tx.send(Instant::now()).unwrap();
            });
            std::thread::sleep(Duration::from_millis(300));
            let freed = Instant::now();
            drop(held);
            let got = rx.recv().unwrap();
            assert!(got.duration_since(freed) < Duration::from_millis(50));
        });
        let _held = q.lock().unwrap();
        let short = q.clone().with_lock_timeout(Duration::from_millis(100));
        let e = std::thread::scope(|s| s.spawn(|| short.lock().err()).join().unwrap())
            .expect("times out");
        assert_eq!(crate::error::code_of(&e), Code::TempFail);
    }
}
