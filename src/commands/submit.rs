//! `submit`: hand one inbox task to secutools, leaving a marker first so
//! that the dispatcher skips it and a killed run loses nothing.

use std::ops::ControlFlow;

use anyhow::Context;

use crate::books::fleet::{Admitter, Fleet};
use crate::books::{Books, Reservation};
use crate::cli::SubmitArgs;
use crate::client::{Client, SubmitRequest};
use crate::config::Settings;
use crate::error::{Code, fail};
use crate::frontmatter;
use crate::job;
use crate::marker::{Marker, State};
use crate::policy::{Decision, Provider};
use crate::queue::Queue;
use crate::route::{self, Priority};
use crate::ui::Ui;

pub fn run(args: &SubmitArgs, settings: &Settings, ui: Ui) -> anyhow::Result<Code> {
    let (queue, task) = Queue::of_task(&args.task)?;
    let queue = queue.with_lock_timeout(settings.lock_timeout);
    let shown = args.task.display().to_string();
    marker_name_fits(&queue, &task, &shown)?;
    if let Some(line) = existing(&queue, &task, ui)? {
        println!("{line}");
        return Ok(Code::Ok);
    }

    let bytes = queue
        .read_task(&task)
        .map_err(|e| fail(Code::NoInput, format!("{shown}: {e}")))?
        .ok_or_else(|| fail(Code::NoInput, format!("{shown}: no such task file")))?
        .0;
    let meta = routing_keys(&bytes, &shown, ui);
    let decision = route::route(&meta);
    if !decision.provider.delegates() {
        println!("local {}", decision.rule);
        ui.note(format_args!("{shown}: {}", decision.explain_for(&meta)));
        return Ok(Code::Local);
    }
    let priority = priority_of(args, &meta, &shown, ui);
    let project = queue.project_name();
    let provider = decision.provider;
    let fallback = chain_to_follow(&meta, provider, settings, ui, &shown);
    let req = job::request_to(&project, &task, &bytes, provider, &priority);
    // The service refuses a body over its limit: said before anything is
    // sent or written, with the size, so a person can split the task.
    if let Err(e) = crate::client::check_body_size(&req) {
        return Err(
            anyhow::Error::new(e).context(format!("{shown}: not delegated, nothing written"))
        );
    }

    // Configuration problems end the run before anything is written.
    let client = settings.client()?;
    let key = job::new_idempotency_key()
        .map_err(|e| anyhow::anyhow!("cannot read /dev/urandom for an idempotency key: {e}"))?;
    let marker = Marker::pending(
        queue.project.display().to_string(),
        task.clone(),
        provider,
        priority,
        key,
        fallback,
    );
    let s = Submission {
        settings,
        provider,
        queue: &queue,
        task: &task,
        shown: &shown,
        marker: &marker,
        ui,
    };
    let sent = match s.write_marker() {
        Ok(ControlFlow::Continue(reserved)) => s.post(&client, &req, reserved),
        Ok(ControlFlow::Break(code)) => Ok(code),
        Err(e) => Err(e),
    };
    settle(sent, &queue, &task, ui)
}

/// The outcome of a submission whose marker was or may have been written.
fn settle(sent: anyhow::Result<Code>, queue: &Queue, task: &str, ui: Ui) -> anyhow::Result<Code> {
    // Exit 0 means exactly that a marker exists. A write or removal that
    // failed may leave one (renamed into place before a directory sync
    // failed, a pending marker whose job id could not be recorded, one that
    // could not be removed): then the dispatcher must skip the task, and the
    // next reap finishes the submission with the same idempotency key.
    match sent {
        Err(e) => match existing(queue, task, ui) {
            Ok(Some(line)) => {
                // Said even with --quiet: a write failed.
                ui.error(format_args!(
                    "{e:#}; the marker stays and the next reap finishes the submission"
                ));
                println!("{line}");
                Ok(Code::Ok)
            }
            _ => Err(e),
        },
        ok => ok,
    }
}

/// A marker that cannot exist can never hold the task back: refused
/// before anything is written.
fn marker_name_fits(queue: &Queue, task: &str, shown: &str) -> anyhow::Result<()> {
    let max = name_max(&queue.inbox);
    let len = task.len() + crate::marker::SUFFIX.len();
    if len > max {
        return Err(fail(
            Code::Usage,
            format!(
                "{shown}: the task's name is too long for its marker ({len} bytes with `{}`, over this file system's {max}); rename the task; nothing was written",
                crate::marker::SUFFIX
            ),
        ));
    }
    Ok(())
}

/// The task's routing keys, warning of what is wrong with its frontmatter.
fn routing_keys(bytes: &[u8], shown: &str, ui: Ui) -> frontmatter::Meta {
    let split = frontmatter::split(bytes);
    let meta = ui.task_meta(shown, split.meta);
    if !meta.unreadable && frontmatter::second_bom(bytes) {
        ui.warn(format_args!(
            "{shown}: starts with two byte order marks; the second hides any frontmatter, so the task routes as if it had none"
        ));
    }
    meta
}

/// `--priority`, else the task's, else normal (with a warning when the
/// task's cannot be read).
fn priority_of(args: &SubmitArgs, meta: &frontmatter::Meta, shown: &str, ui: Ui) -> String {
    match &args.priority {
        Some(p) => p.clone(),
        None => route::priority(meta)
            .unwrap_or_else(|why| {
                ui.warn(format_args!("{shown}: {why}; using priority normal"));
                Priority::Normal
            })
            .as_str()
            .to_string(),
    }
}

/// One submission under way: the task, its pending marker (not yet
/// written) and what the run was given.
struct Submission<'a> {
    settings: &'a Settings,
    provider: Provider,
    queue: &'a Queue,
    task: &'a str,
    shown: &'a str,
    marker: &'a Marker,
    ui: Ui,
}

impl Submission<'_> {
    /// Admission, then the pending marker, both under the queue lock.
    /// `Continue` with the reservation made, if any; `Break` with the exit
    /// code when the run ends here (refused, deferred, or another submit
    /// won the race).
    fn write_marker(&self) -> anyhow::Result<ControlFlow<Code, Option<Reserved>>> {
        let (queue, task, ui) = (self.queue, self.task, self.ui);
        let lock = queue.lock()?;
        // Lock order: the queue lock, then the admission lock. Decided
        // while the queue lock is held, so that a reap reconciling this
        // project sees the count and the marker together.
        let reserved = match admit(self.settings, queue, self.marker, self.provider, ui)? {
            Admitted::Yes(reserved) => reserved,
            Admitted::No(code) => return Ok(ControlFlow::Break(code)),
        };
        let created = queue
            .create_marker(&lock, task, self.marker)
            .with_context(|| format!("{}: cannot write its marker", self.shown));
        if !matches!(created, Ok(true)) {
            // Nothing of ours went out: the count is taken back.
            release(self.settings, reserved, &self.marker.idempotency_key, ui);
        }
        if !created? {
            drop(lock);
            // Another submit won the race: report its marker.
            let known = format!("pending {}", self.marker.provider);
            return confirm(queue, task, ui, known).map(ControlFlow::Break);
        }
        Ok(ControlFlow::Continue(reserved))
    }

    /// The POST, and what its answer makes of the marker.
    fn post(
        &self,
        client: &Client,
        req: &SubmitRequest,
        reserved: Option<Reserved>,
    ) -> anyhow::Result<Code> {
        let (queue, task, shown, ui) = (self.queue, self.task, self.shown, self.ui);
        let key = &self.marker.idempotency_key;
        let provider = &self.marker.provider;
        match client.submit(req, key) {
            Ok(s) => {
                let lock = queue.lock()?;
                queue
                    .record_job_id(&lock, task, key, &s.job_id)
                    .with_context(|| {
                        format!(
                            "{shown}: job {} was created; cannot record it in the marker",
                            s.job_id
                        )
                    })?;
                drop(lock);
                if reserved.is_some_and(|r| r.probe) {
                    note_job(self.settings, key, &s.job_id, ui);
                }
                confirm(
                    queue,
                    task,
                    ui,
                    format!("delegated {provider} {}", s.job_id),
                )
            }
            Err(e) if !e.nothing_created() => {
                ui.warn(format_args!(
                    "{shown}: the outcome of the submission is unknown ({e}); the marker stays pending and the next reap re-sends it with the same idempotency key"
                ));
                confirm(queue, task, ui, format!("pending {provider}"))
            }
            Err(e) => {
                let lock = queue.lock()?;
                queue.remove_if_ours(&lock, task, key).with_context(|| {
                    format!("{shown}: not delegated ({e}); cannot remove its pending marker")
                })?;
                release(self.settings, reserved, key, ui);
                Err(fail(
                    crate::error::submit_code(&e),
                    format!(
                        "{shown}: not delegated: {e}; the task is untouched and may run locally"
                    ),
                ))
            }
        }
    }
}

/// What admission answered.
enum Admitted {
    /// Go on; with the job's reservation, if admission made one.
    Yes(Option<Reserved>),
    /// Refused (`local budget`, exit 10) or deferred (exit 75): said,
    /// nothing written.
    No(Code),
}

/// A reservation this submit made.
#[derive(Clone, Copy)]
struct Reserved {
    /// The provider's price is not known: its job is the one the price
    /// rule names until it ends.
    probe: bool,
}

/// Budgets and limits (policy.md), one transaction of the books, under the
/// queue lock the caller holds until the marker is durable. With none
/// configured the books are not opened: every `reap` reconciles them with
/// the markers, so a limit configured later counts them from its first
/// reap. Books that cannot be used fail closed: nothing is spent without
/// them.
fn admit(
    settings: &Settings,
    queue: &Queue,
    m: &Marker,
    p: Provider,
    ui: Ui,
) -> anyhow::Result<Admitted> {
    if !settings.policy.admission_applies() {
        return Ok(Admitted::Yes(None));
    }
    let job = Reservation {
        key: m.idempotency_key.clone(),
        project: crate::names::project_key(&queue.project),
        task: m.task_file.clone(),
        provider: p.as_str().to_string(),
        job_id: None,
        started_at: m.started_at.clone(),
    };
    let now = std::time::SystemTime::now();
    let decided = match &settings.fleet {
        None => Books::open(&settings.state_dir, settings.lock_timeout).and_then(|mut b| {
            let d = b.admit(&settings.policy, &job, p, None, now)?;
            let probe = d == Decision::Admit
                && !settings.policy.caps().is_empty()
                && b.counts()?.get(p.as_str()).copied() == Some(1);
            anyhow::Ok((d, probe))
        }),
        Some(cfg) => fleet_admit(settings, cfg, &job, p, now, ui),
    };
    let (decision, probe) = match decided {
        Ok(d) => d,
        Err(e) => {
            if crate::error::code_of(&e) == Code::Config {
                return Err(e);
            }
            // The cause, said even with -q: it is why nothing goes.
            ui.error(format_args!("{e:#}; nothing delegated"));
            let d = if settings.fleet.is_some() {
                Decision::FleetUnreachable { provider: p }
            } else {
                Decision::BooksUnavailable { provider: p }
            };
            (d, false)
        }
    };
    if let Some(line) = decision.stderr_line() {
        // The contract's one line, as it words it (no prefix), said even
        // with -q: it is why the task runs locally.
        ui.plain(line);
    }
    Ok(match (&decision, decision.stdout_line()) {
        (Decision::Admit, _) | (_, None) => Admitted::Yes(Some(Reserved { probe })),
        (Decision::Budget { .. }, Some(line)) => {
            println!("{line}");
            Admitted::No(Code::Local)
        }
        (_, Some(line)) => {
            println!("{line}");
            Admitted::No(Code::TempFail)
        }
    })
}

/// Admission by the fleet's database (fleet.md), then this host's own copy
/// of the reservation (a failure there only warns: the next reap
/// reconciles). The local books are opened on a thread of their own
/// meanwhile: their file work overlaps the database's round trips.
fn fleet_admit(
    settings: &Settings,
    cfg: &crate::books::fleet::FleetConfig,
    job: &Reservation,
    p: Provider,
    now: std::time::SystemTime,
    ui: Ui,
) -> anyhow::Result<(Decision, bool)> {
    let (dir, timeout) = (settings.state_dir.clone(), settings.lock_timeout);
    let local = std::thread::spawn(move || Books::open(&dir, timeout));
    let decided = Admitter::connect(cfg, timeout, settings.max_age).and_then(|a| {
        let t = std::time::Instant::now();
        let d = a.admit(&settings.policy, job, p, now)?;
        ui.info(format_args!(
            "admission by the fleet database took {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        ));
        Ok(d)
    });
    let local = local.join().unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "cannot open the books: the thread panicked"
        ))
    });
    let (d, counted) = decided?;
    if d != Decision::Admit {
        return Ok((d, false));
    }
    // The price rule names this job when it is its provider's only one.
    let probe =
        !settings.policy.caps().is_empty() && counted.get(p.as_str()).is_none_or(|n| *n == 0);
    if let Err(e) = local.and_then(|mut b| b.reserve(job)) {
        ui.warn(format_args!("{e:#}; the next reap reconciles"));
    }
    Ok((d, probe))
}

/// Takes back the reservation of a job that surely was not created. A
/// failure is a warning: the next reap reconciles.
fn release(settings: &Settings, reserved: Option<Reserved>, key: &str, ui: Ui) {
    if reserved.is_none() {
        return;
    }
    let local = || Books::open(&settings.state_dir, settings.lock_timeout);
    let r = match &settings.fleet {
        None => local().and_then(|mut b| b.release(key)),
        Some(cfg) => {
            let told = Fleet::connect(cfg, settings.lock_timeout, settings.max_age)
                .and_then(|mut f| f.release(key));
            // Not told: released as a reap releases a job it books, the
            // key kept in this host's journal for the next reap to push
            // (an idle reap pushes too when it holds one).
            let kept = local().and_then(|mut b| match &told {
                Ok(()) => b.release(key),
                Err(_) => {
                    b.set_journal(true);
                    b.book(&[], &[key]).map(drop)
                }
            });
            told.and(kept)
        }
    };
    if let Err(e) = &r {
        ui.warn(format_args!(
            "{e:#}; the job counts as in flight until the next reap"
        ));
    }
}

/// Names the job of a reservation, for the price rule's message.
fn note_job(settings: &Settings, key: &str, job_id: &str, ui: Ui) {
    let r = match &settings.fleet {
        None => Books::open(&settings.state_dir, settings.lock_timeout)
            .and_then(|mut b| b.set_job(key, job_id)),
        Some(cfg) => Fleet::connect(cfg, settings.lock_timeout, settings.max_age)
            .and_then(|mut f| f.set_job(key, job_id)),
    };
    if let Err(e) = r {
        ui.info(format_args!("cannot note job {job_id} in the books: {e:#}"));
    }
}

/// The failover chain stored in the marker: the task's `fallback`, else
/// the config's default for its provider. Stored, so that a config change
/// later does not alter a job in flight; `-v` names it.
fn chain_to_follow(
    meta: &frontmatter::Meta,
    provider: Provider,
    settings: &Settings,
    ui: Ui,
    shown: &str,
) -> Vec<String> {
    let own = route::fallback(meta);
    for w in &own.warnings {
        ui.warn(format_args!("{shown}: {w}"));
    }
    let (chain, from) = if own.given {
        (own.chain, "the task's fallback")
    } else {
        let chain = settings.policy.chain_after(provider);
        (chain.to_vec(), "the config's default")
    };
    let words = if chain.is_empty() {
        "no failover".to_string()
    } else {
        format!(
            "if its job fails: {} ({from})",
            route::Fallback::words(&chain)
        )
    };
    // When entries were dropped, what is left is said with the warnings.
    if own.warnings.is_empty() {
        if !chain.is_empty() {
            ui.info(format_args!("{shown}: {words}"));
        }
    } else {
        ui.warn(format_args!("{shown}: so the task has {words}"));
    }
    chain.iter().map(|p| p.as_str().to_string()).collect()
}

/// The longest file name the inbox's file system takes (255 when it
/// cannot say).
fn name_max(dir: &std::path::Path) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 255;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    let n = unsafe { libc::pathconf(c.as_ptr(), libc::_PC_NAME_MAX) };
    if n > 0 { n as usize } else { 255 }
}

/// Prints the line of the marker now on disk and exits 0: exit 0 means
/// exactly that the dispatcher must skip the task. A marker gone with its
/// task was finished by a reap meanwhile (`known` is then the line); one
/// gone while the task stays (removed by another process) is an error.
fn confirm(queue: &Queue, task: &str, ui: Ui, known: String) -> anyhow::Result<Code> {
    let line = match existing(queue, task, ui)? {
        Some(line) => line,
        None if std::fs::symlink_metadata(queue.task_path(task)).is_err() => known,
        None => {
            return Err(fail(
                Code::TempFail,
                format!(
                    "{}: its marker vanished while it was submitted (removed by another process); the task is not delegated; try again",
                    queue.task_path(task).display()
                ),
            ));
        }
    };
    println!("{line}");
    Ok(Code::Ok)
}

/// `delegated <provider> <job>` or `pending <provider>` when a marker is
/// already there.
fn existing(queue: &Queue, task: &str, ui: Ui) -> anyhow::Result<Option<String>> {
    // A marker that cannot be read (a symlink, never followed) is still a
    // marker: the task stays skipped, like one whose marker is corrupt.
    let parsed = match queue.read_marker(task) {
        Ok(Some(bytes)) => Marker::parse(&bytes),
        Ok(None) => return Ok(None),
        // Only a marker that is there holds the task back.
        Err(e) if std::fs::symlink_metadata(queue.marker_path(task)).is_err() => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot read the marker {}",
                queue.marker_path(task).display()
            )));
        }
        Err(e) => Err(format!("cannot read it: {e}")),
    };
    Ok(Some(match parsed {
        Ok(Marker {
            state: State::Submitted,
            job_id: Some(j),
            provider,
            ..
        // The provider comes from a file: one word on stdout, whatever it holds.
        }) => format!("delegated {} {j}", crate::text::clip(&provider, 40)),
        Ok(m) => format!("pending {}", crate::text::clip(&m.provider, 40)),
        Err(why) => {
            ui.warn(format_args!(
                "{}: corrupt marker ({why}); the task stays skipped and the next reap moves it to failed/",
                queue.marker_path(task).display()
            ));
            "pending unknown".to_string()
        }
    }))
}
