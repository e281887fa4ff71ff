//! Gaps between the design and `submit`/`reap`/`status`, each proven through
//! the real binary against the real mock: marker names the file system
//! refuses, errors under `-q`, honest metrics, markers dated in the future,
//! a 404 on the result, names that are not UTF-8, stuck queue locks, prompts
//! over the API's limit, and hostile bytes in printed lines.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A task that routes to `gemini`.
const GEMINI: &[u8] = b"---\npreferred_ai: gemini\n---\nDo it.\n";

/// Creates a job on the mock and a `submitted` marker for it beside
/// `inbox/<task>`; gives the job id.
fn delegated(p: &Project, mock: &Mock, task: &str, started_at: &str) -> String {
    p.task(task, GEMINI);
    let hash = task.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let key = format!("ccl-gap-{hash:016x}");
    let job = mock.post_job(&key, task);
    p.write_marker(task, &marker_json(false, Some(&job), &key, started_at));
    job
}

/// Runs ccl-delegate with a config file holding `config`.
fn with_config(p: &Project, mock: Option<&Mock>, config: &str, args: &[&str]) -> Out {
    let file = p.home.join("config.yaml");
    std::fs::write(&file, config).unwrap();
    Out::of(p.cmd(mock).env("CCL_DELEGATE_CONFIG", &file).args(args))
}

fn no_raw_controls(out: &Out) {
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        for c in ['\x1b', '\r', '\x07', '\u{9b}'] {
            assert!(!text.contains(c), "{name} holds {c:?}: {text:?}");
        }
    }
}

// 1. A marker that cannot exist: exit 64, nothing written.

#[test]
fn submit_refuses_a_task_whose_marker_name_would_be_too_long() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    for len in [246usize, 250, 255] {
        let name = format!("{}.md", "a".repeat(len - 3));
        let task = p.task(&name, GEMINI);
        let out = p.run(Some(&mock), &["submit", s(&task)]);
        out.expect(64);
        assert_eq!(out.stdout, "", "{out:?}");
        assert!(out.stderr.contains("too long"), "{out:?}");
        assert_eq!(p.names(&p.inbox()), vec![name.clone()], "nothing written");
        std::fs::remove_file(&task).unwrap();
    }
    assert_eq!(mock.jobs_created(), 0);
}

#[test]
fn submit_accepts_the_longest_name_whose_marker_fits() {
    // 245 + `.delegated` = 255 bytes: the boundary is the file system's,
    // not one byte less.
    let mock = Mock::start(&[]);
    let p = Project::new();
    let name = format!("{}.md", "b".repeat(242));
    let task = p.task(&name, GEMINI);
    let out = p.run(Some(&mock), &["submit", s(&task)]);
    out.expect(0);
    assert!(p.marker(&name).is_some(), "{out:?}");
}

// 2. Errors are printed, -q or not.

#[test]
fn quiet_reap_still_prints_a_refused_key_and_an_unwritable_metrics_file() {
    let mock = Mock::start(&["--statuses", "queued"]);
    let p = Project::new();
    delegated(&p, &mock, "a.md", &rfc3339_ago(60));
    let out = Out::of(
        p.cmd(None)
            .env("SECUTOOLS_URL", &mock.url)
            .env("SECUTOOLS_API_KEY", "wrong-key-0123456789")
            .args(["-q", "reap", "--project", s(&p.dir)]),
    );
    out.expect(77);
    assert!(out.stderr.contains("401"), "{out:?}");
    assert!(!out.stderr.contains("wrong-key-0123456789"), "{out:?}");

    let metrics = p.tmp.path().join("no-such-dir/m.prom");
    let out = p.run(
        Some(&mock),
        &[
            "-q",
            "reap",
            "--project",
            s(&p.dir),
            "--metrics-file",
            s(&metrics),
        ],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("m.prom"), "{out:?}");
}

// 3. Metrics tell a failed run and sum correctly.

fn metric<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
}

#[test]
fn metrics_call_a_run_with_an_unreachable_service_or_a_refused_key_no_success() {
    let mock = Mock::start(&["--statuses", "queued"]);
    let p = Project::new();
    delegated(&p, &mock, "a.md", &rfc3339_ago(60));
    let file = p.tmp.path().join("m.prom");
    let before = "ccl_delegate_last_success_timestamp_seconds 123.000\n";
    for env in [
        vec![
            ("SECUTOOLS_URL", dead_url()),
            ("SECUTOOLS_API_KEY", KEY.to_string()),
        ],
        vec![
            ("SECUTOOLS_URL", mock.url.clone()),
            ("SECUTOOLS_API_KEY", "wrong-key-0123456789".to_string()),
        ],
    ] {
        std::fs::write(&file, before).unwrap();
        let out = Out::of(p.cmd(None).envs(env.clone()).args([
            "reap",
            "--project",
            s(&p.dir),
            "--retries",
            "0",
            "--metrics-file",
            s(&file),
        ]));
        // Unreachable: exit 0, the markers wait (README); refused: 77.
        let refused = env[1].1 != KEY;
        assert_eq!(out.code, if refused { 77 } else { 0 }, "{env:?}: {out:?}");
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            metric(&text, "ccl_delegate_reap_success "),
            Some("0"),
            "{env:?}: {text}"
        );
        assert_eq!(
            metric(&text, "ccl_delegate_last_success_timestamp_seconds "),
            Some("123.000"),
            "{env:?}: {text}"
        );
    }
    // With the service back, the run succeeds.
    let out = p.reap(&mock, &["--metrics-file", s(&file)]);
    out.expect(0);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(metric(&text, "ccl_delegate_reap_success "), Some("1"));
}

#[test]
fn metrics_count_auto_jobs_in_flight_and_never_keep_a_zero_auto_series() {
    let mock = Mock::start(&["--statuses", "queued,completed"]);
    let p = Project::new();
    let task = p.task("a.md", b"---\nallow_delegation: true\n---\nAny model.\n");
    p.run(Some(&mock), &["submit", s(&task)]).expect(0);
    let file = p.tmp.path().join("m.prom");
    p.reap(&mock, &["--metrics-file", s(&file)]).expect(0);
    let text = std::fs::read_to_string(&file).unwrap();
    let active = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("ccl_delegate_active_jobs{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(active(&text), 1, "{text}");
    assert!(
        text.contains("ccl_delegate_active_jobs{") && text.contains("provider=\"auto\"} 1"),
        "{text}"
    );

    let out = p.reap(&mock, &["--metrics-file", s(&file)]);
    out.expect(0);
    assert!(out.stdout.starts_with("done "), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(active(&text), 0, "{text}");
    for l in text.lines().filter(|l| l.contains("provider=\"auto\"")) {
        assert!(
            l.starts_with("ccl_delegate_active_jobs{"),
            "a counter under auto: {l}\n{text}"
        );
    }
    let completed: u64 = text
        .lines()
        .filter(|l| l.starts_with("ccl_delegate_completed_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(completed, 1, "{text}");
}

// 4. A marker dated in the future.

#[test]
fn reap_resets_a_started_at_in_the_future_and_status_marks_it() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let future = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + Duration::from_secs(86_400),
    )
    .to_string();
    // A job the service does not know: its 404 only counts past the grace.
    p.task("a.md", GEMINI);
    p.write_marker(
        "a.md",
        &marker_json(false, Some("j-unknown"), "ccl-future-0123456789", &future),
    );

    let st = p.run(None, &["status", "--project", s(&p.dir)]);
    st.expect(0);
    assert!(st.stdout.contains("future"), "{st:?}");
    let st = p.run(None, &["status", "--project", s(&p.dir), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["in_flight"][0]["started_in_future"], true, "{v}");

    let dir = s(&p.dir);
    let out = p.run(
        Some(&mock),
        &["reap", "--project", dir, "--submit-grace", "1h"],
    );
    out.expect(0);
    assert!(
        out.stderr.contains("a.md.delegated") && out.stderr.contains("future"),
        "{out:?}"
    );
    let m = p.marker("a.md").expect("within the grace the marker stays");
    let started = humantime::parse_rfc3339(m["started_at"].as_str().unwrap()).unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(started)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "{m}");

    // From then on every age rule works: past the grace, the 404 is final.
    std::thread::sleep(Duration::from_millis(1100));
    let out = p.run(
        Some(&mock),
        &["reap", "--project", dir, "--submit-grace", "1s"],
    );
    out.expect(0);
    assert!(out.stdout.starts_with("failed "), "{out:?}");
    assert_eq!(
        Record::read(&p.failed().join("a.md")).str("failed_reason"),
        Some("not found")
    );
}

// 5. A 404 on the result is a verdict past the grace.

#[test]
fn reap_fails_a_job_whose_result_answers_404_past_submit_grace() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    delegated(&p, &mock, "a.md", &rfc3339_ago(600));
    mock.faults(json!({"next": ["404"], "path": "/result"}));
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert!(out.stdout.starts_with("failed "), "{out:?}");
    assert_eq!(p.names(&p.inbox()), Vec::<String>::new());
    let r = Record::read(&p.failed().join("a.md"));
    assert_eq!(r.str("failed_reason"), Some("not found"));
    assert_eq!(r.original(), GEMINI);
}

// 7. Names that are not UTF-8.

#[test]
fn reap_and_status_see_a_marker_whose_name_is_not_utf8() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let name = OsStr::from_bytes(b"caf\xe9.md");
    std::fs::write(p.inbox().join(name), GEMINI).unwrap();
    let key = "ccl-latin1-0123456789";
    let job = mock.post_job(key, "cafe.md");
    std::fs::write(
        p.inbox().join(OsStr::from_bytes(b"caf\xe9.md.delegated")),
        marker_json(false, Some(&job), key, &rfc3339_ago(60)),
    )
    .unwrap();

    let st = p.run(None, &["status", "--project", s(&p.dir)]);
    st.expect(0);
    assert!(st.stdout.contains("caf\\xe9.md"), "{st:?}");

    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert!(out.stdout.contains("caf\\xe9.md"), "{out:?}");
    assert!(p.names(&p.inbox()).is_empty(), "{:?}", p.names(&p.inbox()));
    let r = Record::read(&p.done().join(name));
    assert_eq!(r.str("job_id"), Some(job.as_str()));
    assert_eq!(r.original(), GEMINI);
}

// 9. A queue lock held by a stranger.

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
    delegated(&stuck, &mock, "a.md", &rfc3339_ago(60));
    delegated(&free, &mock, "b.md", &rfc3339_ago(60));
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

// 8. A prompt over the API's body limit.

#[test]
fn submit_refuses_a_task_over_the_api_body_limit_before_sending() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let mut big = GEMINI.to_vec();
    big.resize(33 * 1024 * 1024, b'x');
    let task = p.task("big.md", &big);
    let out = p.run(Some(&mock), &["submit", s(&task)]);
    out.expect(65);
    assert!(out.stderr.contains("big.md"), "{out:?}");
    assert!(out.stderr.contains("MiB"), "{out:?}");
    assert_eq!(p.names(&p.inbox()), vec!["big.md".to_string()]);
    assert_eq!(mock.requests(), 0);
}

// 11. Hostile bytes in names and server strings.

#[test]
fn reap_prints_one_clean_line_per_finished_task_whatever_the_bytes() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let hostile = "e\x1b[31mvil\r\x07\x1b]0;title\x07\nz.md";
    let job = delegated(&p, &mock, hostile, &rfc3339_ago(60));
    let other = delegated(&p, &mock, "ok\x1b[2J.md", &rfc3339_ago(60));
    mock.set(json!({"status_of": {job.clone(): "failed"}}));
    mock.set(json!({"job": job, "error": "bad\x1b]8;;http://x\x07link\r\nline2\x07"}));
    mock.set(json!({"job": other, "provider": "gem\x1b[31mini\r\n"}));
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
    no_raw_controls(&out);
    assert!(p.failed().join(hostile).exists());
    assert!(p.done().join("ok\x1b[2J.md").exists());
}

/// A pending submission that can never be sent (its request is over the
/// API's 32 MiB limit) is handed back to the dispatcher at once, like one
/// the service refused: not re-uploaded every minute for a day.
#[test]
fn reap_returns_a_pending_task_whose_request_is_over_the_limit() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let mut big = GEMINI.to_vec();
    big.extend(std::iter::repeat_n(b'x', 33 * 1024 * 1024));
    p.task("big.md", &big);
    p.write_marker(
        "big.md",
        &marker_json(true, None, "ccl-big-0123456789abcdef", &rfc3339_ago(600)),
    );
    let out = p.reap(&mock, &[]);
    assert!(out.stdout.contains("returned"), "{out:?}");
    assert_eq!(p.names(&p.inbox()), ["big.md"], "the task stays, unmarked");
    assert!(
        mock.jobs().is_empty(),
        "nothing was sent: {:?}",
        mock.jobs()
    );
    assert_eq!(std::fs::read(p.inbox().join("big.md")).unwrap(), big);
}

/// `local <rule>` stays the whole stdout; stderr says the rule in words for
/// a newcomer, and `-q` silences it.
#[test]
fn submit_of_a_local_task_says_the_rule_in_words_on_stderr() {
    let p = Project::new();
    let task = p.task("plain.md", b"No frontmatter here.\n");
    let out = p.run(None, &["submit", s(&task)]);
    out.expect(10);
    assert_eq!(out.stdout, "local 7\n");
    assert!(
        out.stderr
            .contains("plain.md: rule 7: no routing key: runs locally"),
        "{}",
        out.stderr
    );
    let quiet = p.run(None, &["-q", "submit", s(&task)]);
    quiet.expect(10);
    assert_eq!(quiet.stdout, "local 7\n");
    assert_eq!(quiet.stderr, "");
}

/// A completed job whose result cannot be fetched right now is kept past
/// max_age: its answer is fetched on a later run, never dropped as timeout.
#[test]
fn a_completed_job_whose_result_fails_past_max_age_is_kept_for_the_next_run() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let old = rfc3339_ago(25 * 3600);
    delegated(&p, &mock, "paid.md", &old);
    mock.faults(json!({"next": ["503", "503", "503", "503"], "path": "/result"}));
    let out = p.reap(&mock, &[]);
    assert!(p.names(&p.failed()).is_empty(), "{out:?}");
    assert_eq!(p.names(&p.inbox()), ["paid.md", "paid.md.delegated"]);
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(p.names(&p.done()), ["paid.md"], "{out:?}");
}

/// A marker too large to be one can never be read: it is a corrupt marker
/// (failed/, the task kept whole), not an error on every cron run.
#[test]
fn an_oversized_marker_is_a_corrupt_marker() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    p.task("fat.md", GEMINI);
    p.write_marker("fat.md", &" ".repeat(100 * 1024));
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert!(out.stdout.contains("corrupt marker"), "{out:?}");
    assert!(p.names(&p.inbox()).is_empty());
    let rec = Record::read(&p.failed().join("fat.md"));
    assert_eq!(rec.str("failed_reason"), Some("corrupt marker"));
    assert_eq!(rec.original(), GEMINI);
}
