//! Failover across providers (policy.md "Failover"), through the real
//! binary against the real mock: chains followed to done/, what never fails
//! over, budgets and limits on a step, hostile `fallback` values, markers
//! from before failover, and kills of a reap mid-step.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const CHAINED: &[u8] =
    b"---\npreferred_ai: gemini\nfallback: [claude, gpu]\n---\n# Summarise the log\nbody\n";

/// A mock whose jobs end at once: gemini failed, claude expired, the rest
/// completed.
fn mock_failing() -> Mock {
    Mock::start(&[
        "--statuses",
        "completed",
        "--provider-outcome",
        "gemini=failed",
        "--provider-outcome",
        "claude=expired",
    ])
}

fn task_path(p: &Project, name: &str) -> String {
    p.inbox().join(name).display().to_string()
}

#[test]
fn a_task_fails_over_twice_and_lands_in_done_with_its_attempts() {
    let mock = mock_failing();
    let p = Project::new();
    p.task("t.md", CHAINED);
    let first = p.submit_ok(&mock, "t.md");
    let m = p.marker("t.md").unwrap();
    assert_eq!(m["fallback"], serde_json::json!(["claude", "gpu"]));
    let started = m["started_at"].clone();

    let metrics = p.tmp.path().join("reap.prom");
    let metrics_arg = ["--metrics-file", metrics.to_str().unwrap()];
    let out = p.reap(&mock, &metrics_arg);
    out.expect(0);
    let m = p.marker("t.md").expect("a marker for the next provider");
    let second = m["job_id"].as_str().unwrap().to_string();
    assert_eq!(
        out.stdout,
        format!(
            "failover {} (job {first} failed: gemini model overloaded) -> claude job {second}\n",
            task_path(&p, "t.md")
        )
    );
    assert_eq!(m["state"], "submitted");
    assert_eq!(m["provider"], "claude");
    assert_eq!(m["started_at"], started, "the chain keeps its first clock");
    assert_eq!(m["fallback"], serde_json::json!(["gpu"]));
    assert_eq!(
        m["attempts"],
        serde_json::json!([{"provider": "gemini", "job_id": first, "status": "failed",
                            "error": "gemini model overloaded"}])
    );
    assert_eq!(mock.job(&second)["provider"], "claude");
    // status shows the attempt in flight.
    let dir = p.dir.to_str().unwrap();
    let st = p.run(None, &["status", "--project", dir]);
    st.expect(0);
    assert!(st.stdout.contains("claude 2/3"), "{}", st.stdout);
    let st = p.run(None, &["status", "--json", "--project", dir]);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["in_flight"][0]["attempt"], "2/3");

    let out = p.reap(&mock, &metrics_arg);
    out.expect(0);
    let third = p.marker("t.md").unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        out.stdout,
        format!(
            "failover {} (job {second} expired) -> gpu job {third}\n",
            task_path(&p, "t.md")
        )
    );

    let text = std::fs::read_to_string(&metrics).unwrap();
    // Each job the service made is counted under its provider: the two
    // earlier jobs of the chain ended without completing.
    let failed = |provider: &str| {
        format!(
            "ccl_delegate_failed_total{{project=\"{}\",provider=\"{provider}\"}} 1\n",
            p.dir.display()
        )
    };
    for want in [
        "ccl_delegate_failover_total{from=\"gemini\",to=\"claude\"} 1\n".to_string(),
        "ccl_delegate_failover_total{from=\"claude\",to=\"gpu\"} 1\n".to_string(),
        failed("gemini"),
        failed("claude"),
    ] {
        assert!(text.contains(&want), "{want} in {text}");
    }
    let out = p.reap(&mock, &metrics_arg);
    out.expect(0);
    assert!(out.stdout.starts_with("done "), "{}", out.stdout);
    // The chain ended: its steps are still counted once, its last job too.
    let text = std::fs::read_to_string(&metrics).unwrap();
    for want in [
        "ccl_delegate_failover_total{from=\"gemini\",to=\"claude\"} 1\n".to_string(),
        failed("gemini"),
        format!(
            "ccl_delegate_completed_total{{project=\"{}\",provider=\"gpu\"}} 1\n",
            p.dir.display()
        ),
    ] {
        assert!(text.contains(&want), "{want} in {text}");
    }
    assert!(
        out.stdout.contains(&format!("job {third}")),
        "{}",
        out.stdout
    );
    assert_eq!(p.names(&p.inbox()), Vec::<String>::new());
    let r = Record::read(&p.done().join("t.md"));
    assert_eq!(r.str("job_id"), Some(third.as_str()));
    assert_eq!(r.original(), CHAINED);
    let attempts: serde_json::Value =
        serde_json::to_value(r.get("attempts").expect("attempts in the record")).unwrap();
    assert_eq!(
        attempts,
        serde_json::json!([
            {"provider": "gemini", "job_id": first, "status": "failed",
             "error": "gemini model overloaded"},
            {"provider": "claude", "job_id": second, "status": "expired",
             "error": null},
        ])
    );
    // One job per provider, each once; the ended ones in the ledger.
    assert_eq!(mock.jobs_created(), 3);
    let ids: Vec<_> = p
        .ledger()
        .iter()
        .map(|e| {
            (
                e["job_id"].clone(),
                e["provider"].clone(),
                e["status"].clone(),
            )
        })
        .collect();
    for (job, provider, status) in [(&first, "gemini", "failed"), (&second, "claude", "expired")] {
        assert_eq!(
            ids.iter().filter(|(j, ..)| j == job).collect::<Vec<_>>(),
            vec![&(
                serde_json::json!(job),
                serde_json::json!(provider),
                serde_json::json!(status)
            )],
            "{ids:?}"
        );
    }
    // A rebuild from the records finds every job of the chain.
    let out = p.run(None, &["ledger", "rebuild", "--project", dir]);
    out.expect(0);
    // Its line counts what it wrote: the record and the chain's earlier jobs.
    assert!(
        out.stdout.contains(
            ": 3 entries from 1 project (1 done, 0 failed, 2 earlier jobs of failover chains)"
        ),
        "{}",
        out.stdout
    );
    let mut rebuilt: Vec<_> = p
        .ledger()
        .iter()
        .map(|e| {
            (
                e["job_id"].as_str().unwrap().to_string(),
                e["provider"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rebuilt.sort();
    let mut want = vec![
        (first.clone(), "gemini".to_string()),
        (second.clone(), "claude".to_string()),
        (third.clone(), "gpu".to_string()),
    ];
    want.sort();
    assert_eq!(rebuilt, want);
}

#[test]
fn cancelled_and_timeout_never_fail_over_and_max_age_bounds_the_chain() {
    // cancelled
    let mock = Mock::start(&[
        "--statuses",
        "completed",
        "--provider-outcome",
        "gemini=cancelled",
    ]);
    let p = Project::new();
    p.task("c.md", CHAINED);
    let job = p.submit_ok(&mock, "c.md");
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert!(!out.stdout.contains("failover"), "{}", out.stdout);
    let r = Record::read(&p.failed().join("c.md"));
    assert_eq!(
        (r.str("failed_reason"), r.str("job_id")),
        (Some("cancelled"), Some(job.as_str()))
    );
    assert!(r.get("attempts").is_none());
    assert_eq!(mock.jobs_created(), 1);

    // timeout: a job still running past max_age is cancelled, not replaced
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    p.task("t.md", CHAINED);
    p.submit_ok(&mock, "t.md");
    std::thread::sleep(Duration::from_millis(1100));
    let out = p.reap(&mock, &["--max-age", "1s"]);
    out.expect(0);
    assert!(!out.stdout.contains("failover"), "{}", out.stdout);
    let r = Record::read(&p.failed().join("t.md"));
    assert_eq!(r.str("failed_reason"), Some("timeout"));
    assert_eq!(mock.jobs_created(), 1);

    // max_age counts from the first submission: a job failed past it ends
    // the chain with its own reason.
    let mock = mock_failing();
    let p = Project::new();
    p.task("m.md", CHAINED);
    p.submit_ok(&mock, "m.md");
    std::thread::sleep(Duration::from_millis(1100));
    let out = p.reap(&mock, &["--max-age", "1s"]);
    out.expect(0);
    assert!(!out.stdout.contains("failover"), "{}", out.stdout);
    let r = Record::read(&p.failed().join("m.md"));
    assert_eq!(r.str("failed_reason"), Some("failed"));
    assert_eq!(mock.jobs_created(), 1);
}

#[test]
fn a_budget_ends_the_chain() {
    let mock = mock_failing();
    let p = Project::new();
    p.write_config("budget:\n  providers:\n    claude: {daily_cad: 1.00}\n");
    // claude spent 1.00 today: its next job (estimated 1.00) would pass.
    let now = rfc3339_ago(60);
    p.write_old_ledger(&[ledger_line(
        "j-x",
        "/elsewhere",
        "claude",
        "m",
        "completed",
        1.0,
        (0, 0),
        &now,
        &now,
    )]);
    p.task("b.md", CHAINED);
    let job = p.submit_ok(&mock, "b.md");
    let out = p.reap(&mock, &[]);
    out.expect(0);
    // The line names the last job that ran (README "Failover"; policy.md: a
    // failover step that a budget refuses ends the chain).
    assert_eq!(
        out.stdout,
        format!(
            "failed {} (job {job} on gemini ended; its failover was refused by a budget)\n",
            p.failed().join("b.md").display()
        )
    );
    let r = Record::read(&p.failed().join("b.md"));
    assert_eq!(r.str("failed_reason"), Some("budget"));
    assert!(
        r.text().contains("claude daily budget 1.00 CAD"),
        "{}",
        r.text()
    );
    assert_eq!(mock.jobs_created(), 1, "no job for claude");
}

/// The tasks of the jobs in flight the books hold, sorted.
fn in_flight_tasks(p: &Project) -> Vec<String> {
    let mut v: Vec<String> = p.reservations().into_iter().map(|r| r.task).collect();
    v.sort();
    v
}

/// Another project with a claude job in flight: submitted for real, so
/// its marker holds the job until a reap of that project ends it.
fn claude_in_flight_elsewhere(p: &Project, mock: &Mock) -> Project {
    let other = p.sibling("other");
    other.task("o.md", b"---\npreferred_ai: claude\n---\nx\n");
    other.submit_ok(mock, "o.md");
    other
}

#[test]
fn a_limit_defers_the_step_and_a_later_reap_sends_it() {
    let mock = mock_failing();
    let p = Project::new();
    p.write_config("max_in_flight:\n  claude: 1\n");
    let other = claude_in_flight_elsewhere(&p, &mock);
    p.task("l.md", CHAINED);
    let first = p.submit_ok(&mock, "l.md");

    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(out.stdout, "", "a deferred step prints nothing yet");
    let m = p.marker("l.md").unwrap();
    assert_eq!(
        (&m["state"], &m["provider"], &m["deferred"], &m["job_id"]),
        (
            &serde_json::json!("pending"),
            &serde_json::json!("claude"),
            &serde_json::json!(true),
            &serde_json::Value::Null
        )
    );
    assert_eq!(mock.jobs_created(), 2);
    // The deferred step holds no job: only the other one is in flight.
    assert_eq!(in_flight_tasks(&p), ["o.md"]);
    // Still over the limit: nothing is sent, however often reap runs.
    for _ in 0..2 {
        p.reap(&mock, &[]).expect(0);
    }
    assert_eq!(mock.jobs_created(), 2);
    assert_eq!(p.marker("l.md").unwrap()["deferred"], true);

    // The other claude job ended: the limit is free.
    other.reap(&mock, &[]).expect(0);
    assert_eq!(other.names(&other.failed()), ["o.md"]);
    assert_eq!(in_flight_tasks(&p), Vec::<String>::new());
    let out = p.reap(&mock, &[]);
    out.expect(0);
    let m = p.marker("l.md").unwrap();
    let second = m["job_id"].as_str().expect("sent").to_string();
    assert_eq!(
        out.stdout,
        format!(
            "failover {} (job {first} failed: gemini model overloaded) -> claude job {second}\n",
            task_path(&p, "l.md")
        )
    );
    assert!(m.get("deferred").is_none());
    assert_eq!(mock.jobs_created(), 3);
    assert_eq!(in_flight_tasks(&p), ["l.md"]);
}

#[test]
fn hostile_fallback_values_warn_and_never_change_routing() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    let many = format!("fallback: [{}]\n", vec!["openai"; 10_000].join(", "));
    let cases: &[(&str, &str, serde_json::Value, &[&str])] = &[
        (
            "map.md",
            "fallback: {gemini: claude}\n",
            serde_json::Value::Null,
            &["`fallback` is a mapping"],
        ),
        (
            "num.md",
            "fallback: 12\n",
            serde_json::Value::Null,
            &["not a provider or a list"],
        ),
        (
            "names.md",
            "fallback: [claude-code, openai, [gpu], claude]\n",
            serde_json::json!(["claude"]),
            &[
                "entry 1 `claude-code`",
                "entry 2 `openai`",
                "entry 3 is not a provider name",
            ],
        ),
        (
            "five.md",
            "fallback: [gpu, gpu, gpu, claude, gemini]\n",
            serde_json::json!(["gpu", "gpu", "gpu", "claude"]),
            &["names 5 providers, at most 4"],
        ),
        (
            "many.md",
            &many,
            serde_json::Value::Null,
            &["9997 more entries"],
        ),
    ];
    for (name, key, chain, warnings) in cases {
        let task = format!("---\npreferred_ai: gemini\n{key}---\nbody\n");
        let path = p.task(name, task.as_bytes());
        let out = p.run(Some(&mock), &["submit", path.to_str().unwrap()]);
        out.expect(0);
        assert!(
            out.stdout.starts_with("delegated gemini "),
            "{name}: {}",
            out.stdout
        );
        for w in *warnings {
            assert!(
                out.stderr.contains(&format!("{}: ", path.display())) && out.stderr.contains(w),
                "{name}: {w:?} not in {}",
                out.stderr
            );
        }
        assert!(out.stderr.lines().count() <= 5, "{name}: {}", out.stderr);
        let m = p.marker(name).unwrap();
        assert_eq!(
            m.get("fallback").cloned().unwrap_or_default(),
            *chain,
            "{name}"
        );
        // decide agrees, reading the task alone.
        let d = p.run(None, &["decide", "--json", path.to_str().unwrap()]);
        d.expect(0);
        let v: serde_json::Value = serde_json::from_str(&d.stdout).unwrap();
        assert_eq!(v["provider"], "gemini", "{name}");
        let want = if chain.is_null() {
            serde_json::json!([])
        } else {
            chain.clone()
        };
        assert_eq!(v["fallback"], want, "{name}");
    }
}

#[test]
fn decide_names_the_chain_and_submit_v_the_config_default() {
    let p = Project::new();
    let path = p.task("d.md", CHAINED);
    let out = p.run(None, &["decide", "--explain", path.to_str().unwrap()]);
    out.expect(0);
    assert!(out.stdout.starts_with("gemini\n"), "{}", out.stdout);
    assert!(
        out.stdout.ends_with("fallback: claude, then gpu\n"),
        "{}",
        out.stdout
    );
    let plain = p.task("e.md", b"---\npreferred_ai: gemini\n---\nbody\n");
    let out = p.run(None, &["decide", "--json", plain.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["fallback"], serde_json::json!([]));
    // decide reads no config: its default chain is submit's to show.
    p.write_config("fallback:\n  gemini: [claude]\n");
    let out = p.run(None, &["decide", "--json", plain.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["fallback"], serde_json::json!([]));
    let mock = Mock::start(&["--statuses", "running"]);
    let out = p.run(Some(&mock), &["-v", "submit", plain.to_str().unwrap()]);
    out.expect(0);
    assert!(
        out.stderr
            .contains("if its job fails: claude (the config's default)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        p.marker("e.md").unwrap()["fallback"],
        serde_json::json!(["claude"])
    );
}

#[test]
fn markers_from_before_failover_reap_unchanged_and_bad_attempts_are_corrupt() {
    let mock = mock_failing();
    let p = Project::new();
    let t = b"---\npreferred_ai: gemini\n---\nold\n";
    p.task("old.md", t);
    let job = mock.post_job("ccl-old-0123456789abcdef", "old.md");
    p.write_marker(
        "old.md",
        &marker_json(
            false,
            Some(&job),
            "ccl-old-0123456789abcdef",
            &rfc3339_ago(600),
        ),
    );
    // A config default chain does not reach a marker that has none.
    p.write_config("fallback:\n  gemini: [claude]\n");
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(
        out.stdout,
        format!(
            "failed {} (job {job}: failed)\n",
            p.failed().join("old.md").display()
        )
    );
    let r = Record::read(&p.failed().join("old.md"));
    assert!(r.get("attempts").is_none());
    assert_eq!(r.original(), t);

    for (name, attempts) in [
        ("a.md", serde_json::json!({"provider": "gemini"})),
        (
            "b.md",
            serde_json::json!([{"provider": "gemini", "job_id": "j-1", "status": "failed", "error": null, "extra": "x"}]),
        ),
        (
            "c.md",
            serde_json::json!([{"provider": "gemini", "job_id": "../x", "status": "failed", "error": null}]),
        ),
    ] {
        p.task(name, b"task\n");
        let mut m: serde_json::Value = serde_json::from_str(&marker_json(
            false,
            Some("j-9"),
            "ccl-k-0123456789abcdef",
            &rfc3339_ago(600),
        ))
        .unwrap();
        m["attempts"] = attempts;
        let bytes = m.to_string();
        p.write_marker(name, &bytes);
        let out = p.reap(&mock, &[]);
        out.expect(0);
        let r = Record::read(&p.failed().join(name));
        assert_eq!(r.str("failed_reason"), Some("corrupt marker"), "{name}");
        assert!(r.text().contains(&bytes), "{name}: marker bytes kept");
    }
}

/// (task, provider) → its jobs on the mock.
type Steps = BTreeMap<(String, String), Vec<String>>;

fn jobs_per_step(mock: &Mock) -> Steps {
    let mut per_step = Steps::new();
    for j in mock.jobs() {
        let task = j["metadata"]["task"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let provider = j["provider"].as_str().unwrap_or_default().to_string();
        per_step
            .entry((task, provider))
            .or_default()
            .push(j["job_id"].as_str().unwrap_or_default().to_string());
    }
    per_step
}

/// No step of a chain has two jobs (so no task ever has two live jobs),
/// and no idempotency key made two.
fn check_one_job_per_step(mock: &Mock, context: &str) {
    for ((task, provider), jobs) in &jobs_per_step(mock) {
        assert!(
            jobs.len() <= 1,
            "{context}: {task} has {} {provider} jobs: {jobs:?}",
            jobs.len()
        );
    }
    check_one_job_per_key(mock, context);
}

/// Reaps that fail over, killed with SIGKILL at random instants: after each
/// kill the queue invariant holds and no step has two jobs; after clean
/// runs every chain has resumed to done/, with three jobs per task (gemini,
/// claude, gpu), and each ended job is in the ledger once.
#[test]
#[ignore = "kill test: run with --include-ignored (CCL_KILL_ROUNDS rounds)"]
fn reaps_killed_mid_failover_never_double_a_job() {
    const TASKS: usize = 60;
    let rounds: usize = std::env::var("CCL_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut rng = Rng::from_env("CCL_KILL_SEED");
    let start_mock = || {
        Mock::start(&[
            "--statuses",
            "completed",
            "--provider-outcome",
            "gemini=failed",
            "--provider-outcome",
            "claude=failed",
            "--latency",
            "5ms",
        ])
    };
    let setup = |p: &Project, mock: &Mock, round: usize| {
        let mut originals = BTreeMap::new();
        for i in 0..TASKS {
            let id = format!("f{round}-t{i:03}");
            let task = format!("{id}.md");
            let bytes = format!("---\npreferred_ai: gemini\n---\n# Task {i}\n").into_bytes();
            p.task(&task, &bytes);
            originals.insert(id.clone(), bytes);
            let key = format!("ccl-fo-{round}-{i:04}-0123456789");
            let job = mock.post_job_as(&key, &task, Some("gemini"));
            let mut m: serde_json::Value =
                serde_json::from_str(&marker_json(false, Some(&job), &key, &rfc3339_ago(3600)))
                    .unwrap();
            m["fallback"] = serde_json::json!(["claude", "gpu"]);
            p.write_marker(&task, &m.to_string());
        }
        originals
    };
    let spawn = |p: &Project, mock: &Mock| {
        let dir = p.dir.display().to_string();
        p.cmd(Some(mock))
            .args(["reap", "--project", &dir, "--submit-grace", "0s", "-q"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn reap")
    };
    let settle =
        |p: &Project, mock: &Mock, originals: &BTreeMap<String, Vec<u8>>, context: &str| {
            let out = p.reap_until_settled(mock, &["-q"], 8);
            assert_eq!(out.code, 0, "{context}: clean reaps: {out:?}");
            let found = check_invariant(p, originals, true)
                .unwrap_or_else(|e| panic!("{context}: after the clean reaps:\n{e}"));
            assert_eq!(
                (found.done, found.markers),
                (TASKS, 0),
                "{context}: {found:?}"
            );
            check_one_job_per_step(mock, context);
            let per_step = jobs_per_step(mock);
            assert_eq!(per_step.len(), TASKS * 3, "{context}: three jobs per task");
            let mut counted: BTreeMap<String, usize> = BTreeMap::new();
            for e in p.ledger() {
                *counted
                    .entry(e["job_id"].as_str().unwrap_or_default().to_string())
                    .or_default() += 1;
            }
            for ((task, provider), jobs) in &per_step {
                if provider != "gpu" {
                    assert_eq!(
                        counted.get(&jobs[0]),
                        Some(&1),
                        "{context}: {task} {provider} job in the ledger once"
                    );
                }
                let r = Record::read(&p.done().join(task));
                if provider == "gpu" {
                    assert_eq!(r.str("job_id"), Some(jobs[0].as_str()), "{context}: {task}");
                    let a = r
                        .get("attempts")
                        .and_then(|a| a.as_sequence())
                        .map_or(0, Vec::len);
                    assert_eq!(a, 2, "{context}: {task}: attempts");
                }
            }
        };

    // Calibration: one clean run of the first steps, measured.
    let mock = start_mock();
    let p = Project::new();
    let originals = setup(&p, &mock, 0);
    let t0 = std::time::Instant::now();
    let mut child = spawn(&p, &mock);
    child.wait().unwrap();
    let mut window = t0.elapsed().mul_f64(1.1);
    settle(&p, &mock, &originals, "calibration");
    drop(mock);

    let mut killed = 0;
    for round in 1..=rounds {
        let mock = start_mock();
        let p = Project::new();
        let originals = setup(&p, &mock, round);
        // Kills land in the first step or, after one clean run, the second.
        if rng.chance(50) {
            let mut c = spawn(&p, &mock);
            c.wait().unwrap();
        }
        let delay = Duration::from_micros(rng.below(window.as_micros() as u64 + 1));
        let mut child = spawn(&p, &mock);
        let t0 = std::time::Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                window = (window + t0.elapsed().mul_f64(1.1)) / 2;
                break;
            }
            if t0.elapsed() >= delay {
                // SAFETY: kill(2) on our own child, not yet waited for.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
                child.wait().unwrap();
                killed += 1;
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let context = format!("round {round} (kill after {delay:?})");
        check_invariant(&p, &originals, false)
            .unwrap_or_else(|e| panic!("{context}: right after the kill:\n{e}"));
        check_one_job_per_step(&mock, &context);
        settle(&p, &mock, &originals, &context);
    }
    eprintln!("failover kill test: {rounds} rounds, {killed} killed mid-run");
}

/// A run killed between a step's marker and its ledger entry leaves the
/// ended job only in the marker's attempts: the next reap counts it, once.
#[test]
fn an_attempt_missing_from_the_ledger_is_counted_once() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    p.task("k.md", b"task\n");
    let key = "ccl-kk-0123456789abcdef";
    let job = mock.post_job(key, "k.md");
    let mut m: serde_json::Value =
        serde_json::from_str(&marker_json(false, Some(&job), key, &rfc3339_ago(60))).unwrap();
    m["attempts"] = serde_json::json!([
        {"provider": "gpu", "job_id": "j-gone-1", "status": "failed", "error": "x"}
    ]);
    p.write_marker("k.md", &m.to_string());
    for _ in 0..3 {
        p.reap(&mock, &[]).expect(0);
        let n = p
            .ledger()
            .iter()
            .filter(|e| e["job_id"] == "j-gone-1")
            .count();
        assert_eq!(n, 1);
    }
    let e = p
        .ledger()
        .into_iter()
        .find(|e| e["job_id"] == "j-gone-1")
        .unwrap();
    assert_eq!(
        (e["provider"].as_str(), e["status"].as_str()),
        (Some("gpu"), Some("failed"))
    );
}

/// A step deferred by a limit goes once the job that filled the limit has
/// ended, with the books kept by real submits and reaps only: the deferred
/// step holds no job, so reconciling never counts it against itself.
#[test]
fn a_deferred_step_goes_once_the_limit_frees_up_with_real_counts() {
    let mock = Mock::start(&[
        "--statuses",
        "completed",
        "--provider-outcome",
        "gemini=failed",
    ]);
    let p = Project::new();
    p.write_config("max_in_flight:\n  claude: 1\n");
    p.task("other.md", b"---\npreferred_ai: claude\n---\nx\n");
    let other = p.submit_ok(&mock, "other.md");
    // other.md's claude job runs until told otherwise.
    mock.set(serde_json::json!({"status_of": {other.clone(): "running"}}));
    p.task(
        "l.md",
        b"---\npreferred_ai: gemini\nfallback: claude\n---\ny\n",
    );
    p.submit_ok(&mock, "l.md");
    // l.md's gemini job failed while other.md fills the claude limit: its
    // step is deferred, and holds no job.
    p.reap(&mock, &[]).expect(0);
    assert_eq!(p.marker("l.md").unwrap()["deferred"], true);
    assert_eq!(
        p.reservations().len(),
        1,
        "only other.md's job is in flight"
    );
    // Each further reap while the limit is full keeps it deferred, and
    // never counts it (no "2 in flight").
    let out = p.reap(&mock, &["-v"]);
    assert!(!out.stderr.contains("2 in flight"), "{}", out.stderr);
    assert_eq!(p.marker("l.md").unwrap()["deferred"], true);
    // other.md's job ends: the limit is free, a later reap sends the step.
    mock.set(serde_json::json!({"status_of": {other.clone(): null}}));
    let mut sent = false;
    for _ in 0..3 {
        p.reap(&mock, &[]).expect(0);
        if p.marker("l.md").is_some_and(|m| m["job_id"].is_string()) {
            sent = true;
            break;
        }
    }
    assert!(sent, "still deferred: {:?}", p.marker("l.md"));
    assert_eq!(p.names(&p.done()), ["other.md"]);
    assert_eq!(mock.jobs_created(), 3);
}

/// A run killed after a budget ended a deferred step's chain in failed/
/// but before it removed the task leaves the deferred marker beside its
/// record: the next reap only finishes the removals, and never sends the
/// step, even when admission would now let it go.
#[test]
fn a_deferred_step_whose_record_is_written_is_never_sent() {
    let mock = mock_failing();
    let p = Project::new();
    p.write_config("max_in_flight:\n  claude: 1\n");
    let other = claude_in_flight_elsewhere(&p, &mock);
    p.task("l.md", CHAINED);
    p.submit_ok(&mock, "l.md");
    p.reap(&mock, &[]).expect(0);
    let deferred = std::fs::read(p.marker_path("l.md")).unwrap();
    assert!(String::from_utf8_lossy(&deferred).contains("\"deferred\": true"));

    // A record with no job for this task, as the killed run wrote it: made
    // here by a pending marker past max_age, then the deferred marker and
    // the task put back as the kill left them.
    p.write_marker(
        "l.md",
        &marker_json(
            true,
            None,
            "ccl-dead-0123456789abcdef",
            &rfc3339_ago(25 * 3600),
        ),
    );
    p.reap(&mock, &[]).expect(0);
    assert_eq!(p.names(&p.failed()), ["l.md"]);
    p.task("l.md", CHAINED);
    std::fs::write(p.marker_path("l.md"), &deferred).unwrap();
    // The limit is free now (the other job ended): admission would let
    // the step go.
    other.reap(&mock, &[]).expect(0);
    assert_eq!(other.names(&other.failed()), ["o.md"]);
    assert_eq!(in_flight_tasks(&p), Vec::<String>::new());
    let jobs = mock.jobs_created();
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(mock.jobs_created(), jobs, "the step was sent: {out:?}");
    assert!(p.names(&p.inbox()).is_empty(), "{out:?}");
    assert_eq!(p.names(&p.failed()), ["l.md"], "one record, not two");
}

/// A failover step the service refuses (a 4xx) hands the task back to the
/// dispatcher: one stdout line for the task, the `returned` one.
#[test]
fn a_refused_step_is_one_returned_line() {
    let mock = mock_failing();
    let p = Project::new();
    p.task("r.md", CHAINED);
    p.submit_ok(&mock, "r.md");
    mock.faults(serde_json::json!({"next": ["400"], "path": "/api/v1/jobs", "method": "POST"}));
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert!(out.stdout.starts_with("returned "), "{out:?}");
    assert_eq!(
        p.names(&p.inbox()),
        ["r.md"],
        "the task is the dispatcher's"
    );
}

/// A chain's earlier job that cannot be booked now (the books' write lock
/// held by a stranger past `lock_timeout`) never holds its task back: the
/// task moves with a record naming every earlier job, the run exits 1 with
/// one line naming the books, and the first run that can books each job
/// once.
// policy.md "When the books cannot be read or written": `reap` never stops
// moving tasks; the entries it could not write are written by the first
// run that can, once (a chain no longer waits for its earlier jobs).
#[test]
fn a_chain_whose_earlier_jobs_cannot_be_booked_ends_and_books_them_later() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    p.write_config("lock_timeout: 200ms\n");
    p.task("w.md", b"task\n");
    let key = "ccl-ww-0123456789abcdef";
    let job = mock.post_job(key, "w.md");
    let mut m: serde_json::Value =
        serde_json::from_str(&marker_json(false, Some(&job), key, &rfc3339_ago(60))).unwrap();
    m["attempts"] = serde_json::json!([
        {"provider": "gpu", "job_id": "j-early-1", "status": "failed", "error": "x"}
    ]);
    p.write_marker("w.md", &m.to_string());
    let held = BooksLock::hold(&p.state_dir());
    let out = p.reap(&mock, &[]);
    out.expect(1);
    assert!(out.stdout.starts_with("done "), "{out:?}");
    assert_eq!(p.names(&p.done()), ["w.md"], "{out:?}");
    assert!(p.marker("w.md").is_none(), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&p.books_path().display().to_string())
            && out.stderr.contains("lock_timeout"),
        "{}",
        out.stderr
    );
    let r = Record::read(&p.done().join("w.md"));
    assert_eq!(r.str("job_id"), Some(job.as_str()));
    assert_eq!(
        r.get("attempts").unwrap()[0]["job_id"].as_str(),
        Some("j-early-1")
    );
    drop(held);
    assert_eq!(p.ledger(), Vec::<serde_json::Value>::new());
    for _ in 0..2 {
        p.reap(&mock, &[]).expect(0);
    }
    for id in ["j-early-1", job.as_str()] {
        let n = p.ledger().iter().filter(|e| e["job_id"] == id).count();
        assert_eq!(n, 1, "{id}: {:?}", p.ledger());
    }
    assert!(p.names(&p.queue().join(".ccl-delegate.owed")).is_empty());
}

/// The earlier jobs of a chain are ledger entries of their own, but status
/// totals the records: after a failover it reads its totals from the ledger
/// without calling the ledger damaged.
#[test]
fn status_after_a_failover_reads_the_ledger_without_a_warning() {
    let mock = mock_failing();
    let p = Project::new();
    p.task("s.md", CHAINED);
    p.submit_ok(&mock, "s.md");
    p.reap_until_settled(&mock, &[], 6);
    assert_eq!(p.names(&p.done()), ["s.md"]);
    assert!(p.ledger().len() >= 3, "one entry per job: {:?}", p.ledger());
    let out = p.run(None, &["status", "--project", p.dir.to_str().unwrap()]);
    out.expect(0);
    assert_eq!(out.stderr, "", "{out:?}");
    assert!(out.stdout.contains("gpu"), "{out:?}");
}

/// A `fallback` whose every entry is dropped leaves the task the config's
/// default chain (as without the key), and the warnings say what chain the
/// task now has.
#[test]
fn a_fallback_of_only_unknown_names_says_the_chain_the_task_now_has() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    p.write_config("fallback:\n  gemini: [claude]\n");
    p.task(
        "t.md",
        b"---\npreferred_ai: gemini\nfallback: [claude-code, gpt4]\n---\nx\n",
    );
    let out = p.run(
        Some(&mock),
        &["submit", p.inbox().join("t.md").to_str().unwrap()],
    );
    out.expect(0);
    assert!(
        out.stderr.contains("`claude-code` is not a provider"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("`gpt4` is not a provider"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("so the task has if its job fails: claude (the config's default)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        p.marker("t.md").unwrap()["fallback"],
        serde_json::json!(["claude"])
    );
    // Without a default: said as no failover.
    let q = Project::new();
    q.task(
        "u.md",
        b"---\npreferred_ai: gemini\nfallback: gpt4\n---\nx\n",
    );
    let out = q.run(
        Some(&mock),
        &["submit", q.inbox().join("u.md").to_str().unwrap()],
    );
    out.expect(0);
    assert!(
        out.stderr.contains("so the task has no failover"),
        "{}",
        out.stderr
    );
}
