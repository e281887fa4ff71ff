//! What `reap` does with one marker, as a pure function of what is known
//! about it: the design's "Reaping" list, one row per sentence.
//!
//! `decide` is asked again after every step the I/O side takes (read the
//! task, re-send, poll the status, fetch the result), each time with what
//! that step learned, until it names a final action. Failover (policy.md)
//! is meant to enter as a row: a `Fail` whose reason `may_fail_over` with
//! a chain entry left becomes a pending marker for the next provider.

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
        }
    }

    /// Whether policy.md's failover may send the task to the next provider
    /// instead (`cancelled` and `timeout` never fail over).
    #[allow(dead_code)] // failover (policy.md) is its first user
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
}

/// The next action for one marker.
pub fn decide(f: &Facts) -> Action {
    use Action as A;
    let too_old = f.age >= f.max_age;
    let in_grace = f.age < f.submit_grace;
    match f.marker {
        Marker::Corrupt => A::Fail(Reason::CorruptMarker),
        _ if f.future => A::ResetClock,
        Marker::Pending => match (f.task, f.sent) {
            _ if too_old => A::Fail(Reason::Unconfirmed),
            _ if in_grace => A::Leave,
            (Task::NotRead, _) => A::ReadTask,
            (Task::Missing, _) => A::Fail(Reason::TaskMissing),
            (Task::Unreadable, _) => A::Fail(Reason::TaskUnreadable),
            (Task::Present, Call::NotAsked) => A::Resend,
            (Task::Present, Call::Ok(())) => A::RecordJobId,
            (Task::Present, Call::Err(Failure::Rejected)) => A::ReturnTask,
            // A 401/403 proves nothing about the first POST: a job may exist.
            (Task::Present, Call::Err(_)) => A::NoteFailedPoll { quiet: false },
        },
        Marker::Submitted => match (f.status, f.result) {
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
            (Call::Err(_), _) | (_, Call::Err(_)) if too_old => A::CancelThenFail,
            (Call::Err(Failure::NotFound), _) | (_, Call::Err(Failure::NotFound)) => {
                A::NoteFailedPoll { quiet: true }
            }
            (Call::Err(_), _) | (_, Call::Err(_)) => A::NoteFailedPoll { quiet: false },
        },
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
            (
                "result failing past max_age",
                submitted(EXPIRED, Ok(Job::Completed), Err(Other)),
                A::CancelThenFail,
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
        ] {
            assert_eq!(r.may_fail_over(), over, "{r:?}");
        }
    }
}
