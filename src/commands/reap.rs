//! `reap`: bring finished jobs back, from cron. Takes the run lock without
//! waiting, streams every project's inbox for markers and handles them on a
//! bounded pool of threads sharing one HTTP agent. No lock is held across a
//! network call: the queue lock covers only re-checking and changing files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::submit::{record_job_id, remove_if_ours};
use crate::cli::ReapArgs;
use crate::client::{Client, ClientError, JobResult, Status};
use crate::config::Settings;
use crate::error::{Code, code_of, fail};
use crate::marker::{Marker, State};
use crate::queue::{Outcome, Queue};
use crate::record::{self, Completed, Failure};
use crate::text::clip;
use crate::timestamp;
use crate::ui::Ui;

pub mod metrics;

pub fn run(args: &ReapArgs, settings: &Settings, ui: Ui) -> anyhow::Result<Code> {
    let started = Instant::now();
    let projects = if args.projects.is_empty() {
        settings.projects.clone()
    } else {
        args.projects.clone()
    };
    if projects.is_empty() {
        return Err(fail(
            Code::Config,
            "no projects to reap: pass --project DIR or list `projects` in the config file",
        ));
    }
    let lock_path = args
        .lock_file
        .clone()
        .unwrap_or_else(|| settings.lock_file.clone());
    let Some(_run_lock) = take_run_lock(&lock_path)? else {
        ui.info(format_args!(
            "another reap holds {}; nothing to do",
            lock_path.display()
        ));
        return Ok(Code::Ok);
    };

    let ctx = Ctx {
        settings,
        ui,
        max_age: args.max_age.unwrap_or(settings.max_age),
        submit_grace: args.submit_grace.unwrap_or(settings.submit_grace),
        client: OnceLock::new(),
        out: Mutex::new(()),
        local_errors: AtomicU32::new(0),
        tally: Mutex::new(metrics::Tally::default()),
    };
    let concurrency = args.concurrency.unwrap_or(settings.concurrency).max(1) as usize;

    let (tx, rx) = mpsc::sync_channel::<(Arc<Queue>, String)>(concurrency * 4);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        let mut pool_started = false;
        for dir in &projects {
            let queue = Arc::new(Queue::at(dir));
            // A project (e.g. from a glob) without a queue has no markers.
            if !queue.inbox.exists() && !queue.inbox.is_symlink() {
                ui.info(format_args!("{}: no queue, skipped", queue.inbox.display()));
                continue;
            }
            let tasks = match queue.check_dirs().and_then(|()| {
                queue
                    .marked_tasks()
                    .with_context(|| format!("cannot list {}", queue.inbox.display()))
            }) {
                Ok(t) => t,
                Err(e) => {
                    ctx.local_error(format_args!("project {}: {e:#}", dir.display()));
                    continue;
                }
            };
            if queue.has_debris() {
                if let Ok(lock) = queue.lock() {
                    queue.sweep_debris(&lock);
                }
            }
            ctx.tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .project(&queue);
            for task in tasks {
                if !pool_started {
                    pool_started = true;
                    for _ in 0..concurrency {
                        scope.spawn(|| {
                            loop {
                                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                                let Ok((queue, task)) = next else { break };
                                if let Err(e) = ctx.handle(&queue, &task) {
                                    ctx.local_error(format_args!(
                                        "{}: {e:#}",
                                        queue.task_path(&task).display()
                                    ));
                                }
                            }
                        });
                    }
                }
                if tx.send((queue.clone(), task)).is_err() {
                    break;
                }
            }
        }
        drop(tx);
    });

    let metrics_file = args
        .metrics_file
        .clone()
        .or_else(|| settings.metrics_file.clone());
    let failed_run = ctx.local_errors.load(Ordering::Relaxed) > 0;
    if let Some(path) = metrics_file {
        let tally = ctx.tally.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = metrics::write(&path, &tally, started.elapsed(), !failed_run) {
            ui.warn(format_args!(
                "cannot write metrics file {}: {e:#}",
                path.display()
            ));
        }
    }
    if let Some(Err((code, msg))) = ctx.client.get() {
        return Err(fail(*code, msg.clone()));
    }
    Ok(if failed_run { Code::Other } else { Code::Ok })
}

/// The run lock: flock(2), never waited for, never deleted.
fn take_run_lock(path: &Path) -> anyhow::Result<Option<fs::File>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} for the run lock", dir.display()))?;
    }
    let file = crate::queue::open_lock_file(path, 0)
        .with_context(|| format!("cannot open the run lock {}", path.display()))?;
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => Ok(Some(file)),
        Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot lock {}", path.display()))),
    }
}

struct Ctx<'a> {
    settings: &'a Settings,
    ui: Ui,
    max_age: Duration,
    submit_grace: Duration,
    /// Built on the first marker that needs the service, once per run.
    client: OnceLock<Result<Client, (Code, String)>>,
    /// Serializes the lines on stdout.
    out: Mutex<()>,
    local_errors: AtomicU32,
    tally: Mutex<metrics::Tally>,
}

impl Ctx<'_> {
    fn client(&self) -> Option<&Client> {
        self.client
            .get_or_init(|| {
                self.settings
                    .client()
                    .map_err(|e| (code_of(&e), format!("{e:#}")))
            })
            .as_ref()
            .ok()
    }

    fn local_error(&self, msg: impl std::fmt::Display) {
        self.local_errors.fetch_add(1, Ordering::Relaxed);
        let _g = self.out.lock();
        eprintln!("ccl-delegate: error: {msg}");
    }

    fn say(&self, line: std::fmt::Arguments) {
        let _g = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// One marker: decide what it needs, do the network part without any
    /// lock, then re-check and change the files under the queue lock.
    fn handle(&self, q: &Queue, task: &str) -> anyhow::Result<()> {
        let seen = match q.read_marker(task) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(()),
            // A symlink (never followed) or a non-file can never be read: a
            // corrupt marker, whose bytes count as none (see `finish`).
            Err(e) if fs::symlink_metadata(q.marker_path(task)).is_ok_and(|m| !m.is_file()) => {
                return self.corrupt(q, task, &[], &format!("cannot read it: {e}"));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read its marker")),
        };
        let m = match Marker::parse(&seen) {
            Ok(m) => m,
            Err(why) => return self.corrupt(q, task, &seen, &why),
        };
        let age = timestamp::age(m.started());
        self.tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .active(q, &m.provider);
        let Some(job_id) = m.job_id.clone().filter(|_| m.state == State::Submitted) else {
            return self.pending(q, task, &seen, &m, age);
        };
        if let Some(path) = self.finish_recorded(q, task, &seen, &job_id)? {
            let what = if path.starts_with(&q.done) {
                "done"
            } else {
                "failed"
            };
            self.say(format_args!(
                "{what} {} (job {job_id}): removed the task an interrupted run left",
                path.display()
            ));
            return Ok(());
        }
        let Some(client) = self.client() else {
            return Ok(());
        };
        match client.status(&job_id) {
            Ok(st) => match st.status {
                Status::Completed => match client.result(&job_id) {
                    Ok(r) => self.done(q, task, &seen, &m, &r),
                    Err(e) => self.poll_failed(q, task, &seen, m, age, &e),
                },
                Status::Failed | Status::Cancelled | Status::Expired => {
                    let reason = st.status.as_str().to_string();
                    let details = match &st.error {
                        Some(err) => format!("The job ended `{reason}` on secutools: {err}\n"),
                        None => format!("The job ended `{reason}` on secutools.\n"),
                    };
                    self.failed(q, task, &seen, &m, &reason, details.as_bytes())
                }
                Status::Unknown(s) => {
                    self.ui.warn(format_args!(
                        "job {job_id} ({}): unknown status {:?}, taken as not finished",
                        q.task_path(task).display(),
                        clip(&s, 40)
                    ));
                    self.still_running(q, task, &seen, m, age)
                }
                Status::Queued | Status::Running => self.still_running(q, task, &seen, m, age),
            },
            Err(ClientError::NotFound { .. }) if age >= self.submit_grace => {
                let details = format!("secutools answered 404: it does not know job {job_id}.\n");
                self.failed(q, task, &seen, &m, "not found", details.as_bytes())
            }
            Err(e) => self.poll_failed(q, task, &seen, m, age, &e),
        }
    }

    /// A marker written before its POST: re-send it with the same key once
    /// `submit_grace` has passed (the submitting run died or timed out).
    fn pending(
        &self,
        q: &Queue,
        task: &str,
        seen: &[u8],
        m: &Marker,
        age: Duration,
    ) -> anyhow::Result<()> {
        if age >= self.max_age {
            let details = format!(
                "The submission was never confirmed by secutools within {}.\n",
                humantime::format_duration(self.max_age)
            );
            return self.failed(q, task, seen, m, "timeout", details.as_bytes());
        }
        if age < self.submit_grace {
            return Ok(());
        }
        let bytes = match q.read_task(task) {
            Ok(Some((b, _))) => b,
            Ok(None) => {
                return self.failed(
                    q,
                    task,
                    seen,
                    m,
                    "task missing",
                    b"The task file vanished before it was submitted.\n",
                );
            }
            Err(e) => {
                return self.failed(
                    q,
                    task,
                    seen,
                    m,
                    "task unreadable",
                    format!("{e}\n").as_bytes(),
                );
            }
        };
        let Some(client) = self.client() else {
            return Ok(());
        };
        let req = crate::job::request(&q.project_name(), task, &bytes, &m.provider, &m.priority);
        match client.submit(&req, &m.idempotency_key) {
            Ok(s) => {
                let lock = q.lock()?;
                if record_job_id(q, &lock, task, &m.idempotency_key, &s.job_id)? {
                    self.ui.info(format_args!(
                        "{}: re-sent, job {}",
                        q.task_path(task).display(),
                        s.job_id
                    ));
                }
                Ok(())
            }
            // A 401/403 proves nothing about the first POST (a job may
            // exist): the marker stays, as after any failed poll. A 4xx
            // rejection of the request itself returns the task.
            Err(e @ ClientError::Rejected { .. }) => {
                let lock = q.lock()?;
                remove_if_ours(q, &lock, task, &m.idempotency_key)?;
                drop(lock);
                self.say(format_args!(
                    "returned {} to the dispatcher: the service refused it: {e}",
                    q.task_path(task).display()
                ));
                Ok(())
            }
            Err(e) => self.poll_failed(q, task, seen, m.clone(), age, &e),
        }
    }

    /// A job still queued or running: nothing is written (the design keeps
    /// a poll in the marker only when it failed), unless it is too old.
    fn still_running(
        &self,
        q: &Queue,
        task: &str,
        seen: &[u8],
        m: Marker,
        age: Duration,
    ) -> anyhow::Result<()> {
        if age >= self.max_age {
            return self.timeout(q, task, seen, &m);
        }
        Ok(())
    }

    fn poll_failed(
        &self,
        q: &Queue,
        task: &str,
        seen: &[u8],
        mut m: Marker,
        age: Duration,
        e: &ClientError,
    ) -> anyhow::Result<()> {
        let job = m.job_id.as_deref().unwrap_or("(pending)");
        self.ui.warn(format_args!(
            "job {job} ({}): {e}; will try again on the next run",
            q.task_path(task).display()
        ));
        if age >= self.max_age {
            return self.timeout(q, task, seen, &m);
        }
        let lock = q.lock()?;
        if q.read_marker(task)?.as_deref() == Some(seen) {
            m.poll_errors += 1;
            m.last_error = Some(clip(&e.to_string(), 500));
            q.replace_marker(&lock, task, &m)?;
        }
        Ok(())
    }

    fn timeout(&self, q: &Queue, task: &str, seen: &[u8], m: &Marker) -> anyhow::Result<()> {
        let mut details = format!(
            "The job did not finish within max_age ({}).",
            humantime::format_duration(self.max_age)
        );
        if let (Some(job), Some(client)) = (&m.job_id, self.client()) {
            match client.cancel(job) {
                Ok(_) => details.push_str(" It was cancelled on secutools."),
                Err(e) => details.push_str(&format!(" Cancelling it failed: {e}.")),
            }
        }
        details.push('\n');
        self.failed(q, task, seen, m, "timeout", details.as_bytes())
    }

    fn corrupt(&self, q: &Queue, task: &str, seen: &[u8], why: &str) -> anyhow::Result<()> {
        let mut details = format!(
            "The marker {task}.delegated could not be read: {}.\nIts bytes, as found:\n\n",
            clip(why, 300)
        )
        .into_bytes();
        details.extend_from_slice(seen);
        let delegated_at = fs::symlink_metadata(q.marker_path(task))
            .and_then(|m| m.modified())
            .map(timestamp::format)
            .unwrap_or_else(|_| timestamp::now());
        let m = Marker {
            version: 1,
            state: State::Pending,
            project: String::new(),
            task_file: task.to_string(),
            job_id: None,
            provider: "unknown".into(),
            priority: "normal".into(),
            idempotency_key: String::new(),
            started_at: delegated_at,
            poll_errors: 0,
            last_error: None,
        };
        self.failed(q, task, seen, &m, "corrupt marker", &details)
    }

    fn done(
        &self,
        q: &Queue,
        task: &str,
        seen: &[u8],
        m: &Marker,
        r: &JobResult,
    ) -> anyhow::Result<()> {
        let job = m.job_id.as_deref().unwrap_or_default();
        let now = timestamp::now();
        let provider = if r.provider.is_empty() {
            m.provider.as_str()
        } else {
            r.provider.as_str()
        };
        let c = Completed {
            provider,
            model: &r.model,
            cost_cad: r.cost_cad,
            job_id: job,
            delegated_at: &m.started_at,
            completed_at: &now,
            response: &r.response,
        };
        let written = self.finish(q, task, seen, Outcome::Done, m.job_id.as_deref(), |t| {
            record::render_done(&c, task, t)
        })?;
        if let Some(path) = written {
            self.tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .finished(q, provider, true, r.cost_cad);
            self.say(format_args!(
                "done {} (job {job}, {}, {:.4} CAD)",
                path.display(),
                clip(provider, 40),
                r.cost_cad
            ));
        }
        Ok(())
    }

    fn failed(
        &self,
        q: &Queue,
        task: &str,
        seen: &[u8],
        m: &Marker,
        reason: &str,
        details: &[u8],
    ) -> anyhow::Result<()> {
        let now = timestamp::now();
        let f = Failure {
            provider: &m.provider,
            reason,
            job_id: m.job_id.as_deref(),
            delegated_at: &m.started_at,
            failed_at: &now,
            details,
        };
        let written = self.finish(q, task, seen, Outcome::Failed, m.job_id.as_deref(), |t| {
            record::render_failed(&f, task, t)
        })?;
        if let Some(path) = written {
            self.tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .finished(q, &m.provider, false, 0.0);
            let job = m.job_id.as_deref().unwrap_or("none");
            self.say(format_args!(
                "failed {} (job {job}: {reason})",
                path.display()
            ));
        }
        Ok(())
    }

    /// A record of this job already in done/ or failed/ (a run stopped
    /// before removing the task and marker): finish the removals under the
    /// queue lock, without asking the service, so that a run finishing while
    /// it is down still leaves the task in one place. `None` when there is
    /// no such record (the common case costs two failed opens, no lock).
    fn finish_recorded(
        &self,
        q: &Queue,
        task: &str,
        seen: &[u8],
        job_id: &str,
    ) -> anyhow::Result<Option<PathBuf>> {
        if q.existing_record(task, Some(job_id), None).is_none() {
            return Ok(None);
        }
        let lock = q.lock()?;
        if q.read_marker(task)?.as_deref() != Some(seen) {
            return Ok(None);
        }
        let original = match fs::symlink_metadata(q.task_path(task)) {
            Ok(meta) if meta.file_type().is_symlink() => None,
            _ => q.read_task(task)?.map(|(bytes, _)| bytes),
        };
        let Some(path) = q.existing_record(task, Some(job_id), original.as_deref()) else {
            return Ok(None);
        };
        q.remove_task_and_marker(&lock, task)?;
        Ok(Some(path))
    }

    /// Under the queue lock: if the marker is still the one we acted on,
    /// write the record and remove task and marker. `None` when another run
    /// changed the marker meanwhile.
    fn finish(
        &self,
        q: &Queue,
        task: &str,
        seen: &[u8],
        outcome: Outcome,
        job_id: Option<&str>,
        render: impl FnOnce(Option<&[u8]>) -> Vec<u8>,
    ) -> anyhow::Result<Option<PathBuf>> {
        let lock = q.lock()?;
        let now = match q.read_marker(task) {
            Ok(now) => now,
            Err(_) if seen.is_empty() => Some(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if now.as_deref() != Some(seen) {
            return Ok(None);
        }
        let task_path = q.task_path(task);
        let (original, mode) = match fs::symlink_metadata(&task_path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                self.ui.warn(format_args!(
                    "{}: is a symbolic link; it is never read or moved, and is left in place",
                    task_path.display()
                ));
                (None, 0o644)
            }
            _ => match q
                .read_task(task)
                .with_context(|| format!("cannot read {}", task_path.display()))?
            {
                Some((bytes, mode)) => (Some(bytes), mode),
                None => (None, 0o644),
            },
        };
        if let Some(existing) = q.existing_record(task, job_id, original.as_deref()) {
            q.remove_task_and_marker(&lock, task)?;
            return Ok(Some(existing));
        }
        let bytes = render(original.as_deref());
        let path = q.finish(&lock, task, outcome, &bytes, mode)?;
        Ok(Some(path))
    }
}
