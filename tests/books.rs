//! The books (policy.md "The ledger", "Limits on jobs in flight", "When the
//! books cannot be read or written"), each class found from outside tried
//! through the real binary against the real mock: deferred failover steps
//! that hold no job, a reap between an admission and its marker, spend
//! dated ahead, a provider named in another case, reaps that run at once,
//! damaged or full books, and a burst while a price is unknown.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn submit(p: &Project, mock: &Mock, task: &str, extra: &[&str]) -> Out {
    let path = p.inbox().join(task);
    let mut args = vec!["submit"];
    args.extend_from_slice(extra);
    args.push(path.to_str().unwrap());
    p.run(Some(mock), &args)
}

fn markers(p: &Project) -> usize {
    p.names(&p.inbox())
        .iter()
        .filter(|n| n.ends_with(".delegated"))
        .count()
}

/// policy.md: "a failover step that a limit deferred holds no job and is
/// not in flight". Three chains wait for one claude slot: each goes in
/// turn, and a new claude task is never held back by steps that hold none.
#[test]
fn deferred_failover_steps_hold_no_job_and_go_in_turn() {
    let mock = Mock::start(&[
        "--statuses",
        "completed",
        "--provider-outcome",
        "gemini=failed",
    ]);
    let p = Project::new();
    p.write_config("max_in_flight:\n  claude: 1\n");
    for i in 0..3 {
        p.task(&format!("t{i}.md"), &provider_task("gemini", "claude"));
        p.submit_ok(&mock, &format!("t{i}.md"));
    }
    let mut saw_two = false;
    for _ in 0..12 {
        let out = p.reap(&mock, &["-v"]);
        saw_two |= out.stderr.contains("2 in flight");
        assert!(
            p.reservations().len() <= 3,
            "never more reservations than markers"
        );
        if p.names(&p.done()).len() == 3 {
            break;
        }
    }
    assert!(!saw_two, "a deferred step counted as in flight");
    assert_eq!(p.names(&p.done()).len(), 3, "every chain reached done/");
    assert_eq!(markers(&p), 0);
    assert_eq!(p.reservations().len(), 0, "nothing left reserved");
    // A new claude task goes at once: no stale count holds it back.
    p.task("new.md", &provider_task("claude", ""));
    p.submit_ok(&mock, "new.md");
    // 3 gemini jobs, 3 claude steps, 1 new claude job: each booked once.
    p.reap(&mock, &[]).expect(0);
    let e = p.entries();
    assert_eq!(e.len(), 7, "{e:#?}");
    assert_eq!(mock.jobs_created(), 7);
}

/// A reap at any instant never undoes an admission: reaps in a loop beside
/// four submitters against `all: 1`, the inbox sampled all along.
#[test]
fn reaps_beside_submitters_never_let_two_jobs_fly_against_a_limit_of_one() {
    let secs: u64 = std::env::var("CCL_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    p.write_config("max_in_flight:\n  all: 1\nlock_timeout: 30s\n");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (max_seen, samples) = std::thread::scope(|s| {
        for w in 0..4 {
            let (p, mock, stop) = (&p, &mock, &stop);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = format!("w{w}-{i}.md");
                    p.task(&name, &provider_task("gemini", ""));
                    let out = submit(p, mock, &name, &["-q"]);
                    match out.code {
                        0 => {}
                        // Deferred: nothing written; the dispatcher would
                        // try again later. Taken away here.
                        75 => {
                            assert!(
                                out.stdout.starts_with("deferred gemini: "),
                                "{}",
                                out.stdout
                            );
                            let _ = std::fs::remove_file(p.inbox().join(&name));
                        }
                        c => panic!("submit exit {c}: {} {}", out.stdout, out.stderr),
                    }
                    i += 1;
                }
            });
        }
        {
            let (p, mock, stop) = (&p, &mock, &stop);
            s.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = p.reap(mock, &["-q"]);
                    assert!(matches!(out.code, 0 | 75), "{out:?}");
                }
            });
        }
        let mut max_seen = 0;
        let mut samples = 0;
        while Instant::now() < deadline {
            max_seen = max_seen.max(markers(&p));
            samples += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (max_seen, samples)
    });
    assert!(samples > 100, "{samples} samples");
    assert_eq!(max_seen, 1, "two markers at once against all: 1");
    p.reap_until_settled(&mock, &[], 5);
    let done = p.names(&p.done()).len() as u64;
    assert!(done >= 5, "only {done} jobs went in {secs} s");
    assert_eq!(
        mock.jobs_created(),
        done,
        "every job created was reaped once"
    );
    assert_eq!(p.entries().len() as u64, done, "and booked once");
    println!("{done} jobs against all: 1 in {secs} s, {samples} samples, never two markers");
}

/// policy.md: an entry dated in the future counts in its own day and never
/// hides today's spend.
#[test]
fn spend_dated_ahead_never_hides_todays() {
    let mock = Mock::start(&["--statuses", "completed", "--provider-cost", "claude=1.00"]);
    let p = Project::new();
    p.write_config("budget:\n  daily_cad: 3.00\n  monthly_cad: 1000\n  providers:\n    claude: {estimate_cad: 1.00}\n",
    );
    // Two jobs a clock 2 and 3 days ahead booked, as a ledger of an
    // earlier version held them (imported at the first run).
    let ahead = |days: u64| {
        let t = std::time::SystemTime::now() + Duration::from_secs(days * 86_400);
        ccl_delegate::timestamp::format(t)
    };
    p.write_old_ledger(&[(2, "j-ahead-2"), (3, "j-ahead-3")].map(|(d, id)| {
        let at = ahead(d);
        ledger_line(
            id,
            "/elsewhere",
            "claude",
            "m",
            "completed",
            1.0,
            (0, 0),
            &at,
            &at,
        )
    }));
    let mut delegated = 0;
    let mut local = 0;
    for i in 0..8 {
        let name = format!("t{i}.md");
        p.task(&name, &provider_task("claude", ""));
        let out = submit(&p, &mock, &name, &[]);
        match out.code {
            0 => delegated += 1,
            10 => {
                local += 1;
                assert_eq!(out.stdout, "local budget\n");
                assert!(
                    out.stderr.contains("all daily budget 3.00 CAD: spent 3.00"),
                    "{}",
                    out.stderr
                );
            }
            c => panic!("exit {c}: {out:?}"),
        }
        p.reap(&mock, &[]).expect(0);
    }
    assert_eq!((delegated, local), (3, 5), "3.00 a day at 1.00 a job");
    let st = p.run(None, &["status", "--project", p.dir.to_str().unwrap()]);
    assert!(
        st.stdout
            .contains("budget daily all: 3.0000 of 3.0000 CAD spent"),
        "{}",
        st.stdout
    );
    let by_day = p.report_json("day");
    let today = ccl_delegate::timestamp::now()[..10].to_string();
    assert_eq!(row(&by_day, "day", &today).unwrap()["cost_cad"], 3.0);
    assert_eq!(row(&by_day, "day", &ahead(2)[..10]).unwrap()["jobs"], 1);
}

/// policy.md: a provider named by the service counts under its canonical
/// name; the entry keeps what the service said.
#[test]
fn a_provider_named_in_another_case_counts_under_its_cap() {
    let mock = Mock::start(&["--statuses", "completed", "--provider-cost", "claude=0.50"]);
    mock.set(serde_json::json!({"provider": "Claude"}));
    let p = Project::new();
    p.write_config("budget:\n  providers:\n    claude: {daily_cad: 1.00, estimate_cad: 0.50}\n");
    let mut delegated = 0;
    for i in 0..6 {
        let name = format!("t{i}.md");
        p.task(&name, &provider_task("claude", ""));
        if submit(&p, &mock, &name, &[]).code == 0 {
            delegated += 1;
        }
        p.reap(&mock, &[]).expect(0);
    }
    assert_eq!(delegated, 2, "1.00 at 0.50 a job");
    let r = p.report_json("provider");
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{r}");
    assert_eq!(rows[0]["provider"], "claude");
    assert_eq!(rows[0]["jobs"], 2);
    let e = p.entries();
    assert!(
        e.iter()
            .all(|e| e.said_provider.as_deref() == Some("Claude")),
        "{e:#?}"
    );
}

/// A marker that names its provider in another case (one of the earlier Go
/// implementation, or edited by hand) counts under the provider's own name
/// when a reap reconciles the books with the markers: it holds the
/// `claude` limit like any claude job, and the metrics count it there.
#[test]
fn a_marker_naming_its_provider_in_another_case_counts_under_its_limit() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    // Sent before any limit was configured: the books learn of it from
    // its marker, at the next reap.
    p.task("old.md", &provider_task("claude", ""));
    let job = p.submit_ok(&mock, "old.md");
    p.write_config("max_in_flight:\n  claude: 1\n");
    let mut m = p.marker("old.md").unwrap();
    m["provider"] = "Claude".into();
    m["started_at"] = format!(" {} ", m["started_at"].as_str().unwrap()).into();
    p.write_marker("old.md", &m.to_string());
    let metrics = p.dir.join("metrics.prom");
    p.reap(&mock, &["--metrics-file", metrics.to_str().unwrap()])
        .expect(0);
    assert!(p.marker("old.md").is_some(), "job {job} still running");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.lines().any(|l| l.contains("provider=\"claude\"")
            && l.ends_with(" 1")
            && l.starts_with("ccl_delegate_active_jobs")),
        "{text}"
    );
    assert!(!text.contains("\"Claude\""), "{text}");
    p.task("new.md", &provider_task("claude", ""));
    let out = submit(&p, &mock, "new.md", &[]);
    assert_eq!(out.code, 75, "{out:?}");
    assert_eq!(out.stdout, "deferred claude: 1 in flight, limit 1\n");
}

/// Counting once never depends on the run lock: two reaps at once with
/// their own lock files, over chains that fail over, book every job once.
#[test]
fn two_reaps_at_once_book_every_job_once() {
    let mock = Mock::start(&[
        "--statuses",
        "completed",
        "--provider-outcome",
        "gemini=failed",
        "--latency",
        "5ms",
    ]);
    let p = Project::new();
    for i in 0..20 {
        p.task(&format!("t{i:02}.md"), &provider_task("gemini", "claude"));
        p.submit_ok(&mock, &format!("t{i:02}.md"));
    }
    let locks: Vec<PathBuf> = (0..2)
        .map(|i| p.tmp.path().join(format!("reap{i}.lock")))
        .collect();
    for _ in 0..6 {
        std::thread::scope(|s| {
            for l in &locks {
                let (p, mock) = (&p, &mock);
                s.spawn(move || {
                    let out = p.reap(mock, &["--lock-file", l.to_str().unwrap(), "-q"]);
                    assert!(matches!(out.code, 0 | 75), "{out:?}");
                });
            }
        });
        if p.names(&p.done()).len() == 20 {
            break;
        }
    }
    assert_eq!(p.names(&p.done()).len(), 20);
    let created = mock.jobs_created();
    assert_eq!(created, 40, "a gemini and a claude job per task");
    let e = p.entries();
    assert_eq!(e.len() as u64, created, "each job booked once");
    let r = p.report_json("provider");
    assert_eq!(row(&r, "provider", "gemini").unwrap()["jobs"], 20);
    assert_eq!(row(&r, "provider", "claude").unwrap()["jobs"], 20);
}

/// policy.md "When the books cannot be read or written": with a limit
/// configured, books that are not a regular file fail closed, said even
/// with -q; reap still moves the tasks, exits 1, says so in its metrics,
/// and the first run that can books what it could not, once.
#[test]
fn damaged_books_fail_closed_and_reap_still_moves_tasks() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    p.write_config("max_in_flight:\n  all: 1\n");
    p.task("before.md", &provider_task("gemini", ""));
    p.submit_ok(&mock, "before.md");
    let books = p.state_dir().join("books.sqlite");
    assert!(books.is_file());
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", books.display()));
    }
    std::fs::remove_file(&books).unwrap();
    std::fs::create_dir(&books).unwrap();
    for i in 0..3 {
        let name = format!("t{i}.md");
        p.task(&name, &provider_task("gemini", ""));
        let out = submit(&p, &mock, &name, &["-q"]);
        out.expect(75);
        assert_eq!(out.stdout, "deferred gemini: books unavailable\n");
        assert!(
            out.stderr.contains("books.sqlite") && out.stderr.contains("not a regular file"),
            "{}",
            out.stderr
        );
        assert!(p.marker(&name).is_none(), "nothing written");
    }
    assert_eq!(mock.jobs_created(), 1, "nothing spent without the books");
    let metrics = p.tmp.path().join("reap.prom");
    let out = p.reap(&mock, &["-q", "--metrics-file", metrics.to_str().unwrap()]);
    out.expect(1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("books.sqlite"), "{}", out.stderr);
    assert_eq!(p.names(&p.done()), ["before.md"], "the task moved");
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert!(m.contains("ccl_delegate_reap_success 0"), "{m}");
    // Mended: the next run books the job, once.
    std::fs::remove_dir(&books).unwrap();
    let out = p.reap(&mock, &["--metrics-file", metrics.to_str().unwrap()]);
    out.expect(0);
    assert!(
        std::fs::read_to_string(&metrics)
            .unwrap()
            .contains("ccl_delegate_reap_success 1")
    );
    let e = p.entries();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].task, "before.md");
    p.reap(&mock, &[]).expect(0);
    assert_eq!(p.entries().len(), 1, "booked once");
    assert!(
        !p.queue()
            .join(".ccl-delegate.owed")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
}

/// A full disk under the state directory (a small tmpfs, as root): reap
/// still moves the tasks and the failover chains, exits 1 with one line,
/// and the entries are booked once the disk has room again.
#[test]
fn a_full_disk_under_the_books_never_stops_tasks_and_is_said() {
    if unsafe { libc::geteuid() } != 0 {
        println!("not root: the full-disk test needs a tmpfs mount; skipped");
        return;
    }
    let mock = Mock::start(&[
        "--statuses",
        "completed",
        "--provider-outcome",
        "gemini=failed",
    ]);
    let p = Project::new();
    let state = p.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&state)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("cannot mount a tmpfs here; skipped");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(state.clone());
    for i in 0..4 {
        p.task(&format!("t{i}.md"), &provider_task("gemini", "claude"));
        p.submit_ok(&mock, &format!("t{i}.md"));
    }
    // The books exist; then the disk fills up.
    p.run(None, &["report"]).expect(0);
    let filler = state.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4096", "count=100000"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let metrics = p.tmp.path().join("reap.prom");
    let mut said = false;
    for _ in 0..4 {
        let out = p.reap(&mock, &["-q", "--metrics-file", metrics.to_str().unwrap()]);
        if out.code == 1 {
            said = true;
            assert!(out.stderr.contains("books.sqlite"), "{}", out.stderr);
            let m = std::fs::read_to_string(&metrics).unwrap();
            assert!(m.contains("ccl_delegate_reap_success 0"), "{m}");
        } else {
            assert_eq!(out.code, 0, "{out:?}");
        }
        if p.names(&p.done()).len() == 4 {
            break;
        }
    }
    assert!(said, "a reap that could not write the books said so");
    assert_eq!(p.names(&p.done()).len(), 4, "the chains went on");
    std::fs::remove_file(&filler).unwrap();
    p.reap(&mock, &[]).expect(0);
    let e = p.entries();
    assert_eq!(e.len() as u64, mock.jobs_created(), "{e:#?}");
}

/// policy.md: a price not yet known is learnt before buying in bulk: one
/// job in flight until the first completes, or `estimate_cad`.
#[test]
fn a_burst_while_the_price_is_unknown_sends_one_job() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    p.write_config("budget:\n  daily_cad: 1.00\n");
    let burst = |n: usize| -> Vec<Out> {
        for i in 0..n {
            p.task(&format!("b{i}.md"), &provider_task("claude", ""));
        }
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    let (p, mock) = (&p, &mock);
                    s.spawn(move || submit(p, mock, &format!("b{i}.md"), &["-q"]))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let outs = burst(30);
    let sent: Vec<&Out> = outs.iter().filter(|o| o.code == 0).collect();
    assert_eq!(sent.len(), 1, "{outs:#?}");
    let job = sent[0]
        .stdout
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    for o in outs.iter().filter(|o| o.code != 0) {
        assert_eq!(o.code, 75, "{o:?}");
        assert!(
            o.stdout == format!("deferred claude: price unknown until job {job} ends\n")
                || o.stdout
                    .starts_with("deferred claude: price unknown until job "),
            "{}",
            o.stdout
        );
    }
    assert_eq!(mock.jobs_created(), 1);

    // With an estimate in the config, the budget itself holds the burst.
    let q = Project::new();
    q.write_config("budget:\n  daily_cad: 1.00\n  providers:\n    claude: {estimate_cad: 0.40}\n");
    let mock2 = Mock::start(&["--statuses", "running"]);
    for i in 0..20 {
        q.task(&format!("b{i}.md"), &provider_task("claude", ""));
    }
    let codes: Vec<i32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|i| {
                let (q, mock2) = (&q, &mock2);
                s.spawn(move || submit(q, mock2, &format!("b{i}.md"), &["-q"]).code)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 10).count(), 18, "{codes:?}");
}

/// Sums never wrap, and damaged sums never make room: a hostile service's
/// token counts saturate; a day's sum set below zero or to infinity by
/// hand is damage, on which admission fails closed (naming the fix) until
/// `ledger rebuild` makes the sums again from the ledger.
#[test]
fn sums_saturate_and_a_damaged_sum_fails_closed_until_rebuilt() {
    let mock = Mock::start(&["--statuses", "completed", "--provider-cost", "gpu=0.40"]);
    mock.set(serde_json::json!({"tokens_in": u64::MAX}));
    let p = Project::new();
    for i in 0..3 {
        p.task(&format!("t{i}.md"), &provider_task("gpu", ""));
        p.submit_ok(&mock, &format!("t{i}.md"));
    }
    p.reap(&mock, &[]).expect(0);
    let r = p.report_json("provider");
    assert_eq!(r["total"]["tokens_in"], u64::MAX, "{r}");
    assert_eq!(r["total"]["jobs"], 3);

    p.write_config("budget:\n  daily_cad: 2.00\n");
    p.task("d.md", &provider_task("gpu", ""));
    for damage in ["-1000", "9e999"] {
        let c = rusqlite::Connection::open(p.state_dir().join("books.sqlite")).unwrap();
        c.execute_batch(&format!("UPDATE spend_day SET cost_cad = {damage}"))
            .unwrap();
        drop(c);
        let out = submit(&p, &mock, "d.md", &[]);
        assert_eq!(out.code, 75, "{damage}: {out:?}");
        assert_eq!(out.stdout, "deferred gpu: books unavailable\n", "{damage}");
        assert!(
            out.stderr.contains("the books are damaged") && out.stderr.contains("ledger rebuild"),
            "{damage}: {}",
            out.stderr
        );
        assert_eq!(markers(&p), 0, "{damage}");
    }
    let dir = p.dir.to_str().unwrap();
    p.run(None, &["ledger", "rebuild", "--project", dir])
        .expect(0);
    let mut delegated = 0;
    for i in 0..8 {
        let name = format!("n{i}.md");
        p.task(&name, &provider_task("gpu", ""));
        if submit(&p, &mock, &name, &[]).code == 0 {
            delegated += 1;
        }
        p.reap(&mock, &[]).expect(0);
    }
    // The sums made again: 1.20 spent today, so 2.00 at 0.40 a job lets
    // two more go, never the five or more a damaged sum would.
    assert_eq!(delegated, 2);
}

/// A requeued task's job stays in the books, and status and rebuild agree
/// with the records afterwards (no warning, no job lost).
#[test]
fn a_requeued_job_stays_in_the_books_without_a_warning() {
    let mock = Mock::start(&[
        "--statuses",
        "completed",
        "--provider-outcome",
        "gemini=failed",
    ]);
    let p = Project::new();
    for i in 0..3 {
        p.task(&format!("t{i}.md"), &provider_task("gemini", ""));
        p.submit_ok(&mock, &format!("t{i}.md"));
    }
    p.reap(&mock, &[]).expect(0);
    assert_eq!(p.names(&p.failed()).len(), 3);
    let rec = p.failed().join("t0.md");
    p.run(None, &["requeue", rec.to_str().unwrap()]).expect(0);
    let dir = p.dir.to_str().unwrap();
    let st = p.run(None, &["status", "--project", dir]);
    st.expect(0);
    assert_eq!(st.stderr, "", "no warning after a requeue");
    let out = p.run(None, &["ledger", "rebuild", "--project", dir]);
    out.expect(0);
    assert_eq!(p.report_json("provider")["total"]["jobs"], 3, "no job lost");
    let st = p.run(None, &["status", "--project", dir]);
    assert_eq!(st.stderr, "");
}

/// The same class with a real clock moved ahead (`faketime`): two jobs
/// finished 2 and 3 days ahead, then, with the clock right, a daily cap of
/// 3.00 admits three jobs at 1.00, not eight.
#[test]
fn jobs_finished_under_a_clock_ahead_never_hide_todays_spend() {
    let have = std::process::Command::new("faketime")
        .args(["-f", "+1d", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "faketime is missing (Debian package faketime; .ci/run installs it)"
        );
        println!("faketime is not installed: the clock test did not run");
        return;
    }
    let mock = Mock::start(&["--statuses", "completed", "--provider-cost", "claude=1.00"]);
    let p = Project::new();
    p.write_config("budget:\n  daily_cad: 3.00\n  providers:\n    claude: {estimate_cad: 1.00}\n");
    for (i, shift) in ["+2d", "+3d"].iter().enumerate() {
        let name = format!("ahead{i}.md");
        p.task(&name, &provider_task("claude", ""));
        let path = p.inbox().join(&name);
        let mut c = p.cmd(Some(&mock));
        c.arg("submit").arg(&path);
        let out = Out::of(
            std::process::Command::new("faketime")
                .arg("-f")
                .arg(shift)
                .arg(c.get_program())
                .args(c.get_args())
                .envs(c.get_envs().filter_map(|(k, v)| v.map(|v| (k, v)))),
        );
        out.expect(0);
        let mut r = p.cmd(Some(&mock));
        r.args([
            "reap",
            "--project",
            p.dir.to_str().unwrap(),
            "--submit-grace",
            "0s",
        ]);
        let out = Out::of(
            std::process::Command::new("faketime")
                .arg("-f")
                .arg(shift)
                .arg(r.get_program())
                .args(r.get_args())
                .envs(r.get_envs().filter_map(|(k, v)| v.map(|v| (k, v)))),
        );
        out.expect(0);
    }
    assert_eq!(p.names(&p.done()).len(), 2);
    let mut delegated = 0;
    for i in 0..8 {
        let name = format!("t{i}.md");
        p.task(&name, &provider_task("claude", ""));
        if submit(&p, &mock, &name, &[]).code == 0 {
            delegated += 1;
        }
        p.reap(&mock, &[]).expect(0);
    }
    assert_eq!(delegated, 3);
    let by_day = p.report_json("day");
    let today = ccl_delegate::timestamp::now()[..10].to_string();
    assert_eq!(
        row(&by_day, "day", &today).unwrap()["cost_cad"],
        3.0,
        "{by_day}"
    );
}

/// Books that are no database (garbage written over them) are made again
/// by `ledger rebuild`, which the error names: the damaged file is moved
/// aside, never deleted.
#[test]
fn ledger_rebuild_mends_books_that_are_no_database() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    for i in 0..2 {
        p.task(&format!("t{i}.md"), &provider_task("gemini", ""));
        p.submit_ok(&mock, &format!("t{i}.md"));
    }
    p.reap(&mock, &[]).expect(0);
    let books = p.state_dir().join("books.sqlite");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", books.display()));
    }
    std::fs::write(&books, vec![0x5au8; 4096]).unwrap();
    let out = p.run(None, &["report"]);
    out.expect(1);
    assert!(out.stderr.contains("ledger rebuild"), "{}", out.stderr);
    let dir = p.dir.to_str().unwrap();
    let out = p.run(None, &["ledger", "rebuild", "--project", dir]);
    out.expect(0);
    assert!(out.stderr.contains("moved it to"), "{}", out.stderr);
    assert!(
        std::fs::read_dir(p.state_dir())
            .unwrap()
            .flatten()
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with("books.sqlite.damaged-"))
    );
    assert_eq!(p.report_json("provider")["total"]["jobs"], 2);
}

/// Books made anew by `ledger rebuild` know the jobs in flight at once
/// (from the markers, under the queue locks), not only after the next
/// reap: a limit holds between the rebuild and that reap.
#[test]
fn ledger_rebuild_of_damaged_books_keeps_the_jobs_in_flight() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    p.write_config("max_in_flight:\n  all: 1\n");
    p.task("a.md", &provider_task("gemini", ""));
    p.submit_ok(&mock, "a.md");
    let books = p.state_dir().join("books.sqlite");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", books.display()));
    }
    std::fs::write(&books, vec![0x5au8; 4096]).unwrap();
    let dir = p.dir.to_str().unwrap();
    p.run(None, &["ledger", "rebuild", "--project", dir])
        .expect(0);
    p.task("b.md", &provider_task("gemini", ""));
    let out = submit(&p, &mock, "b.md", &[]);
    assert_eq!(out.code, 75, "{out:?}");
    assert_eq!(out.stdout, "deferred gemini: 1 in flight, limit 1\n");
    assert_eq!(markers(&p), 1);
}

/// A job the service said ran on a provider that is none of ours counts
/// under the one asked for, at reap and after `ledger rebuild` alike: the
/// rebuild never moves its spend off that provider's cap.
#[test]
fn ledger_rebuild_keeps_a_job_under_the_provider_it_was_counted_for() {
    let mock = Mock::start(&["--statuses", "completed", "--provider-cost", "claude=0.90"]);
    mock.set(serde_json::json!({"provider": "anthropic-opus"}));
    let p = Project::new();
    p.write_config("budget:\n  providers:\n    claude: {daily_cad: 1.00}\n");
    p.task("a.md", &provider_task("claude", ""));
    p.submit_ok(&mock, "a.md");
    p.reap(&mock, &[]).expect(0);
    let dir = p.dir.to_str().unwrap();
    for rebuilt in [false, true] {
        if rebuilt {
            p.run(None, &["ledger", "rebuild", "--project", dir])
                .expect(0);
        }
        let r = p.report_json("provider");
        let rows = r["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "rebuilt {rebuilt}: {r}");
        assert_eq!(rows[0]["provider"], "claude", "rebuilt {rebuilt}: {r}");
        let name = format!("b{rebuilt}.md");
        p.task(&name, &provider_task("claude", ""));
        let out = submit(&p, &mock, &name, &[]);
        assert_eq!(out.code, 10, "rebuilt {rebuilt}: {out:?}");
        assert_eq!(out.stdout, "local budget\n", "rebuilt {rebuilt}");
    }
}

/// Only jobs the service made are jobs: a step a limit deferred and a
/// budget then refused is no job, in the ledger, `report`, `status` and
/// the metrics; the line names the last job that ran.
#[test]
fn a_step_that_never_became_a_job_is_booked_as_none() {
    let mock = Mock::start(&[
        "--statuses",
        "completed",
        "--provider-outcome",
        "gpu=failed",
        "--provider-cost",
        "claude=0.80",
    ]);
    let p = Project::new();
    p.write_config("max_in_flight:\n  claude: 1\nbudget:\n  daily_cad: 1.00\n  providers:\n    claude: {estimate_cad: 0.50}\n",
    );
    p.task("other.md", &provider_task("claude", ""));
    let other = p.submit_ok(&mock, "other.md");
    mock.set(serde_json::json!({"status_of": {other.clone(): "running"}}));
    p.task("a01.md", &provider_task("gpu", "claude"));
    let gpu_job = p.submit_ok(&mock, "a01.md");
    let metrics = p.tmp.path().join("m.prom");
    let m = ["--metrics-file", metrics.to_str().unwrap()];
    p.reap(&mock, &m).expect(0);
    assert_eq!(p.marker("a01.md").unwrap()["deferred"], true);
    // other.md completes at 0.80: the step would pass the daily 1.00.
    mock.set(serde_json::json!({"status_of": {other.clone(): null}}));
    let mut lines = String::new();
    for _ in 0..3 {
        lines += &p.reap(&mock, &m).stdout;
    }
    assert!(
        lines.contains(&format!(
            "a01.md (job {gpu_job} failed on gpu; the failover to claude was refused by a budget)"
        )),
        "{lines}"
    );
    assert_eq!(mock.jobs_created(), 2);
    let r = p.report_json("provider");
    assert_eq!(r["total"]["jobs"], 2, "{r}");
    assert_eq!(row(&r, "provider", "gpu").unwrap()["failed"], 1);
    assert_eq!(row(&r, "provider", "claude").unwrap()["jobs"], 1);
    assert_eq!(row(&r, "provider", "claude").unwrap()["failed"], 0);
    let st = p.run(
        None,
        &["status", "--json", "--project", p.dir.to_str().unwrap()],
    );
    st.expect(0);
    assert_eq!(st.stderr, "", "status agrees with the records");
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    let totals = v["totals"].as_array().unwrap();
    let gpu = totals
        .iter()
        .find(|t| t["provider"] == "gpu")
        .expect("a gpu row");
    assert_eq!(gpu["failed"], 1);
    assert!(
        !totals
            .iter()
            .any(|t| t["provider"] == "claude" && t["failed"] != 0),
        "{totals:?}"
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(!text.contains("from=\"gpu\",to=\"claude\""), "{text}");
}

/// A new process reads the books' whole write-ahead log back when it opens
/// them, so many submits without a reap must not let it grow: each run
/// that closes the books empties a log over 256 KiB (README "The books").
#[test]
fn many_submits_without_a_reap_keep_the_books_log_short() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    p.write_config("max_in_flight:\n  all: 1000\n");
    let wal = p.state_dir().join("books.sqlite-wal");
    let mut largest = 0;
    for i in 0..120 {
        p.task(&format!("w{i}.md"), &provider_task("gemini", ""));
        submit(&p, &mock, &format!("w{i}.md"), &["-q"]).expect(0);
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert_eq!(markers(&p), 120);
    // The log may exceed the bound by one run's own commit, never more.
    assert!(largest > 0, "the books were never written");
    assert!(
        largest < 256 * 1024 + 64 * 1024,
        "log grew to {largest} bytes"
    );
}
