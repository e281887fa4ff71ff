//! Kill tests of the books: `submit`s under a limit, and `ledger rebuild`,
//! killed with SIGKILL at random instants. After each kill the books hold:
//! no job counted twice, no limit passed, and once a reap has run, the jobs
//! in flight are exactly the markers.
//!
//! Ignored in the plain `cargo test`; `.ci/run` runs them with
//! `CCL_KILL_ROUNDS=30`. Replay a failure with the printed `CCL_KILL_SEED`.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn rounds() -> usize {
    std::env::var("CCL_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

/// Waits up to `delay` for the child; kills it with SIGKILL if it still
/// runs. `true` when it was killed.
fn kill_after(child: &mut Child, delay: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < delay {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait().unwrap();
    true
}

fn spawn(p: &Project, mock: &Mock, args: &[&str]) -> Child {
    p.cmd(Some(mock))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn markers_in_flight(p: &Project) -> Vec<String> {
    p.names(&p.inbox())
        .into_iter()
        .filter(|n| n.ends_with(".delegated"))
        .filter_map(|n| {
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p.inbox().join(&n)).ok()?).ok()?;
            m["idempotency_key"].as_str().map(str::to_string)
        })
        .collect()
}

/// Submits against `all: 3`, several at once, each killed at a random
/// instant: at no point do more jobs exist than the limit allows, and
/// after a reap the reservations are exactly the markers.
#[test]
#[ignore = "kill test: run with --include-ignored (CCL_KILL_ROUNDS rounds)"]
fn submits_killed_under_a_limit_never_pass_it_and_reservations_heal() {
    let mut rng = Rng::from_env("CCL_KILL_SEED");
    let mut killed = 0;
    for round in 0..rounds() {
        // A fresh queue and service each round: jobs never end (`running`),
        // so the service holds exactly the jobs admission let through.
        let mock = Mock::start(&["--statuses", "running", "--latency", "10ms"]);
        let p = Project::new();
        p.write_config("max_in_flight:\n  all: 3\n");
        let names: Vec<String> = (0..6).map(|i| format!("t{i}.md")).collect();
        for n in &names {
            p.task(n, &fm("preferred_ai: claude\n"));
        }
        let mut children: Vec<Child> = names
            .iter()
            .map(|n| {
                let path = p.inbox().join(n);
                spawn(&p, &mock, &["submit", "-q", path.to_str().unwrap()])
            })
            .collect();
        let delay = Duration::from_micros(rng.below(60_000));
        for c in &mut children {
            killed += usize::from(kill_after(c, delay));
        }
        let created = mock.jobs_created();
        assert!(created <= 3, "round {round}: {created} jobs against all: 3");
        // A reap heals what a kill left (a reservation without its marker,
        // a pending marker to re-send); then reservations = markers.
        let dir = p.dir.to_str().unwrap().to_string();
        p.run(
            Some(&mock),
            &["reap", "--project", &dir, "--submit-grace", "0s", "-q"],
        );
        let mut want = markers_in_flight(&p);
        want.sort();
        let mut got: Vec<String> = p
            .books()
            .map(|b| {
                b.reservations()
                    .unwrap()
                    .into_iter()
                    .map(|r| r.key)
                    .collect()
            })
            .unwrap_or_default();
        got.sort();
        assert_eq!(got, want, "round {round}: reservations are the markers");
        assert!(want.len() <= 3, "round {round}: {} markers", want.len());
        assert!(
            mock.jobs_created() <= 3,
            "round {round}: the reap's re-sends"
        );
        // And the dispatcher's next pass: the limit still holds.
        for n in &names {
            if p.marker(n).is_none() {
                let path = p.inbox().join(n);
                p.run(Some(&mock), &["submit", "-q", path.to_str().unwrap()]);
            }
        }
        assert!(
            mock.jobs_created() <= 3,
            "round {round}: after the next pass"
        );
        assert_eq!(
            markers_in_flight(&p).len(),
            3,
            "round {round}: the slots are used"
        );
    }
    println!("{} rounds, {killed} submits killed", rounds());
}

/// `ledger rebuild` killed at random instants: the books are the old ones
/// or the new ones, never a mix, and a rebuild that runs to its end counts
/// every job once.
#[test]
#[ignore = "kill test: run with --include-ignored (CCL_KILL_ROUNDS rounds)"]
fn ledger_rebuild_killed_at_random_instants_counts_every_job_once() {
    let mut rng = Rng::from_env("CCL_KILL_SEED");
    let mock = Mock::start(&["--statuses", "completed", "--fail-rate", "0.3"]);
    let p = Project::new();
    for i in 0..200 {
        let name = format!("t{i:03}.md");
        p.task(&name, &fm("preferred_ai: gemini\n"));
        p.submit_ok(&mock, &name);
    }
    p.reap_until_settled(&mock, &[], 5);
    let jobs = mock.jobs_created();
    assert_eq!(jobs, 200);
    let count = || p.books().map(|b| b.len().unwrap()).unwrap_or(0);
    assert_eq!(count(), jobs);
    let dir = p.dir.to_str().unwrap().to_string();
    let mut killed = 0;
    for round in 0..rounds() {
        let mut c = spawn(&p, &mock, &["ledger", "rebuild", "--project", &dir]);
        killed += usize::from(kill_after(&mut c, Duration::from_micros(rng.below(60_000))));
        let n = count();
        assert_eq!(
            n, jobs,
            "round {round}: {n} entries after a kill, {jobs} jobs"
        );
    }
    p.run(None, &["ledger", "rebuild", "--project", &dir])
        .expect(0);
    assert_eq!(count(), jobs);
    println!("{} rounds, {killed} rebuilds killed", rounds());
}
