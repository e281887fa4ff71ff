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
//!  inbox + marker   --finish_many_then--> done/ or failed/       (job finished)
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
//! durable, and `finish_many_then` removes the task before the marker: a run
//! killed in between leaves a marker without its task (still skipped by the
//! dispatcher, and reaped next time), never a task without its marker whose
//! result is already in done/. A run killed after writing done/ but before
//! the removals leaves both; the next run finds the done/failed file that
//! already holds the marker's job id and the same original task, and only
//! finishes the removals. `finish_many_then` takes these steps for many tasks
//! under one hold of the lock, in the same order for each, with one fsync
//! per directory for the whole batch.
//!
//! The files of this module, one concern each: `lock.rs` (the queue lock),
//! `markers.rs` (the marker transitions), `records.rs` (records placed in
//! done/ and failed/, and back), `fsio.rs` (the one atomic write: temporary
//! file, fsync, rename, directory fsync; and the reads).

mod fsio;
mod lock;
mod markers;
mod records;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::error::{Code, fail};
use crate::fsread::Kind;
use crate::marker;
pub use crate::names::{is_task_name, is_task_name_bytes};

pub use crate::names::QUEUE_DIR;
pub use fsio::{AtomicWriter, read_nofollow, sync_dir};
pub use lock::{QueueLock, open_lock_file};

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

/// One task of [`Queue::finish_many_then`].
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

    /// How the queue writes a file: a temporary file in the queue root,
    /// durable.
    fn writer(&self) -> AtomicWriter<'_> {
        AtomicWriter {
            dir: &self.root,
            prefix: TMP_PREFIX,
            durable: true,
        }
    }
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
