//! What `reap` does with one marker given its state, age and the service's
//! answer, where the answer is unusual: a `started_at` in the future, a 404
//! on the result past `submit_grace`, a result that keeps failing past
//! `max_age`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

// A marker dated in the future.

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

// A 404 on the result is a verdict past the grace.

#[test]
fn reap_fails_a_job_whose_result_answers_404_past_submit_grace() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    p.delegated(&mock, "a.md", &rfc3339_ago(600));
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

/// A completed job whose result cannot be fetched right now is kept past
/// max_age: its answer is fetched on a later run, never dropped as timeout.
#[test]
fn a_completed_job_whose_result_fails_past_max_age_is_kept_for_the_next_run() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let old = rfc3339_ago(25 * 3600);
    p.delegated(&mock, "paid.md", &old);
    mock.faults(json!({"next": ["503", "503", "503", "503"], "path": "/result"}));
    let out = p.reap(&mock, &[]);
    assert!(p.names(&p.failed()).is_empty(), "{out:?}");
    assert_eq!(p.names(&p.inbox()), ["paid.md", "paid.md.delegated"]);
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(p.names(&p.done()), ["paid.md"], "{out:?}");
}
