//! Spending wired into the cycle (policy.md): `submit` under budgets and
//! limits with real concurrent processes, `reap` writing the ledger and
//! reconciling the jobs in flight, through the real binary and the real mock.

mod common;

use std::process::Command;

use common::{Mock, Out, Project};
use serde_json::Value;

const CLAUDE_TASK: &[u8] = b"---\npreferred_ai: claude\n---\nSay hi.\n";

impl Project {
    /// The job ids of the records in done/ and failed/, sorted.
    fn record_job_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for dir in [self.done(), self.failed()] {
            for n in self.names(&dir) {
                let r = common::Record::read(&dir.join(n));
                ids.push(r.str("job_id").unwrap_or("none").to_string());
            }
        }
        ids.sort();
        ids
    }

    fn ledger_job_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .ledger()
            .iter()
            .map(|e| e["job_id"].as_str().unwrap_or("none").to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Each task through submit and reap before the next is submitted.
    // policy.md "Budgets": under a budget, a provider whose price is not
    // known has at most one job in flight until its first job ends.
    fn one_by_one(&self, mock: &Mock, names: &[String]) {
        for n in names {
            self.submit_ok(mock, n);
            self.reap_until_settled(mock, &[], 3).expect(0);
        }
    }

    fn markers(&self) -> Vec<String> {
        self.names(&self.inbox())
            .into_iter()
            .filter(|n| n.ends_with(".delegated"))
            .collect()
    }

    /// `n` tasks submitted at once, each by its own process.
    fn submit_all_at_once(&self, mock: &Mock, names: &[String]) -> Vec<(String, Out)> {
        let children: Vec<_> = names
            .iter()
            .map(|n| {
                let path = self.inbox().join(n);
                let child = self
                    .cmd(Some(mock))
                    .args(["submit", path.to_str().unwrap()])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                (n.clone(), child)
            })
            .collect();
        children
            .into_iter()
            .map(|(n, c)| {
                let o = c.wait_with_output().unwrap();
                let out = Out {
                    code: o.status.code().unwrap_or(-1),
                    stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                };
                (n, out)
            })
            .collect()
    }

    fn tasks(&self, prefix: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let name = format!("{prefix}{i:02}.md");
                self.task(&name, CLAUDE_TASK);
                name
            })
            .collect()
    }
}

#[test]
fn ten_simultaneous_submits_against_a_limit_of_three_delegate_exactly_three() {
    let p = Project::new();
    let mock = Mock::start(&[]);
    p.write_config("max_in_flight:\n  all: 3\n");
    let names = p.tasks("t", 10);
    let outs = p.submit_all_at_once(&mock, &names);
    let delegated: Vec<_> = outs.iter().filter(|(_, o)| o.code == 0).collect();
    assert_eq!(delegated.len(), 3, "{outs:#?}");
    for (n, o) in &outs {
        if o.code == 0 {
            assert!(o.stdout.starts_with("delegated claude "), "{n}: {o:?}");
        } else {
            assert_eq!(o.code, 75, "{n}: {o:?}");
            assert_eq!(o.stdout, "deferred claude: 3 in flight, limit 3\n", "{n}");
            assert!(
                !p.marker_path(n).exists(),
                "{n}: a deferred task has a marker"
            );
            assert_eq!(std::fs::read(p.inbox().join(n)).unwrap(), CLAUDE_TASK);
        }
    }
    assert_eq!(p.markers().len(), 3);
    assert_eq!(mock.jobs_created(), 3);
}

/// Two claude jobs at 1.00 CAD reaped (spent 2.00, estimate 1.00): under a
/// daily cap of 5.00, ten at once leave room for exactly three.
#[test]
fn ten_simultaneous_submits_against_a_budget_delegate_what_fits() {
    let p = Project::new();
    let mock = Mock::start(&["--provider-cost", "claude=1.0", "--statuses", "completed"]);
    p.write_config("budget:\n  daily_cad: 5.00\n");
    let seeds = p.tasks("seed", 2);
    // policy.md "Budgets": a price not yet known is learnt before buying in
    // bulk; the second job waits until the first ends.
    let first = p.submit_ok(&mock, &seeds[0]);
    let out = p.run(
        Some(&mock),
        &["submit", p.inbox().join(&seeds[1]).to_str().unwrap()],
    );
    out.expect(75);
    assert_eq!(
        out.stdout,
        format!("deferred claude: price unknown until job {first} ends\n")
    );
    assert!(!p.marker_path(&seeds[1]).exists());
    p.reap_until_settled(&mock, &[], 3).expect(0);
    p.one_by_one(&mock, &seeds[1..]);
    assert_eq!(p.ledger().len(), 2);
    let names = p.tasks("t", 10);
    let outs = p.submit_all_at_once(&mock, &names);
    let delegated = outs.iter().filter(|(_, o)| o.code == 0).count();
    assert_eq!(delegated, 3, "{outs:#?}");
    for (n, o) in outs.iter().filter(|(_, o)| o.code != 0) {
        assert_eq!(o.code, 10, "{n}: {o:?}");
        assert_eq!(o.stdout, "local budget\n", "{n}");
        // The contract's one line, as it words it.
        assert_eq!(
            o.stderr,
            "all daily budget 5.00 CAD: spent 2.00, reserved 3.00 (3 in flight), this job ~1.00\n",
            "{n}"
        );
        assert!(!p.marker_path(n).exists(), "{n}");
    }
    assert_eq!(mock.jobs_created(), 5);
}

#[test]
fn reap_writes_one_ledger_entry_per_record_with_its_tokens() {
    let p = Project::new();
    let mock = Mock::start(&["--statuses", "completed", "--fail-rate", "0.5"]);
    mock.set(serde_json::json!({"tokens_in": 12, "tokens_out": 34}));
    for n in p.tasks("t", 6) {
        p.submit_ok(&mock, &n);
    }
    p.reap_until_settled(&mock, &[], 3).expect(0);
    assert_eq!(p.record_job_ids().len(), 6);
    assert_eq!(p.ledger_job_ids(), p.record_job_ids());
    let done = p.names(&p.done());
    assert!(!done.is_empty(), "the mock failed every job");
    let r = common::Record::read(&p.done().join(&done[0]));
    assert_eq!(r.get("tokens_in").and_then(|v| v.as_u64()), Some(12));
    let e = p
        .ledger()
        .into_iter()
        .find(|e| e["status"] == "completed")
        .unwrap();
    assert_eq!(
        (e["tokens_in"].as_u64(), e["tokens_out"].as_u64()),
        (Some(12), Some(34))
    );
    // A second reap adds nothing.
    p.reap(&mock, &[]).expect(0);
    assert_eq!(p.ledger().len(), 6);
}

#[test]
fn a_budget_never_stops_reap_resending_a_pending_submission() {
    let p = Project::new();
    let mock = Mock::start(&[]);
    p.write_config("budget:\n  daily_cad: 0\n");
    p.task("t.md", b"---\npreferred_ai: gemini\n---\nhi\n");
    let key = "k-0123456789abcdef0123456789abcdef";
    p.write_marker(
        "t.md",
        &common::marker_json(true, None, key, &common::rfc3339_ago(5)),
    );
    let out = p.reap(&mock, &["-v"]);
    out.expect(0);
    assert_eq!(mock.jobs_created(), 1, "{out:?}");
    assert_eq!(p.marker("t.md").unwrap()["state"], "submitted");
}

#[test]
fn a_marker_deleted_by_hand_stops_counting_at_the_next_reap() {
    let p = Project::new();
    let mock = Mock::start(&["--statuses", "running"]);
    p.write_config("max_in_flight:\n  claude: 1\n");
    let names = p.tasks("t", 2);
    p.submit_ok(&mock, &names[0]);
    let second = p.inbox().join(&names[1]);
    let out = p.run(Some(&mock), &["submit", second.to_str().unwrap()]);
    out.expect(75);
    assert_eq!(out.stdout, "deferred claude: 1 in flight, limit 1\n");
    std::fs::remove_file(p.marker_path(&names[0])).unwrap();
    // Without a reap the books still count it.
    p.run(Some(&mock), &["submit", second.to_str().unwrap()])
        .expect(75);
    p.reap(&mock, &[]).expect(0);
    p.submit_ok(&mock, &names[1]);
}

#[test]
fn a_surely_failed_post_gives_its_count_back() {
    let p = Project::new();
    let mock = Mock::start(&[]);
    p.write_config("max_in_flight:\n  all: 1\n");
    let names = p.tasks("t", 1);
    mock.faults(serde_json::json!({"next": ["400"], "method": "POST"}));
    let path = p.inbox().join(&names[0]);
    let out = p.run(Some(&mock), &["submit", path.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(p.markers().is_empty());
    assert_eq!(p.reservations(), []);
    p.submit_ok(&mock, &names[0]);
}

/// Books that cannot be used (here a directory where the store goes) stop
/// every submit under a budget and never stop a reap: the task moves, its
/// entry is owed beside the queue and booked, once, by the first run that
/// can.
// policy.md "When the books cannot be read or written": fail closed for
// submit (exit 75); reap moves tasks, exits 1 with one line, books later.
#[test]
fn books_that_are_not_a_file_stop_submit_and_never_stop_reap() {
    let p = Project::new();
    let mock = Mock::start(&["--statuses", "completed"]);
    p.write_config("budget:\n  daily_cad: 100\n");
    let names = p.tasks("t", 2);
    let job = p.submit_ok(&mock, &names[0]);
    for f in ["books.sqlite", "books.sqlite-wal", "books.sqlite-shm"] {
        let _ = std::fs::remove_file(p.state_dir().join(f));
    }
    std::fs::create_dir(p.books_path()).unwrap();
    let books = p.books_path().display().to_string();

    let second = p.inbox().join(&names[1]);
    let out = p.run(Some(&mock), &["-q", "submit", second.to_str().unwrap()]);
    out.expect(75);
    assert_eq!(out.stdout, "deferred claude: books unavailable\n");
    assert!(
        out.stderr.contains(&books) && out.stderr.contains("not a regular file"),
        "{}",
        out.stderr
    );
    assert!(!p.marker_path(&names[1]).exists());
    assert_eq!(std::fs::read(&second).unwrap(), CLAUDE_TASK);
    assert_eq!(mock.jobs_created(), 1);

    let metrics = p.tmp.path().join("ccl.prom");
    let out = p.reap(&mock, &["--metrics-file", metrics.to_str().unwrap()]);
    out.expect(1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains(&books), "{}", out.stderr);
    assert_eq!(p.names(&p.done()), [names[0].as_str()]);
    assert_eq!(p.names(&p.inbox()), [names[1].as_str()]);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("ccl_delegate_reap_success 0\n"), "{text}");
    let owed = p.queue().join(".ccl-delegate.owed");
    assert_eq!(p.names(&owed).len(), 1, "the entry owed");

    // The store moved aside: the next run books what was owed, once.
    std::fs::remove_dir(p.books_path()).unwrap();
    p.reap(&mock, &[]).expect(0);
    p.reap(&mock, &[]).expect(0);
    assert_eq!(p.ledger_job_ids(), [job]);
    assert!(p.names(&owed).is_empty(), "{:?}", p.names(&owed));
    p.submit_ok(&mock, &names[1]);
}

#[test]
fn an_odd_cost_is_one_warning_naming_the_job_and_counts_zero() {
    let p = Project::new();
    let mock = Mock::start(&["--statuses", "completed"]);
    mock.set(serde_json::json!({"cost_cad": "12,50"}));
    let names = p.tasks("t", 1);
    let job = p.submit_ok(&mock, &names[0]);
    let out = p.reap(&mock, &[]);
    out.expect(0);
    let warnings: Vec<_> = out.stderr.lines().filter(|l| l.contains(&job)).collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(warnings[0].contains("cost"), "{}", warnings[0]);
    assert_eq!(p.ledger()[0]["cost_cad"].as_f64(), Some(0.0));
}

/// `status` shows the budget lines, and its JSON the same `budget` list
/// as `report`.
#[test]
fn status_shows_the_budget_like_report() {
    let p = Project::new();
    let mock = Mock::start(&["--provider-cost", "claude=0.5", "--statuses", "completed"]);
    let dir = p.dir.to_str().unwrap();
    p.write_config(&format!(
        "projects: [{dir}]\nbudget:\n  daily_cad: 20\n  providers:\n    claude: {{monthly_cad: 100}}\n"
    ));
    p.one_by_one(&mock, &p.tasks("t", 2));
    let report = p.run(None, &["report"]);
    report.expect(0);
    let lines: Vec<&str> = report
        .stdout
        .lines()
        .filter(|l| l.starts_with("budget "))
        .collect();
    assert_eq!(lines.len(), 2, "{}", report.stdout);
    let status = p.run(None, &["status", "--project", dir]);
    status.expect(0);
    for l in &lines {
        assert!(status.stdout.contains(l), "{l}\n{}", status.stdout);
    }
    let j = |args: &[&str]| -> Value {
        let o = p.run(None, args);
        o.expect(0);
        serde_json::from_str(&o.stdout).unwrap()
    };
    let r = j(&["report", "--json"]);
    let s = j(&["status", "--json", "--project", dir]);
    assert_eq!(s["budget"], r["budget"]);
    assert_eq!(s["budget"][0]["spent_cad"].as_f64(), Some(1.0));
}

/// Totals come from the ledger when it matches the records, and from the
/// records (with a hint) when someone removed one by hand.
#[test]
fn status_totals_agree_with_the_records_ledger_or_not() {
    let p = Project::new();
    let mock = Mock::start(&["--provider-cost", "claude=0.25", "--statuses", "completed"]);
    let dir = p.dir.to_str().unwrap().to_string();
    for n in p.tasks("t", 3) {
        p.submit_ok(&mock, &n);
    }
    p.reap_until_settled(&mock, &[], 3).expect(0);
    let totals = || {
        let o = p.run(None, &["status", "--json", "--project", &dir]);
        o.expect(0);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        (v["totals"].clone(), o.stderr)
    };
    let (t, err) = totals();
    assert_eq!(
        t,
        serde_json::json!([{"provider": "claude", "done": 3, "failed": 0, "cost_cad": 0.75}])
    );
    assert_eq!(err, "");
    std::fs::remove_file(p.done().join("t00.md")).unwrap();
    let (t, err) = totals();
    assert_eq!(t[0]["done"], 2);
    assert!(err.contains("ledger rebuild"), "{err}");
}

#[test]
fn the_metrics_file_has_a_limit_and_a_spent_gauge_per_cap() {
    let p = Project::new();
    let mock = Mock::start(&["--provider-cost", "claude=0.5", "--statuses", "completed"]);
    p.write_config("budget:\n  daily_cad: 20\n  providers:\n    claude: {monthly_cad: 100}\n");
    let names = p.tasks("t", 2);
    p.one_by_one(&mock, &names[..1]);
    p.submit_ok(&mock, &names[1]);
    let metrics = p.tmp.path().join("ccl.prom");
    p.reap(&mock, &["--metrics-file", metrics.to_str().unwrap()])
        .expect(0);
    let text = std::fs::read_to_string(&metrics).unwrap();
    for line in [
        "ccl_delegate_budget_limit_cad{window=\"daily\",provider=\"all\"} 20.0000\n",
        "ccl_delegate_budget_spent_cad{window=\"daily\",provider=\"all\"} 1.0000\n",
        "ccl_delegate_budget_limit_cad{window=\"monthly\",provider=\"claude\"} 100.0000\n",
        "ccl_delegate_budget_spent_cad{window=\"monthly\",provider=\"claude\"} 1.0000\n",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
}

/// A FIFO where the metrics file goes once hung the reap on its read.
#[test]
fn a_metrics_path_that_is_a_fifo_is_an_error_not_a_hang() {
    let p = Project::new();
    let mock = Mock::start(&["--statuses", "completed"]);
    let fifo = p.tmp.path().join("ccl.prom");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let dir = p.dir.to_str().unwrap().to_string();
    let mut child = p
        .cmd(Some(&mock))
        .args(["reap", "--project", &dir, "--metrics-file"])
        .arg(&fifo)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > std::time::Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("reap hung on a FIFO metrics file");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ccl.prom"), "{err}");
}

#[test]
fn doctor_shows_each_cap_and_limit_against_today() {
    let p = Project::new();
    let mock = Mock::start(&["--provider-cost", "claude=0.5", "--statuses", "completed"]);
    p.write_config("budget:\n  daily_cad: 20\nmax_in_flight:\n  all: 50\n  claude: 5\n");
    p.one_by_one(&mock, &p.tasks("t", 2));
    p.tasks("u", 1);
    p.submit_ok(&mock, "u00.md");
    let dir = p.dir.to_str().unwrap().to_string();
    let out = p.run(Some(&mock), &["doctor", "--offline", "--project", &dir]);
    out.expect(0);
    for line in [
        "ok    budget daily all: 1.0000 of 20.0000 CAD spent, 0.5000 reserved (1 in flight)\n",
        "ok    max_in_flight all: 1 in flight, limit 50\n",
        "ok    max_in_flight claude: 1 in flight, limit 5\n",
        format!(
            "ok    books: {} (2 ledger entries)\n",
            p.books_path().display()
        )
        .as_str(),
    ] {
        assert!(out.stdout.contains(line), "{line}\n{}", out.stdout);
    }
}

/// "A marker deleted by hand stops counting at the next reap", wherever it
/// was: also in a project the reap does not go through (one a submit
/// delegated from, not configured).
#[test]
fn a_marker_deleted_by_hand_in_another_project_stops_counting_too() {
    let p = Project::new();
    let mock = Mock::start(&["--statuses", "running"]);
    p.write_config("max_in_flight:\n  claude: 1\n");
    let other = p.home.join("other");
    for d in ["inbox", "done", "failed"] {
        std::fs::create_dir_all(other.join(".agent-queue").join(d)).unwrap();
    }
    let task = other.join(".agent-queue/inbox/o.md");
    std::fs::write(&task, "---\npreferred_ai: claude\n---\nx\n").unwrap();
    p.run(Some(&mock), &["submit", task.to_str().unwrap()])
        .expect(0);
    std::fs::remove_file(other.join(".agent-queue/inbox/o.md.delegated")).unwrap();
    p.reap(&mock, &[]).expect(0);
    let names = p.tasks("t", 1);
    p.submit_ok(&mock, &names[0]);
}
