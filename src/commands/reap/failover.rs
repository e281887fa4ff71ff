//! `reap`'s failover step (policy.md "Failover"): admission for the next
//! provider, the failed job's ledger entry, the marker replaced by a
//! pending one for the next provider, and its POST, as `submit` sends it.

use std::ffi::OsStr;

use super::Ctx;
use super::poll::{self, Call, Facts, Reason};
use crate::books::{Entry, Reservation};
use crate::client::JobStatus;
use crate::marker::{Attempt, Marker, State};
use crate::policy::{Decision, Provider};
use crate::queue::{Queue, QueueLock, shown};
use crate::text::clip;
use crate::timestamp;

/// How the job being left ended.
pub(super) struct Step {
    pub(super) reason: Reason,
    pub(super) error: Option<String>,
    /// The provider the service said ran it, if it said.
    pub(super) provider: Option<String>,
}

impl Step {
    /// The provider of the ended job, as its attempt and its ledger entry
    /// both name it (so a rebuild or a recovery books it where the step
    /// did): the service's answer when it names a provider, else the one
    /// the marker asked for (`auto` included).
    fn ran_on(&self, m: &Marker) -> String {
        self.provider
            .as_deref()
            .and_then(Provider::parse)
            .filter(|p| *p != Provider::Auto)
            .map_or_else(|| m.provider.clone(), |p| p.as_str().to_string())
    }
}

/// The error kept for an ended job: the service's, else what the client
/// saw (a 404), clipped to one line.
pub(super) fn error_of(
    reason: Reason,
    status: Option<&JobStatus>,
    last_error: Option<&str>,
) -> Option<String> {
    let e = match reason {
        Reason::NotFound => last_error.map(str::to_string),
        _ => status.and_then(|s| s.error.clone()),
    };
    e.map(|e| clip(&e, 500))
}

/// The marker for the next provider: a fresh key, the same `started_at`,
/// the history so far and the chain left. `None` when the chain is empty
/// or names no provider (then there is nothing to fail over to).
pub fn next_marker(
    m: &Marker,
    step: &Step,
    key: String,
    now: String,
    deferred: bool,
) -> Option<Marker> {
    let (next, rest) = m.fallback.split_first()?;
    Provider::parse(next)?;
    let mut attempts = m.attempts.clone();
    attempts.push(Attempt {
        provider: step.ran_on(m),
        job_id: m.job_id.clone(),
        status: step.reason.as_str().to_string(),
        error: step.error.clone(),
    });
    Some(Marker {
        state: State::Pending,
        job_id: None,
        provider: next.clone(),
        idempotency_key: key,
        poll_errors: 0,
        last_error: None,
        attempts,
        fallback: rest.to_vec(),
        deferred,
        sent_at: Some(now),
        ..m.clone()
    })
}

/// The stdout line of a failover step. `to` is `job <id>`, `pending` when
/// the POST's outcome is unknown (a refused step prints no such line).
/// A job that ended without an error says only its status.
pub fn line(task: &str, last: &Attempt, provider: &str, to: &str) -> String {
    let error = match last.error.as_deref() {
        Some(e) => format!(": {}", clip(e, 200)),
        None => String::new(),
    };
    format!(
        "failover {} (job {} {}{error}) -> {} {}",
        task,
        clip(last.job_id.as_deref().unwrap_or("none"), 80),
        clip(&last.status, 40),
        clip(provider, 40),
        clip(to, 120)
    )
}

/// What a `failed/` record ended by a budget says.
pub(super) fn budget_details(
    m: &Marker,
    job_id: Option<&str>,
    status: Option<&JobStatus>,
    cap: Option<String>,
) -> String {
    let next = if m.deferred {
        m.provider.as_str()
    } else {
        m.fallback
            .first()
            .map_or("the next provider", String::as_str)
    };
    let mut s = String::new();
    if let Some(job) = job_id {
        s.push_str(&format!("Job {job} ended on secutools"));
        if let Some(e) = status.and_then(|s| s.error.as_deref()) {
            s.push_str(&format!(": {}", clip(e, 500)));
        }
        s.push_str(".\n");
    }
    s.push_str(&format!(
        "The failover to {} was refused by a budget: {}.\n",
        clip(next, 40),
        cap.as_deref().unwrap_or("a cap would be passed")
    ));
    s
}

/// What admission gave a step: the queue lock, held until its marker is
/// written (so that no reconcile sees the reservation without it), and
/// the key of the job admitted.
pub(super) struct Admitted {
    pub(super) lock: Option<QueueLock>,
    pub(super) key: Option<String>,
}

impl Ctx<'_> {
    /// Books the jobs a marker's `attempts` name that the ledger lacks
    /// (the step of a run killed between its marker and its entry, or of
    /// one whose books were unavailable). Books that cannot be used are
    /// said once for the run; the chain goes on: its record names every
    /// earlier job, and books them when it is written.
    pub(super) fn count_attempts(&self, q: &Queue, task: &OsStr, m: &Marker) {
        let ids: Vec<&str> = m
            .attempts
            .iter()
            .filter_map(|a| a.job_id.as_deref())
            .collect();
        if ids.is_empty() {
            return;
        }
        let counted = self.with_books(|b| {
            let lacking = b.lacking(&ids)?;
            if lacking.is_empty() {
                return Ok(());
            }
            let (project, task) = (
                crate::names::project_key(&q.project),
                task.to_string_lossy(),
            );
            let now = timestamp::now();
            let missing: Vec<Entry> = m
                .attempts
                .iter()
                .filter(|a| a.job_id.as_ref().is_some_and(|j| lacking.contains(j)))
                .map(|a| Entry::of_attempt(a, &project, &task, &m.started_at, &now))
                .collect();
            b.book(&missing, &[])?;
            Ok(())
        });
        if let Err(e) = counted {
            self.books_failed(&e);
        }
    }

    /// Whether the next job may go (`submitted`: the chain's next after
    /// the job that ended; else the deferred marker's own provider). The
    /// job being left stops counting in the same transaction, so it never
    /// counts against itself; a step deferred holds no job. On admit the
    /// queue lock stays held for the marker's write.
    pub(super) fn check_admission(
        &self,
        q: &Queue,
        task: &OsStr,
        m: &Marker,
        submitted: bool,
    ) -> (poll::Admission, Option<String>, Admitted) {
        let none = || Admitted {
            lock: None,
            key: None,
        };
        let policy = &self.settings.policy;
        let name = if submitted {
            m.fallback.first().map_or("", String::as_str)
        } else {
            m.provider.as_str()
        };
        let Some(next) = Provider::parse(name) else {
            return (poll::Admission::Budget, None, none());
        };
        if !policy.admission_applies() {
            return (poll::Admission::Admit, None, none());
        }
        let Some(key) = self.next_key(m, submitted) else {
            return (poll::Admission::Defer, None, none());
        };
        let lock = match q.lock() {
            Ok(l) => l,
            Err(e) => {
                self.ui.warn(format_args!(
                    "{}: failover to {next} waits: {e:#}",
                    shown(&q.task_path(task))
                ));
                return (poll::Admission::Defer, None, none());
            }
        };
        let job = Reservation {
            key: key.clone(),
            project: crate::names::project_key(&q.project),
            task: task.to_string_lossy().into_owned(),
            provider: next.as_str().to_string(),
            job_id: None,
            started_at: m.started_at.clone(),
        };
        let decided = self.admit(&job, next, m.idempotency_key.as_str());
        let held = Admitted {
            lock: Some(lock),
            key: Some(key),
        };
        match decided {
            Ok(Decision::Admit) => (poll::Admission::Admit, None, held),
            Ok(d @ Decision::Budget { .. }) => (poll::Admission::Budget, d.stderr_line(), none()),
            Ok(d) => {
                self.ui.info(format_args!(
                    "{}: failover to {next} {}",
                    shown(&q.task_path(task)),
                    d.stdout_line().unwrap_or_default()
                ));
                (poll::Admission::Defer, None, held)
            }
            // Admission cannot be asked: the step waits for a later reap,
            // as for a limit, and the run says why.
            Err(e) => {
                if self.settings.fleet.is_none() {
                    self.books_failed(&e);
                }
                (poll::Admission::Defer, None, held)
            }
        }
    }

    /// The idempotency key of the next job: a new one for the chain's next
    /// step, the deferred marker's own otherwise; `None` (said) when no
    /// key can be made, and the step waits.
    fn next_key(&self, m: &Marker, submitted: bool) -> Option<String> {
        if !submitted {
            return Some(m.idempotency_key.clone());
        }
        match crate::job::new_idempotency_key() {
            Ok(k) => Some(k),
            Err(e) => {
                self.ui.warn(format_args!(
                    "cannot read /dev/urandom for an idempotency key: {e}"
                ));
                None
            }
        }
    }

    /// Asks the fleet's database (or, without a fleet, the books) whether
    /// `job` may go to `next`, the job keyed `leaving` no longer counting.
    /// With a fleet, this host's own copy follows the fleet's decision.
    fn admit(&self, job: &Reservation, next: Provider, leaving: &str) -> anyhow::Result<Decision> {
        let policy = &self.settings.policy;
        let now = std::time::SystemTime::now();
        match self.with_fleet(|f| f.admit(policy, job, next, Some(leaving), now)) {
            None => self.with_books(|b| b.admit(policy, job, next, Some((leaving, None)), now)),
            Some(Ok(d)) => {
                // This host's own copy follows the fleet's decision.
                if !matches!(d, Decision::Budget { .. }) {
                    let mirrored = self.with_books(|b| {
                        b.release(leaving)?;
                        if d == Decision::Admit {
                            b.reserve(job)?;
                        }
                        Ok(())
                    });
                    if let Err(e) = mirrored {
                        self.books_failed(&e);
                    }
                }
                Ok(d)
            }
            Some(Err(e)) => {
                self.fleet_failed(&e);
                Err(e)
            }
        }
    }

    /// The failover step's files: the marker replaced (under the queue
    /// lock, only if it still holds `seen`) by a pending one for the next
    /// provider, whose `attempts` now name the ended job; then that job's
    /// ledger entry (a kill in between leaves it in the marker's
    /// `attempts`, which the next reap books: [`Ctx::count_attempts`]).
    /// Gives the new marker, or `None` when another run changed the marker
    /// meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fail_over(
        &self,
        q: &Queue,
        task: &OsStr,
        seen: &[u8],
        m: &Marker,
        step: Step,
        deferred: bool,
        admitted: Admitted,
    ) -> anyhow::Result<Option<Marker>> {
        let key = match admitted.key {
            Some(k) => k,
            None => crate::job::new_idempotency_key().map_err(|e| {
                anyhow::anyhow!("cannot read /dev/urandom for an idempotency key: {e}")
            })?,
        };
        let Some(next) = next_marker(m, &step, key, timestamp::now(), deferred) else {
            anyhow::bail!("its marker's fallback chain names no provider (a bug in reap)");
        };
        let project = crate::names::project_key(&q.project);
        let entry = Entry {
            job_id: m.job_id.clone(),
            project: project.clone(),
            task: task.to_string_lossy().into_owned(),
            provider: step.ran_on(m),
            said_provider: step
                .provider
                .clone()
                .filter(|p| Provider::parse(p).is_none_or(|k| k.as_str() != p)),
            model: None,
            status: step.reason.as_str().to_string(),
            cost_cad: 0.0,
            tokens_in: None,
            tokens_out: None,
            delegated_at: m.sent_at.clone().unwrap_or_else(|| m.started_at.clone()),
            finished_at: timestamp::now(),
            step: true,
        };
        let lock = match admitted.lock {
            Some(l) => l,
            None => q.lock()?,
        };
        if !q.fail_over(&lock, task, seen, &next)? {
            drop(lock);
            // The reservation made for it has no marker: taken back.
            if !deferred && next.idempotency_key != m.idempotency_key {
                let _ = self.with_books(|b| b.release(&next.idempotency_key));
            }
            return Ok(None);
        }
        drop(lock);
        if let Err(e) = self.with_books(|b| b.book(std::slice::from_ref(&entry), &[])) {
            self.books_failed(&e);
        }
        // A step counts in the metrics when it is sent: a deferred one
        // when a later run sends it (it may never be: a budget can end it).
        if !deferred {
            self.note_failover(&next.idempotency_key, &m.provider, &next.provider);
        }
        if deferred {
            self.ui.info(format_args!(
                "{}: job {} {}; the failover to {} waits for a limit",
                shown(&q.task_path(task)),
                m.job_id.as_deref().unwrap_or("none"),
                step.reason.as_str(),
                next.provider
            ));
        }
        Ok(Some(next))
    }

    /// POSTs a failover step's pending marker exactly as `submit` does, and
    /// says the step on stdout: an unknown outcome stays pending (a later
    /// reap re-sends it with the same key).
    pub(super) fn send_step(
        &self,
        q: &Queue,
        task: &OsStr,
        m: &Marker,
        bytes: Option<&[u8]>,
        accepted: &mut Option<String>,
        last_error: &mut Option<String>,
    ) -> Call<()> {
        let Some(client) = self.client() else {
            return Call::Err(poll::Failure::Other);
        };
        let req = crate::job::request(
            &q.project_name(),
            &task.to_string_lossy(),
            bytes.unwrap_or_default(),
            &m.provider,
            &m.priority,
        );
        let (sent, to) = match client.submit(&req, &m.idempotency_key) {
            Ok(s) => {
                let to = format!("job {}", s.job_id);
                *accepted = Some(s.job_id);
                (Call::Ok(()), to)
            }
            Err(e) => {
                let f = self.failure(&e, last_error);
                (Call::Err(f), "pending".to_string())
            }
        };
        // A refused step hands the task back to the dispatcher, and that
        // is its one line (`returned ...`, with the service's reason). Any
        // other failure leaves the step pending: a later reap re-sends it.
        if sent == Call::Err(poll::Failure::Rejected) {
            return sent;
        }
        if let Some(last) = m.attempts.last() {
            self.say(format_args!(
                "{}",
                line(&shown(&q.task_path(task)), last, &m.provider, &to)
            ));
        }
        sent
    }

    /// The facts of a failover step's marker, just written.
    pub(super) fn fresh_pending(&self, age: std::time::Duration) -> Facts {
        Facts::new(poll::Marker::Pending, age, self.submit_grace, self.max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker::parse(
            br#"{"version":1,"state":"submitted","job_id":"j-1","provider":"gemini",
            "idempotency_key":"ccl-0123456789abcdef0123456789abcdef",
            "started_at":"2026-11-24T10:00:00Z","fallback":["claude","gpu"]}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_next_marker_keeps_the_clock_and_the_history() {
        let m = marker();
        let step = Step {
            reason: Reason::Failed,
            error: Some("gemini model overloaded".into()),
            provider: None,
        };
        let n = next_marker(
            &m,
            &step,
            "ccl-new".into(),
            "2026-11-24T10:05:00Z".into(),
            false,
        )
        .unwrap();
        assert_eq!(
            (
                n.state,
                n.provider.as_str(),
                n.job_id.as_deref(),
                n.started_at.as_str(),
                n.fallback.clone(),
                n.idempotency_key.as_str()
            ),
            (
                State::Pending,
                "claude",
                None,
                "2026-11-24T10:00:00Z",
                vec!["gpu".to_string()],
                "ccl-new"
            )
        );
        assert_eq!(
            n.attempts,
            vec![Attempt {
                provider: "gemini".into(),
                job_id: Some("j-1".into()),
                status: "failed".into(),
                error: Some("gemini model overloaded".into()),
            }]
        );
        let empty = Marker {
            fallback: vec![],
            ..m
        };
        assert!(next_marker(&empty, &step, "k".into(), "t".into(), false).is_none());
    }

    #[test]
    fn the_line_is_one_line_whatever_the_error() {
        let a = Attempt {
            provider: "gemini".into(),
            job_id: Some("j-1".into()),
            status: "failed".into(),
            error: Some("over\nloaded\u{202e}".into()),
        };
        let l = line("p/a.md", &a, "claude", "job j-2");
        assert!(!l.contains('\n') && !l.contains('\u{202e}'), "{l}");
        assert!(
            l.starts_with("failover p/a.md (job j-1 failed: over"),
            "{l}"
        );
        assert!(l.ends_with(") -> claude job j-2"), "{l}");
    }
}
