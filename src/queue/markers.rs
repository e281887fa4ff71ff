//! The marker transitions: created beside its task, replaced, given its
//! job id, removed, failed over to the next job of a chain.

use std::ffi::OsStr;
use std::fs;

use super::fsio::remove;
use super::{Queue, QueueLock, shown, sync_dir};
use crate::error::{Code, fail};
use crate::marker::{self, Marker};

impl Queue {
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
        self.writer().write(&target, &m.to_bytes(), 0o644, false)
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
        self.writer().write(&target, &m.to_bytes(), 0o644, true)?;
        Ok(())
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
}
