//! Kill tests: a `reap` of a few hundred jobs, and `submit`s, killed with
//! SIGKILL at random instants; after each kill the design's invariant holds
//! ("The queue on disk": every task recoverable, whole, from at least one of
//! inbox, done, failed), and after a clean run from exactly one, with no
//! double job on the service.
//!
//! Ignored in the plain `cargo test` (they take a while); `.ci/run` runs them
//! with `CCL_KILL_ROUNDS=30`. The default is 100 rounds. Replay a failure
//! with the printed `CCL_KILL_SEED`.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn rounds() -> usize {
    std::env::var("CCL_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

/// Task bytes of every shape the queue must carry whole: frontmatter or
/// not, CRLF, no final newline, empty, not UTF-8, `---` lines in the body.
fn task_bytes(rng: &mut Rng, i: usize) -> Vec<u8> {
    let mut t = Vec::new();
    match rng.below(6) {
        0 => t.extend_from_slice(b"---\nallow_delegation: true\npreferred_ai: gemini\n---\n"),
        1 => t.extend_from_slice(b"---\r\nallow_delegation: true\r\n---\r\n"),
        2 => t.extend_from_slice(b"\xEF\xBB\xBF---\npriority: high\n...\n"),
        3 => t.extend_from_slice(b"---\nbroken: [\n---\n"),
        _ => {}
    }
    t.extend_from_slice(format!("# Task {i}\n").as_bytes());
    let lines = rng.below(60);
    for l in 0..lines {
        match rng.below(10) {
            0 => t.extend_from_slice(b"---\n"),
            1 => t.extend_from_slice(b"line with CRLF\r\n"),
            2 => t.extend_from_slice(&[0xff, 0xfe, b'\n']),
            _ => t.extend_from_slice(format!("line {l} of task {i}: do the thing\n").as_bytes()),
        }
    }
    if rng.chance(30) {
        t.extend_from_slice(b"no final newline");
    }
    if rng.chance(3) {
        t.clear();
    }
    t
}

/// Job ids (or none) of the markers of one round, by task id.
struct Setup {
    originals: BTreeMap<String, Vec<u8>>,
    /// Task id → idempotency key of its pending or submitted marker.
    keys: BTreeMap<String, String>,
}

/// `n` tasks with markers of every kind: submitted to a real job (most;
/// `--fail-rate` makes some end `failed`), submitted to a job the service
/// does not know (404), pending (never sent: the reap sends it), corrupt,
/// and in the Go implementation's format.
fn setup_reap_round(p: &Project, mock: &Mock, rng: &mut Rng, round: usize, n: usize) -> Setup {
    let mut originals = BTreeMap::new();
    let mut keys = BTreeMap::new();
    let started = rfc3339_ago(3600);
    let mut to_post = Vec::new();
    for i in 0..n {
        let id = format!("r{round}-t{i:03}");
        let task = format!("{id}.md");
        let bytes = task_bytes(rng, i);
        p.task(&task, &bytes);
        originals.insert(id.clone(), bytes);
        let key = format!("ccl-kill-{round}-{i:04}-0123456789");
        match rng.below(100) {
            0..=69 => to_post.push((id, key)),
            70..=77 => {
                let job = format!("j-unknown-{round}-{i}");
                p.write_marker(&task, &marker_json(false, Some(&job), &key, &started));
            }
            78..=89 => {
                p.write_marker(&task, &marker_json(true, None, &key, &started));
                keys.insert(id, key);
            }
            90..=94 => {
                p.write_marker(&task, "{\"version\": 1, \"state\": \"subm");
            }
            _ => to_post.push((format!("go:{id}"), key)),
        }
    }
    // Create the jobs on the mock from a few threads (the mock has latency).
    let posted: Vec<(String, String, String)> = std::thread::scope(|s| {
        let chunks: Vec<_> = to_post.chunks(to_post.len().div_ceil(8).max(1)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(id, key)| {
                            let task = format!("{}.md", id.trim_start_matches("go:"));
                            (id.clone(), key.clone(), mock.post_job(key, &task))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for (id, key, job) in posted {
        if let Some(id) = id.strip_prefix("go:") {
            let task = format!("{id}.md");
            let abs = p.inbox().join(&task);
            let go = serde_json::json!({
                "project": p.dir.display().to_string(),
                "task_file": abs.display().to_string(),
                "job_id": job,
                "provider": "gpu",
                "started_at": "2026-01-01T10:00:00.123-05:00",
            });
            p.write_marker(&task, &go.to_string());
            keys.insert(id.to_string(), key);
        } else {
            let task = format!("{id}.md");
            p.write_marker(&task, &marker_json(false, Some(&job), &key, &started));
            keys.insert(id, key);
        }
    }
    Setup { originals, keys }
}

fn spawn_reap(p: &Project, mock: &Mock) -> Child {
    let dir = p.dir.display().to_string();
    p.cmd(Some(mock))
        .args(["reap", "--project", &dir, "--submit-grace", "0s", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reap")
}

/// No task has two jobs on the service, and every job belongs to one key.
fn check_no_double_job(mock: &Mock, context: &str) {
    let mut per_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for j in mock.jobs() {
        let task = j["metadata"]["task"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        per_task
            .entry(task)
            .or_default()
            .push(j["job_id"].as_str().unwrap_or_default().to_string());
        *per_key
            .entry(
                j["idempotency_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
            .or_default() += 1;
    }
    for (task, jobs) in &per_task {
        assert!(
            jobs.len() <= 1,
            "{context}: {task} has {} jobs: {jobs:?}",
            jobs.len()
        );
    }
    for (key, n) in &per_key {
        assert!(*n <= 1, "{context}: idempotency key {key} has {n} jobs");
    }
}

/// After the clean runs: every marked task is in done/ or failed/, and each
/// done/failed record names the job its marker held.
fn check_reap_settled(p: &Project, s: &Setup, context: &str) {
    let found = check_invariant(p, &s.originals, true)
        .unwrap_or_else(|e| panic!("{context}: after the clean reap:\n{e}"));
    assert_eq!(
        found.inbox, 0,
        "{context}: tasks left in the inbox: {found:?}"
    );
    assert_eq!(found.markers, 0, "{context}: markers left: {found:?}");
}

#[test]
#[ignore = "kill test: run with --include-ignored (CCL_KILL_ROUNDS rounds)"]
fn reap_killed_at_random_instants_loses_nothing() {
    const TASKS: usize = 300;
    let rounds = rounds();
    let mut rng = Rng::from_env("CCL_KILL_SEED");
    // 20 % of the jobs end `failed`; latency makes a run last long enough
    // for kills to land anywhere in it.
    let mock = Mock::start(&[
        "--statuses",
        "completed",
        "--fail-rate",
        "0.2",
        "--latency",
        "3ms",
    ]);

    // Calibration: one clean run, measured.
    let p = Project::new();
    let s = setup_reap_round(&p, &mock, &mut rng, 0, TASKS);
    let t0 = Instant::now();
    let out = p.reap(&mock, &["-q"]);
    let clean = t0.elapsed();
    assert_eq!(out.code, 0, "calibration run: {out:?}");
    let out = p.reap_until_settled(&mock, &["-q"], 4);
    assert_eq!(out.code, 0, "calibration settle: {out:?}");
    check_reap_settled(&p, &s, "calibration");
    check_no_double_job(&mock, "calibration");
    eprintln!("clean reap of {TASKS} jobs: {clean:?}");

    let window = clean.mul_f64(1.1).as_micros() as u64 + 1;
    let (mut killed, mut finished_first, mut debris_rounds, mut orphan_rounds) = (0, 0, 0, 0);
    let mut max_found_twice = 0;
    let started = Instant::now();
    for round in 1..=rounds {
        let p = Project::new();
        let s = setup_reap_round(&p, &mock, &mut rng, round, TASKS);
        let delay = Duration::from_micros(rng.below(window));
        let mut child = spawn_reap(&p, &mock);
        std::thread::sleep(delay);
        let was_running = child.try_wait().unwrap().is_none();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let status = child.wait().unwrap();
        if was_running && status.code().is_none() {
            killed += 1;
        } else {
            finished_first += 1;
        }
        let context = format!("round {round} (killed after {delay:?})");
        let found = check_invariant(&p, &s.originals, false)
            .unwrap_or_else(|e| panic!("{context}: right after the kill:\n{e}"));
        let twice = found.inbox + found.done + found.failed - s.originals.len();
        max_found_twice = max_found_twice.max(twice);
        if found.debris > 0 {
            debris_rounds += 1;
        }
        let orphans = p
            .names(&p.inbox())
            .iter()
            .filter(|n| {
                n.strip_suffix(".delegated")
                    .is_some_and(|t| !p.inbox().join(t).exists())
            })
            .count();
        if orphans > 0 {
            orphan_rounds += 1;
        }
        let out = p.reap_until_settled(&mock, &["-q"], 4);
        assert_eq!(out.code, 0, "{context}: clean reap: {out:?}");
        check_reap_settled(&p, &s, &context);
        check_no_double_job(&mock, &context);
        // Pending markers were sent with their own key, once.
        let jobs = mock.jobs();
        for (id, key) in &s.keys {
            let n = jobs
                .iter()
                .filter(|j| j["idempotency_key"].as_str() == Some(key))
                .count();
            assert!(n <= 1, "{context}: task {id}: {n} jobs for key {key}");
        }
    }
    eprintln!(
        "reap kill test: {rounds} rounds in {:?}: {killed} killed mid-run, {finished_first} \
         finished before the kill, {debris_rounds} left temporary files, {orphan_rounds} left a marker \
         without its task, at most {max_found_twice} tasks in two places at a kill",
        started.elapsed()
    );
    assert!(
        killed * 10 >= rounds * 7,
        "only {killed} of {rounds} rounds killed a running reap: the window is miscalibrated"
    );
}
