//! `reap`'s failover step (policy.md "Failover"): admission for the next
//! provider, the failed job's ledger entry, the marker replaced by a
//! pending one for the next provider, and its POST, as `submit` sends it.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::sync::Mutex;

use super::Ctx;
use super::poll::{self, Call, Facts, Reason};
use crate::client::JobStatus;
use crate::ledger::{self, Entry};
use crate::marker::{Attempt, Marker, State};
use crate::policy::admission::Admission;
use crate::policy::{Decision, Provider};
use crate::queue::{Queue, shown};
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
            .filter(|p| Provider::parse(p).is_some_and(|p| p != Provider::Auto))
            .map_or_else(|| m.provider.clone(), str::to_string)
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

/// The ledger entries of the jobs failover steps leave, kept so that each
/// job counts once without a scan of the ledger per step:
///
/// - A step's entry is appended after its marker is replaced, with the
///   others of the run, in one write and one fsync at the end of the run
///   ([`Ctx::flush_ledger`]). Before the replacement the job was still the
///   marker's own, so no earlier run can have appended it: the append
///   needs no look.
/// - A run killed between a replacement and the append leaves the job
///   only in the marker's `attempts`. Every reap reads every marker before
///   acting on it, and appends the attempts the ledger lacks
///   ([`Ctx::count_attempts`]) against the ledger's job ids, read once per
///   run (the run lock keeps other reaps out meanwhile).
#[derive(Default)]
pub(super) struct Ledger {
    state: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    /// The job ids in the ledger, once read this run.
    ids: Option<HashSet<String>>,
    /// Entries of this run's steps, not yet appended.
    pending: Vec<Entry>,
}

impl Ledger {
    fn ended(&self, e: Entry) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .push(e);
    }
}

/// The job ids of the ledger.
fn ledger_ids(adm: &Admission) -> anyhow::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let p = ledger::path(adm.state_dir());
    ledger::scan(&p, 0, &mut Vec::new(), |line, _| {
        #[derive(serde::Deserialize)]
        struct Id {
            job_id: Option<String>,
        }
        if let Ok(Id { job_id: Some(id) }) = serde_json::from_slice::<Id>(line) {
            ids.insert(id);
        }
    })?;
    Ok(ids)
}

impl Ctx<'_> {
    /// Appends the entries of the jobs a marker's `attempts` name that the
    /// ledger lacks: those of a run killed before its end (see [`Ledger`]).
    /// `false` when that could not be done for now (the lock held too long,
    /// a write that failed): the marker is then left for the next run, so
    /// that its chain cannot end before its earlier jobs are counted. A
    /// ledger that is no regular file only warns: `ledger rebuild` mends it.
    pub(super) fn count_attempts(&self, q: &Queue, task: &OsStr, m: &Marker) -> bool {
        if m.attempts.iter().all(|a| a.job_id.is_none()) {
            return true;
        }
        let mut st = self.ledger.state.lock().unwrap_or_else(|p| p.into_inner());
        let lacking = |ids: &HashSet<String>| -> Vec<Entry> {
            let (project, task) = (
                crate::inflight::project_key(&q.project),
                task.to_string_lossy(),
            );
            let now = timestamp::now();
            m.attempts
                .iter()
                .filter(|a| a.job_id.as_ref().is_some_and(|j| !ids.contains(j)))
                .map(|a| Entry::of_attempt(a, &project, &task, &m.started_at, &now))
                .collect()
        };
        // The common case: every job already counted, nothing locked.
        if st.ids.as_ref().is_some_and(|ids| lacking(ids).is_empty()) {
            return true;
        }
        let counted = (|| {
            let adm =
                Admission::lock_for_reap(&self.settings.state_dir, self.settings.lock_timeout)?;
            if st.ids.is_none() {
                st.ids = Some(ledger_ids(&adm)?);
            }
            let ids = st.ids.as_mut().expect("just read");
            let missing = lacking(ids);
            if missing.is_empty() {
                return anyhow::Ok(());
            }
            ledger::append(&adm, &missing)?;
            ids.extend(missing.into_iter().filter_map(|e| e.job_id));
            Ok(())
        })();
        match counted {
            Ok(()) => true,
            Err(e) if super::book::ledger_is_odd(&self.settings.state_dir) => {
                self.ui.warn(format_args!(
                    "{}: the earlier jobs of its chain may be missing from the ledger: {e:#}; {}",
                    shown(&q.task_path(task)),
                    ledger::REBUILD_HINT
                ));
                true
            }
            Err(e) => {
                self.ui.warn(format_args!(
                    "{}: the earlier jobs of its chain are not in the ledger yet: {e:#}; the marker waits for the next reap",
                    shown(&q.task_path(task))
                ));
                false
            }
        }
    }

    /// Appends this run's failover entries, in one write.
    pub(super) fn flush_ledger(&self) {
        let mut st = self.ledger.state.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut st.pending);
        if pending.is_empty() {
            return;
        }
        let appended =
            Admission::lock_for_reap(&self.settings.state_dir, self.settings.lock_timeout)
                .and_then(|adm| ledger::append(&adm, &pending));
        if let Err(e) = appended {
            // Their markers keep them: the next reap appends them.
            self.local_error(format_args!(
                "{} failover entries not in the ledger yet: {e:#}; the next reap adds them",
                pending.len()
            ));
        }
    }

    /// Whether the next job may go (`deferred`: the marker's own provider,
    /// else the chain's next). The job being left, or the deferred marker
    /// itself, stops counting first, so it never counts against itself.
    /// Without budgets or limits configured there is nothing to ask.
    pub(super) fn check_admission(
        &self,
        q: &Queue,
        task: &OsStr,
        m: &Marker,
        submitted: bool,
    ) -> (poll::Admission, Option<String>) {
        let policy = &self.settings.policy;
        let name = if submitted {
            m.fallback.first().map_or("", String::as_str)
        } else {
            m.provider.as_str()
        };
        let Some(next) = Provider::parse(name) else {
            return (poll::Admission::Budget, None);
        };
        if policy.caps().is_empty() && policy.max_in_flight.is_empty() {
            return (poll::Admission::Admit, None);
        }
        let decided = (|| {
            let adm =
                Admission::lock_for_reap(&self.settings.state_dir, self.settings.lock_timeout)?;
            if let Some(own) = Provider::parse(&m.provider) {
                adm.release(&q.project, own)?;
            }
            let mut warnings = Vec::new();
            let d = adm.check_and_reserve(
                policy,
                &q.project,
                next,
                std::time::SystemTime::now(),
                &mut warnings,
            );
            for w in warnings {
                self.ui.warn(format_args!("{w}"));
            }
            let d = d?;
            // A deferred step stays a pending marker: it counts.
            if let Decision::Defer { .. } = d {
                crate::inflight::InFlight::append_delta(
                    &adm,
                    &crate::inflight::project_key(&q.project),
                    next.as_str(),
                    1,
                    true,
                )?;
            }
            anyhow::Ok(d)
        })();
        match decided {
            Ok(Decision::Admit) => (poll::Admission::Admit, None),
            Ok(d @ Decision::Budget { .. }) => (poll::Admission::Budget, d.stderr_line()),
            Ok(d @ Decision::Defer { .. }) => {
                self.ui.info(format_args!(
                    "{}: failover to {next} {}",
                    shown(&q.task_path(task)),
                    d.stdout_line().unwrap_or_default()
                ));
                (poll::Admission::Defer, None)
            }
            // Admission cannot be asked (a lock held too long): the step
            // waits for a later reap, as for a limit.
            Err(e) => {
                self.ui.warn(format_args!(
                    "{}: failover to {next} waits: {e:#}",
                    shown(&q.task_path(task))
                ));
                (poll::Admission::Defer, None)
            }
        }
    }

    /// The failover step's files: the marker replaced (under the queue
    /// lock, only if it still holds `seen`) by a pending one for the next
    /// provider, whose `attempts` now name the ended job; then that job's
    /// ledger entry, batched for the end of the run ([`Ledger`] says why
    /// it counts once). Gives the new marker, or `None` when another run
    /// changed the marker meanwhile.
    pub(super) fn fail_over(
        &self,
        q: &Queue,
        task: &OsStr,
        seen: &[u8],
        m: &Marker,
        step: Step,
        deferred: bool,
    ) -> anyhow::Result<Option<Marker>> {
        let key = crate::job::new_idempotency_key()
            .map_err(|e| anyhow::anyhow!("cannot read /dev/urandom for an idempotency key: {e}"))?;
        let Some(next) = next_marker(m, &step, key, timestamp::now(), deferred) else {
            anyhow::bail!("its marker's fallback chain names no provider (a bug in reap)");
        };
        let entry = Entry {
            job_id: m.job_id.clone(),
            project: crate::inflight::project_key(&q.project),
            task: task.to_string_lossy().into_owned(),
            provider: step.ran_on(m),
            model: None,
            status: step.reason.as_str().to_string(),
            cost_cad: 0.0,
            tokens_in: None,
            tokens_out: None,
            delegated_at: m.sent_at.clone().unwrap_or_else(|| m.started_at.clone()),
            finished_at: timestamp::now(),
            step: true,
        };
        let lock = q.lock()?;
        if !q.fail_over(&lock, task, seen, &next)? {
            return Ok(None);
        }
        drop(lock);
        self.ledger.ended(entry);
        self.tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failover(&m.provider, &next.provider);
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
