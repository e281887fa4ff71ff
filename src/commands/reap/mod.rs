//! `reap`: bring finished jobs back, from cron. Takes the run lock without
//! waiting, streams every project's inbox for markers and handles them on a
//! bounded pool of threads sharing one HTTP agent. No lock is held across a
//! network call: the queue lock covers only re-checking and changing files.
//! The pollers hand finished jobs to one finishing thread, which writes
//! their records in batches (one queue lock hold and one directory fsync per
//! batch, one fsync per record), so that no poller waits for the disk.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::ReapArgs;
use crate::client::{Client, ClientError, JobResult, Status};
use crate::config::Settings;
use crate::error::{Code, code_of, fail};
use crate::marker::{Marker, State};
use crate::queue::{Queue, shown};
use crate::text::clip;
use crate::timestamp;
use crate::ui::Ui;
use finish::{Finished, Verdict};
use poll::{Action, Call, Facts, Failure, Reason};

mod book;
mod failover;
mod finish;
pub mod metrics;
mod poll;

pub fn run(args: &ReapArgs, settings: &Settings, ui: Ui) -> anyhow::Result<Code> {
    let started = Instant::now();
    let ui = Ui {
        stamp: args.timestamps,
        ..ui
    };
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
    if args.projects.is_empty() {
        for g in &settings.empty_globs {
            ui.warn(format_args!(
                "the projects entry `{g}` in the config matches no directory"
            ));
        }
    }
    let Some(_run_lock) = take_run_lock(&lock_path)? else {
        ui.info(format_args!(
            "another reap holds {}; nothing to do",
            shown(&lock_path)
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
        skipped: AtomicU32::new(0),
        no_queue: AtomicU32::new(0),
        auth_refusals: AtomicU32::new(0),
        service_failures: AtomicU32::new(0),
        auth_said: AtomicBool::new(false),
        tally: Mutex::new(metrics::Tally::default()),
        finisher: OnceLock::new(),
        workers: AtomicUsize::new(0),
        books: Mutex::new(None),
        books_said: AtomicBool::new(false),
        fleet: Mutex::new(None),
        fleet_said: AtomicBool::new(false),
    };
    let concurrency = args.concurrency.unwrap_or(settings.concurrency).max(1) as usize;

    let (tx, rx) = mpsc::sync_channel::<(Arc<Queue>, OsString)>(concurrency * 4);
    let rx = Mutex::new(rx);
    let mut recount = Vec::new();
    std::thread::scope(|scope| {
        let (ctx, rx) = (&ctx, &rx);
        let mut pool_started = false;
        // No thread could be started (the system is out of them): the
        // markers are handled here, one by one.
        let mut inline = false;
        for dir in &projects {
            let queue = Arc::new(Queue::at(dir).with_lock_timeout(settings.lock_timeout));
            // A project a glob matched without a queue has no markers; one
            // named by hand is a typo that would never reap: an error.
            if !queue.inbox.exists() && !queue.inbox.is_symlink() {
                if settings.globbed.contains(dir) {
                    ui.info(format_args!("{}: no queue, skipped", shown(&queue.inbox)));
                } else {
                    ctx.no_queue.fetch_add(1, Ordering::Relaxed);
                    ctx.error(format_args!(
                        "project {}: no queue ({} is missing); create it with: ccl-delegate init {}",
                        shown(dir),
                        shown(&queue.inbox),
                        shown(dir)
                    ));
                }
                continue;
            }
            let tasks = match queue.check_dirs().and_then(|()| {
                queue
                    .marked_tasks()
                    .with_context(|| format!("cannot list {}", shown(&queue.inbox)))
            }) {
                Ok(t) => t,
                Err(e) => {
                    ctx.local_error(format_args!("project {}: {e:#}", shown(dir)));
                    continue;
                }
            };
            // A queue lock held too long (by hand, or by a hung process)
            // skips the project and the others are still reaped. It is
            // probed once, before the first marker, so that a stuck queue
            // costs one wait, not one per marker.
            let mut tasks = tasks.peekable();
            let debris = queue.has_debris();
            if debris || tasks.peek().is_some() {
                match queue.lock() {
                    Ok(lock) if debris => queue.sweep_debris(&lock),
                    Ok(_) => {}
                    Err(e) => {
                        ctx.skipped.fetch_add(1, Ordering::Relaxed);
                        ctx.error(format_args!("project {} skipped: {e:#}", shown(dir)));
                        continue;
                    }
                }
            }
            ctx.tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .project(&queue);
            // Only a queue that passed the checks above is recounted; one
            // without markers now counts none, without another listing.
            recount.push((dir.clone(), tasks.peek().is_some()));
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
                                        shown(&queue.task_path(&task))
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
                        ctx.local_error(format_args!("{}: {e:#}", shown(&queue.task_path(&task))));
                    }
                } else if tx.send((queue.clone(), task)).is_err() {
                    break;
                }
            }
        }
        drop(tx);
    });

    ctx.reconcile(&recount);

    let metrics_file = args
        .metrics_file
        .clone()
        .or_else(|| settings.metrics_file.clone());
    if let Some(path) = metrics_file {
        let budget = budget_now(&ctx);
        // A run is a success only when nothing failed: no local error, no
        // call that failed for the service or the key, no project skipped.
        let success = ctx.local_errors.load(Ordering::Relaxed) == 0
            && ctx.service_failures.load(Ordering::Relaxed) == 0
            && ctx.auth_refusals.load(Ordering::Relaxed) == 0
            && ctx.skipped.load(Ordering::Relaxed) == 0
            && ctx.no_queue.load(Ordering::Relaxed) == 0
            && !matches!(ctx.client.get(), Some(Err(_)));
        let mut tally = std::mem::take(&mut *ctx.tally.lock().unwrap_or_else(|p| p.into_inner()));
        tally.budget = budget;
        if let Err(e) = metrics::write(&path, &tally, started.elapsed(), success) {
            ctx.local_error(format_args!(
                "cannot write the metrics file {}: {e:#}",
                shown(&path)
            ));
        }
    }
    let failed_run = ctx.local_errors.load(Ordering::Relaxed) > 0;
    if let Some(Err((code, msg))) = ctx.client.get() {
        return Err(fail(*code, msg.clone()));
    }
    Ok(if failed_run {
        Code::Other
    } else if ctx.auth_refusals.load(Ordering::Relaxed) > 0 {
        Code::NoPerm
    } else if ctx.no_queue.load(Ordering::Relaxed) > 0 {
        Code::NoInput
    } else if ctx.skipped.load(Ordering::Relaxed) > 0 {
        Code::TempFail
    } else {
        Code::Ok
    })
}

/// Each configured cap now, for the metrics file.
fn budget_now(ctx: &Ctx) -> Vec<crate::policy::admit::CapState> {
    if ctx.settings.policy.caps().is_empty() {
        return Vec::new();
    }
    let now = std::time::SystemTime::now();
    if ctx.settings.fleet.is_some() {
        // The fleet's caps, when this run connected anyway: an idle run
        // never connects, and then writes no budget gauges.
        let connected = ctx.fleet.lock().map(|g| g.is_some()).unwrap_or(false);
        if !connected {
            return Vec::new();
        }
        return match ctx.with_fleet(|f| f.budget(&ctx.settings.policy, now)) {
            Some(Ok(caps)) => caps,
            Some(Err(e)) => {
                ctx.fleet_failed(&e);
                Vec::new()
            }
            None => Vec::new(),
        };
    }
    match ctx.with_books(|b| b.budget(&ctx.settings.policy, now)) {
        Ok(caps) => caps,
        Err(e) => {
            ctx.books_failed(&e);
            Vec::new()
        }
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
        // The state directory is the user's own (0700), whoever makes it.
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {} for the run lock", dir.display()))?;
    }
    let file = crate::queue::open_lock_file(path, 0)
        .with_context(|| format!("cannot open the run lock {}", shown(path)))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {}", shown(path))))
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
    /// Projects skipped for a queue lock held too long: the run exits 75.
    skipped: AtomicU32,
    /// Projects named by hand that hold no queue: the run exits 66.
    no_queue: AtomicU32,
    /// Calls the service refused with 401/403: the run exits 77.
    auth_refusals: AtomicU32,
    /// Calls that failed for the service: unreachable, 5xx after retries,
    /// no definite answer, an answer off the contract.
    service_failures: AtomicU32,
    /// A refused key was said as an error already.
    auth_said: AtomicBool,
    tally: Mutex<metrics::Tally>,
    /// To the finishing thread, once the pool is started; `None` says that
    /// the last worker is done.
    finisher: OnceLock<mpsc::SyncSender<Option<Finished>>>,
    /// Workers still running.
    workers: AtomicUsize,
    /// The books, opened on first use.
    books: Mutex<Option<crate::books::Books>>,
    /// Books that could not be used were said (once a run).
    books_said: AtomicBool,
    /// The fleet's database (config `fleet`), connected on first need.
    fleet: Mutex<Option<crate::books::fleet::Fleet>>,
    /// The fleet's database could not be used (said once; the run exits
    /// 75 unless something worse happened).
    fleet_said: AtomicBool,
}

/// How a failed poll is said on stderr.
#[derive(Clone, Copy)]
enum Say {
    /// The key refused: one error line for the run, with the fix, -q or
    /// not.
    KeyRefused,
    /// Unless -q.
    Warning,
    /// Only with -v.
    Verbose,
}

/// Counts a worker out when it ends (or unwinds); the last one tells the
/// finishing thread that nothing more comes.
struct WorkerExit<'c, 'a>(&'c Ctx<'a>);

impl Drop for WorkerExit<'_, '_> {
    fn drop(&mut self) {
        if self.0.workers.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(tx) = self.0.finisher.get()
        {
            let _ = tx.send(None);
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

    /// Runs `f` on the books, opening them on first use.
    fn with_books<T>(
        &self,
        f: impl FnOnce(&mut crate::books::Books) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut g = self.books.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let mut b =
                crate::books::Books::open(&self.settings.state_dir, self.settings.lock_timeout)?;
            b.set_journal(self.settings.fleet.is_some());
            *g = Some(b);
        }
        f(g.as_mut().expect("just opened"))
    }

    /// Runs `f` on the fleet's database, connecting on first use; `None`
    /// without a fleet. A connection that failed is not tried again this
    /// run.
    fn with_fleet<T>(
        &self,
        f: impl FnOnce(&mut crate::books::fleet::Fleet) -> anyhow::Result<T>,
    ) -> Option<anyhow::Result<T>> {
        let cfg = self.settings.fleet.as_ref()?;
        if self.fleet_said.load(Ordering::Relaxed) {
            return Some(Err(anyhow::anyhow!("the fleet database is unreachable")));
        }
        let mut g = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            match crate::books::fleet::Fleet::connect(
                cfg,
                self.settings.lock_timeout,
                self.settings.max_age,
            ) {
                Ok(c) => *g = Some(c),
                Err(e) => return Some(Err(e)),
            }
        }
        let r = f(g.as_mut().expect("just connected"));
        if r.is_err() {
            // A broken connection is dropped: the next use connects again.
            *g = None;
        }
        Some(r)
    }

    /// The fleet's database could not be used: one line for the run, the
    /// database named without its password; the run exits 75 and its
    /// metrics say it failed. Tasks still move.
    fn fleet_failed(&self, e: &anyhow::Error) {
        if crate::error::code_of(e) == Code::Config {
            self.local_error(format_args!("{e:#}"));
            self.fleet_said.store(true, Ordering::Relaxed);
            return;
        }
        if !self.fleet_said.swap(true, Ordering::Relaxed) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            self.error(format_args!(
                "{e:#}; the tasks still move, and the next run pushes what this one could not"
            ));
        }
    }

    /// Books that could not be used: one error line for the run (it exits
    /// 1 and its metrics say it failed); the tasks still move.
    fn books_failed(&self, e: &anyhow::Error) {
        if !self.books_said.swap(true, Ordering::Relaxed) {
            self.local_error(format_args!(
                "{e:#}; the tasks still move, and the first run that can books what this one could not"
            ));
        }
    }

    fn local_error(&self, msg: impl std::fmt::Display) {
        self.local_errors.fetch_add(1, Ordering::Relaxed);
        self.error(msg);
    }

    /// Said on stderr with or without -q: only routine lines are silenced.
    fn error(&self, msg: impl std::fmt::Display) {
        let _g = self.out.lock();
        self.ui.error(msg);
    }

    fn say(&self, line: std::fmt::Arguments) {
        let _g = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}{line}", self.ui.stamp());
        let _ = out.flush();
    }

    /// One marker: `poll::decide` is asked after every step, each step's
    /// network part is done without any lock, and files change only under
    /// the queue lock, after a re-check.
    fn handle(&self, q: &Queue, task: &OsStr) -> anyhow::Result<()> {
        let (mut seen, parsed) = match q.read_marker(task) {
            Ok(Some(bytes)) => {
                let parsed = Marker::parse(&bytes);
                (bytes, parsed)
            }
            Ok(None) => return Ok(()),
            // A symlink (never followed) or a non-file can never be read: a
            // corrupt marker, whose bytes count as none (see `prepare`).
            Err(e) if fs::symlink_metadata(q.marker_path(task)).is_ok_and(|m| !m.is_file()) => {
                (Vec::new(), Err(format!("cannot read it: {e}")))
            }
            // A marker too large to be one, or one this user may not read,
            // will never be read either: corrupt, not an error every minute.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::FileTooLarge | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                (Vec::new(), Err(format!("cannot read it: {e}")))
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read its marker")),
        };
        let (mut m, corrupt) = match parsed {
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
        let kind = match (&corrupt, &job_id) {
            (Some(_), _) => poll::Marker::Corrupt,
            (None, Some(_)) => poll::Marker::Submitted,
            (None, None) => poll::Marker::Pending,
        };
        let age = timestamp::age(m.started());
        let mut facts = Facts::new(kind, age, self.submit_grace, self.max_age);
        facts.future = m.started_in_future();
        if corrupt.is_none() {
            facts.chain_left = !m.fallback.is_empty();
            facts.deferred = m.deferred && job_id.is_none();
            if let Some(t) = m.sent_at.as_deref().and_then(timestamp::parse) {
                facts.job_age = timestamp::age(t).min(age);
            }
        }
        // What the steps learned, for the records and messages.
        let mut task_bytes = None;
        let mut task_error = None;
        let mut last_error: Option<String> = None;
        let mut accepted = None;
        let mut status = None;
        let mut result = None;
        // The cap a budget refusal named, for the record it ends in.
        let mut budget_line: Option<String> = None;
        // What admission gave a step: the queue lock held until its marker
        // is written, and the admitted job's key.
        let mut admitted = failover::Admitted {
            lock: None,
            key: None,
        };
        loop {
            match poll::decide(&facts) {
                Action::ResetClock => {
                    let mut fresh = m.clone();
                    fresh.started_at = timestamp::now();
                    let lock = q.lock()?;
                    if !q.update_marker_if(&lock, task, &seen, &fresh)? {
                        return Ok(());
                    }
                    drop(lock);
                    self.ui.warn(format_args!(
                        "{}: started_at {} is in the future; reset to now, so that submit_grace and max_age apply",
                        shown(&q.marker_path(task)),
                        clip(&m.started_at, 40)
                    ));
                    seen = fresh.to_bytes();
                    m = fresh;
                    facts.future = false;
                    facts.age = Duration::ZERO;
                }
                Action::ReadTask => {
                    facts.task = match q.read_task(task) {
                        Ok(Some((bytes, _))) => {
                            task_bytes = Some(bytes);
                            poll::Task::Present
                        }
                        Ok(None) => poll::Task::Missing,
                        Err(e) => {
                            task_error = Some(e);
                            poll::Task::Unreadable
                        }
                    }
                }
                Action::Resend => {
                    let Some(client) = self.client() else {
                        return Ok(());
                    };
                    let bytes = task_bytes.as_deref().unwrap_or_default();
                    let req = crate::job::request(
                        &q.project_name(),
                        &task.to_string_lossy(),
                        bytes,
                        &m.provider,
                        &m.priority,
                    );
                    facts.sent = match client.submit(&req, &m.idempotency_key) {
                        Ok(s) => {
                            accepted = Some(s.job_id);
                            Call::Ok(())
                        }
                        Err(e) => Call::Err(self.failure(&e, &mut last_error)),
                    };
                }
                Action::RecordJobId => {
                    let job = accepted.as_deref().unwrap_or_default();
                    let lock = q.lock()?;
                    if q.record_job_id(&lock, task, &m.idempotency_key, job)? {
                        self.ui.info(format_args!(
                            "{}: re-sent, job {job}",
                            shown(&q.task_path(task))
                        ));
                    }
                    return Ok(());
                }
                Action::ReturnTask => {
                    let lock = q.lock()?;
                    q.remove_if_ours(&lock, task, &m.idempotency_key)?;
                    drop(lock);
                    self.say(format_args!(
                        "returned {} to the dispatcher: the service refused it: {}",
                        shown(&q.task_path(task)),
                        last_error.unwrap_or_default()
                    ));
                    return Ok(());
                }
                Action::PollStatus => {
                    let Some(client) = self.client() else {
                        return Ok(());
                    };
                    let job = job_id.as_deref().unwrap_or_default();
                    facts.status = match client.status(job) {
                        Ok(st) => {
                            let j = self.job_state(q, task, job, &st.status);
                            status = Some(st);
                            Call::Ok(j)
                        }
                        Err(e) => Call::Err(self.failure(&e, &mut last_error)),
                    };
                }
                Action::FetchResult => {
                    let Some(client) = self.client() else {
                        return Ok(());
                    };
                    facts.result = match client.result(job_id.as_deref().unwrap_or_default()) {
                        Ok(r) => {
                            result = Some(r);
                            Call::Ok(())
                        }
                        Err(e) => Call::Err(self.failure(&e, &mut last_error)),
                    };
                }
                Action::CheckAdmission => {
                    let (said, line, a) = self.check_admission(q, task, &m, job_id.is_some());
                    facts.admission = said;
                    budget_line = line;
                    admitted = a;
                }
                Action::FailOver { reason, deferred } => {
                    let step = failover::Step {
                        reason,
                        error: failover::error_of(reason, status.as_ref(), last_error.as_deref()),
                        provider: status
                            .as_ref()
                            .and_then(|s| s.provider.clone())
                            .filter(|p| !p.is_empty()),
                    };
                    let a = std::mem::replace(
                        &mut admitted,
                        failover::Admitted {
                            lock: None,
                            key: None,
                        },
                    );
                    let Some(next) = self.fail_over(q, task, &seen, &m, step, deferred, a)? else {
                        return Ok(());
                    };
                    if deferred {
                        return Ok(());
                    }
                    seen = next.to_bytes();
                    m = next;
                    facts = self.fresh_pending(age);
                    facts.task = poll::Task::Present;
                    facts.sent = self.send_step(
                        q,
                        task,
                        &m,
                        task_bytes.as_deref(),
                        &mut accepted,
                        &mut last_error,
                    );
                }
                Action::SendDeferred => {
                    let mut fresh = m.clone();
                    fresh.deferred = false;
                    fresh.sent_at = Some(timestamp::now());
                    let lock = match admitted.lock.take() {
                        Some(l) => l,
                        None => q.lock()?,
                    };
                    if !q.update_marker_if(&lock, task, &seen, &fresh)? {
                        return Ok(());
                    }
                    drop(lock);
                    if let Some(last) = fresh.attempts.last() {
                        self.tally
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .failover(&last.provider, &fresh.provider);
                    }
                    seen = fresh.to_bytes();
                    m = fresh;
                    facts.deferred = false;
                    facts.sent = self.send_step(
                        q,
                        task,
                        &m,
                        task_bytes.as_deref(),
                        &mut accepted,
                        &mut last_error,
                    );
                }
                Action::Leave => return Ok(()),
                Action::NoteFailedPoll { quiet } => {
                    // A refused key is an error, said even with -q (once a
                    // run: it is the same for every job).
                    let auth = Call::Err(Failure::Auth);
                    let refused = facts.sent == auth
                        || facts.status == Call::Err(Failure::Auth)
                        || facts.result == auth;
                    let say = match (quiet, refused) {
                        // One line for the run, with the fix; the other
                        // jobs' refusals only with -v.
                        (_, true) if !self.auth_said.swap(true, Ordering::Relaxed) => {
                            Say::KeyRefused
                        }
                        (_, true) | (true, _) => Say::Verbose,
                        _ => Say::Warning,
                    };
                    let e = last_error.unwrap_or_default();
                    return self.poll_failed(q, task, &seen, m, say, &e);
                }
                Action::WriteDone => {
                    let Some(r) = result else {
                        anyhow::bail!("no result to write (a bug in reap)");
                    };
                    return self.done(q, task, &seen, &m, r);
                }
                Action::CancelThenFail => return self.timeout(q, task, &seen, &m),
                Action::Fail(reason) => {
                    let job = job_id.as_deref().unwrap_or("none");
                    let details = match reason {
                        Reason::Unconfirmed => format!(
                            "The submission was never confirmed by secutools within {}.\n",
                            humantime::format_duration(self.max_age)
                        ),
                        Reason::Failed | Reason::Cancelled | Reason::Expired => {
                            match status.as_ref().and_then(|s| s.error.as_ref()) {
                                Some(err) => format!(
                                    "The job ended `{}` on secutools: {err}\n",
                                    reason.as_str()
                                ),
                                None => {
                                    format!("The job ended `{}` on secutools.\n", reason.as_str())
                                }
                            }
                        }
                        Reason::NotFound if facts.result == Call::Err(Failure::NotFound) => {
                            format!(
                                "secutools answered 404 to the result of job {job}: it does not know the job.\n"
                            )
                        }
                        Reason::NotFound => {
                            format!("secutools answered 404: it does not know job {job}.\n")
                        }
                        Reason::TaskMissing => {
                            "The task file vanished before it was submitted.\n".to_string()
                        }
                        Reason::TaskUnreadable => format!(
                            "{}\n",
                            task_error
                                .as_ref()
                                .map(|e| e.to_string())
                                .unwrap_or_default()
                        ),
                        Reason::Budget => failover::budget_details(
                            &m,
                            job_id.as_deref(),
                            status.as_ref(),
                            budget_line.take(),
                        ),
                        Reason::CorruptMarker => {
                            let why = corrupt.as_deref().unwrap_or_default();
                            return self.corrupt(q, task, &seen, &m, why);
                        }
                    };
                    return self.failed(q, task, &seen, &m, reason.as_str(), details.as_bytes());
                }
            }
        }
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
    fn failure(&self, e: &ClientError, keep: &mut Option<String>) -> Failure {
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

    fn timeout(&self, q: &Queue, task: &OsStr, seen: &[u8], m: &Marker) -> anyhow::Result<()> {
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

    /// The record of a corrupt marker keeps its bytes.
    fn corrupt(
        &self,
        q: &Queue,
        task: &OsStr,
        seen: &[u8],
        m: &Marker,
        why: &str,
    ) -> anyhow::Result<()> {
        let mut details = format!(
            "The marker {} could not be read: {}.\nIts bytes, as found:\n\n",
            shown(Path::new(
                &q.marker_path(task).file_name().unwrap_or_default()
            )),
            clip(why, 300)
        )
        .into_bytes();
        details.extend_from_slice(seen);
        self.failed(q, task, seen, m, "corrupt marker", &details)
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

    fn done(
        &self,
        q: &Queue,
        task: &OsStr,
        seen: &[u8],
        m: &Marker,
        r: JobResult,
    ) -> anyhow::Result<()> {
        if let Some(note) = &r.cost_note {
            self.ui.warn(format_args!(
                "job {} ({}): the service gave no usable cost ({note}); recorded as 0",
                r.job_id,
                shown(&q.task_path(task))
            ));
        }
        let provider = if r.provider.is_empty() {
            m.provider.clone()
        } else {
            r.provider
        };
        self.hand_over(finished(
            q,
            task,
            seen,
            m,
            Verdict::Done {
                provider,
                model: r.model,
                cost_cad: r.cost_cad,
                tokens: crate::record::Tokens {
                    tokens_in: r.tokens_in,
                    tokens_out: r.tokens_out,
                },
                response: r.response,
            },
        ));
        Ok(())
    }

    fn failed(
        &self,
        q: &Queue,
        task: &OsStr,
        seen: &[u8],
        m: &Marker,
        reason: &str,
        details: &[u8],
    ) -> anyhow::Result<()> {
        self.hand_over(finished(
            q,
            task,
            seen,
            m,
            Verdict::Failed {
                provider: m.provider.clone(),
                reason: reason.to_string(),
                details: details.to_vec(),
            },
        ));
        Ok(())
    }
}

/// A finished job for the finishing thread: the marker as acted on, and
/// the verdict.
fn finished(q: &Queue, task: &OsStr, seen: &[u8], m: &Marker, verdict: Verdict) -> Finished {
    Finished {
        queue: q.clone(),
        task: task.to_os_string(),
        seen: seen.to_vec(),
        job_id: m.job_id.clone(),
        requested: m.provider.clone(),
        key: m.idempotency_key.clone(),
        delegated_at: m.started_at.clone(),
        attempts: m.attempts.clone(),
        verdict,
    }
}
