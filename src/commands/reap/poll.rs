//! What `reap` does with one marker, as a pure function of what is known
//! about it: the design's "Reaping" list, one row per sentence.
//!
//! `decide` is asked again after every step the I/O side takes (read the
//! task, re-send, poll the status, fetch the result), each time with what
//! that step learned, until it names a final action. Failover (policy.md)
//! enters as rows: a `Fail` whose reason `may_fail_over`, with a chain entry
//! left and `max_age` not passed, becomes a pending marker for the next
//! provider once admission (budgets, limits) has answered.

use std::time::Duration;

/// The marker as read from disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// Unreadable or unparsable.
    Corrupt,
    /// Written before the POST; the job id is not known.
    Pending,
    /// The job id is known.
    Submitted,
}

/// The answer of one call to the service, once asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call<T> {
    NotAsked,
    Ok(T),
    Err(Failure),
}

/// How a call failed, as far as the decision cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `404`: the service does not know the job.
    NotFound,
    /// `401`/`403`: the key was refused.
    Auth,
    /// Any other `4xx` but `409`: the request itself is refused.
    Rejected,
    /// Unreachable, `5xx` after retries, no definite answer, `409`, a bad
    /// answer.
    Other,
}

/// A job's status, as far as the decision cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// `queued`, `running`, or a status the contract does not know.
    Running,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

/// The task file, read only when a pending marker is re-sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    NotRead,
    Present,
    Missing,
    Unreadable,
}

/// What admission (budgets and limits, policy.md) said about the next job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    NotAsked,
    Admit,
    /// A budget refuses it: the chain ends.
    Budget,
    /// A limit on jobs in flight: wait for a later reap.
    Defer,
}

/// Everything known about one marker so far.
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    pub marker: Marker,
    /// `started_at` lies more than `marker::FUTURE_SLACK` ahead of now.
    pub future: bool,
    /// Time since `started_at` (zero when in the future).
    pub age: Duration,
    pub submit_grace: Duration,
    pub max_age: Duration,
    pub task: Task,
    /// The re-POST of a pending marker.
    pub sent: Call<()>,
    /// `GET /jobs/{id}`.
    pub status: Call<Job>,
    /// `GET /jobs/{id}/result`.
    pub result: Call<()>,
    /// Time since the current job was sent: a chain's later job is younger
    /// than its `started_at` (the first submission's), and the service's
    /// 404 lag counts from its own create.
    pub job_age: Duration,
    /// The marker's chain has a provider left to fail over to.
    pub chain_left: bool,
    /// A pending marker whose failover step a limit deferred: never sent.
    pub deferred: bool,
    pub admission: Admission,
}

impl Facts {
    /// A marker before anything was asked.
    pub fn new(marker: Marker, age: Duration, submit_grace: Duration, max_age: Duration) -> Facts {
        Facts {
            marker,
            future: false,
            age,
            submit_grace,
            max_age,
            task: Task::NotRead,
            sent: Call::NotAsked,
            status: Call::NotAsked,
            result: Call::NotAsked,
            job_age: age,
            chain_left: false,
            deferred: false,
            admission: Admission::NotAsked,
        }
    }
}

/// Why a task goes to failed/.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    CorruptMarker,
    /// A pending submission never confirmed within `max_age`.
    Unconfirmed,
    /// The job ended so on the service.
    Failed,
    Cancelled,
    Expired,
    /// `404` past `submit_grace`, on the status or the result.
    NotFound,
    /// The task vanished before its pending submission was re-sent.
    TaskMissing,
    TaskUnreadable,
    /// A budget refused the next job of the chain.
    Budget,
}

impl Reason {
    /// The `failed_reason` of the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CorruptMarker => "corrupt marker",
            Reason::Unconfirmed => "timeout",
            Reason::Failed => "failed",
            Reason::Cancelled => "cancelled",
            Reason::Expired => "expired",
            Reason::NotFound => "not found",
            Reason::TaskMissing => "task missing",
            Reason::TaskUnreadable => "task unreadable",
            Reason::Budget => "budget",
        }
    }

    /// Whether policy.md's failover may send the task to the next provider
    /// instead (`cancelled` and `timeout` never fail over).
    pub fn may_fail_over(self) -> bool {
        matches!(self, Reason::Failed | Reason::Expired | Reason::NotFound)
    }
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Rewrite `started_at` to now (under the queue lock), then decide again
    /// with age zero.
    ResetClock,
    /// Read the task, to re-send it.
    ReadTask,
    /// Re-POST a pending submission with its idempotency key.
    Resend,
    /// The re-sent submission was accepted: record its job id.
    RecordJobId,
    /// The re-sent submission was refused (a 4xx but 401/403): remove the
    /// marker, handing the task back to the dispatcher.
    ReturnTask,
    PollStatus,
    FetchResult,
    /// Nothing changes.
    Leave,
    /// Remember a failed call in the marker (`poll_errors`, `last_error`);
    /// said on stderr unless `quiet` (a 404 within `submit_grace`).
    NoteFailedPoll {
        quiet: bool,
    },
    /// Write done/ with the result.
    WriteDone,
    /// Write failed/.
    Fail(Reason),
    /// `max_age` passed: best-effort cancel, then failed/ `timeout`.
    CancelThenFail,
    /// Ask admission about the next job (of the chain, or a deferred one).
    CheckAdmission,
    /// The job ended with this reason and the chain goes on: replace the
    /// marker with a pending one for the next provider, then POST it
    /// (unless `deferred` by a limit: then a later reap sends it).
    FailOver {
        reason: Reason,
        deferred: bool,
    },
    /// A deferred marker was admitted: mark it as sent, then POST it.
    SendDeferred,
}

/// The next action for one marker.
pub fn decide(f: &Facts) -> Action {
    use Action as A;
    let too_old = f.age >= f.max_age;
    let in_grace = f.age < f.submit_grace;
    let job_in_grace = f.job_age < f.submit_grace;
    match f.marker {
        Marker::Corrupt => A::Fail(Reason::CorruptMarker),
        _ if f.future => A::ResetClock,
        Marker::Pending => match (f.task, f.sent) {
            // Past max_age a pending submission goes to failed/ as
            // `timeout` at once: with no job id there is nothing to cancel,
            // and re-sending only to learn one could create the very job
            // it would then cancel.
            _ if too_old => A::Fail(Reason::Unconfirmed),
            // A deferred step was never sent: admission first, whatever the
            // grace (its clock is the chain's first submission).
            (_, Call::NotAsked) if f.deferred => match (f.task, f.admission) {
                (Task::NotRead, _) => A::ReadTask,
                (Task::Missing, _) => A::Fail(Reason::TaskMissing),
                (Task::Unreadable, _) => A::Fail(Reason::TaskUnreadable),
                (Task::Present, Admission::NotAsked) => A::CheckAdmission,
                (Task::Present, Admission::Admit) => A::SendDeferred,
                (Task::Present, Admission::Defer) => A::Leave,
                (Task::Present, Admission::Budget) => A::Fail(Reason::Budget),
            },
            (_, Call::NotAsked) if in_grace => A::Leave,
            (Task::NotRead, _) => A::ReadTask,
            (Task::Missing, _) => A::Fail(Reason::TaskMissing),
            (Task::Unreadable, _) => A::Fail(Reason::TaskUnreadable),
            (Task::Present, Call::NotAsked) => A::Resend,
            (Task::Present, Call::Ok(())) => A::RecordJobId,
            (Task::Present, Call::Err(Failure::Rejected)) => A::ReturnTask,
            // A 401/403 proves nothing about the first POST: a job may exist.
            (Task::Present, Call::Err(_)) => A::NoteFailedPoll { quiet: false },
        },
        Marker::Submitted => match submitted(f, too_old, job_in_grace) {
            // `max_age` bounds the whole chain; `cancelled` and `timeout`
            // never fail over.
            A::Fail(r) if r.may_fail_over() && f.chain_left && !too_old => {
                match (f.task, f.admission) {
                    (Task::NotRead, _) => A::ReadTask,
                    // Nothing left to send: the job's own verdict stands.
                    (Task::Missing | Task::Unreadable, _) => A::Fail(r),
                    (Task::Present, Admission::NotAsked) => A::CheckAdmission,
                    (Task::Present, Admission::Admit) => A::FailOver {
                        reason: r,
                        deferred: false,
                    },
                    (Task::Present, Admission::Defer) => A::FailOver {
                        reason: r,
                        deferred: true,
                    },
                    (Task::Present, Admission::Budget) => A::Fail(Reason::Budget),
                }
            }
            a => a,
        },
    }
}

/// The rows of a submitted marker, before failover.
fn submitted(f: &Facts, too_old: bool, in_grace: bool) -> Action {
    use Action as A;
    match (f.status, f.result) {
        (Call::NotAsked, _) => A::PollStatus,
        (Call::Ok(Job::Completed), Call::NotAsked) => A::FetchResult,
        (Call::Ok(Job::Completed), Call::Ok(())) => A::WriteDone,
        (Call::Ok(Job::Failed), _) => A::Fail(Reason::Failed),
        (Call::Ok(Job::Cancelled), _) => A::Fail(Reason::Cancelled),
        (Call::Ok(Job::Expired), _) => A::Fail(Reason::Expired),
        (Call::Ok(Job::Running), _) if too_old => A::CancelThenFail,
        (Call::Ok(Job::Running), _) => A::Leave,
        // A 404 on the status or the result is a verdict once the
        // service's lag after a create has passed.
        (Call::Err(Failure::NotFound), _) | (_, Call::Err(Failure::NotFound)) if !in_grace => {
            A::Fail(Reason::NotFound)
        }
        // A finished job whose result cannot be fetched right now is kept,
        // max_age or not: it is paid work, and its answer must not be lost
        // to a service that is down at the wrong minute.
        (
            Call::Ok(Job::Completed),
            Call::Err(Failure::Auth | Failure::Rejected | Failure::Other),
        ) => A::NoteFailedPoll { quiet: false },
        (Call::Err(_), _) | (_, Call::Err(_)) if too_old => A::CancelThenFail,
        (Call::Err(Failure::NotFound), _) | (_, Call::Err(Failure::NotFound)) => {
            A::NoteFailedPoll { quiet: true }
        }
        (Call::Err(_), _) => A::NoteFailedPoll { quiet: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action as A;

    const GRACE: Duration = Duration::from_secs(120);
    const MAX: Duration = Duration::from_secs(24 * 3600);
    const YOUNG: Duration = Duration::from_secs(10);
    const OLD: Duration = Duration::from_secs(600);
    const EXPIRED: Duration = Duration::from_secs(25 * 3600);

    fn pending(age: Duration, task: Task, sent: Call<()>) -> Facts {
        Facts {
            task,
            sent,
            ..Facts::new(Marker::Pending, age, GRACE, MAX)
        }
    }

    fn submitted(age: Duration, status: Call<Job>, result: Call<()>) -> Facts {
        Facts {
            status,
            result,
            ..Facts::new(Marker::Submitted, age, GRACE, MAX)
        }
    }

    #[test]
    fn each_sentence_of_the_design_is_a_row() {
        use Call::{Err, NotAsked, Ok};
        use Failure::*;
        let rows: &[(&str, Facts, Action)] = &[
            // "a marker that cannot be read or parsed: failed/ with reason
            // corrupt marker"
            (
                "corrupt marker",
                Facts::new(Marker::Corrupt, OLD, GRACE, MAX),
                A::Fail(Reason::CorruptMarker),
            ),
            // "A marker's started_at more than 5 minutes in the future is
            // rewritten to now by reap"
            (
                "future pending",
                Facts {
                    future: true,
                    ..pending(Duration::ZERO, Task::NotRead, NotAsked)
                },
                A::ResetClock,
            ),
            (
                "future submitted",
                Facts {
                    future: true,
                    ..submitted(Duration::ZERO, NotAsked, NotAsked)
                },
                A::ResetClock,
            ),
            // "pending older than submit_grace: re-POST with the same
            // idempotency key"
            (
                "pending in grace",
                pending(YOUNG, Task::NotRead, NotAsked),
                A::Leave,
            ),
            (
                "pending past grace",
                pending(OLD, Task::NotRead, NotAsked),
                A::ReadTask,
            ),
            (
                "pending, task read",
                pending(OLD, Task::Present, NotAsked),
                A::Resend,
            ),
            (
                "re-sent, accepted",
                pending(OLD, Task::Present, Ok(())),
                A::RecordJobId,
            ),
            // Choices: a re-sent submission rejected (4xx but 401/403)
            // returns the task to the dispatcher...
            (
                "re-sent, rejected",
                pending(OLD, Task::Present, Err(Rejected)),
                A::ReturnTask,
            ),
            // ... a 401/403 there is a failed poll: the marker stays.
            (
                "re-sent, auth",
                pending(OLD, Task::Present, Err(Auth)),
                A::NoteFailedPoll { quiet: false },
            ),
            (
                "re-sent, unavailable",
                pending(OLD, Task::Present, Err(Other)),
                A::NoteFailedPoll { quiet: false },
            ),
            // Choices: failed reasons include `task missing`.
            (
                "pending, task vanished",
                pending(OLD, Task::Missing, NotAsked),
                A::Fail(Reason::TaskMissing),
            ),
            (
                "pending, task unreadable",
                pending(OLD, Task::Unreadable, NotAsked),
                A::Fail(Reason::TaskUnreadable),
            ),
            // "older than max_age: ... failed/ with reason timeout" (no
            // job to cancel yet)
            (
                "pending past max_age",
                pending(EXPIRED, Task::NotRead, NotAsked),
                A::Fail(Reason::Unconfirmed),
            ),
            (
                "submitted",
                submitted(YOUNG, NotAsked, NotAsked),
                A::PollStatus,
            ),
            // "queued/running: leave it"
            (
                "running",
                submitted(OLD, Ok(Job::Running), NotAsked),
                A::Leave,
            ),
            // "remember the poll in the marker only when it failed"
            (
                "status unavailable",
                submitted(OLD, Err(Other), NotAsked),
                A::NoteFailedPoll { quiet: false },
            ),
            (
                "status auth",
                submitted(OLD, Err(Auth), NotAsked),
                A::NoteFailedPoll { quiet: false },
            ),
            // "completed: GET the result, write done/"
            (
                "completed",
                submitted(OLD, Ok(Job::Completed), NotAsked),
                A::FetchResult,
            ),
            (
                "result fetched",
                submitted(OLD, Ok(Job::Completed), Ok(())),
                A::WriteDone,
            ),
            (
                "result unavailable",
                submitted(OLD, Ok(Job::Completed), Err(Other)),
                A::NoteFailedPoll { quiet: false },
            ),
            // "failed, cancelled, expired, or 404: write failed/"
            (
                "failed",
                submitted(YOUNG, Ok(Job::Failed), NotAsked),
                A::Fail(Reason::Failed),
            ),
            (
                "cancelled",
                submitted(YOUNG, Ok(Job::Cancelled), NotAsked),
                A::Fail(Reason::Cancelled),
            ),
            (
                "expired",
                submitted(YOUNG, Ok(Job::Expired), NotAsked),
                A::Fail(Reason::Expired),
            ),
            (
                "404 past grace",
                submitted(OLD, Err(NotFound), NotAsked),
                A::Fail(Reason::NotFound),
            ),
            // "a 404 for a job submitted less than submit_grace ago is a
            // failed poll, not a verdict" (Choices: said only with -v)
            (
                "404 in grace",
                submitted(YOUNG, Err(NotFound), NotAsked),
                A::NoteFailedPoll { quiet: true },
            ),
            // A 404 on the result is the same verdict as on the status.
            (
                "result 404 past grace",
                submitted(OLD, Ok(Job::Completed), Err(NotFound)),
                A::Fail(Reason::NotFound),
            ),
            (
                "result 404 in grace",
                submitted(YOUNG, Ok(Job::Completed), Err(NotFound)),
                A::NoteFailedPoll { quiet: true },
            ),
            // "older than max_age: best-effort cancel, then failed/ with
            // reason timeout"
            (
                "running past max_age",
                submitted(EXPIRED, Ok(Job::Running), NotAsked),
                A::CancelThenFail,
            ),
            (
                "poll failing past max_age",
                submitted(EXPIRED, Err(Other), NotAsked),
                A::CancelThenFail,
            ),
            // A completed job's answer is never given up for a result call
            // that failed: it is fetched again next run.
            (
                "result failing past max_age",
                submitted(EXPIRED, Ok(Job::Completed), Err(Other)),
                A::NoteFailedPoll { quiet: false },
            ),
            // A verdict beats max_age: the job's own answer is kept.
            (
                "completed past max_age",
                submitted(EXPIRED, Ok(Job::Completed), Ok(())),
                A::WriteDone,
            ),
            (
                "failed past max_age",
                submitted(EXPIRED, Ok(Job::Failed), NotAsked),
                A::Fail(Reason::Failed),
            ),
            (
                "404 past max_age",
                submitted(EXPIRED, Err(NotFound), NotAsked),
                A::Fail(Reason::NotFound),
            ),
        ];
        for (name, facts, want) in rows {
            assert_eq!(decide(facts), *want, "row {name:?}: {facts:?}");
        }
    }

    #[test]
    fn failover_rows() {
        use Call::{Err, NotAsked, Ok};
        let chained = |age, status, task, admission| Facts {
            chain_left: true,
            task,
            admission,
            ..submitted(age, status, NotAsked)
        };
        let deferred = |age, task, admission| Facts {
            deferred: true,
            admission,
            ..pending(age, task, NotAsked)
        };
        let over = |reason, deferred| A::FailOver { reason, deferred };
        let failed = Ok(Job::Failed);
        let rows: &[(&str, Facts, Action)] = &[
            // "failed, expired, or unknown to the service past
            // submit_grace (404), and the task's chain has an entry left"
            (
                "failed, chain left: read the task",
                chained(OLD, failed, Task::NotRead, Admission::NotAsked),
                A::ReadTask,
            ),
            (
                "failed, task read: ask admission",
                chained(OLD, failed, Task::Present, Admission::NotAsked),
                A::CheckAdmission,
            ),
            (
                "failed, admitted",
                chained(OLD, failed, Task::Present, Admission::Admit),
                over(Reason::Failed, false),
            ),
            (
                "expired, admitted",
                chained(OLD, Ok(Job::Expired), Task::Present, Admission::Admit),
                over(Reason::Expired, false),
            ),
            (
                "404 past grace, admitted",
                chained(OLD, Err(Failure::NotFound), Task::Present, Admission::Admit),
                over(Reason::NotFound, false),
            ),
            // "one that a limit defers stays pending"
            (
                "failed, a limit defers",
                chained(OLD, failed, Task::Present, Admission::Defer),
                over(Reason::Failed, true),
            ),
            // "a failover step that a budget refuses ends the chain"
            (
                "failed, a budget refuses",
                chained(OLD, failed, Task::Present, Admission::Budget),
                A::Fail(Reason::Budget),
            ),
            (
                "failed, task vanished",
                chained(OLD, failed, Task::Missing, Admission::NotAsked),
                A::Fail(Reason::Failed),
            ),
            (
                "failed, no chain left",
                submitted(OLD, failed, NotAsked),
                A::Fail(Reason::Failed),
            ),
            // "cancelled ... and timeout never fail over"
            (
                "cancelled with a chain",
                chained(OLD, Ok(Job::Cancelled), Task::Present, Admission::Admit),
                A::Fail(Reason::Cancelled),
            ),
            (
                "running past max_age with a chain",
                chained(EXPIRED, Ok(Job::Running), Task::Present, Admission::Admit),
                A::CancelThenFail,
            ),
            // "max_age counts from the first submission and bounds the
            // whole chain"
            (
                "failed past max_age with a chain",
                chained(EXPIRED, failed, Task::Present, Admission::Admit),
                A::Fail(Reason::Failed),
            ),
            // A later job's 404 lag counts from its own create.
            (
                "404 of a young later job",
                Facts {
                    job_age: YOUNG,
                    ..chained(
                        OLD,
                        Err(Failure::NotFound),
                        Task::NotRead,
                        Admission::NotAsked,
                    )
                },
                A::NoteFailedPoll { quiet: true },
            ),
            // "a later reap sends it": admission again, whatever the grace.
            (
                "deferred, in grace",
                deferred(YOUNG, Task::NotRead, Admission::NotAsked),
                A::ReadTask,
            ),
            (
                "deferred, task read",
                deferred(OLD, Task::Present, Admission::NotAsked),
                A::CheckAdmission,
            ),
            (
                "deferred, admitted",
                deferred(OLD, Task::Present, Admission::Admit),
                A::SendDeferred,
            ),
            (
                "deferred, still over a limit",
                deferred(OLD, Task::Present, Admission::Defer),
                A::Leave,
            ),
            (
                "deferred, a budget refuses",
                deferred(OLD, Task::Present, Admission::Budget),
                A::Fail(Reason::Budget),
            ),
            (
                "deferred, task vanished",
                deferred(OLD, Task::Missing, Admission::NotAsked),
                A::Fail(Reason::TaskMissing),
            ),
            (
                "deferred past max_age",
                deferred(EXPIRED, Task::Present, Admission::Admit),
                A::Fail(Reason::Unconfirmed),
            ),
            // Once sent, a deferred step is a pending submission: its
            // answer is recorded even within the grace.
            (
                "deferred step sent, accepted",
                pending(YOUNG, Task::Present, Ok(())),
                A::RecordJobId,
            ),
        ];
        for (name, facts, want) in rows {
            assert_eq!(decide(facts), *want, "row {name:?}: {facts:?}");
        }
    }

    #[test]
    fn only_failed_expired_and_not_found_may_fail_over() {
        for (r, over) in [
            (Reason::Failed, true),
            (Reason::Expired, true),
            (Reason::NotFound, true),
            (Reason::Cancelled, false),
            (Reason::Unconfirmed, false),
            (Reason::CorruptMarker, false),
            (Reason::TaskMissing, false),
            (Reason::TaskUnreadable, false),
            (Reason::Budget, false),
        ] {
            assert_eq!(r.may_fail_over(), over, "{r:?}");
        }
    }
}
