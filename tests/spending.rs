//! Spending (policy.md): the ledger, `ledger rebuild`, `report`, and the
//! config keys `budget`, `max_in_flight`, `fallback`, through the real
//! binary.

mod common;

use common::{Mock, Out, Project, ledger_line};
use serde_json::Value;

fn ago(secs: u64) -> String {
    common::rfc3339_ago(secs)
}

/// Five jobs of the last hour: claude 2 done (60 s and 120 s) + 1 failed,
/// gemini 1 done (30 s), gpu 1 timeout; and one claude job 40 days ago.
fn sample(p: &Project) -> Vec<String> {
    let proj = p.dir.display().to_string();
    vec![
        ledger_line(
            "j-old",
            &proj,
            "claude",
            "opus",
            "completed",
            9.0,
            (1, 1),
            &ago(40 * 86400 + 60),
            &ago(40 * 86400),
        ),
        ledger_line(
            "j-1",
            &proj,
            "claude",
            "opus",
            "completed",
            0.1,
            (100, 10),
            &ago(3600),
            &ago(3540),
        ),
        ledger_line(
            "j-2",
            &proj,
            "claude",
            "opus",
            "completed",
            0.2,
            (200, 20),
            &ago(3000),
            &ago(2880),
        ),
        ledger_line(
            "j-3",
            &proj,
            "claude",
            "opus",
            "failed",
            0.0,
            (0, 0),
            &ago(2000),
            &ago(1990),
        ),
        ledger_line(
            "j-4",
            "/elsewhere",
            "gemini",
            "pro",
            "completed",
            0.05,
            (50, 5),
            &ago(1000),
            &ago(970),
        ),
        ledger_line(
            "j-5",
            "/elsewhere",
            "gpu",
            "llama",
            "timeout",
            0.0,
            (0, 0),
            &ago(900),
            &ago(800),
        ),
    ]
}

#[test]
fn report_shows_one_row_per_provider_then_the_total_over_the_last_30_days() {
    let p = Project::new();
    p.write_old_ledger(&sample(&p));
    let out = p.run(None, &["report"]);
    out.expect(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    let cells = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        cells(lines[0]),
        [
            "provider",
            "jobs",
            "done",
            "failed",
            "fail_pct",
            "cost_cad",
            "mean_cad",
            "p50",
            "p95",
            "tokens_in",
            "tokens_out"
        ]
    );
    assert_eq!(
        cells(lines[1]),
        [
            "claude", "3", "2", "1", "33.3", "0.3000", "0.1500", "1m", "2m", "300", "30"
        ]
    );
    assert_eq!(
        cells(lines[2]),
        [
            "gemini", "1", "1", "0", "0.0", "0.0500", "0.0500", "30s", "30s", "50", "5"
        ]
    );
    // no done job: mean and turnarounds are empty
    assert_eq!(
        cells(lines[3]),
        ["gpu", "1", "0", "1", "100.0", "0.0000", "0", "0"]
    );
    assert_eq!(
        cells(lines[4]),
        [
            "total", "5", "3", "2", "40.0", "0.3500", "0.1167", "1m", "2m", "350", "35"
        ]
    );
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn report_json_and_csv_carry_the_key_named_after_by_and_seconds() {
    let p = Project::new();
    p.write_old_ledger(&sample(&p));
    let v = p.json(&["report", "--by", "model", "--json"]);
    let rows = v["rows"].as_array().unwrap();
    let models: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["llama", "opus", "pro"]);
    assert_eq!(rows[1]["p50"], 60);
    assert_eq!(rows[1]["p95"], 120);
    assert_eq!(rows[1]["fail_pct"], 33.3);
    assert_eq!(rows[0]["mean_cad"], Value::Null);
    assert_eq!(v["total"]["jobs"], 5);
    assert_eq!(v["total"]["cost_cad"], 0.35);
    assert_eq!(v["budget"], serde_json::json!([]));

    let out = p.run(None, &["report", "--by", "day", "--csv", "--since", "100d"]);
    out.expect(0);
    let csv: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        csv[0],
        "day,jobs,done,failed,fail_pct,cost_cad,mean_cad,p50,p95,tokens_in,tokens_out"
    );
    assert_eq!(csv.len(), 2 + 2, "two days and the total: {}", out.stdout);
    assert!(
        csv[1].ends_with(",1,1,0,0.0,9.0000,9.0000,60,60,1,1"),
        "{}",
        csv[1]
    );
    assert!(
        csv[3].starts_with("total,6,4,2,33.3,9.3500,2.3375,"),
        "{}",
        csv[3]
    );
}

#[test]
fn report_filters_by_window_and_project() {
    let p = Project::new();
    p.write_old_ledger(&sample(&p));
    let dir = p.dir.to_str().unwrap();
    let v = p.json(&["report", "--project", dir, "--json"]);
    assert_eq!(v["total"]["jobs"], 3);
    let v = p.json(&["report", "--since", "40m", "--json"]);
    assert_eq!(
        v["total"]["jobs"], 3,
        "j-3, j-4, j-5 finished in the last 40 minutes"
    );
    let until = ago(2000);
    let v = p.json(&[
        "report",
        "--since",
        "2000-01-01",
        "--until",
        &until,
        "--json",
    ]);
    assert_eq!(v["total"]["jobs"], 3, "j-old, j-1, j-2");
    let out = p.run(None, &["report", "--since", "last tuesday"]);
    out.expect(64);
    assert!(
        out.stderr.contains("--since `last tuesday`"),
        "{}",
        out.stderr
    );
}

#[test]
fn report_prints_one_line_per_budget_cap() {
    let p = Project::new();
    p.write_old_ledger(&sample(&p));
    // Two claude jobs in flight in a configured project: real markers,
    // submitted before the budget was configured, counted by a reap.
    let mock = Mock::start(&["--statuses", "running"]);
    for t in ["f1.md", "f2.md"] {
        p.task(t, b"---\npreferred_ai: claude\n---\nStill running.\n");
        p.submit_ok(&mock, t);
    }
    p.reap(&mock, &[]).expect(0);
    p.write_config(&format!(
        "budget:\n  daily_cad: 20\n  monthly_cad: 300\n  providers:\n    claude: {{daily_cad: 5.00}}\nprojects: [{}]\n",
        p.dir.display()
    ));
    let out = p.run(None, &["report"]);
    out.expect(0);
    let tail: Vec<&str> = out.stdout.lines().rev().take(3).collect();
    // claude's estimate: mean of its completed costs 9.0, 0.1, 0.2 = 3.1
    assert_eq!(
        tail,
        [
            "budget daily claude: 0.3000 of 5.0000 CAD spent, 6.2000 reserved (2 in flight)",
            "budget monthly all: 0.3500 of 300.0000 CAD spent, 6.2000 reserved (2 in flight)",
            "budget daily all: 0.3500 of 20.0000 CAD spent, 6.2000 reserved (2 in flight)",
        ],
        "{}",
        out.stdout
    );
    let v = p.json(&["report", "--json"]);
    assert_eq!(
        v["budget"][2],
        serde_json::json!({"window": "daily", "provider": "claude", "limit_cad": 5.0,
                           "spent_cad": 0.3, "reserved_cad": 6.2, "in_flight": 2})
    );
}

/// An earlier version's ledger is imported once by the first run: its
/// whole entries count, a torn or corrupt line counts nothing, and the
/// file is put aside, never read again.
#[test]
fn an_old_ledger_is_imported_once_without_its_torn_or_corrupt_lines() {
    let p = Project::new();
    let mut lines = sample(&p);
    lines.insert(2, "{not json\n".into());
    lines.push("{\"job_id\":\"j-torn\",\"proj".into());
    p.write_old_ledger(&lines);
    let out = p.run(None, &["report", "--json"]);
    out.expect(0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["total"]["jobs"], 5);
    assert!(!p.old_ledger().exists());
    assert!(p.state_dir().join("ledger.jsonl.imported").exists());
    let ids: Vec<Value> = p.ledger().iter().map(|e| e["job_id"].clone()).collect();
    assert_eq!(ids, ["j-old", "j-1", "j-2", "j-3", "j-4", "j-5"]);
    // A ledger.jsonl written again beside the books is not read.
    p.write_old_ledger(&lines);
    let v = p.json(&["report", "--json"]);
    assert_eq!(v["total"]["jobs"], 5);
}

/// Books that cannot be read make `report` an error naming them, never a
/// report of zeros: a directory where the store goes says how to recover,
/// and following that advice gives a report again.
// policy.md "When the books cannot be read or written": `ledger rebuild`
// makes the books again from `done/` and `failed/`.
#[test]
fn books_that_cannot_be_read_make_report_an_error_naming_them() {
    let p = Project::new();
    std::fs::create_dir_all(p.books_path()).unwrap();
    let out = p.run(None, &["report", "--json"]);
    out.expect(1);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&p.books_path().display().to_string())
            && out.stderr.contains("not a regular file")
            && out.stderr.contains("ledger rebuild"),
        "{}",
        out.stderr
    );
    std::fs::remove_dir(p.books_path()).unwrap();
    p.run(
        None,
        &["ledger", "rebuild", "--project", p.dir.to_str().unwrap()],
    )
    .expect(0);
    let v = p.json(&["report", "--json"]);
    assert_eq!(v["total"]["jobs"], 0);

    // A store that is no database.
    std::fs::write(p.books_path(), vec![0x5a; 4096]).unwrap();
    for f in ["books.sqlite-wal", "books.sqlite-shm"] {
        let _ = std::fs::remove_file(p.state_dir().join(f));
    }
    let out = p.run(None, &["report"]);
    out.expect(1);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&p.books_path().display().to_string())
            && out.stderr.contains("cannot be used"),
        "{}",
        out.stderr
    );
}

/// Runs `task` of `p`, for `provider`, through submit and reap against
/// `mock`.
fn cycle(p: &Project, mock: &Mock, task: &str, provider: &str) {
    p.task(
        task,
        format!("---\npreferred_ai: {provider}\n---\nDo it.\n").as_bytes(),
    );
    p.submit_ok(mock, task);
    let out = p.reap_until_settled(mock, &[], 5);
    out.expect(0);
}

#[test]
fn ledger_rebuild_counts_each_record_once_and_report_reads_it() {
    // One service: its job ids are unique, as a job counts by its id.
    let mock = Mock::start(&[
        "--statuses",
        "completed",
        "--provider-outcome",
        "gemini=failed",
    ]);
    let a = Project::new();
    let b = a.sibling("other");
    cycle(&a, &mock, "one.md", "claude");
    cycle(&a, &mock, "two.md", "claude");
    cycle(&b, &mock, "three.md", "gemini");
    let (da, db) = (a.dir.to_str().unwrap(), b.dir.to_str().unwrap());
    let booked = a.ledger();
    assert_eq!(booked.len(), 3, "{booked:?}");

    let out = a.run(
        None,
        &["ledger", "rebuild", "--project", da, "--project", db],
    );
    out.expect(0);
    assert!(
        out.stdout.starts_with(&format!(
            "rebuilt {}: 3 entries from 2 projects (2 done, 1 failed)",
            a.books_path().display()
        )),
        "{}",
        out.stdout
    );
    // Twice gives the same ledger, the one reap kept: a job counts once.
    let first = a.ledger();
    let ids = |l: &[Value]| {
        let mut v: Vec<String> = l.iter().map(|e| e["job_id"].to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&first), ids(&booked));
    a.run(
        None,
        &["ledger", "rebuild", "--project", da, "--project", db],
    )
    .expect(0);
    assert_eq!(a.ledger(), first);

    let v = a.json(&["report", "--by", "project", "--json"]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    let row = |dir: &str| rows.iter().find(|r| r["project"] == dir).unwrap().clone();
    assert_eq!(row(da)["done"], 2);
    assert_eq!(row(da)["cost_cad"], 0.0246, "the mock's 0.0123 a job");
    assert_eq!(row(db)["failed"], 1);

    // Rebuilding one project keeps the other's entries.
    let out = a.run(None, &["ledger", "rebuild", "--project", da]);
    out.expect(0);
    assert!(
        out.stdout
            .contains(": 2 entries from 1 project (2 done, 0 failed); kept 1 entries"),
        "{}",
        out.stdout
    );
    let v = a.json(&["report", "--json"]);
    assert_eq!(
        (&v["total"]["jobs"], &v["total"]["failed"]),
        (&3.into(), &1.into())
    );

    // Records gone: their jobs still ended and cost, so they stay counted,
    // once; the other project's entry stays too.
    // policy.md "The ledger": every job that ends is one entry of the
    // host's ledger, and a job counts once.
    std::fs::remove_dir_all(a.done()).unwrap();
    let out = a.run(None, &["ledger", "rebuild", "--project", da]);
    out.expect(0);
    assert!(
        out.stdout
            .contains(": 0 entries from 1 project (0 done, 0 failed); kept "),
        "{}",
        out.stdout
    );
    assert_eq!(ids(&a.ledger()), ids(&first));
    let v = a.json(&["report", "--project", db, "--json"]);
    assert_eq!(
        (&v["total"]["jobs"], &v["total"]["failed"]),
        (&1.into(), &1.into())
    );
    let v = a.json(&["report", "--json"]);
    assert_eq!(v["total"]["jobs"], 3);
}

#[test]
fn ledger_rebuild_of_a_directory_without_a_queue_is_exit_66() {
    let p = Project::new();
    let out = p.run(
        None,
        &["ledger", "rebuild", "--project", p.home.to_str().unwrap()],
    );
    out.expect(66);
    assert!(out.stderr.contains("no .agent-queue"), "{}", out.stderr);
    assert!(!p.books_path().exists());
    assert!(!p.state_dir().exists());
}

#[test]
fn bad_budget_limit_or_fallback_keys_are_config_errors_naming_key_and_line() {
    let rows = [
        ("budget:\n  daily_cad: -5\n", "budget.daily_cad"),
        ("budget:\n  daily_cad: lots\n", "budget.daily_cad"),
        ("budget:\n  weekly_cad: 5\n", "weekly_cad"),
        (
            "budget:\n  providers:\n    openai: {daily_cad: 1}\n",
            "openai",
        ),
        ("max_in_flight:\n  all: -1\n", "max_in_flight.all"),
        ("max_in_flight:\n  copilot: 3\n", "copilot"),
        ("fallback:\n  gemini: [claude, gpt]\n", "gpt"),
    ];
    for (yaml, key) in rows {
        let p = Project::new();
        p.write_config(yaml);
        let out: Out = p.run(None, &["report"]);
        out.expect(78);
        assert!(out.stderr.contains(key), "{yaml:?}: {}", out.stderr);
        assert!(out.stderr.contains("line "), "{yaml:?}: {}", out.stderr);
    }
}

/// A policy key's error says what is wrong in words: a rule broken, not a
/// type it is not; no internal type name; valid YAML is not called invalid.
#[test]
fn policy_key_errors_say_what_is_wrong() {
    let rows = [
        (
            "budget:\n  daily_cad: -1\n",
            "budget.daily_cad: -1 is below 0 (expected a number from 0 to 1000000000",
        ),
        ("budget: 5\n", "budget must be a mapping of its keys"),
        (
            "fallback:\n  gemini: [[claude]]\n",
            "fallback.gemini: expected a provider",
        ),
        (
            "max_in_flight:\n  claude-code: 3\n",
            "unknown provider `claude-code`",
        ),
    ];
    for (yaml, want) in rows {
        let p = Project::new();
        p.write_config(yaml);
        let out: Out = p.run(None, &["report"]);
        out.expect(78);
        assert!(out.stderr.contains(want), "{yaml:?}: {}", out.stderr);
        for bad in ["not valid YAML", "struct "] {
            assert!(!out.stderr.contains(bad), "{yaml:?}: {}", out.stderr);
        }
        if yaml.contains("-1") {
            // -1 is a number: the rule is what it breaks.
            assert!(!out.stderr.contains("not an integer"), "{}", out.stderr);
        }
    }
}
