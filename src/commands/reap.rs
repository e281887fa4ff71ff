//! `reap`: bring finished jobs back, from cron. Takes the run lock without
//! waiting, streams every project's inbox for markers and handles them on a
//! bounded pool of threads sharing one HTTP agent. No lock is held across a
//! network call: the queue lock covers only re-checking and changing files.
//! The pollers hand finished jobs to one finishing thread, which writes
//! their records in batches (one queue lock hold and one directory fsync per
//! batch, one fsync per record), so that no poller waits for the disk.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::submit::{record_job_id, remove_if_ours};
use crate::cli::ReapArgs;
use crate::client::{Client, ClientError, JobResult, Status};
use crate::config::Settings;
use crate::error::{Code, code_of, fail};
use crate::marker::{Marker, State};
use crate::queue::{Finishing, Outcome, Queue, QueueLock};
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
    let projects = unique_projects(projects);
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
        auth_refusals: AtomicU32::new(0),
        tally: Mutex::new(metrics::Tally::default()),
        finisher: OnceLock::new(),
        workers: AtomicUsize::new(0),
    };
    let concurrency = args.concurrency.unwrap_or(settings.concurrency).max(1) as usize;

    let (tx, rx) = mpsc::sync_channel::<(Arc<Queue>, String)>(concurrency * 4);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        let (ctx, rx) = (&ctx, &rx);
        let mut pool_started = false;
        // No thread could be started (the system is out of them): the
        // markers are handled here, one by one.
        let mut inline = false;
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
                    // Records are written by one thread, in batches under
                    // one queue lock and one directory fsync, so that the
                    // pollers never wait for the disk (see `finish_batch`).
                    let (finish_tx, finish_rx) = mpsc::sync_channel(concurrency * 2);
                    let _ = ctx.finisher.set(finish_tx);
                    ctx.workers.store(concurrency, Ordering::Release);
                    // Without the finishing thread, workers finish their
                    // own jobs (`hand_over`).
                    let _ = std::thread::Builder::new()
                        .spawn_scoped(scope, move || ctx.finish_loop(finish_rx));
                    let mut spawned = 0;
                    for _ in 0..concurrency {
                        let worker = std::thread::Builder::new().spawn_scoped(scope, move || {
                            let _exit = WorkerExit(ctx);
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
                        match worker {
                            Ok(_) => spawned += 1,
                            // Counted out as if it had ended.
                            Err(_) => drop(WorkerExit(ctx)),
                        }
                    }
                    inline = spawned == 0;
                }
                if inline {
                    if let Err(e) = ctx.handle(&queue, &task) {
                        ctx.local_error(format_args!(
                            "{}: {e:#}",
                            queue.task_path(&task).display()
                        ));
                    }
                } else if tx.send((queue.clone(), task)).is_err() {
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
    Ok(if failed_run {
        Code::Other
    } else if ctx.auth_refusals.load(Ordering::Relaxed) > 0 {
        Code::NoPerm
    } else {
        Code::Ok
    })
}

/// The line for a task finished into done/.
fn done_line(path: &Path, job_id: &str, provider: &str, cost_cad: f64) -> String {
    format!(
        "done {} (job {job_id}, {}, {cost_cad:.4} CAD)",
        path.display(),
        clip(provider, 40)
    )
}

/// The line for a task finished into failed/.
fn failed_line(path: &Path, job_id: &str, reason: &str) -> String {
    format!("failed {} (job {job_id}: {reason})", path.display())
}

/// The line for a task whose record an interrupted run had already
/// written: the same as when the record is written now.
fn recorded_line(path: &Path, job_id: &str) -> String {
    let r = crate::queue::read_nofollow(path)
        .ok()
        .flatten()
        .and_then(|(bytes, _)| record::Record::parse(&bytes))
        .unwrap_or_default();
    if r.status.as_deref() == Some("completed") {
        let provider = r.provider.as_deref().unwrap_or("unknown");
        done_line(path, job_id, provider, r.cost_cad.unwrap_or(0.0))
    } else {
        failed_line(path, job_id, r.failed_reason.as_deref().unwrap_or("failed"))
    }
}

/// The projects to reap, each once (a glob and a flag may name the same).
/// A directory is known by its device and inode: one stat, where resolving
/// the path would read every link on the way.
fn unique_projects(projects: Vec<PathBuf>) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    projects
        .into_iter()
        .filter(|p| {
            let id = fs::metadata(Queue::at(p).root).map(|m| (m.dev(), m.ino()));
            seen.insert(id.map_err(|_| p.clone()))
        })
        .collect()
}

/// The run lock: flock(2), never waited for, never deleted.
fn take_run_lock(path: &Path) -> anyhow::Result<Option<fs::File>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} for the run lock", dir.display()))?;
    }
    let file = crate::queue::open_lock_file(path, 0)
        .with_context(|| format!("cannot open the run lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {}", path.display())))
        }
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
    /// Calls the service refused with 401/403: the run exits 77.
    auth_refusals: AtomicU32,
    tally: Mutex<metrics::Tally>,
    /// To the finishing thread, once the pool is started; `None` says that
    /// the last worker is done.
    finisher: OnceLock<mpsc::SyncSender<Option<Finished>>>,
    /// Workers still running.
    workers: AtomicUsize,
}

/// How a job ended, with what its record needs.
enum Verdict {
    Done {
        provider: String,
        model: String,
        cost_cad: f64,
        response: String,
    },
    Failed {
        provider: String,
        reason: String,
        details: Vec<u8>,
    },
}

/// A job whose record is ready to be written, with everything the
/// finishing thread needs, owned.
struct Finished {
    queue: Queue,
    task: String,
    /// The marker's bytes the decision was made on.
    seen: Vec<u8>,
    job_id: Option<String>,
    delegated_at: String,
    verdict: Verdict,
}

impl Finished {
    fn outcome(&self) -> Outcome {
        match self.verdict {
            Verdict::Done { .. } => Outcome::Done,
            Verdict::Failed { .. } => Outcome::Failed,
        }
    }

    /// The record, given the original task (`None` when it vanished).
    fn render(&self, original: Option<&[u8]>) -> Vec<u8> {
        let now = timestamp::now();
        match &self.verdict {
            Verdict::Done {
                provider,
                model,
                cost_cad,
                response,
            } => record::render_done(
                &Completed {
                    provider,
                    model,
                    cost_cad: *cost_cad,
                    job_id: self.job_id.as_deref().unwrap_or_default(),
                    delegated_at: &self.delegated_at,
                    completed_at: &now,
                    response,
                },
                &self.task,
                original,
            ),
            Verdict::Failed {
                provider,
                reason,
                details,
            } => record::render_failed(
                &Failure {
                    provider,
                    reason,
                    job_id: self.job_id.as_deref(),
                    delegated_at: &self.delegated_at,
                    failed_at: &now,
                    details,
                },
                &self.task,
                original,
            ),
        }
    }

    /// The line printed once its record is in `path`.
    fn line(&self, path: &Path) -> String {
        let job = self.job_id.as_deref().unwrap_or("none");
        match &self.verdict {
            Verdict::Done {
                provider, cost_cad, ..
            } => done_line(path, job, provider, *cost_cad),
            Verdict::Failed { reason, .. } => failed_line(path, job, reason),
        }
    }

    /// Counts it in the run's metrics.
    fn tally(&self, tally: &mut metrics::Tally) {
        match &self.verdict {
            Verdict::Done {
                provider, cost_cad, ..
            } => tally.finished(&self.queue, provider, true, *cost_cad),
            Verdict::Failed { provider, .. } => tally.finished(&self.queue, provider, false, 0.0),
        }
    }
}

/// What `prepare` found under the queue lock.
enum Prepared {
    /// Another run changed the marker meanwhile: leave everything.
    Changed,
    /// An interrupted run already wrote this record: only the removals
    /// are left.
    Recorded(PathBuf),
    /// Write the record: the original task (`None` when it vanished or is
    /// a symlink) and the permission bits the record gets.
    Write(Option<Vec<u8>>, u32),
    /// This job's record is already written, with another original task:
    /// the inbox task is a new one (a run died between removing the old
    /// task and its marker, and the id was reused) or was edited. Only the
    /// stale marker goes, handing the task back to the dispatcher.
    Stale(PathBuf),
}

/// At most this many records are written under one hold of a queue lock.
const MAX_BATCH: usize = 64;

/// Counts a worker out when it ends (or unwinds); the last one tells the
/// finishing thread that nothing more comes.
struct WorkerExit<'c, 'a>(&'c Ctx<'a>);

impl Drop for WorkerExit<'_, '_> {
    fn drop(&mut self) {
        if self.0.workers.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = self.0.finisher.get() {
                let _ = tx.send(None);
            }
        }
    }
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
            self.say(format_args!("{}", recorded_line(&path, &job_id)));
            return Ok(());
        }
        let Some(client) = self.client() else {
            return Ok(());
        };
        match client.status(&job_id) {
            Ok(st) => match st.status {
                Status::Completed => match client.result(&job_id) {
                    Ok(r) => self.done(q, task, &seen, &m, r),
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
        if matches!(e, ClientError::Auth { .. }) {
            self.auth_refusals.fetch_add(1, Ordering::Relaxed);
        }
        let msg = format!(
            "job {job} ({}): {e}; will try again on the next run",
            q.task_path(task).display()
        );
        if matches!(e, ClientError::NotFound { .. }) {
            // A 404 right after a create is the service's known lag, not
            // trouble: kept in the marker, said only with -v, so cron
            // stays quiet.
            self.ui.info(msg);
        } else {
            self.ui.warn(msg);
        }
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
        r: JobResult,
    ) -> anyhow::Result<()> {
        let provider = if r.provider.is_empty() {
            m.provider.clone()
        } else {
            r.provider
        };
        self.hand_over(Finished {
            queue: q.clone(),
            task: task.to_string(),
            seen: seen.to_vec(),
            job_id: m.job_id.clone(),
            delegated_at: m.started_at.clone(),
            verdict: Verdict::Done {
                provider,
                model: r.model,
                cost_cad: r.cost_cad,
                response: r.response,
            },
        });
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
        self.hand_over(Finished {
            queue: q.clone(),
            task: task.to_string(),
            seen: seen.to_vec(),
            job_id: m.job_id.clone(),
            delegated_at: m.started_at.clone(),
            verdict: Verdict::Failed {
                provider: m.provider.clone(),
                reason: reason.to_string(),
                details: details.to_vec(),
            },
        });
        Ok(())
    }

    /// Gives a finished job to the finishing thread (or, outside the pool
    /// or when that thread is gone, finishes it here).
    fn hand_over(&self, f: Finished) {
        let f = match self.finisher.get() {
            Some(tx) => match tx.send(Some(f)) {
                Ok(()) => return,
                Err(mpsc::SendError(f)) => f,
            },
            None => Some(f),
        };
        self.finish_batch(f.into_iter().collect());
    }

    /// The finishing thread: takes what the workers hand over, as many as
    /// are waiting at once, until the last worker is done.
    fn finish_loop(&self, rx: mpsc::Receiver<Option<Finished>>) {
        while let Ok(Some(first)) = rx.recv() {
            let mut batch = vec![first];
            let mut end = false;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Some(f)) => batch.push(f),
                    Ok(None) => {
                        end = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.finish_batch(batch);
            if end {
                break;
            }
        }
    }

    /// Writes the records of finished jobs and removes their tasks and
    /// markers: per project, under one hold of the queue lock, with one
    /// fsync of each directory for the whole batch (`Queue::finish_many`),
    /// while every record still gets its own fsync before its task goes.
    fn finish_batch(&self, batch: Vec<Finished>) {
        let mut by_project: Vec<Vec<Finished>> = Vec::new();
        for f in batch {
            match by_project
                .iter_mut()
                .find(|g| g[0].queue.root == f.queue.root)
            {
                // The same task twice (a queue named twice): once is enough,
                // and twice would write two records for one job.
                Some(g) if g.iter().any(|o| o.task == f.task) => {}
                Some(g) => g.push(f),
                None => by_project.push(vec![f]),
            }
        }
        for group in by_project {
            let q = group[0].queue.clone();
            let report = |task: &str, e: &anyhow::Error| {
                self.local_error(format_args!("{}: {e:#}", q.task_path(task).display()));
            };
            let lock = match q.lock() {
                Ok(lock) => lock,
                Err(e) => {
                    group.iter().for_each(|f| report(&f.task, &e));
                    continue;
                }
            };
            // Each job re-checked, and its record rendered (or found
            // already written by an interrupted run).
            let mut jobs = Vec::with_capacity(group.len());
            for f in group {
                let (task, job_id) = (&f.task, f.job_id.as_deref());
                // Ok: the record to write and its mode; Err: the record
                // an interrupted run wrote.
                let record = match self.prepare(&q, &lock, task, &f.seen, job_id) {
                    Ok(Prepared::Changed) => continue,
                    Ok(Prepared::Stale(existing)) => {
                        match q.remove_marker(&lock, task) {
                            Ok(()) => self.say(format_args!(
                                "returned {} to the dispatcher: job {} already finished into {}",
                                q.task_path(task).display(),
                                job_id.unwrap_or("none"),
                                existing.display()
                            )),
                            Err(e) => report(task, &e),
                        }
                        continue;
                    }
                    Ok(Prepared::Recorded(path)) => Err(path),
                    Ok(Prepared::Write(original, mode)) => {
                        Ok((f.render(original.as_deref()), mode))
                    }
                    Err(e) => {
                        report(task, &e);
                        continue;
                    }
                };
                jobs.push((f, record));
            }
            let items: Vec<Finishing> = jobs
                .iter()
                .map(|(f, record)| Finishing {
                    task: &f.task,
                    record: record
                        .as_ref()
                        .ok()
                        .map(|(bytes, mode)| (f.outcome(), bytes.as_slice(), *mode)),
                })
                .collect();
            let (results, inbox_sync) = q.finish_many(&lock, &items);
            drop(items);
            drop(lock);
            for ((f, record), result) in jobs.into_iter().zip(results) {
                let path = match (result, record) {
                    (Ok(Some(written)), _) => written,
                    (Ok(None), Err(existing)) => existing,
                    (Ok(None), Ok(_)) => continue,
                    (Err(e), _) => {
                        report(&f.task, &e);
                        continue;
                    }
                };
                f.tally(&mut self.tally.lock().unwrap_or_else(|p| p.into_inner()));
                self.say(format_args!("{}", f.line(&path)));
            }
            if let Some(e) = inbox_sync {
                self.local_error(format_args!("{e:#}"));
            }
        }
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
        // The run that wrote it may have died before syncing its directory.
        if let Some(dir) = path.parent() {
            crate::queue::sync_dir(dir)?;
        }
        q.remove_task_and_marker(&lock, task)?;
        Ok(Some(path))
    }

    /// Under the queue lock, before a record is written: is the marker
    /// still the one we acted on, and is the record already there?
    fn prepare(
        &self,
        q: &Queue,
        _lock: &QueueLock,
        task: &str,
        seen: &[u8],
        job_id: Option<&str>,
    ) -> anyhow::Result<Prepared> {
        let now = match q.read_marker(task) {
            Ok(now) => now,
            Err(_) if seen.is_empty() => Some(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if now.as_deref() != Some(seen) {
            return Ok(Prepared::Changed);
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
            return Ok(Prepared::Recorded(existing));
        }
        if let (Some(_), Some(_)) = (job_id, &original) {
            if let Some(existing) = q.existing_record(task, job_id, None) {
                return Ok(Prepared::Stale(existing));
            }
        }
        if original.is_none() && fs::symlink_metadata(&task_path).is_err() {
            // Not fatal: the record says `task_missing: true`.
            self.ui.warn(format_args!(
                "{}: the task vanished while delegated (job {}); was it run or moved by the dispatcher, which should skip a task with a marker?",
                task_path.display(),
                job_id.unwrap_or("none")
            ));
        }
        Ok(Prepared::Write(original, mode))
    }
}
