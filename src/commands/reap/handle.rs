//! One marker: read it, ask `poll::decide` after every step, and carry out
//! each action. Each step's network part is done without any lock; files
//! change only under the queue lock, after a re-check. The actions that
//! send are in `send.rs`, those that end a task in `fail.rs`.

use std::ffi::OsStr;
use std::fs;
use std::ops::ControlFlow::{self, Break, Continue};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Ctx, Say, book, failover, finish, poll};
use crate::client::{ClientError, JobResult, JobStatus, Status};
use crate::marker::{Marker, State};
use crate::queue::{Queue, shown};
use crate::text::clip;
use crate::timestamp;
use poll::{Action, Call, Facts, Failure};

/// A marker's bytes as read, and the marker or why it is corrupt.
type Found = (Vec<u8>, Result<Marker, String>);

/// One marker being handled: what it is, and what the steps learned, for
/// the next decision, the records and the messages.
pub(super) struct Work<'q> {
    pub q: &'q Queue,
    pub task: &'q OsStr,
    /// The marker's bytes as acted on.
    pub seen: Vec<u8>,
    pub m: Marker,
    /// Why the marker could not be read (then `m` stands in for it).
    pub corrupt: Option<String>,
    /// The job of a submitted marker.
    pub job_id: Option<String>,
    pub age: Duration,
    pub facts: Facts,
    pub task_bytes: Option<Vec<u8>>,
    pub task_error: Option<std::io::Error>,
    pub last_error: Option<String>,
    pub accepted: Option<String>,
    pub status: Option<JobStatus>,
    pub result: Option<JobResult>,
    /// The cap a budget refusal named, for the record it ends in.
    pub budget_line: Option<String>,
    /// What admission gave a step: the queue lock held until its marker
    /// is written, and the admitted job's key.
    pub admitted: failover::Admitted,
}

/// What a step learned nothing of yet: no admission.
pub(super) fn not_admitted() -> failover::Admitted {
    failover::Admitted {
        lock: None,
        key: None,
    }
}

/// Reads a marker: `None` when it is gone. One that can never be read (a
/// symlink, never followed; a non-file; too large to be one; one this
/// user may not read) is corrupt, its bytes counting as none (see
/// `prepare`), not an error every minute.
fn read_marker(q: &Queue, task: &OsStr) -> anyhow::Result<Option<Found>> {
    match q.read_marker(task) {
        Ok(Some(bytes)) => {
            let parsed = Marker::parse(&bytes);
            Ok(Some((bytes, parsed)))
        }
        Ok(None) => Ok(None),
        Err(e) if fs::symlink_metadata(q.marker_path(task)).is_ok_and(|m| !m.is_file()) => {
            Ok(Some((Vec::new(), Err(format!("cannot read it: {e}")))))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::FileTooLarge | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            Ok(Some((Vec::new(), Err(format!("cannot read it: {e}")))))
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot read its marker")),
    }
}

impl Ctx<'_> {
    /// One marker: `poll::decide` is asked after every step, each step's
    /// network part is done without any lock, and files change only under
    /// the queue lock, after a re-check.
    pub(super) fn handle(&self, q: &Queue, task: &OsStr) -> anyhow::Result<()> {
        let Some((seen, parsed)) = read_marker(q, task)? else {
            return Ok(());
        };
        let (m, corrupt) = match parsed {
            Ok(m) => (m, None),
            Err(why) => (self.stand_in(q, task), Some(why)),
        };
        if corrupt.is_none() {
            self.tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .active(q, &m.provider);
            self.count_attempts(q, task, &m);
        }
        let job_id = m.job_id.clone().filter(|_| m.state == State::Submitted);
        // A record an interrupted run already wrote for this marker: only
        // the removals are left. A deferred failover step has no job, but a
        // budget may have ended its chain in failed/: never send it then.
        let deferred = corrupt.is_none() && m.deferred && job_id.is_none();
        if (job_id.is_some() || deferred)
            && let Some(path) = q.finish_recorded_then(task, &seen, job_id.as_deref(), |path| {
                self.book_recorded(q, task, &m, path)
            })?
        {
            let shown_id = job_id.as_deref().unwrap_or("none");
            self.say(format_args!("{}", finish::recorded_line(&path, shown_id)));
            return Ok(());
        }
        let (facts, age) = self.facts_of(&m, corrupt.is_some(), job_id.is_some());
        let mut w = Work {
            q,
            task,
            seen,
            m,
            corrupt,
            job_id,
            age,
            facts,
            task_bytes: None,
            task_error: None,
            last_error: None,
            accepted: None,
            status: None,
            result: None,
            budget_line: None,
            admitted: not_admitted(),
        };
        loop {
            let action = poll::decide(&w.facts);
            if self.step(&mut w, action)?.is_break() {
                return Ok(());
            }
        }
    }

    /// What the decider first knows of a marker, and its age.
    fn facts_of(&self, m: &Marker, corrupt: bool, submitted: bool) -> (Facts, Duration) {
        let kind = match (corrupt, submitted) {
            (true, _) => poll::Marker::Corrupt,
            (false, true) => poll::Marker::Submitted,
            (false, false) => poll::Marker::Pending,
        };
        let age = timestamp::age(m.started());
        let mut facts = Facts::new(kind, age, self.submit_grace, self.max_age);
        facts.future = m.started_in_future();
        if !corrupt {
            facts.chain_left = !m.fallback.is_empty();
            facts.deferred = m.deferred && !submitted;
            if let Some(t) = m.sent_at.as_deref().and_then(timestamp::parse) {
                facts.job_age = timestamp::age(t).min(age);
            }
        }
        (facts, age)
    }

    /// Carries out one action; `Break` once the marker is done with.
    fn step(&self, w: &mut Work<'_>, action: Action) -> anyhow::Result<ControlFlow<()>> {
        let done = |r: anyhow::Result<()>| r.map(|()| Break(()));
        match action {
            Action::ResetClock => self.reset_clock(w),
            Action::ReadTask => {
                self.read_task(w);
                Ok(Continue(()))
            }
            Action::Resend => Ok(self.resend(w)),
            Action::RecordJobId => done(self.record_job_id(w)),
            Action::ReturnTask => done(self.return_task(w)),
            Action::PollStatus => Ok(self.poll_status(w)),
            Action::FetchResult => Ok(self.fetch_result(w)),
            Action::CheckAdmission => {
                let (said, line, a) = self.check_admission(w.q, w.task, &w.m, w.job_id.is_some());
                w.facts.admission = said;
                w.budget_line = line;
                w.admitted = a;
                Ok(Continue(()))
            }
            Action::FailOver { reason, deferred } => self.fail_over_step(w, reason, deferred),
            Action::SendDeferred => self.send_deferred(w),
            Action::Leave => Ok(Break(())),
            Action::NoteFailedPoll { quiet } => done(self.note_failed_poll(w, quiet)),
            Action::WriteDone => done(self.write_done(w)),
            Action::CancelThenFail => done(self.timeout(w)),
            Action::Fail(reason) => done(self.fail(w, reason)),
        }
    }

    /// A `started_at` in the future is rewritten to now (if the marker is
    /// still the one acted on), so that submit_grace and max_age apply.
    fn reset_clock(&self, w: &mut Work<'_>) -> anyhow::Result<ControlFlow<()>> {
        let (q, task) = (w.q, w.task);
        let mut fresh = w.m.clone();
        fresh.started_at = timestamp::now();
        let lock = q.lock()?;
        if !q.update_marker_if(&lock, task, &w.seen, &fresh)? {
            return Ok(Break(()));
        }
        drop(lock);
        self.ui.warn(format_args!(
            "{}: started_at {} is in the future; reset to now, so that submit_grace and max_age apply",
            shown(&q.marker_path(task)),
            clip(&w.m.started_at, 40)
        ));
        w.seen = fresh.to_bytes();
        w.m = fresh;
        w.facts.future = false;
        w.facts.age = Duration::ZERO;
        Ok(Continue(()))
    }

    /// Reads the task, to re-send it.
    fn read_task(&self, w: &mut Work<'_>) {
        w.facts.task = match w.q.read_task(w.task) {
            Ok(Some((bytes, _))) => {
                w.task_bytes = Some(bytes);
                poll::Task::Present
            }
            Ok(None) => poll::Task::Missing,
            Err(e) => {
                w.task_error = Some(e);
                poll::Task::Unreadable
            }
        }
    }

    /// The service surely refused the submission: the task goes back to
    /// the dispatcher.
    fn return_task(&self, w: &mut Work<'_>) -> anyhow::Result<()> {
        let (q, task) = (w.q, w.task);
        let lock = q.lock()?;
        q.remove_if_ours(&lock, task, &w.m.idempotency_key)?;
        drop(lock);
        self.say(format_args!(
            "returned {} to the dispatcher: the service refused it: {}",
            shown(&q.task_path(task)),
            w.last_error.take().unwrap_or_default()
        ));
        Ok(())
    }

    fn poll_status(&self, w: &mut Work<'_>) -> ControlFlow<()> {
        let Some(client) = self.client() else {
            return Break(());
        };
        let job = w.job_id.as_deref().unwrap_or_default();
        w.facts.status = match client.status(job) {
            Ok(st) => {
                let j = self.job_state(w.q, w.task, job, &st.status);
                w.status = Some(st);
                Call::Ok(j)
            }
            Err(e) => Call::Err(self.failure(&e, &mut w.last_error)),
        };
        Continue(())
    }

    fn fetch_result(&self, w: &mut Work<'_>) -> ControlFlow<()> {
        let Some(client) = self.client() else {
            return Break(());
        };
        w.facts.result = match client.result(w.job_id.as_deref().unwrap_or_default()) {
            Ok(r) => {
                w.result = Some(r);
                Call::Ok(())
            }
            Err(e) => Call::Err(self.failure(&e, &mut w.last_error)),
        };
        Continue(())
    }

    /// A call failed and the marker stays: how loud to say it.
    fn note_failed_poll(&self, w: &mut Work<'_>, quiet: bool) -> anyhow::Result<()> {
        // A refused key is an error, said even with -q (once a run: it is
        // the same for every job).
        let auth = Call::Err(Failure::Auth);
        let refused = w.facts.sent == auth
            || w.facts.status == Call::Err(Failure::Auth)
            || w.facts.result == auth;
        let say = match (quiet, refused) {
            // One line for the run, with the fix; the other jobs' refusals
            // only with -v.
            (_, true) if !self.auth_said.swap(true, Ordering::Relaxed) => Say::KeyRefused,
            (_, true) | (true, _) => Say::Verbose,
            _ => Say::Warning,
        };
        let e = w.last_error.take().unwrap_or_default();
        self.poll_failed(w.q, w.task, &w.seen, w.m.clone(), say, &e)
    }

    /// The entries of a record an interrupted run wrote, once: an error
    /// (the books unavailable and the entries not kept either) keeps the
    /// task and marker for the next run.
    fn book_recorded(
        &self,
        q: &Queue,
        task: &OsStr,
        m: &Marker,
        path: &Path,
    ) -> anyhow::Result<()> {
        let entries = crate::queue::read_nofollow(path, crate::fsread::Kind::Record)
            .ok()
            .flatten()
            .and_then(|(bytes, _)| book::entries(q, task, &bytes, Some(&m.provider)))
            .unwrap_or_default();
        self.book_records(q, entries, vec![m.idempotency_key.clone()])
    }

    /// What a failed call means for the decision; the error is kept for
    /// the messages, and a refused key is counted (the run exits 77).
    pub(super) fn failure(&self, e: &ClientError, keep: &mut Option<String>) -> Failure {
        let f = match e {
            ClientError::NotFound { .. } => Failure::NotFound,
            ClientError::Auth { .. } => {
                self.auth_refusals.fetch_add(1, Ordering::Relaxed);
                Failure::Auth
            }
            // A request too large to send is refused for sure: nothing was created.
            ClientError::Rejected { .. } | ClientError::TooLarge { .. } => Failure::Rejected,
            ClientError::Unavailable { .. }
            | ClientError::Unknown { .. }
            | ClientError::BadAnswer { .. } => {
                self.service_failures.fetch_add(1, Ordering::Relaxed);
                Failure::Other
            }
            _ => Failure::Other,
        };
        *keep = Some(e.to_string());
        f
    }

    /// A job's status as the decision sees it; an unknown one is said and
    /// taken as not finished.
    fn job_state(&self, q: &Queue, task: &OsStr, job: &str, s: &Status) -> poll::Job {
        match s {
            Status::Completed => poll::Job::Completed,
            Status::Failed => poll::Job::Failed,
            Status::Cancelled => poll::Job::Cancelled,
            Status::Expired => poll::Job::Expired,
            Status::Queued | Status::Running => poll::Job::Running,
            Status::Unknown(s) => {
                self.ui.warn(format_args!(
                    "job {job} ({}): unknown status {:?}, taken as not finished",
                    shown(&q.task_path(task)),
                    clip(s, 40)
                ));
                poll::Job::Running
            }
        }
    }

    /// Remembers a failed call in the marker, if it is still the one acted
    /// on, and says it on stderr (unless `quiet`: a 404 right after a
    /// create is the service's known lag, said only with -v, so cron stays
    /// quiet).
    fn poll_failed(
        &self,
        q: &Queue,
        task: &OsStr,
        seen: &[u8],
        mut m: Marker,
        say: Say,
        e: &str,
    ) -> anyhow::Result<()> {
        let job = m.job_id.as_deref().unwrap_or("(pending)");
        let msg = format!(
            "job {job} ({}): {e}; will try again on the next run",
            shown(&q.task_path(task))
        );
        match say {
            Say::KeyRefused => self.error(format_args!(
                "the service refused the API key ({}): fix api_key_file or SECUTOOLS_API_KEY (`ccl-delegate doctor` checks it); nothing was moved",
                clip(e, 200)
            )),
            Say::Warning => self.ui.warn(msg),
            Say::Verbose => self.ui.info(msg),
        }
        m.poll_errors = m.poll_errors.saturating_add(1);
        m.last_error = Some(clip(e, 500));
        let lock = q.lock()?;
        q.update_marker_if(&lock, task, seen, &m)?;
        Ok(())
    }

    /// What stands for a marker that cannot be read: dated by the file.
    fn stand_in(&self, q: &Queue, task: &OsStr) -> Marker {
        let delegated_at = fs::symlink_metadata(q.marker_path(task))
            .and_then(|m| m.modified())
            .map(timestamp::format)
            .unwrap_or_else(|_| timestamp::now());
        Marker {
            version: 1,
            state: State::Pending,
            project: String::new(),
            task_file: task.to_string_lossy().into_owned(),
            job_id: None,
            provider: "unknown".into(),
            priority: "normal".into(),
            idempotency_key: String::new(),
            started_at: delegated_at,
            poll_errors: 0,
            last_error: None,
            attempts: Vec::new(),
            fallback: Vec::new(),
            deferred: false,
            sent_at: None,
        }
    }
}
