//! What an operator's first day ran into: silent traps and hints that
//! stopped short, each through the real binary.

mod common;

use common::*;

/// Every refusal of a value names the value and the nearest valid one.
#[test]
fn refused_values_are_named_with_the_nearest_valid_one() {
    let p = Project::new();
    let t = p.task("t.md", &fm("preferred_ai: gemni\n"));
    let out = p.run(None, &["decide", "--explain", t.to_str().unwrap()]);
    out.expect(0);
    assert!(
        out.stdout
            .starts_with("claude-code\nrule 5: preferred_ai `gemni`"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("did you mean `gemini`?"),
        "{}",
        out.stdout
    );
    // submit says the same on stderr, with its `local 5`.
    let mock = Mock::start(&[]);
    let out = p.run(Some(&mock), &["submit", t.to_str().unwrap()]);
    out.expect(10);
    assert_eq!(out.stdout, "local 5\n");
    assert!(
        out.stderr.contains("`gemni`") && out.stderr.contains("did you mean `gemini`?"),
        "{}",
        out.stderr
    );
    // Two byte order marks: the frontmatter hidden, said.
    let t = p.task(
        "b.md",
        b"\xEF\xBB\xBF\xEF\xBB\xBF---\npreferred_ai: gpu\n---\nx\n",
    );
    let out = p.run(None, &["decide", t.to_str().unwrap()]);
    assert_eq!(out.stdout, "claude-code\n");
    assert!(
        out.stderr.contains("two byte order marks"),
        "{}",
        out.stderr
    );
    // Invalid YAML: the rule says why no key counted.
    let t = p.task("y.md", b"---\npreferred_ai: gpu\n: bad: [\n---\nx\n");
    let out = p.run(None, &["decide", "--explain", t.to_str().unwrap()]);
    assert!(
        out.stdout.contains("the frontmatter could not be read"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("no routing key:"), "{}", out.stdout);
    // A limit's unknown key names `all`.
    p.write_config("max_in_flight:\n  al: 8\n");
    let out = p.run(None, &["status", "--project", p.dir.to_str().unwrap()]);
    out.expect(78);
    assert!(
        out.stderr
            .contains("unknown provider `al` (did you mean `all`?); the keys are all, gpu"),
        "{}",
        out.stderr
    );
}

/// A project named by hand that has no queue is an error naming `init`;
/// a glob that matches nothing is a warning.
#[test]
fn a_project_without_a_queue_is_an_error_naming_init() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let nope = p.tmp.path().join("nope");
    let metrics = p.tmp.path().join("m.prom");
    let out = p.run(
        Some(&mock),
        &[
            "reap",
            "--project",
            nope.to_str().unwrap(),
            "--project",
            p.dir.to_str().unwrap(),
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
    );
    out.expect(66);
    assert!(
        out.stderr
            .contains(&format!("ccl-delegate init {}", nope.display())),
        "{}",
        out.stderr
    );
    assert!(
        std::fs::read_to_string(&metrics)
            .unwrap()
            .contains("ccl_delegate_reap_success 0")
    );
    let out = p.run(None, &["status", "--project", nope.to_str().unwrap()]);
    out.expect(66);
    assert!(out.stderr.contains("ccl-delegate init"), "{}", out.stderr);
    // A glob matching nothing warns; one matching a directory without a
    // queue skips it quietly.
    let empty = p.tmp.path().join("none-here-*");
    std::fs::create_dir_all(p.tmp.path().join("src/not-a-project")).unwrap();
    let src = p.tmp.path().join("src/*");
    p.write_config(&format!(
        "projects:\n  - {}\n  - {}\n  - {}\n",
        empty.display(),
        src.display(),
        p.dir.display()
    ));
    let out = p.run(Some(&mock), &["reap"]);
    out.expect(0);
    assert!(
        out.stderr.contains("matches no directory"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("not-a-project"), "{}", out.stderr);
}

/// `reap --timestamps`: every line begins with the time, RFC 3339 UTC.
#[test]
fn reap_timestamps_each_line() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    p.task("t.md", &fm("preferred_ai: gpu\n"));
    p.submit_ok(&mock, "t.md");
    let out = p.reap(&mock, &["--timestamps"]);
    out.expect(0);
    let line = out.stdout.lines().next().unwrap();
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert!(
        ccl_delegate::timestamp::parse(stamp).is_some() && stamp.ends_with('Z'),
        "{line}"
    );
    assert!(rest.starts_with("done "), "{line}");
}

/// A refused key: one line, the fix, exit 77, whatever the number of jobs.
#[test]
fn a_refused_key_is_one_line_with_the_fix() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    for i in 0..3 {
        p.task(&format!("t{i}.md"), &fm("preferred_ai: gpu\n"));
        p.submit_ok(&mock, &format!("t{i}.md"));
    }
    // The key is changed for one the service refuses.
    let dir = p.dir.to_str().unwrap();
    let out = Out::of(
        p.cmd(Some(&mock))
            .env("SECUTOOLS_API_KEY", "a-wrong-key")
            .args(["reap", "--project", dir, "--submit-grace", "0s"]),
    );
    out.expect(77);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("refused the API key"), "{}", out.stderr);
    assert!(
        out.stderr.contains("api_key_file or SECUTOOLS_API_KEY"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("try again"), "{}", out.stderr);
}

/// doctor: one verdict per check; a check not run is no failure.
#[test]
fn doctor_says_one_verdict_per_check() {
    let p = Project::new();
    let out = Out::of(
        p.cmd(None)
            .env("SECUTOOLS_URL", "http://example.com")
            .env("SECUTOOLS_API_KEY", "k")
            .args(["doctor", "--project", p.dir.to_str().unwrap()]),
    );
    assert!(out.stdout.contains("FAIL  api url:"), "{}", out.stdout);
    assert!(!out.stdout.contains("ok    api url"), "{}", out.stdout);
    assert!(!out.stdout.contains("FAIL  settings"), "{}", out.stdout);
    assert!(out.stdout.contains("skip  service:"), "{}", out.stdout);
    assert_eq!(out.stdout.matches("FAIL").count(), 1, "{}", out.stdout);
}

/// status gives the whole last error, never one clipped mid-word.
#[test]
fn status_shows_the_whole_last_error() {
    let p = Project::new();
    p.task("t.md", &fm("preferred_ai: gpu\n"));
    let long = "service unavailable: the upstream model pool answered 503 for every retry within the http_timeout of 30s, last at the third attempt";
    let mut m: serde_json::Value = serde_json::from_str(&marker_json(
        false,
        Some("j-1"),
        "ccl-0123456789abcdef0123456789abcdef",
        &rfc3339_ago(30),
    ))
    .unwrap();
    m["last_error"] = long.into();
    m["poll_errors"] = 3.into();
    p.write_marker("t.md", &m.to_string());
    let out = p.run(None, &["status", "--project", p.dir.to_str().unwrap()]);
    out.expect(0);
    assert!(out.stdout.contains(long), "{}", out.stdout);
}

/// What the README promises: the state directory is made 0700 (by the run
/// lock too); the in-flight gauge says `0` in the run that finished a key's
/// last job, and nothing after.
#[test]
fn the_readme_promises_hold() {
    use std::os::unix::fs::PermissionsExt;
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    p.task("t.md", &fm("preferred_ai: gpu\n"));
    p.submit_ok(&mock, "t.md");
    let metrics = p.tmp.path().join("m.prom");
    p.reap(&mock, &["--metrics-file", metrics.to_str().unwrap()])
        .expect(0);
    let state = p.state_dir();
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{state:?}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("provider=\"gpu\"} 0\n"), "{text}");
    assert!(text.contains("ccl_delegate_completed_total{"), "{text}");
    p.reap(&mock, &["--metrics-file", metrics.to_str().unwrap()])
        .expect(0);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(!text.contains("ccl_delegate_active_jobs{"), "{text}");
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
