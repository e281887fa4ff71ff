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
use crate::client::Client;
use crate::config::Settings;
use crate::error::{Code, code_of, fail};
use crate::queue::{Queue, shown};
use crate::ui::Ui;
use finish::Finished;

pub(super) mod book;
mod fail;
mod failover;
mod finish;
mod handle;
pub mod metrics;
mod poll;
mod send;

pub fn run(args: &ReapArgs, settings: &Settings, ui: Ui) -> anyhow::Result<Code> {
    let started = Instant::now();
    let ui = Ui {
        stamp: args.timestamps,
        ..ui
    };
    let projects = projects_of(args, settings, ui)?;
    let lock_path = args
        .lock_file
        .clone()
        .unwrap_or_else(|| settings.lock_file.clone());
    let Some(_run_lock) = take_run_lock(&lock_path)? else {
        ui.info(format_args!(
            "another reap holds {}; nothing to do",
            shown(&lock_path)
        ));
        return Ok(Code::Ok);
    };
    let ctx = Ctx::new(args, settings, ui);
    let concurrency = args.concurrency.unwrap_or(settings.concurrency).max(1) as usize;
    let recount = ctx.walk(&projects, concurrency);
    ctx.reconcile(&recount);
    let metrics_file = args
        .metrics_file
        .clone()
        .or_else(|| settings.metrics_file.clone());
    if let Some(path) = metrics_file {
        ctx.write_metrics(&path, started);
    }
    ctx.exit_code()
}

/// The projects to reap: those given with --project, else the config's,
/// each once; none is a config error. A config glob that matches nothing
/// is said.
fn projects_of(args: &ReapArgs, settings: &Settings, ui: Ui) -> anyhow::Result<Vec<PathBuf>> {
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
    if args.projects.is_empty() {
        for g in &settings.empty_globs {
            ui.warn(format_args!(
                "the projects entry `{g}` in the config matches no directory"
            ));
        }
    }
    Ok(projects)
}

/// What the pollers take: a project's queue and one marked task.
type Job = (Arc<Queue>, OsString);

impl<'a> Ctx<'a> {
    fn new(args: &ReapArgs, settings: &'a Settings, ui: Ui) -> Ctx<'a> {
        Ctx {
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
        }
    }
}

impl Ctx<'_> {
    /// Streams every project's markers to a pool of `concurrency` pollers,
    /// started on the first marker. Gives the projects to recount, each
    /// with whether it had markers.
    fn walk(&self, projects: &[PathBuf], concurrency: usize) -> Vec<(PathBuf, bool)> {
        let (tx, rx) = mpsc::sync_channel::<Job>(concurrency * 4);
        let rx = Mutex::new(rx);
        let mut recount = Vec::new();
        std::thread::scope(|scope| {
            let rx = &rx;
            let mut pool_started = false;
            // No thread could be started (the system is out of them): the
            // markers are handled here, one by one.
            let mut inline = false;
            for dir in projects {
                let Some((queue, mut tasks)) = self.open_project(dir) else {
                    continue;
                };
                // Only a queue that passed the checks is recounted; one
                // without markers now counts none, without another listing.
                recount.push((dir.clone(), tasks.peek().is_some()));
                for task in tasks {
                    if !pool_started {
                        pool_started = true;
                        inline = !self.start_pool(scope, rx, concurrency);
                    }
                    if inline {
                        self.handle_or_say(&queue, &task);
                    } else if tx.send((queue.clone(), task)).is_err() {
                        break;
                    }
                }
            }
            drop(tx);
        });
        recount
    }

    /// A project's queue and its marked tasks, or `None` when it is
    /// skipped (said): no queue, a queue that fails its checks, or a queue
    /// lock held too long. Sweeps the debris of a killed run.
    fn open_project(
        &self,
        dir: &PathBuf,
    ) -> Option<(
        Arc<Queue>,
        std::iter::Peekable<impl Iterator<Item = OsString> + use<>>,
    )> {
        let queue = Arc::new(Queue::at(dir).with_lock_timeout(self.settings.lock_timeout));
        // A project a glob matched without a queue has no markers; one
        // named by hand is a typo that would never reap: an error.
        if !queue.inbox.exists() && !queue.inbox.is_symlink() {
            if self.settings.globbed.contains(dir) {
                self.ui
                    .info(format_args!("{}: no queue, skipped", shown(&queue.inbox)));
            } else {
                self.no_queue.fetch_add(1, Ordering::Relaxed);
                self.error(format_args!(
                    "project {}: no queue ({} is missing); create it with: ccl-delegate init {}",
                    shown(dir),
                    shown(&queue.inbox),
                    shown(dir)
                ));
            }
            return None;
        }
        let tasks = match queue.check_dirs().and_then(|()| {
            queue
                .marked_tasks()
                .with_context(|| format!("cannot list {}", shown(&queue.inbox)))
        }) {
            Ok(t) => t,
            Err(e) => {
                self.local_error(format_args!("project {}: {e:#}", shown(dir)));
                return None;
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
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    self.error(format_args!("project {} skipped: {e:#}", shown(dir)));
                    return None;
                }
            }
        }
        self.tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .project(&queue);
        Some((queue, tasks))
    }

    /// Starts the finishing thread and `concurrency` pollers taking jobs
    /// from `rx`; whether any poller started.
    fn start_pool<'s, 'e>(
        &'s self,
        scope: &'s std::thread::Scope<'s, 'e>,
        rx: &'s Mutex<mpsc::Receiver<Job>>,
        concurrency: usize,
    ) -> bool {
        // Records are written by one thread, in batches under one queue
        // lock and one directory fsync, so that the pollers never wait for
        // the disk (see `finish_batch`).
        let (finish_tx, finish_rx) = mpsc::sync_channel(concurrency * 2);
        let _ = self.finisher.set(finish_tx);
        self.workers.store(concurrency, Ordering::Release);
        // Without the finishing thread, workers finish their own jobs
        // (`hand_over`).
        let _ =
            std::thread::Builder::new().spawn_scoped(scope, move || self.finish_loop(finish_rx));
        let mut spawned = 0;
        for _ in 0..concurrency {
            let worker = std::thread::Builder::new().spawn_scoped(scope, move || {
                let _exit = WorkerExit(self);
                loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((queue, task)) = next else { break };
                    self.handle_or_say(&queue, &task);
                }
            });
            match worker {
                Ok(_) => spawned += 1,
                // Counted out as if it had ended.
                Err(_) => drop(WorkerExit(self)),
            }
        }
        spawned > 0
    }

    /// Handles one marker; an error is said and counted.
    fn handle_or_say(&self, queue: &Queue, task: &OsStr) {
        if let Err(e) = self.handle(queue, task) {
            self.local_error(format_args!("{}: {e:#}", shown(&queue.task_path(task))));
        }
    }

    /// Writes the metrics file; a failure to is a local error.
    fn write_metrics(&self, path: &Path, started: Instant) {
        let budget = budget_now(self);
        // A run is a success only when nothing failed: no local error, no
        // call that failed for the service or the key, no project skipped.
        let success = self.local_errors.load(Ordering::Relaxed) == 0
            && self.service_failures.load(Ordering::Relaxed) == 0
            && self.auth_refusals.load(Ordering::Relaxed) == 0
            && self.skipped.load(Ordering::Relaxed) == 0
            && self.no_queue.load(Ordering::Relaxed) == 0
            && !matches!(self.client.get(), Some(Err(_)));
        let mut tally = std::mem::take(&mut *self.tally.lock().unwrap_or_else(|p| p.into_inner()));
        tally.budget = budget;
        let counters = self.with_books(|b| {
            if success {
                b.note_success(metrics::unix_now())?;
            }
            b.counters()
        });
        let counters = counters.map_err(|e| self.books_failed(&e)).ok();
        let success = success && counters.is_some();
        if let Err(e) = metrics::write(path, &tally, counters.as_ref(), started.elapsed(), success)
        {
            self.local_error(format_args!(
                "cannot write the metrics file {}: {e:#}",
                shown(path)
            ));
        }
    }

    /// The run's exit code: a client that could not be built is its own
    /// error; then a local error (1), a refused key (77), a project with no
    /// queue (66), a project skipped (75).
    fn exit_code(&self) -> anyhow::Result<Code> {
        let failed_run = self.local_errors.load(Ordering::Relaxed) > 0;
        if let Some(Err((code, msg))) = self.client.get() {
            return Err(fail(*code, msg.clone()));
        }
        Ok(if failed_run {
            Code::Other
        } else if self.auth_refusals.load(Ordering::Relaxed) > 0 {
            Code::NoPerm
        } else if self.no_queue.load(Ordering::Relaxed) > 0 {
            Code::NoInput
        } else if self.skipped.load(Ordering::Relaxed) > 0 {
            Code::TempFail
        } else {
            Code::Ok
        })
    }
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
    /// A failover step sent, in the books (once, by its key).
    fn note_failover(&self, key: &str, from: &str, to: &str) {
        if let Err(e) = self.with_books(|b| b.note_failover(key, from, to)) {
            self.books_failed(&e);
        }
    }

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
}
