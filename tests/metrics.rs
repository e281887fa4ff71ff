//! `reap --metrics-file` (ccl-delegate.md "Inspecting") through the real
//! binary: errors printed under `-q`, no success claimed for a run that
//! could not reach the service, and the in-flight series of `auto` jobs.

mod common;

use common::*;

// Errors are printed, -q or not.

#[test]
fn quiet_reap_still_prints_a_refused_key_and_an_unwritable_metrics_file() {
    let mock = Mock::start(&["--statuses", "queued"]);
    let p = Project::new();
    p.delegated(&mock, "a.md", &rfc3339_ago(60));
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

// Metrics tell a failed run and sum correctly.

fn metric<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
}

/// A run with the service unreachable or the key refused is no success;
/// the last success is the books', so it survives the metrics file being
/// removed between runs.
#[test]
fn metrics_call_a_run_with_an_unreachable_service_or_a_refused_key_no_success() {
    let mock = Mock::start(&["--statuses", "queued"]);
    let p = Project::new();
    p.delegated(&mock, "a.md", &rfc3339_ago(60));
    let file = p.tmp.path().join("m.prom");
    p.reap(&mock, &["--metrics-file", s(&file)]).expect(0);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(metric(&text, "ccl_delegate_reap_success "), Some("1"));
    let last = metric(&text, "ccl_delegate_last_success_timestamp_seconds ")
        .unwrap()
        .to_string();
    let at: f64 = last.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - 60.0..=now + 1.0).contains(&at), "{last}");
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
        std::fs::remove_file(&file).unwrap();
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
            Some(last.as_str()),
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
