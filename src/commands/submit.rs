//! `submit`: hand one inbox task to secutools, leaving a marker first so
//! that the dispatcher skips it and a killed run loses nothing.

use anyhow::Context;

use crate::cli::SubmitArgs;
use crate::config::Settings;
use crate::error::{Code, fail};
use crate::frontmatter;
use crate::job;
use crate::marker::{Marker, State};
use crate::queue::{Queue, QueueLock};
use crate::route::{self, Priority};
use crate::ui::Ui;

pub fn run(args: &SubmitArgs, settings: &Settings, ui: Ui) -> anyhow::Result<Code> {
    let (queue, task) = Queue::of_task(&args.task)?;
    let shown = args.task.display();

    if let Some(line) = existing(&queue, &task, ui)? {
        println!("{line}");
        return Ok(Code::Ok);
    }

    let bytes = queue
        .read_task(&task)
        .map_err(|e| fail(Code::NoInput, format!("{shown}: {e}")))?
        .ok_or_else(|| fail(Code::NoInput, format!("{shown}: no such task file")))?
        .0;
    let split = frontmatter::split(&bytes);
    let meta = ui.task_meta(&shown.to_string(), split.meta);
    let decision = route::route(&meta);
    if !decision.provider.delegates() {
        println!("local {}", decision.rule);
        return Ok(Code::Local);
    }
    let priority = match &args.priority {
        Some(p) => p.clone(),
        None => route::priority(&meta)
            .unwrap_or_else(|why| {
                ui.warn(format_args!("{shown}: {why}; using priority normal"));
                Priority::Normal
            })
            .as_str()
            .to_string(),
    };

    // Configuration problems end the run before anything is written.
    let client = settings.client()?;
    let key = job::new_idempotency_key()
        .map_err(|e| anyhow::anyhow!("cannot read /dev/urandom for an idempotency key: {e}"))?;
    let project = queue.project_name();
    let provider = decision.provider.as_str();
    let marker = Marker {
        version: 1,
        state: State::Pending,
        project: queue.project.display().to_string(),
        task_file: task.clone(),
        job_id: None,
        provider: provider.to_string(),
        priority: priority.clone(),
        idempotency_key: key.clone(),
        started_at: crate::timestamp::now(),
        poll_errors: 0,
        last_error: None,
    };
    let sent = (|| {
        {
            let lock = queue.lock()?;
            let created = queue
                .create_marker(&lock, &task, &marker)
                .with_context(|| format!("{shown}: cannot write its marker"))?;
            if !created {
                drop(lock);
                // Another submit won the race: report its marker.
                let line =
                    existing(&queue, &task, ui)?.unwrap_or_else(|| format!("pending {provider}"));
                println!("{line}");
                return Ok(Code::Ok);
            }
        }

        let req = job::request(&project, &task, &bytes, provider, &priority);
        match client.submit(&req, &key) {
            Ok(s) => {
                let lock = queue.lock()?;
                record_job_id(&queue, &lock, &task, &key, &s.job_id).with_context(|| {
                    format!(
                        "{shown}: job {} was created; cannot record it in the marker",
                        s.job_id
                    )
                })?;
                println!("delegated {provider} {}", s.job_id);
                Ok(Code::Ok)
            }
            Err(e) if !e.nothing_created() => {
                ui.warn(format_args!(
                    "{shown}: the outcome of the submission is unknown ({e}); the marker stays pending and the next reap re-sends it with the same idempotency key"
                ));
                println!("pending {provider}");
                Ok(Code::Ok)
            }
            Err(e) => {
                let lock = queue.lock()?;
                remove_if_ours(&queue, &lock, &task, &key).with_context(|| {
                    format!("{shown}: not delegated ({e}); cannot remove its pending marker")
                })?;
                // The design's codes for a refused POST: 69 unavailable, 77
                // auth, 65 any other 4xx (a 404 here is a wrong URL, not a job).
                let code = match crate::error::client_code(&e) {
                    Code::NoInput => Code::DataErr,
                    c => c,
                };
                Err(fail(
                    code,
                    format!(
                        "{shown}: not delegated: {e}; the task is untouched and may run locally"
                    ),
                ))
            }
        }
    })();
    // Exit 0 means exactly that a marker exists. A write or removal that
    // failed may leave one (renamed into place before a directory sync
    // failed, a pending marker whose job id could not be recorded, one that
    // could not be removed): then the dispatcher must skip the task, and the
    // next reap finishes the submission with the same idempotency key.
    match sent {
        Err(e) => match existing(&queue, &task, ui) {
            Ok(Some(line)) => {
                // Said even with --quiet: a write failed.
                eprintln!(
                    "ccl-delegate: error: {e:#}; the marker stays and the next reap finishes the submission"
                );
                println!("{line}");
                Ok(Code::Ok)
            }
            _ => Err(e),
        },
        ok => ok,
    }
}

/// `delegated <provider> <job>` or `pending <provider>` when a marker is
/// already there.
fn existing(queue: &Queue, task: &str, ui: Ui) -> anyhow::Result<Option<String>> {
    // A marker that cannot be read (a symlink, never followed) is still a
    // marker: the task stays skipped, like one whose marker is corrupt.
    let parsed = match queue.read_marker(task) {
        Ok(Some(bytes)) => Marker::parse(&bytes),
        Ok(None) => return Ok(None),
        Err(e) => Err(format!("cannot read it: {e}")),
    };
    Ok(Some(match parsed {
        Ok(Marker {
            state: State::Submitted,
            job_id: Some(j),
            provider,
            ..
        }) => format!("delegated {provider} {j}"),
        Ok(m) => format!("pending {}", m.provider),
        Err(why) => {
            ui.warn(format_args!(
                "{}: corrupt marker ({why}); the task stays skipped and the next reap moves it to failed/",
                queue.marker_path(task).display()
            ));
            "pending unknown".to_string()
        }
    }))
}

/// Records the job id in a pending marker that is still ours. Returns
/// whether it did.
pub(crate) fn record_job_id(
    queue: &Queue,
    lock: &QueueLock,
    task: &str,
    key: &str,
    job_id: &str,
) -> anyhow::Result<bool> {
    let Some(bytes) = queue.read_marker(task)? else {
        return Ok(false);
    };
    match Marker::parse(&bytes) {
        Ok(mut m) if m.state == State::Pending && m.idempotency_key == key => {
            m.state = State::Submitted;
            m.job_id = Some(job_id.to_string());
            m.poll_errors = 0;
            m.last_error = None;
            queue.replace_marker(lock, task, &m)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Removes a pending marker after a submission that surely failed, if it is
/// still the one this run wrote.
pub(crate) fn remove_if_ours(
    queue: &Queue,
    lock: &QueueLock,
    task: &str,
    key: &str,
) -> anyhow::Result<()> {
    if let Some(bytes) = queue.read_marker(task)? {
        if let Ok(m) = Marker::parse(&bytes) {
            if m.state == State::Pending && m.idempotency_key == key {
                queue.remove_marker(lock, task)?;
            }
        }
    }
    Ok(())
}
