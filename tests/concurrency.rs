//! Runs at once: two reaps (one works, the other leaves at once), reaps on
//! different run locks sharing a queue, submits racing reaps and each other,
//! and a dispatcher that runs a delegated task itself.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn delegated_tasks(p: &Project, mock: &Mock, n: usize, tag: &str) -> BTreeMap<String, Vec<u8>> {
    let mut originals = BTreeMap::new();
    for i in 0..n {
        let id = format!("{tag}{i}");
        let task = format!("{id}.md");
        let bytes = format!("---\nallow_delegation: true\n---\nTask {id}.\n").into_bytes();
        p.task(&task, &bytes);
        let key = format!("ccl-conc-{tag}-{i}-0123456789");
        let job = mock.post_job(&key, &task);
        p.write_marker(
            &task,
            &marker_json(false, Some(&job), &key, &rfc3339_ago(60)),
        );
        originals.insert(id, bytes);
    }
    originals
}

/// Whether process `pid` holds a flock on `lock`, read from /proc/locks:
/// a probe that never takes the lock itself, so it cannot make the process
/// it watches find its run lock held and step aside.
fn held_by(pid: u32, lock: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(ino) = std::fs::metadata(lock).map(|m| m.ino()) else {
        return false;
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // `1: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF`
        f.get(1) == Some(&"FLOCK")
            && f.get(4) == Some(&pid.to_string().as_str())
            && f.get(5)
                .and_then(|dev_ino| dev_ino.rsplit(':').next())
                .is_some_and(|i| i == ino.to_string())
    })
}

/// `flock -n LOCK true`: false when another process holds the lock (a
/// lock file not created yet is free).
fn lock_free(lock: &std::path::Path) -> bool {
    Command::new("flock")
        .args(["-n", "-E", "42"])
        .arg(lock)
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .expect("flock(1) is installed")
        .code()
        != Some(42)
}

#[test]
fn two_reaps_at_once_one_works_the_other_exits_0_at_once() {
    let mock = Mock::start(&["--statuses", "completed", "--latency", "100ms"]);
    let p = Project::new();
    let originals = delegated_tasks(&p, &mock, 12, "t");
    let lock = p.reap_lock();
    let dir = p.dir.to_str().unwrap();
    let setup_requests = mock.requests();
    let first = p
        .cmd(Some(&mock))
        .args(["reap", "--project", dir, "--concurrency", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = first;
    let t0 = Instant::now();
    while !held_by(first.id(), &lock) {
        if t0.elapsed() > Duration::from_secs(20) || first.try_wait().unwrap().is_some() {
            let _ = first.kill();
            panic!(
                "the first reap never took {}: {:?}",
                lock.display(),
                first.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // flock(1) sees the run lock for as long as the first reap runs.
    let t1 = Instant::now();
    let second = p.reap(&mock, &[]);
    let took = t1.elapsed();
    second.expect(0);
    assert_eq!(
        (second.stdout.as_str(), second.stderr.as_str()),
        ("", ""),
        "cron stays quiet"
    );
    assert!(
        took < Duration::from_millis(500),
        "the second reap waited {took:?}"
    );
    let verbose = p.reap(&mock, &["-v"]);
    verbose.expect(0);
    assert!(verbose.stderr.contains("another reap holds"), "{verbose:?}");
    assert!(
        !lock_free(&lock),
        "the first reap should still hold the lock"
    );

    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        originals.len()
    );
    assert!(lock_free(&lock), "the lock is released with the run");
    assert!(lock.exists(), "lock files are never deleted");
    let found = check_invariant(&p, &originals, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.done, originals.len());
    // Each job was polled by one reap only: status then result, once each.
    assert_eq!(mock.requests() - setup_requests, 2 * originals.len() as u64);
}

#[test]
fn an_explicit_lock_file_is_seen_by_flock_and_held_by_a_shell() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let originals = delegated_tasks(&p, &mock, 3, "t");
    let lock = p.tmp.path().join("locks/my.lock");
    let l = lock.to_str().unwrap();
    let setup_requests = mock.requests();
    {
        let _held = ShellLock::hold(&lock);
        let out = p.reap(&mock, &["--lock-file", l]);
        out.expect(0);
        assert_eq!(out.stdout, "");
        assert_eq!(
            mock.requests(),
            setup_requests,
            "a reap that found the lock held did work"
        );
    }
    let out = p.reap(&mock, &["--lock-file", l]);
    out.expect(0);
    check_invariant(&p, &originals, true).unwrap_or_else(|e| panic!("{e}"));
    assert!(lock.exists());
}

/// Reaps with different run locks (two crontabs, two configs) share one
/// queue: the queue lock and the re-check of the marker let each task move
/// once.
#[test]
fn reaps_on_different_run_locks_never_move_a_task_twice() {
    let mock = Mock::start(&["--statuses", "completed", "--latency", "2ms"]);
    let p = Project::new();
    let originals = delegated_tasks(&p, &mock, 150, "t");
    let dir = p.dir.to_str().unwrap().to_string();
    let children: Vec<_> = (0..4)
        .map(|i| {
            let lock = p.tmp.path().join(format!("lock{i}"));
            p.cmd(Some(&mock))
                .args([
                    "reap",
                    "--project",
                    &dir,
                    "--lock-file",
                    lock.to_str().unwrap(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut lines = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        lines += String::from_utf8_lossy(&out.stdout).lines().count();
    }
    assert_eq!(lines, originals.len(), "each task reported once");
    let found = check_invariant(&p, &originals, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.done, originals.len());
}

/// Submits race reaps (which re-send pending markers at once) and each
/// other on one queue: every task ends in exactly one place, with one job.
#[test]
fn submits_racing_reaps_never_lose_or_double_move_a_task() {
    let mock = Mock::start(&["--statuses", "completed", "--latency", "5ms"]);
    let p = Project::new();
    let mut originals = BTreeMap::new();
    for i in 0..40 {
        let bytes = format!("---\nallow_delegation: true\n---\nRace {i}.\n").into_bytes();
        p.task(&format!("r{i}.md"), &bytes);
        originals.insert(format!("r{i}"), bytes);
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let dir = p.dir.to_str().unwrap().to_string();
    std::thread::scope(|s| {
        // Two reapers on their own run locks, in a loop.
        for r in 0..2 {
            let (p, mock, stop, dir) = (&p, &mock, &stop, &dir);
            s.spawn(move || {
                let lock = p.tmp.path().join(format!("reap{r}.lock"));
                let mut runs = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || runs == 0 {
                    let out = p.run(
                        Some(mock),
                        &[
                            "reap",
                            "--project",
                            dir,
                            "--submit-grace",
                            "0s",
                            "--lock-file",
                            lock.to_str().unwrap(),
                        ],
                    );
                    assert_eq!(out.code, 0, "{out:?}");
                    runs += 1;
                }
            });
        }
        // Each task submitted twice at once.
        let submitters: Vec<_> = (0..4)
            .map(|t| {
                let p = &p;
                let mock = &mock;
                s.spawn(move || {
                    for i in (t % 2..40).step_by(2) {
                        let path = p.inbox().join(format!("r{i}.md"));
                        let out = p.run(Some(mock), &["submit", path.to_str().unwrap()]);
                        // The task may already be done (the other submit and
                        // a reap were faster): no such task (64 or 66).
                        assert!(
                            out.code == 0 || (matches!(out.code, 64 | 66) && !path.exists()),
                            "r{i}: {out:?}"
                        );
                        if out.code == 0 {
                            let words: Vec<&str> = out.stdout.split_whitespace().collect();
                            assert!(
                                matches!(words[..], ["delegated", "auto", _] | ["pending", "auto"]),
                                "r{i}: {out:?}"
                            );
                        }
                    }
                })
            })
            .collect();
        for h in submitters {
            h.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let out = p.reap_until_settled(&mock, &[], 3);
    out.expect(0);
    let found = check_invariant(&p, &originals, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.done, originals.len(), "{found:?}");
    let mut per_task: BTreeMap<String, usize> = BTreeMap::new();
    for j in mock.jobs() {
        *per_task
            .entry(j["metadata"]["task"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        per_task.values().all(|&n| n == 1),
        "double jobs: {per_task:?}"
    );
    assert_eq!(per_task.len(), originals.len());
    // Each done file names its task's one job.
    for j in mock.jobs() {
        let task = j["metadata"]["task"].as_str().unwrap();
        let rec = RecordFile::parse(&std::fs::read(p.done().join(task)).unwrap()).unwrap();
        assert_eq!(rec.job_id.as_deref(), j["job_id"].as_str(), "{task}");
    }
}

/// The dispatcher runs a delegated task itself (a user error: it should
/// have skipped it) and files its own result as done/<id>.md. The reap
/// reports it, never overwrites the dispatcher's file, and goes on.
#[test]
fn a_dispatcher_running_a_delegated_task_is_reported_not_fatal() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let a = p.task("a.md", b"---\nallow_delegation: true\n---\nA.\n");
    let b = p.task("b.md", b"---\nallow_delegation: true\n---\nB.\n");
    let ja = p.submit_ok(&mock, "a.md");
    p.submit_ok(&mock, "b.md");
    // The dispatcher ran a.md: moved it to done/ with its own notes.
    std::fs::create_dir(p.done()).unwrap();
    let mine = b"# a.md, run locally by the dispatcher\nIt worked.\n";
    std::fs::write(p.done().join("a.md"), mine).unwrap();
    std::fs::remove_file(&a).unwrap();
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(
        std::fs::read(p.done().join("a.md")).unwrap(),
        mine,
        "the dispatcher's file was overwritten"
    );
    let ours = p.done().join("a.2.md");
    let rec = RecordFile::parse(&std::fs::read(&ours).unwrap()).unwrap();
    assert!(rec.task_missing, "{:?}", rec.map);
    assert_eq!(rec.job_id.as_deref(), Some(ja.as_str()));
    assert!(out.stdout.contains(ours.to_str().unwrap()), "{out:?}");
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("a.md"))
        .unwrap_or_else(|| panic!("not reported: {out:?}"));
    assert!(warning.contains("vanished"), "{warning}");
    // The other task went its way.
    assert!(p.done().join("b.md").exists() && !b.exists());
    assert!(p.names(&p.inbox()).is_empty(), "{:?}", p.names(&p.inbox()));
}

// A queue lock held by a stranger.

/// Runs ccl-delegate with the config file holding `config`.
fn with_config(p: &Project, mock: Option<&Mock>, config: &str, args: &[&str]) -> Out {
    p.write_config(config);
    p.run(mock, args)
}

#[test]
fn submit_gives_up_on_a_stuck_queue_lock_after_lock_timeout() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task("a.md", GEMINI);
    let lock = p.queue().join(".ccl-delegate.lock");
    let _held = ShellLock::hold(&lock);
    let t0 = Instant::now();
    let out = with_config(&p, Some(&mock), "lock_timeout: 1s\n", &["submit", s(&task)]);
    out.expect(75);
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert!(out.stderr.contains(".ccl-delegate.lock"), "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(p.names(&p.inbox()), vec!["a.md".to_string()]);
    assert_eq!(mock.jobs_created(), 0);
}

#[test]
fn reap_skips_a_project_whose_queue_lock_is_stuck_and_reaps_the_rest() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let stuck = Project::new();
    let free = Project::new();
    stuck.delegated(&mock, "a.md", &rfc3339_ago(60));
    free.delegated(&mock, "b.md", &rfc3339_ago(60));
    let _held = ShellLock::hold(&stuck.queue().join(".ccl-delegate.lock"));
    let t0 = Instant::now();
    let out = with_config(
        &free,
        Some(&mock),
        "lock_timeout: 1s\n",
        &[
            "reap",
            "--project",
            s(&stuck.dir),
            "--project",
            s(&free.dir),
        ],
    );
    out.expect(75);
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(out.stderr.contains(".ccl-delegate.lock"), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert!(free.done().join("b.md").exists(), "{out:?}");
    assert!(stuck.marker("a.md").is_some(), "{out:?}");
    assert!(!stuck.done().join("a.md").exists());
}
