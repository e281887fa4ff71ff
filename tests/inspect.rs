//! The design's "Inspecting" commands and the scriptable outputs, through
//! the real binaries: `status`, `cancel`, `requeue`, `doctor`,
//! `reap --metrics-file` and the `--json` outputs.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{
    KEY, Mock, Out, Project, Record, ShellLock, fm, keys, marker_json, mode, rfc3339_ago, s, set,
    tree,
};
use serde_json::json;

/// The whitespace-separated cells of the table row that starts with `first`.
fn row<'a>(out: &'a str, first: &str) -> Vec<&'a str> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row starting with {first:?} in:\n{out}"))
}

/// A project with, on disk: two tasks in flight (one submitted with a poll
/// error, one pending), one corrupt marker, two done gemini tasks and one
/// failed gpu task — all made by the real binaries against `mock`.
fn busy_project(mock: &Mock) -> (Project, String) {
    let p = Project::new();
    for (name, yaml) in [
        ("d1.md", "preferred_ai: gemini"),
        ("d2.md", "preferred_ai: gemini"),
        ("f1.md", "preferred_ai: gpu"),
        ("run.md", "preferred_ai: claude"),
    ] {
        p.task(name, &fm(yaml));
    }
    let d1 = p.submit_ok(mock, "d1.md");
    let d2 = p.submit_ok(mock, "d2.md");
    let f1 = p.submit_ok(mock, "f1.md");
    let run = p.submit_ok(mock, "run.md");
    mock.set(json!({"status_of": {d1: "completed", d2: "completed", f1: "failed"}}));
    let out = p.reap(mock, &[]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    // run.md: a failed poll remembered in its marker.
    let mut m = p.marker("run.md").unwrap();
    m["poll_errors"] = json!(2);
    m["last_error"] = json!("GET /api/v1/jobs: boom");
    p.write_marker("run.md", &m.to_string());
    // pend.md: written before its POST.
    p.task("pend.md", &fm("preferred_ai: gpu"));
    p.write_marker(
        "pend.md",
        &marker_json(true, None, "ccl-0123456789abcdef0123", &rfc3339_ago(90)),
    );
    // bad.md: a marker that cannot be read.
    p.task("bad.md", &fm("preferred_ai: gpu"));
    p.write_marker("bad.md", "{not json");
    (p, run)
}

// ---------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------

#[test]
fn status_shows_tasks_in_flight_and_totals_per_provider_read_from_the_files() {
    let mock = Mock::start(&["--statuses", "running"]);
    let (p, run) = busy_project(&mock);
    let requests = mock.requests();
    // No service is needed: no URL, no key.
    let out = p.run(None, &["status", "--project", s(&p.dir)]);
    out.expect(0);
    assert_eq!(mock.requests(), requests, "status never calls the service");
    let text = &out.stdout;
    let head = row(text, "PROJECT");
    assert_eq!(
        head,
        ["PROJECT", "TASK", "PROVIDER", "JOB", "AGE", "LAST", "ERROR"]
    );
    let project = p.dir.display().to_string();
    let running = text
        .lines()
        .find(|l| l.contains("run.md"))
        .expect("run.md in flight");
    assert!(running.starts_with(&project), "{running}");
    assert!(running.contains(" claude "), "{running}");
    assert!(running.contains(&run), "{running}");
    assert!(running.ends_with("GET /api/v1/jobs: boom"), "{running}");
    let pending = text.lines().find(|l| l.contains("pend.md")).unwrap();
    assert!(
        pending.contains(" gemini ") && pending.contains(" pending "),
        "{pending}"
    );
    // Written 90 s ago; a loaded machine may take a few seconds to get here.
    assert!(
        (30..=40).any(|sec| pending.contains(&format!(" 1m {sec}s "))),
        "age of about 90 s: {pending}"
    );
    let bad = text.lines().find(|l| l.contains("bad.md")).unwrap();
    assert!(bad.contains("corrupt marker"), "{bad}");

    assert_eq!(
        row(text, "PROVIDER"),
        ["PROVIDER", "DONE", "FAILED", "COST_CAD"]
    );
    assert_eq!(row(text, "gemini"), ["gemini", "2", "0", "0.0246"]);
    assert_eq!(row(text, "gpu"), ["gpu", "0", "1", "0.0000"]);
    assert!(!text.contains("d1.md"), "done tasks are not in flight");
}

#[test]
fn status_json_lists_in_flight_tasks_and_totals_for_scripts() {
    let mock = Mock::start(&["--statuses", "running"]);
    let (p, run) = busy_project(&mock);
    let out = p.run(None, &["status", "--json", "--project", s(&p.dir)]);
    out.expect(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(keys(&v), set(&["in_flight", "totals"]));
    let in_flight = v["in_flight"].as_array().unwrap();
    let tasks: Vec<&str> = in_flight
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["bad.md", "pend.md", "run.md"]);
    for t in in_flight {
        assert_eq!(
            keys(t),
            set(&[
                "project",
                "task",
                "state",
                "provider",
                "job_id",
                "started_at",
                "age_seconds",
                "poll_errors",
                "last_error"
            ]),
            "{t}"
        );
        assert_eq!(t["project"], s(&p.dir));
    }
    let r = &in_flight[2];
    assert_eq!(r["state"], "submitted");
    assert_eq!(r["provider"], "claude");
    assert_eq!(r["job_id"], run.as_str());
    assert_eq!(r["poll_errors"], 2);
    assert_eq!(r["last_error"], "GET /api/v1/jobs: boom");
    let pend = &in_flight[1];
    assert_eq!(pend["state"], "pending");
    assert_eq!(pend["job_id"], serde_json::Value::Null);
    let age = pend["age_seconds"].as_u64().unwrap();
    assert!((90..100).contains(&age), "{age}");
    assert_eq!(in_flight[0]["state"], "corrupt");

    assert_eq!(
        v["totals"],
        json!([
            {"provider": "gemini", "done": 2, "failed": 0, "cost_cad": 0.0246},
            {"provider": "gpu", "done": 0, "failed": 1, "cost_cad": 0.0},
        ])
    );
}

#[test]
fn status_of_an_empty_queue_says_so() {
    let p = Project::new();
    let out = p.run(None, &["status", "--project", s(&p.dir)]);
    out.expect(0);
    assert_eq!(
        out.stdout,
        "Nothing in flight.\n\nNo done or failed tasks yet.\n"
    );
    let out = p.run(None, &["status", "--json", "--project", s(&p.dir)]);
    out.expect(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v, json!({"in_flight": [], "totals": []}));
}

// ---------------------------------------------------------------------------
// cancel
// ---------------------------------------------------------------------------

#[test]
fn cancel_asks_the_service_and_the_next_reap_fails_the_task_as_cancelled() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    let bytes = fm("preferred_ai: gemini");
    let task = p.task("a.md", &bytes);
    let job = p.submit_ok(&mock, "a.md");
    let out = p.run(Some(&mock), &["cancel", s(&task)]);
    out.expect(0);
    assert_eq!(out.stdout, "cancelled\n");
    assert_eq!(mock.job(&job)["status"], "cancelled");
    // Nothing moves until reap.
    assert_eq!(std::fs::read(&task).unwrap(), bytes);
    assert!(p.marker("a.md").is_some());

    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(
        out.stdout,
        format!(
            "failed {} (job {job}: cancelled)\n",
            p.failed().join("a.md").display()
        )
    );
    let r = Record::read(&p.failed().join("a.md"));
    assert_eq!(r.str("failed_reason"), Some("cancelled"));
    assert_eq!(r.original(), bytes);
}

#[test]
fn cancel_json_prints_the_service_object_and_a_finished_job_is_reported() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    p.task("a.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "a.md");
    let out = p.run(Some(&mock), &["cancel", "--json", &job]);
    out.expect(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        keys(&v),
        set(&[
            "job_id",
            "status",
            "error",
            "provider",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(v["job_id"], job.as_str());
    assert_eq!(v["status"], "cancelled");
    // Again: the job already ended (409); nothing to cancel, not an error.
    let out = p.run(Some(&mock), &["cancel", &job]);
    out.expect(0);
    assert_eq!(out.stdout, "cancelled\n");
    assert!(out.stderr.contains("already ended"), "{}", out.stderr);
    // An unknown job.
    let out = p.run(Some(&mock), &["cancel", "j-unknown"]);
    out.expect(66);
    assert_eq!(out.stdout, "");
}

// ---------------------------------------------------------------------------
// requeue
// ---------------------------------------------------------------------------

/// A task reaped into failed/<name> by the real binaries; returns its bytes.
fn failed_task(p: &Project, mock: &Mock, name: &str, bytes: &[u8]) {
    p.task(name, bytes);
    let job = p.submit_ok(mock, name);
    mock.set(json!({"status_of": {job: "failed"}}));
    p.reap(mock, &[]).expect(0);
    assert!(!p.inbox().join(name).exists());
}

#[test]
fn requeue_puts_the_original_task_back_byte_for_byte_and_removes_the_failed_file() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    let bytes = b"\xEF\xBB\xBF---\r\npreferred_ai: gemini\r\n---\r\nno final newline";
    let task = p.inbox().join("a.md");
    failed_task(&p, &mock, "a.md", bytes);
    // Permission bits travel with the task.
    std::fs::set_permissions(
        p.failed().join("a.md"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = p.run(None, &["requeue", s(&p.failed().join("a.md"))]);
    out.expect(0);
    assert_eq!(out.stdout, format!("requeued {}\n", task.display()));
    assert_eq!(std::fs::read(&task).unwrap(), bytes);
    assert_eq!(mode(&task), 0o600);
    assert_eq!(p.names(&p.failed()), Vec::<String>::new());
    assert_eq!(
        p.names(&p.inbox()),
        ["a.md"],
        "no marker: the dispatcher's again"
    );

    // And it can be delegated again.
    let out = p.run(Some(&mock), &["submit", s(&task)]);
    out.expect(0);
}

#[test]
fn requeue_of_a_numbered_failed_file_restores_the_task_name() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    let first = fm("preferred_ai: gemini\nround: 1");
    let second = fm("preferred_ai: gemini\nround: 2");
    failed_task(&p, &mock, "a.md", &first);
    failed_task(&p, &mock, "a.md", &second);
    assert_eq!(p.names(&p.failed()), ["a.2.md", "a.md"]);
    let out = p.run(None, &["requeue", s(&p.failed().join("a.2.md"))]);
    out.expect(0);
    assert_eq!(std::fs::read(p.inbox().join("a.md")).unwrap(), second);
    assert_eq!(p.names(&p.failed()), ["a.md"]);
}

#[test]
fn requeue_never_overwrites_an_inbox_task() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    failed_task(&p, &mock, "a.md", &fm("preferred_ai: gemini\nold: true"));
    let newer = b"a newer task with the same name\n";
    p.task("a.md", newer);
    let before = tree(p.tmp.path());
    let out = p.run(None, &["requeue", s(&p.failed().join("a.md"))]);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    assert_eq!(tree(p.tmp.path()), before, "nothing changed");
}

#[test]
fn requeue_refuses_what_is_not_a_failed_task_file() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    // A failed file whose task had vanished: nothing to put back.
    p.task("gone.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "gone.md");
    mock.set(json!({"status_of": {job: "failed"}}));
    std::fs::remove_file(p.inbox().join("gone.md")).unwrap();
    p.reap(&mock, &[]).expect(0);
    // A done file, a file outside failed/, a stranger in failed/.
    p.task("ok.md", &fm("preferred_ai: gemini"));
    p.submit_ok(&mock, "ok.md");
    p.reap(&mock, &[]).expect(0);
    std::fs::write(p.failed().join("notes.md"), b"my own notes\n").unwrap();
    let before = tree(p.tmp.path());

    let out = p.run(None, &["requeue", s(&p.failed().join("gone.md"))]);
    out.expect(65);
    assert!(out.stderr.contains("no original task"), "{}", out.stderr);
    let out = p.run(None, &["requeue", s(&p.failed().join("notes.md"))]);
    out.expect(65);
    let out = p.run(None, &["requeue", s(&p.done().join("ok.md"))]);
    out.expect(64);
    let out = p.run(None, &["requeue", s(&p.failed().join("nope.md"))]);
    out.expect(66);
    assert_eq!(tree(p.tmp.path()), before, "nothing changed");
}

// ---------------------------------------------------------------------------
// doctor
// ---------------------------------------------------------------------------

#[test]
fn doctor_reports_one_ok_line_per_check() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let out = p.run(Some(&mock), &["doctor", "--project", s(&p.dir)]);
    out.expect(0);
    let lock = p.reap_lock();
    assert_eq!(
        out.stdout,
        format!(
            "ok    config: no config file; using flags, environment and defaults\n\
             ok    api url: {} (from SECUTOOLS_URL)\n\
             ok    api key: from SECUTOOLS_API_KEY\n\
             ok    service: reachable, key accepted\n\
             ok    project {}: queue directories present and writable\n\
             ok    run lock: {}\n",
            mock.url,
            p.dir.display(),
            lock.display()
        )
    );
    assert_eq!(p.names(&p.queue()), ["inbox"], "no probe left behind");

    // A reap holding the run lock is not a failure.
    let _held = ShellLock::hold(&lock);
    let out = p.run(Some(&mock), &["doctor", "--project", s(&p.dir)]);
    out.expect(0);
    assert!(
        out.stdout.contains("(a reap is running now)"),
        "{}",
        out.stdout
    );
}

#[test]
fn doctor_fails_naming_a_refused_key_a_missing_url_and_a_missing_queue() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let out = Out::of(
        p.cmd(None)
            .env("SECUTOOLS_URL", &mock.url)
            .env("SECUTOOLS_API_KEY", "not-the-key-123")
            .args(["doctor", "--project", s(&p.dir)]),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("FAIL  service: the key was refused"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("not-the-key-123"),
        "the key is never printed"
    );

    let nowhere = p.tmp.path().join("nowhere");
    let out = p.run(None, &["doctor", "--offline", "--project", s(&nowhere)]);
    assert_eq!(out.code, 1, "{out:?}");
    let fails: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert_eq!(fails.len(), 3, "{}", out.stdout);
    assert!(
        fails[0].starts_with("FAIL  api url: no API URL"),
        "{fails:?}"
    );
    assert!(
        fails[1].starts_with("FAIL  api key: no API key"),
        "{fails:?}"
    );
    assert!(
        fails[2].starts_with(&format!("FAIL  project {}", nowhere.display())),
        "{fails:?}"
    );
    assert!(
        out.stdout.contains("skip  service: --offline"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("3 check(s) failed"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// reap --metrics-file
// ---------------------------------------------------------------------------

fn sample(text: &str, name: &str, labels: &str) -> Option<String> {
    let prefix = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
}

#[test]
fn reap_metrics_file_counts_what_each_run_finished() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    let metrics = p.tmp.path().join("ccl.prom");
    let m = s(&metrics);
    for (name, yaml) in [
        ("a.md", "preferred_ai: gemini"),
        ("b.md", "preferred_ai: gemini"),
        ("c.md", "preferred_ai: gpu"),
    ] {
        p.task(name, &fm(yaml));
    }
    let a = p.submit_ok(&mock, "a.md");
    let b = p.submit_ok(&mock, "b.md");
    let c = p.submit_ok(&mock, "c.md");
    mock.set(json!({"status_of": {a: "completed", c: "failed"}}));
    let out = p.reap(&mock, &["--metrics-file", m]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let gemini = format!("{{project=\"{}\",provider=\"gemini\"}}", p.dir.display());
    let gpu = format!("{{project=\"{}\",provider=\"gpu\"}}", p.dir.display());
    assert_eq!(
        sample(&text, "ccl_delegate_completed_total", &gemini).as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ccl_delegate_failed_total", &gpu).as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ccl_delegate_cost_cad_total", &gemini).as_deref(),
        Some("0.0123"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ccl_delegate_active_jobs", &gemini).as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ccl_delegate_active_jobs", &gpu).as_deref(),
        Some("0"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ccl_delegate_reap_success", "").as_deref(),
        Some("1"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE ccl_delegate_completed_total counter\n"),
        "{text}"
    );
    assert_eq!(mode(&metrics), 0o644);

    // The counters are the books' sums: they go on from run to run, the
    // metrics file lost in between or not.
    std::fs::remove_file(&metrics).unwrap();
    mock.set(json!({"status_of": {b: "completed"}}));
    let out = p.reap(&mock, &["--metrics-file", m]);
    out.expect(0);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        sample(&text, "ccl_delegate_completed_total", &gemini).as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ccl_delegate_cost_cad_total", &gemini).as_deref(),
        Some("0.0246"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ccl_delegate_failed_total", &gpu).as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ccl_delegate_active_jobs", &gemini).as_deref(),
        Some("0"),
        "{text}"
    );

    // A quiet run still writes the file (the last-success time moves on).
    let out = p.reap(&mock, &["--metrics-file", m]);
    out.expect(0);
    assert_eq!(out.stdout, "");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        sample(&text, "ccl_delegate_completed_total", &gemini).as_deref(),
        Some("2"),
        "{text}"
    );
    let names: Vec<String> = std::fs::read_dir(p.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with(".ccl-delegate-metrics-")),
        "{names:?}"
    );
}

#[test]
fn reap_metrics_file_reports_a_failed_run() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let metrics = p.tmp.path().join("ccl.prom");
    // A queue whose inbox is not a directory: a local error.
    let broken = p.tmp.path().join("broken");
    std::fs::create_dir_all(broken.join(".agent-queue")).unwrap();
    std::fs::write(broken.join(".agent-queue/inbox"), b"not a directory").unwrap();
    let out = p.run(
        Some(&mock),
        &[
            "reap",
            "--project",
            s(&broken),
            "--metrics-file",
            s(&metrics),
        ],
    );
    out.expect(1);
    assert!(out.stderr.contains("not a directory"), "{}", out.stderr);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        sample(&text, "ccl_delegate_reap_success", "").as_deref(),
        Some("0"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// The environment and the config file
// ---------------------------------------------------------------------------

#[test]
fn config_file_projects_are_reaped_and_flags_beat_the_environment() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    p.task("a.md", &fm("preferred_ai: gemini"));
    p.submit_ok(&mock, "a.md");
    let key_file = p.home.join("key");
    std::fs::write(&key_file, KEY).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.write_config(&format!(
        "api_url: http://127.0.0.1:1\napi_key_file: {}\nprojects: ['{}/pro*']\n",
        key_file.display(),
        p.tmp.path().display()
    ));
    // The environment beats the file's (dead) URL.
    let out = Out::of(p.cmd(None).env("SECUTOOLS_URL", &mock.url).args(["reap"]));
    out.expect(0);
    assert!(out.stdout.starts_with("done "), "{}", out.stdout);

    // The flag beats the environment: --api-url points at the mock.
    p.task("b.md", &fm("preferred_ai: gemini"));
    let out = Out::of(
        p.cmd(None)
            .env("SECUTOOLS_URL", "http://127.0.0.1:1")
            .args(["--api-url", &mock.url, "submit", s(&p.inbox().join("b.md"))]),
    );
    out.expect(0);
    assert!(
        out.stdout.starts_with("delegated gemini "),
        "{}",
        out.stdout
    );
}

#[test]
fn requeue_never_puts_a_task_back_beside_a_marker() {
    // inbox/a.md vanished while delegated: its marker is still there, and
    // a requeued a.md would be finished with that other job's result.
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    failed_task(&p, &mock, "a.md", &fm("preferred_ai: gemini\nold: true"));
    p.task("a.md", &fm("preferred_ai: gemini\nnew: true"));
    p.submit_ok(&mock, "a.md");
    std::fs::remove_file(p.inbox().join("a.md")).unwrap();
    let before = tree(p.tmp.path());
    let out = p.run(None, &["requeue", s(&p.failed().join("a.md"))]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("a.md.delegated"), "{}", out.stderr);
    assert_eq!(tree(p.tmp.path()), before, "nothing changed");
}

#[test]
fn result_wait_shows_progress_on_a_terminal_and_nothing_when_piped() {
    let mock = Mock::start(&["--statuses", "running,running,running,completed"]);
    mock.set(json!({"response": "All done."}));
    let p = Project::new();
    p.task("a.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "a.md");

    // Piped: the response alone, nothing on stderr.
    let out = p.run(Some(&mock), &["result", &job, "--wait", "20s"]);
    out.expect(0);
    assert_eq!(out.stdout, "All done.\n");
    assert_eq!(out.stderr, "");

    // On a terminal (script(1) gives the run a pty): the status and the
    // elapsed time while it waits.
    p.task("b.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "b.md");
    let line = format!("{} result {job} --wait 20s", common::bin());
    let mut script = std::process::Command::new("script");
    script.env_clear();
    for (k, v) in p.cmd(Some(&mock)).get_envs() {
        if let Some(v) = v {
            script.env(k, v);
        }
    }
    let out = Out::of(
        script
            .env("TERM", "dumb")
            .args(["-qec", &line, "/dev/null"]),
    );
    out.expect(0);
    assert!(
        out.stdout.contains(&format!("waiting for {job}: running")),
        "{:?}",
        out.stdout
    );
    assert!(out.stdout.contains("All done."), "{:?}", out.stdout);
}
