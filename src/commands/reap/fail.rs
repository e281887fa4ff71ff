//! The actions that end a task: the result written to done/, or a record in
//! failed/ that says why (the job failed, timed out, the marker is corrupt,
//! a budget refused the next step). Each is handed to the finishing thread.

use std::ffi::OsStr;
use std::path::Path;

use super::finish::{Finished, Verdict};
use super::handle::Work;
use super::{Ctx, failover};
use crate::marker::Marker;
use crate::queue::{Queue, shown};
use crate::text::clip;
use poll::{Call, Failure, Reason};

use super::poll;

impl Ctx<'_> {
    /// The result fetched: to done/.
    pub(super) fn write_done(&self, w: &mut Work<'_>) -> anyhow::Result<()> {
        let Some(r) = w.result.take() else {
            anyhow::bail!("no result to write (a bug in reap)");
        };
        if let Some(note) = &r.cost_note {
            self.ui.warn(format_args!(
                "job {} ({}): the service gave no usable cost ({note}); recorded as 0",
                r.job_id,
                shown(&w.q.task_path(w.task))
            ));
        }
        let provider = if r.provider.is_empty() {
            w.m.provider.clone()
        } else {
            r.provider
        };
        self.hand_over(finished(
            w,
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

    /// The job did not finish within max_age: cancelled on the service
    /// (when there is a job and a client), then to failed/.
    pub(super) fn timeout(&self, w: &mut Work<'_>) -> anyhow::Result<()> {
        let mut details = format!(
            "The job did not finish within max_age ({}).",
            humantime::format_duration(self.max_age)
        );
        if let (Some(job), Some(client)) = (&w.m.job_id, self.client()) {
            match client.cancel(job) {
                Ok(_) => details.push_str(" It was cancelled on secutools."),
                Err(e) => details.push_str(&format!(" Cancelling it failed: {e}.")),
            }
        }
        details.push('\n');
        self.failed(w, "timeout", details.into_bytes())
    }

    /// To failed/ for `reason`, with the details that say it.
    pub(super) fn fail(&self, w: &mut Work<'_>, reason: Reason) -> anyhow::Result<()> {
        let details = self.details(w, reason);
        self.failed(w, reason.as_str(), details)
    }

    /// What the record of a task failed for `reason` says.
    fn details(&self, w: &mut Work<'_>, reason: Reason) -> Vec<u8> {
        let job = w.job_id.as_deref().unwrap_or("none");
        let text = match reason {
            Reason::Unconfirmed => format!(
                "The submission was never confirmed by secutools within {}.\n",
                humantime::format_duration(self.max_age)
            ),
            Reason::Failed | Reason::Cancelled | Reason::Expired => {
                match w.status.as_ref().and_then(|s| s.error.as_ref()) {
                    Some(err) => {
                        format!("The job ended `{}` on secutools: {err}\n", reason.as_str())
                    }
                    None => format!("The job ended `{}` on secutools.\n", reason.as_str()),
                }
            }
            Reason::NotFound if w.facts.result == Call::Err(Failure::NotFound) => format!(
                "secutools answered 404 to the result of job {job}: it does not know the job.\n"
            ),
            Reason::NotFound => format!("secutools answered 404: it does not know job {job}.\n"),
            Reason::TaskMissing => "The task file vanished before it was submitted.\n".to_string(),
            Reason::TaskUnreadable => format!(
                "{}\n",
                w.task_error
                    .as_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            ),
            Reason::Budget => failover::budget_details(
                &w.m,
                w.job_id.as_deref(),
                w.status.as_ref(),
                w.budget_line.take(),
            ),
            Reason::CorruptMarker => {
                let why = w.corrupt.as_deref().unwrap_or_default();
                return corrupt_details(w.q, w.task, &w.seen, why);
            }
        };
        text.into_bytes()
    }

    fn failed(&self, w: &Work<'_>, reason: &str, details: Vec<u8>) -> anyhow::Result<()> {
        // The provider that ran the job where the service said it (policy.md
        // "The ledger"), as a done record has it; else the one asked for.
        let provider = w
            .status
            .as_ref()
            .and_then(|s| s.provider.as_deref())
            .filter(|p| !p.trim().is_empty())
            .map_or_else(|| w.m.provider.clone(), |p| crate::text::clip(p, 80));
        self.hand_over(finished(
            w,
            Verdict::Failed {
                provider,
                reason: reason.to_string(),
                details,
            },
        ));
        Ok(())
    }
}

/// The record of a corrupt marker keeps its bytes.
fn corrupt_details(q: &Queue, task: &OsStr, seen: &[u8], why: &str) -> Vec<u8> {
    let mut details = format!(
        "The marker {} could not be read: {}.\nIts bytes, as found:\n\n",
        shown(Path::new(
            &q.marker_path(task).file_name().unwrap_or_default()
        )),
        clip(why, 300)
    )
    .into_bytes();
    details.extend_from_slice(seen);
    details
}

/// A finished job for the finishing thread: the marker as acted on, and
/// the verdict.
fn finished(w: &Work<'_>, verdict: Verdict) -> Finished {
    let m: &Marker = &w.m;
    Finished {
        queue: w.q.clone(),
        task: w.task.to_os_string(),
        seen: w.seen.clone(),
        job_id: m.job_id.clone(),
        requested: m.provider.clone(),
        key: m.idempotency_key.clone(),
        delegated_at: m.started_at.clone(),
        attempts: m.attempts.clone(),
        verdict,
    }
}
