//! Server faults, one job at a time among healthy ones: 5xx, 429/503 with
//! `Retry-After` (seconds and HTTP date), dropped connections, answers slower
//! than the timeout, 404 for a known job, malformed JSON, an unknown status,
//! a result over the 32 MiB cap, job ids with `/` or `..`. Each gets the
//! right retry or outcome and a message naming the job, and the other jobs
//! of the run finish as if nothing happened.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A project with `n` delegated tasks `t0.md`.. whose jobs complete on the
/// first poll; returns the job ids in task order.
fn busy(mock: &Mock, n: usize) -> (Project, Vec<String>, BTreeMap<String, Vec<u8>>) {
    let p = Project::new();
    let mut jobs = Vec::new();
    let mut originals = BTreeMap::new();
    for i in 0..n {
        let task = format!("t{i}.md");
        let bytes = format!("---\nallow_delegation: true\n---\nTask {i}.\n").into_bytes();
        p.task(&task, &bytes);
        originals.insert(format!("t{i}"), bytes);
        let key = format!("ccl-server-faults-{i}-0123456789");
        let job = mock.post_job(&key, &task);
        p.write_marker(
            &task,
            &marker_json(false, Some(&job), &key, &rfc3339_ago(3600)),
        );
        jobs.push(job);
    }
    (p, jobs, originals)
}

fn reap(p: &Project, mock: &Mock, extra: &[&str]) -> (Out, Duration) {
    let dir = p.dir.to_str().unwrap();
    let t0 = Instant::now();
    let timeout: &[&str] = if extra.contains(&"--http-timeout") {
        &[]
    } else {
        &["--http-timeout", "1s"]
    };
    let out = p.run(
        Some(mock),
        &[&["reap", "--project", dir], timeout, extra].concat(),
    );
    (out, t0.elapsed())
}

/// Every task but `except` is in done/ and was reported by this run.
#[track_caller]
fn others_done(p: &Project, out: &Out, jobs: &[String], except: &[usize]) {
    for (i, job) in jobs.iter().enumerate().filter(|(i, _)| !except.contains(i)) {
        let done = p.done().join(format!("t{i}.md"));
        assert!(done.exists(), "t{i}.md (job {job}) not done: {out:?}");
        assert!(out.stdout.contains(&format!("(job {job},")), "{out:?}");
        assert!(!p.inbox().join(format!("t{i}.md")).exists());
    }
}

/// The faulted task is still in flight: marker kept with the poll error,
/// and the warning names its job and its task.
#[track_caller]
fn poll_failed(p: &Project, out: &Out, job: &str, task: &str, why: &str) {
    assert_eq!(out.code, 0, "a failed poll is not a failed run: {out:?}");
    let m = p
        .marker(task)
        .unwrap_or_else(|| panic!("{task}: marker gone: {out:?}"));
    assert_eq!(m["state"], "submitted");
    assert_eq!(m["poll_errors"], 1, "{m}");
    let last = m["last_error"].as_str().unwrap_or_default();
    assert!(last.contains(why), "last_error {last:?} should say {why:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains(why) && l.contains(&format!("job {job} ")))
        .unwrap_or_else(|| panic!("no warning about job {job} saying {why:?}: {out:?}"));
    assert!(line.contains(task), "the warning names the task: {line}");
    assert!(line.contains("will try again"), "{line}");
    assert!(p.inbox().join(task).exists());
}

#[test]
fn transient_5xx_is_retried_and_the_job_finishes_in_the_same_run() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let (p, jobs, originals) = busy(&mock, 4);
    mock.faults(json!({"next": ["500", "502"], "path": format!("/{}", jobs[1])}));
    mock.faults(json!({"next": ["504"], "path": format!("/{}/result", jobs[2])}));
    let (out, _) = reap(&p, &mock, &[]);
    out.expect(0);
    others_done(&p, &out, &jobs, &[]);
    assert_eq!(mock.stats()["faults_served"], 3);
    assert!(out.stderr.is_empty(), "{out:?}");
    check_invariant(&p, &originals, true).unwrap();
}

#[test]
fn persistent_5xx_is_a_failed_poll_recorded_in_the_marker() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let (p, jobs, originals) = busy(&mock, 4);
    mock.faults(json!({"next": ["503", "503", "500"], "path": format!("/{}", jobs[1])}));
    let (out, _) = reap(&p, &mock, &["--retries", "2"]);
    others_done(&p, &out, &jobs, &[1]);
    poll_failed(
        &p,
        &out,
        &jobs[1],
        "t1.md",
        "service unavailable after 3 attempts",
    );
    assert!(
        out.stderr.contains("mock internal error"),
        "the service's error text: {out:?}"
    );
    // The service answers again: the next run finishes the job.
    let (out, _) = reap(&p, &mock, &[]);
    out.expect(0);
    assert!(
        out.stdout.contains(&format!("(job {},", jobs[1])),
        "{out:?}"
    );
    check_invariant(&p, &originals, true).unwrap();
}

#[test]
fn retry_after_in_seconds_and_as_an_http_date_is_honoured() {
    for spec in ["429-retry", "503-retry", "429-date", "503-date"] {
        let mock = Mock::start(&["--statuses", "completed", "--retry-after", "1"]);
        let (p, jobs, originals) = busy(&mock, 3);
        mock.faults(json!({"next": [spec], "path": format!("/{}", jobs[0])}));
        let (out, took) = reap(&p, &mock, &[]);
        out.expect(0);
        others_done(&p, &out, &jobs, &[]);
        // Backoff alone waits at most 200 ms before the first retry; the
        // header asks for 1 s (a date: its whole second, at least 1 s on).
        assert!(
            took >= Duration::from_millis(900),
            "{spec}: retried after {took:?}"
        );
        assert!(took < Duration::from_secs(6), "{spec}: {took:?}");
        check_invariant(&p, &originals, true).unwrap();
    }
}

#[test]
fn submit_retries_after_429_with_retry_after_and_creates_one_job() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let path = p.task("a.md", b"---\nallow_delegation: true\n---\nA\n");
    mock.faults(json!({"next": ["429-date", "drop"], "method": "POST"}));
    let t0 = Instant::now();
    let out = p.run(Some(&mock), &["submit", path.to_str().unwrap()]);
    out.expect(0);
    assert!(out.stdout.starts_with("delegated auto "), "{out:?}");
    assert!(t0.elapsed() >= Duration::from_millis(900));
    let stats = mock.stats();
    assert_eq!(stats["jobs_created"], 1);
    let posts: Vec<u64> = stats["posts_by_key"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(posts, [3], "one key, three attempts: {stats}");
}

#[test]
fn dropped_connections_are_retried() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let (p, jobs, originals) = busy(&mock, 4);
    mock.faults(json!({"next": ["drop", "drop"], "path": format!("/{}", jobs[0])}));
    mock.faults(json!({"next": ["drop"], "path": format!("/{}/result", jobs[3])}));
    let (out, _) = reap(&p, &mock, &[]);
    out.expect(0);
    others_done(&p, &out, &jobs, &[]);
    assert_eq!(mock.stats()["faults_served"], 3);
    check_invariant(&p, &originals, true).unwrap();

    // Every attempt dropped: a failed poll naming the job.
    let (p, jobs, _) = busy(&mock, 3);
    mock.faults(json!({"next": ["drop", "drop"], "path": format!("/{}", jobs[2])}));
    let (out, _) = reap(&p, &mock, &["--retries", "1"]);
    others_done(&p, &out, &jobs, &[2]);
    poll_failed(
        &p,
        &out,
        &jobs[2],
        "t2.md",
        "no definite answer after 2 attempts",
    );
}

#[test]
fn answers_slower_than_the_timeout_are_retried_then_a_failed_poll() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let (p, jobs, originals) = busy(&mock, 3);
    mock.faults(json!({"next": ["slow:3s"], "path": format!("/{}", jobs[1])}));
    let (out, took) = reap(&p, &mock, &[]);
    out.expect(0);
    others_done(&p, &out, &jobs, &[]);
    assert!(
        took < Duration::from_millis(2900),
        "waited for the slow answer: {took:?}"
    );
    check_invariant(&p, &originals, true).unwrap();

    let (p, jobs, _) = busy(&mock, 3);
    mock.faults(json!({"next": ["slow:3s", "slow:3s"], "path": format!("/{}", jobs[0])}));
    let (out, _) = reap(&p, &mock, &["--retries", "1"]);
    others_done(&p, &out, &jobs, &[0]);
    poll_failed(&p, &out, &jobs[0], "t0.md", "timed out after 1s");
}

#[test]
fn a_slow_submit_is_pending_and_the_reap_resends_it_with_the_same_key() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let bytes = fm("preferred_ai: claude");
    let task = p.task("a.md", &bytes);
    mock.faults(json!({"next": ["slow:1200ms"], "path": "/api/v1/jobs", "method": "POST"}));
    let t0 = Instant::now();
    let out = p.run(
        Some(&mock),
        &["submit", s(&task), "--http-timeout", "1s", "--retries", "0"],
    );
    out.expect(0);
    assert_eq!(out.stdout, "pending claude\n");
    assert!(
        out.stderr.contains("a.md") && out.stderr.contains("timed out"),
        "{out:?}"
    );
    let m = p.marker("a.md").expect("the pending marker is kept");
    assert_eq!(m["state"], "pending");
    assert_eq!(m["job_id"], serde_json::Value::Null);
    let key = m["idempotency_key"].as_str().unwrap().to_string();

    // A submit now reports the pending marker and sends nothing.
    let again = p.run(Some(&mock), &["submit", s(&task)]);
    again.expect(0);
    assert_eq!(again.stdout, "pending claude\n");

    // Let the slow answer finish on the mock side, so the counts are final.
    std::thread::sleep(Duration::from_millis(1400).saturating_sub(t0.elapsed()));
    let out = p.reap(&mock, &[]);
    out.expect(0);
    let m = p
        .marker("a.md")
        .expect("marker kept until the job finishes");
    assert_eq!(m["state"], "submitted");
    assert_eq!(m["idempotency_key"], key.as_str());
    let job = m["job_id"].as_str().unwrap().to_string();
    let st = mock.stats();
    assert_eq!(
        st["posts_by_key"],
        json!({ key.clone(): 2 }),
        "two POSTs, one key"
    );
    assert_eq!(st["jobs_created"], 1, "one job");

    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(lines(&out).len(), 1, "{}", out.stdout);
    let r = Record::read(&p.done().join("a.md"));
    assert_eq!(r.str("job_id"), Some(job.as_str()));
    assert_eq!(r.original(), bytes);
    assert_eq!(mock.jobs_created(), 1);
}

#[test]
fn a_404_for_a_known_job_is_a_failed_poll_within_submit_grace_then_a_verdict() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let (p, jobs, originals) = busy(&mock, 3);
    mock.faults(json!({"next": ["404"], "path": format!("/{}", jobs[1])}));
    // The service's known lag after a create: recorded, but cron stays
    // quiet about it; -v says it.
    let (out, _) = reap(&p, &mock, &["--submit-grace", "2h"]);
    others_done(&p, &out, &jobs, &[1]);
    assert_eq!(out.stderr, "", "{out:?}");
    assert_eq!(p.marker("t1.md").unwrap()["poll_errors"], 1);
    mock.faults(json!({"next": ["404"], "path": format!("/{}", jobs[1])}));
    let (out, _) = reap(&p, &mock, &["--submit-grace", "2h", "-v"]);
    out.expect(0);
    let m = p.marker("t1.md").unwrap();
    assert_eq!(m["poll_errors"], 2, "{m}");
    assert!(
        m["last_error"]
            .as_str()
            .unwrap()
            .contains("not found (404)"),
        "{m}"
    );
    assert!(
        out.stderr.contains(&format!("job {} ", jobs[1])) && out.stderr.contains("t1.md"),
        "{out:?}"
    );

    mock.faults(json!({"next": ["404"], "path": format!("/{}", jobs[1])}));
    let (out, _) = reap(&p, &mock, &["--submit-grace", "10m"]);
    out.expect(0);
    let failed = p.failed().join("t1.md");
    assert!(
        out.stdout
            .contains(&format!("(job {}: not found)", jobs[1])),
        "{out:?}"
    );
    let rec = Record::read(&failed);
    assert_eq!(rec.str("failed_reason"), Some("not found"));
    assert!(rec.text().contains("404"), "{}", rec.text());
    check_invariant(&p, &originals, true).unwrap();
}

#[test]
fn malformed_json_is_a_bad_answer_for_that_job_only() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let (p, jobs, originals) = busy(&mock, 4);
    mock.set(json!({"job": jobs[1], "status_raw": "{\"job_id\": \"j-"}));
    mock.set(json!({"job": jobs[2], "result_raw": "<html>502 Bad Gateway</html>"}));
    mock.set(json!({"job": jobs[3], "status_raw": json!({"job_id": "j-other", "status": "completed"}).to_string()}));
    let (out, _) = reap(&p, &mock, &[]);
    others_done(&p, &out, &jobs, &[1, 2, 3]);
    poll_failed(
        &p,
        &out,
        &jobs[1],
        "t1.md",
        "bad answer from the service: malformed JSON",
    );
    poll_failed(
        &p,
        &out,
        &jobs[2],
        "t2.md",
        "bad answer from the service: malformed JSON",
    );
    poll_failed(
        &p,
        &out,
        &jobs[3],
        "t3.md",
        "bad answer from the service: the answer is about job",
    );
    mock.set(json!({"job": jobs[1], "status_raw": null}));
    mock.set(json!({"job": jobs[2], "result_raw": null}));
    mock.set(json!({"job": jobs[3], "status_raw": null}));
    p.reap_until_settled(&mock, &[], 2).expect(0);
    check_invariant(&p, &originals, true).unwrap();
}

#[test]
fn an_unknown_status_is_not_terminal_and_is_reported() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let (p, jobs, _) = busy(&mock, 3);
    // Unknown fields are ignored as well.
    let status = json!({"job_id": jobs[0], "status": "paused\u{1b}[31m", "error": null,
        "provider": null, "created_at": "2026-11-24T10:00:00Z",
        "updated_at": "2026-11-24T10:00:00Z", "extra": "ignored"});
    mock.set(json!({"job": jobs[0], "status_raw": status.to_string()}));
    let (out, _) = reap(&p, &mock, &[]);
    out.expect(0);
    others_done(&p, &out, &jobs, &[0]);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("unknown status"))
        .expect("reported");
    assert!(
        line.contains(&format!("job {}", jobs[0]))
            && line.contains("t0.md")
            && line.contains("paused"),
        "{line}"
    );
    assert!(
        !line.contains('\u{1b}'),
        "control characters reach the terminal: {line:?}"
    );
    let m = p.marker("t0.md").unwrap();
    assert_eq!(m["state"], "submitted");
    assert!(p.inbox().join("t0.md").exists());
}

#[test]
fn a_result_over_32_mib_is_refused_for_that_job_only() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let (p, jobs, originals) = busy(&mock, 3);
    mock.set(json!({"job": jobs[2], "result_pad_bytes": 33 * 1024 * 1024}));
    let (out, _) = reap(&p, &mock, &["--http-timeout", "20s", "--retries", "0"]);
    others_done(&p, &out, &jobs, &[2]);
    poll_failed(&p, &out, &jobs[2], "t2.md", "response body over 32 MiB");
    assert!(!p.done().join("t2.md").exists());
    // Just under the cap is fine.
    mock.set(json!({"job": jobs[2], "result_pad_bytes": 31 * 1024 * 1024}));
    let (out, _) = reap(&p, &mock, &["--http-timeout", "20s"]);
    out.expect(0);
    check_invariant(&p, &originals, true).unwrap();
    let len = std::fs::metadata(p.done().join("t2.md")).unwrap().len();
    assert!(len > 31 * 1024 * 1024, "{len}");
}

#[test]
fn job_ids_with_a_slash_or_dots_never_reach_a_url_or_a_file() {
    let mock = Mock::start(&["--statuses", "completed", "--log"]);
    for bad in ["../../x", "a/b", "..", ".", "j 1", "j%2F..%2Fx"] {
        let p = Project::new();
        let path = p.task("a.md", b"---\nallow_delegation: true\n---\nA\n");
        mock.set(json!({"next_job_id": bad}));
        let out = p.run(Some(&mock), &["submit", path.to_str().unwrap()]);
        // A job may exist: the marker stays pending (never a double run),
        // and the message names the refused id.
        out.expect(0);
        assert_eq!(out.stdout, "pending auto\n", "{bad}: {out:?}");
        assert!(
            out.stderr.contains("invalid job id") && out.stderr.contains("a.md"),
            "{bad}: {out:?}"
        );
        let m = p.marker("a.md").unwrap();
        assert_eq!(m["state"], "pending", "{bad}");
        assert_eq!(m["job_id"], serde_json::Value::Null, "{bad}");

        // The reap re-sends with the same key, gets the same id, refuses it
        // again, and touches nothing named after it.
        let before = mock.requests();
        let (out, _) = reap(&p, &mock, &["--submit-grace", "0s"]);
        out.expect(0);
        assert_eq!(
            mock.requests(),
            before + 1,
            "{bad}: only the re-sent POST: {out:?}"
        );
        assert!(out.stderr.contains("invalid job id"), "{bad}: {out:?}");
        assert_eq!(p.marker("a.md").unwrap()["poll_errors"], 1);
        assert_eq!(p.names(p.tmp.path()), ["home", "proj"], "{bad}");
        assert_eq!(
            p.names(&p.queue()),
            [".ccl-delegate.lock", "inbox"],
            "{bad}"
        );
        assert_eq!(p.names(&p.inbox()), ["a.md", "a.md.delegated"], "{bad}");
        assert!(!p.dir.join("x").exists() && !p.tmp.path().join("x").exists());
    }
    // A status answer about another, invalid id is refused as well.
    let (p, jobs, _) = busy(&mock, 2);
    mock.set(json!({"job": jobs[0], "status_raw": json!({"job_id": "../x", "status": "completed"}).to_string()}));
    let (out, _) = reap(&p, &mock, &[]);
    others_done(&p, &out, &jobs, &[0]);
    poll_failed(&p, &out, &jobs[0], "t0.md", "invalid job id");
}
