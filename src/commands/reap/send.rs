//! The actions that send a task: a pending submission re-sent (its job id
//! recorded), a failover step to the chain's next provider, and a deferred
//! step sent once a limit lets it.

use std::ops::ControlFlow::{self, Break, Continue};

use super::handle::{Work, not_admitted};
use super::{Ctx, failover, poll};
use crate::queue::shown;
use crate::timestamp;
use poll::{Call, Reason};

impl Ctx<'_> {
    /// Re-sends a pending submission with its idempotency key.
    pub(super) fn resend(&self, w: &mut Work<'_>) -> ControlFlow<()> {
        let Some(client) = self.client() else {
            return Break(());
        };
        let bytes = w.task_bytes.as_deref().unwrap_or_default();
        let req = crate::job::request(
            &w.q.project_name(),
            &w.task.to_string_lossy(),
            bytes,
            &w.m.provider,
            &w.m.priority,
        );
        w.facts.sent = match client.submit(&req, &w.m.idempotency_key) {
            Ok(s) => {
                w.accepted = Some(s.job_id);
                Call::Ok(())
            }
            Err(e) => Call::Err(self.failure(&e, &mut w.last_error)),
        };
        Continue(())
    }

    /// The re-sent job's id, into the marker if it is still ours.
    pub(super) fn record_job_id(&self, w: &mut Work<'_>) -> anyhow::Result<()> {
        let (q, task) = (w.q, w.task);
        let job = w.accepted.as_deref().unwrap_or_default();
        let lock = q.lock()?;
        if q.record_job_id(&lock, task, &w.m.idempotency_key, job)? {
            self.ui.info(format_args!(
                "{}: re-sent, job {job}",
                shown(&q.task_path(task))
            ));
        }
        Ok(())
    }

    /// The job ended for `reason`: the marker becomes the chain's next
    /// step, sent at once unless a limit `deferred` it.
    pub(super) fn fail_over_step(
        &self,
        w: &mut Work<'_>,
        reason: Reason,
        deferred: bool,
    ) -> anyhow::Result<ControlFlow<()>> {
        let step = failover::Step {
            reason,
            error: failover::error_of(reason, w.status.as_ref(), w.last_error.as_deref()),
            provider: w
                .status
                .as_ref()
                .and_then(|s| s.provider.clone())
                .filter(|p| !p.is_empty()),
        };
        let a = std::mem::replace(&mut w.admitted, not_admitted());
        let Some(next) = self.fail_over(w.q, w.task, &w.seen, &w.m, step, deferred, a)? else {
            return Ok(Break(()));
        };
        if deferred {
            return Ok(Break(()));
        }
        w.seen = next.to_bytes();
        w.m = next;
        w.facts = self.fresh_pending(w.age);
        w.facts.task = poll::Task::Present;
        self.send_now(w);
        Ok(Continue(()))
    }

    /// A step a limit deferred, admitted now: the marker says it is sent
    /// (if it is still the one acted on), then it is.
    pub(super) fn send_deferred(&self, w: &mut Work<'_>) -> anyhow::Result<ControlFlow<()>> {
        let (q, task) = (w.q, w.task);
        let mut fresh = w.m.clone();
        fresh.deferred = false;
        fresh.sent_at = Some(timestamp::now());
        let lock = match w.admitted.lock.take() {
            Some(l) => l,
            None => q.lock()?,
        };
        if !q.update_marker_if(&lock, task, &w.seen, &fresh)? {
            return Ok(Break(()));
        }
        drop(lock);
        if let Some(last) = fresh.attempts.last() {
            self.note_failover(&fresh.idempotency_key, &last.provider, &fresh.provider);
        }
        w.seen = fresh.to_bytes();
        w.m = fresh;
        w.facts.deferred = false;
        self.send_now(w);
        Ok(Continue(()))
    }

    /// Sends the marker's step (`send_step`), for the next decision.
    fn send_now(&self, w: &mut Work<'_>) {
        w.facts.sent = self.send_step(
            w.q,
            w.task,
            &w.m,
            w.task_bytes.as_deref(),
            &mut w.accepted,
            &mut w.last_error,
        );
    }
}
