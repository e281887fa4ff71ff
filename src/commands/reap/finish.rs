//! `reap`'s finishing thread: the pollers hand it finished jobs, and it
//! writes their records in batches (one queue lock hold and one directory
//! fsync per batch, one fsync per record), so that no poller waits for the
//! disk.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::mpsc;

use super::{Ctx, book, metrics};
use crate::queue::{Finishing, Outcome, Prepared, Queue, QueueLock, TaskNote, shown};
use crate::record::{self, Completed, Failure};
use crate::text::clip;
use crate::timestamp;

/// The line for a task finished into done/.
fn done_line(path: &Path, job_id: &str, provider: &str, cost_cad: f64) -> String {
    format!(
        "done {} (job {job_id}, {}, {cost_cad:.4} CAD)",
        shown(path),
        clip(provider, 40)
    )
}

/// The line for a task finished into failed/.
fn failed_line(path: &Path, job_id: &str, reason: &str) -> String {
    format!(
        "failed {} (job {job_id}: {})",
        shown(path),
        clip(reason, 80)
    )
}

/// The line for a chain a budget ended: the last job the service ran, and
/// the step the budget refused (a step that never became a job is no job).
fn budget_line(
    path: &Path,
    job_id: Option<&str>,
    attempts: &[crate::marker::Attempt],
    requested: &str,
) -> String {
    let said = match (job_id, attempts.last()) {
        (Some(j), _) => format!(
            "job {} on {} ended; its failover was refused by a budget",
            clip(j, 80),
            clip(requested, 40)
        ),
        // A deferred step the budget refused: it never became a job.
        (None, Some(a)) => format!(
            "job {} {} on {}; the failover to {} was refused by a budget",
            clip(a.job_id.as_deref().unwrap_or("none"), 80),
            clip(&a.status, 40),
            clip(&a.provider, 40),
            clip(requested, 40)
        ),
        (None, None) => "refused by a budget".to_string(),
    };
    format!("failed {} ({said})", shown(path))
}

/// The line for a task whose record an interrupted run had already
/// written: the same as when the record is written now.
pub(super) fn recorded_line(path: &Path, job_id: &str) -> String {
    let r = crate::queue::read_nofollow(path, crate::fsread::Kind::Record)
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

/// How a job ended, with what its record needs.
pub(super) enum Verdict {
    Done {
        provider: String,
        model: String,
        cost_cad: f64,
        tokens: record::Tokens,
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
pub(super) struct Finished {
    pub(super) queue: Queue,
    pub(super) task: OsString,
    /// The marker's bytes the decision was made on.
    pub(super) seen: Vec<u8>,
    pub(super) job_id: Option<String>,
    /// The provider the marker asked for (`auto` included).
    pub(super) requested: String,
    /// The marker's idempotency key: its job's reservation.
    pub(super) key: String,
    pub(super) delegated_at: String,
    /// The earlier jobs of its failover chain.
    pub(super) attempts: Vec<crate::marker::Attempt>,
    pub(super) verdict: Verdict,
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
                tokens,
                response,
            } => record::render_done_after(
                &Completed {
                    provider,
                    model,
                    cost_cad: *cost_cad,
                    job_id: self.job_id.as_deref().unwrap_or_default(),
                    delegated_at: &self.delegated_at,
                    completed_at: &now,
                    response,
                },
                *tokens,
                &self.attempts,
                &shown(Path::new(&self.task)),
                original,
            ),
            Verdict::Failed {
                provider,
                reason,
                details,
            } => record::render_failed_after(
                &Failure {
                    provider,
                    reason,
                    job_id: self.job_id.as_deref(),
                    delegated_at: &self.delegated_at,
                    failed_at: &now,
                    details,
                },
                &self.attempts,
                &shown(Path::new(&self.task)),
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
            Verdict::Failed { reason, .. } if reason == "budget" => budget_line(
                path,
                self.job_id.as_deref(),
                &self.attempts,
                &self.requested,
            ),
            Verdict::Failed { reason, .. } => failed_line(path, job, reason),
        }
    }

    /// Takes it out of the run's jobs in flight (the books count it).
    fn tally(&self, tally: &mut metrics::Tally) {
        tally.finished(&self.queue, &self.requested);
    }
}

/// A record rendered with its mode, or the path of the one an interrupted
/// run wrote.
type Rendered = Result<(Vec<u8>, u32), std::path::PathBuf>;

/// The finished jobs of a batch, grouped by project. The same task twice
/// (a queue named twice) is kept once: twice would write two records for
/// one job.
fn by_project(batch: Vec<Finished>) -> Vec<Vec<Finished>> {
    let mut by_project: Vec<Vec<Finished>> = Vec::new();
    for f in batch {
        match by_project
            .iter_mut()
            .find(|g| g[0].queue.root == f.queue.root)
        {
            Some(g) if g.iter().any(|o| o.task == f.task) => {}
            Some(g) => g.push(f),
            None => by_project.push(vec![f]),
        }
    }
    by_project
}

/// At most this many records are written under one hold of a queue lock.
const MAX_BATCH: usize = 64;

impl Ctx<'_> {
    /// Gives a finished job to the finishing thread (or, outside the pool
    /// or when that thread is gone, finishes it here).
    pub(super) fn hand_over(&self, f: Finished) {
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
    pub(super) fn finish_loop(&self, rx: mpsc::Receiver<Option<Finished>>) {
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
    /// fsync of each directory for the whole batch (`Queue::finish_many_then`),
    /// while every record still gets its own fsync before its task goes.
    fn finish_batch(&self, batch: Vec<Finished>) {
        for group in by_project(batch) {
            self.finish_group(group);
        }
    }

    /// One project's finished jobs, under one hold of its queue lock.
    fn finish_group(&self, group: Vec<Finished>) {
        let q = group[0].queue.clone();
        let lock = match q.lock() {
            Ok(lock) => lock,
            Err(e) => {
                group.iter().for_each(|f| self.task_failed(&q, &f.task, &e));
                return;
            }
        };
        // Each job re-checked, and its record rendered (or found already
        // written by an interrupted run).
        let jobs: Vec<(Finished, Rendered)> = group
            .into_iter()
            .filter_map(|f| {
                let record = self.recheck(&q, &lock, &f)?;
                Some((f, record))
            })
            .collect();
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
        // The ledger entries, once the records are durable and before
        // any task goes ("a job counts once", ledger/mod.rs).
        let (results, inbox_sync) = q.finish_many_then(&lock, &items, |results| {
            self.book(&q, &jobs, results);
        });
        drop(items);
        drop(lock);
        for ((f, record), result) in jobs.into_iter().zip(results) {
            let path = match (result, record) {
                (Ok(Some(written)), _) => written,
                (Ok(None), Err(existing)) => existing,
                (Ok(None), Ok(_)) => continue,
                (Err(e), _) => {
                    self.task_failed(&q, &f.task, &e);
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

    /// One finished job re-checked under the queue lock: `Ok` the record
    /// to write and its mode, `Err` the record an interrupted run wrote;
    /// `None` when there is nothing to write (the marker changed, a stale
    /// marker was removed, or an error, said).
    fn recheck(&self, q: &Queue, lock: &QueueLock, f: &Finished) -> Option<Rendered> {
        let (task, job_id) = (&f.task, f.job_id.as_deref());
        match q.prepare(lock, task, &f.seen, job_id) {
            Ok(Prepared::Changed) => None,
            Ok(Prepared::Stale(existing)) => {
                match q.remove_marker(lock, task) {
                    Ok(()) => self.say(format_args!(
                        "returned {} to the dispatcher: job {} already finished into {}",
                        shown(&q.task_path(task)),
                        job_id.unwrap_or("none"),
                        shown(&existing)
                    )),
                    Err(e) => self.task_failed(q, task, &e),
                }
                None
            }
            Ok(Prepared::Recorded(path)) => Some(Err(path)),
            Ok(Prepared::Write {
                original,
                mode,
                note,
            }) => {
                self.task_note(q, task, job_id, note);
                Some(Ok((f.render(original.as_deref()), mode)))
            }
            Err(e) => {
                self.task_failed(q, task, &e);
                None
            }
        }
    }

    /// A task that could not be finished: a local error naming it.
    fn task_failed(&self, q: &Queue, task: &OsStr, e: &anyhow::Error) {
        self.local_error(format_args!("{}: {e:#}", shown(&q.task_path(task))));
    }

    /// Books the entries of the records now durable: those this batch
    /// wrote, and once each those an interrupted run wrote; their jobs stop
    /// counting as reserved in the same transaction. Books that cannot
    /// take them leave the entries owed (`book.rs`); only when that fails
    /// too do the tasks and markers stay for the next run.
    fn book(
        &self,
        q: &Queue,
        jobs: &[(Finished, Rendered)],
        results: &mut [anyhow::Result<Option<std::path::PathBuf>>],
    ) {
        let (mut entries, mut keys, mut which) = (Vec::new(), Vec::new(), Vec::new());
        for (i, ((f, record), result)) in jobs.iter().zip(results.iter()).enumerate() {
            let requested = Some(f.requested.as_str());
            let found = match (result, record) {
                (Ok(Some(_)), Ok((bytes, _))) => book::entries(q, &f.task, bytes, requested),
                (Ok(None), Err(existing)) => {
                    crate::queue::read_nofollow(existing, crate::fsread::Kind::Record)
                        .ok()
                        .flatten()
                        .and_then(|(bytes, _)| book::entries(q, &f.task, &bytes, requested))
                }
                _ => None,
            };
            if results[i].is_err() {
                continue;
            }
            entries.extend(found.unwrap_or_default());
            keys.push(f.key.clone());
            which.push(i);
        }
        if let Err(e) = self.book_records(q, entries, keys) {
            for i in which {
                results[i] = Err(anyhow::anyhow!("{e:#}"));
            }
        }
    }

    /// Says why a record is written without its original task.
    fn task_note(&self, q: &Queue, task: &OsStr, job_id: Option<&str>, note: Option<TaskNote>) {
        let path = q.task_path(task);
        match note {
            None => {}
            Some(TaskNote::Symlink) => self.ui.warn(format_args!(
                "{}: is a symbolic link; it is never read or moved, and is left in place",
                shown(&path)
            )),
            // Not fatal: the record says `task_missing: true`.
            Some(TaskNote::Vanished) => self.ui.warn(format_args!(
                "{}: the task vanished while delegated (job {}); was it run or moved by the dispatcher, which should skip a task with a marker?",
                shown(&path),
                job_id.unwrap_or("none")
            )),
        }
    }
}
