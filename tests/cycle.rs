//! The delegation cycle of `design/ccl-delegate.md`, through the real
//! binaries: `decide`, `submit`, `reap`, `get` and `result` against the
//! bundled `secutools-mock`. Each test is named after the sentence of the
//! design it proves, and checks what a user sees: exit codes, stdout lines
//! and the bytes of the files on disk.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    KEY, Mock, Out, Project, Record, ShellLock, dead_url, fm, keys, lines, marker_json, mode,
    rfc3339_ago, s, set, tree,
};
use serde_json::json;

/// Rewrites one field of a marker, as time passing would (`started_at`).
fn edit_marker(p: &Project, task: &str, field: &str, value: serde_json::Value) {
    let mut m = p.marker(task).expect("a marker");
    m[field] = value;
    p.write_marker(task, &m.to_string());
}

// ---------------------------------------------------------------------------
// decide
// ---------------------------------------------------------------------------

/// Frontmatter → (provider, rule), covering each of the 7 rules and the
/// parsing rules that feed them (YAML 1.2 `yes`, case and spaces).
const ROUTES: &[(&str, &str, u8)] = &[
    (
        "needs_claude_code: true\npreferred_ai: gemini",
        "claude-code",
        1,
    ),
    (
        "needs_claude_code:\nallow_delegation: true",
        "claude-code",
        1,
    ),
    ("needs_claude_code: no\npreferred_ai: gpu", "claude-code", 1),
    (
        "preferred_ai: ' Claude-Code '\nallow_delegation: true",
        "claude-code",
        2,
    ),
    (
        "allow_delegation: false\npreferred_ai: gemini",
        "claude-code",
        3,
    ),
    ("allow_delegation: yes", "claude-code", 3),
    (
        "allow_delegation: 'true'\npreferred_ai: gpu",
        "claude-code",
        3,
    ),
    ("preferred_ai: gpu", "gpu", 4),
    ("preferred_ai: ' GEMINI '", "gemini", 4),
    ("preferred_ai: claude\nallow_delegation: true", "claude", 4),
    ("preferred_ai: auto", "auto", 4),
    (
        "needs_claude_code: false\npreferred_ai: gemini",
        "gemini",
        4,
    ),
    ("preferred_ai: openai", "claude-code", 5),
    ("preferred_ai: yes", "claude-code", 5),
    ("preferred_ai: 3", "claude-code", 5),
    ("allow_delegation: true", "auto", 6),
    (
        "allow_delegation: true\npriority: high\ncomplexity_hint: hard",
        "auto",
        6,
    ),
    ("title: x\npriority: high", "claude-code", 7),
    ("needs_claude_code: false", "claude-code", 7),
    ("", "claude-code", 7),
];

#[test]
fn decide_prints_the_provider_of_the_first_matching_rule_of_seven() {
    let p = Project::new();
    let mut seen = BTreeSet::new();
    for (i, (yaml, provider, rule)) in ROUTES.iter().enumerate() {
        let task = p.task(&format!("t{i}.md"), &fm(yaml));
        let out = p.run(None, &["decide", s(&task)]);
        out.expect(0);
        assert_eq!(out.stdout, format!("{provider}\n"), "frontmatter {yaml:?}");
        assert_eq!(out.stderr, "", "frontmatter {yaml:?}");

        let out = p.run(None, &["decide", "--explain", s(&task)]);
        out.expect(0);
        let l = lines(&out);
        assert_eq!(l.len(), 2, "frontmatter {yaml:?}: {:?}", out.stdout);
        assert_eq!(l[0], *provider, "frontmatter {yaml:?}");
        assert!(
            l[1].starts_with(&format!("rule {rule}:")),
            "frontmatter {yaml:?}: explain line {:?} should name rule {rule}",
            l[1]
        );
        seen.insert(*rule);
    }
    assert_eq!(seen, (1..=7).collect(), "every rule is covered");
}

#[test]
fn decide_json_prints_provider_delegate_and_rule() {
    let p = Project::new();
    for (i, (yaml, provider, rule)) in ROUTES.iter().enumerate() {
        let task = p.task(&format!("t{i}.md"), &fm(yaml));
        let out = p.run(None, &["decide", "--json", s(&task)]);
        out.expect(0);
        assert_eq!(out.stdout.lines().count(), 1, "{:?}", out.stdout);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            keys(&v),
            set(&["provider", "delegate", "rule", "fallback"]),
            "{v}"
        );
        assert_eq!(v["provider"], *provider, "frontmatter {yaml:?}");
        assert_eq!(v["rule"], *rule, "frontmatter {yaml:?}");
        assert_eq!(
            v["delegate"],
            *provider != "claude-code",
            "frontmatter {yaml:?}"
        );
    }
}

#[test]
fn decide_reads_the_task_from_stdin_for_dash() {
    let p = Project::new();
    let out = p.run_with_stdin(
        None,
        &["decide", "-", "--explain"],
        &fm("preferred_ai: claude"),
    );
    out.expect(0);
    assert_eq!(lines(&out)[0], "claude");
    assert!(lines(&out)[1].starts_with("rule 4:"), "{}", out.stdout);

    let out = p.run_with_stdin(None, &["decide", "--json", "-"], b"no frontmatter at all\n");
    out.expect(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!({"provider": "claude-code", "delegate": false, "rule": 7, "fallback": []})
    );
}

#[test]
fn decide_set_routes_key_values_instead_of_a_file() {
    let p = Project::new();
    let cases: &[(&[&str], &str, u8)] = &[
        (&["--set", "allow_delegation=true"], "auto", 6),
        (
            &[
                "--set",
                "allow_delegation=true",
                "--set",
                "preferred_ai=GPU",
            ],
            "gpu",
            4,
        ),
        (
            &[
                "--set",
                "preferred_ai=gemini",
                "--set",
                "needs_claude_code=true",
            ],
            "claude-code",
            1,
        ),
        (&["--set", "allow_delegation=no"], "claude-code", 3),
        (&["--set", "preferred_ai=openai"], "claude-code", 5),
        (&["--set", "complexity_hint=anything"], "claude-code", 7),
    ];
    for (args, provider, rule) in cases {
        let mut argv = vec!["decide", "--json"];
        argv.extend_from_slice(args);
        let out = p.run(None, &argv);
        out.expect(0);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["provider"], *provider, "{args:?}");
        assert_eq!(v["rule"], *rule, "{args:?}");
    }
    // Not KEY=VALUE: a usage error, not a silent default.
    let out = p.run(None, &["decide", "--set", "allow_delegation"]);
    out.expect(64);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("KEY=VALUE"), "{}", out.stderr);
}

#[test]
fn decide_invalid_frontmatter_routes_locally_with_a_warning_naming_the_file() {
    let p = Project::new();
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "unclosed.md",
            b"---\npreferred_ai: gemini\nno closing line\n",
            "closing",
        ),
        (
            "list.md",
            b"---\n- preferred_ai: gemini\n---\nbody\n",
            "list",
        ),
        ("scalar.md", b"---\njust text\n---\nbody\n", "scalar"),
        (
            "dup.md",
            b"---\npreferred_ai: gemini\npreferred_ai: gpu\n---\n",
            "duplicate",
        ),
        (
            "syntax.md",
            b"---\npreferred_ai: [gemini\n---\nbody\n",
            "YAML",
        ),
        (
            "latin1.md",
            b"---\npreferred_ai: gemini\n---\ncaf\xe9\n",
            "UTF-8",
        ),
    ];
    for (name, bytes, problem) in cases {
        let task = p.task(name, bytes);
        let out = p.run(None, &["decide", "--explain", s(&task)]);
        out.expect(0);
        assert_eq!(lines(&out)[0], "claude-code", "{name}");
        assert!(
            lines(&out)[1].starts_with("rule 7:"),
            "{name}: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains(s(&task)),
            "{name}: the warning must name the file: {:?}",
            out.stderr
        );
        assert!(
            out.stderr.contains(problem),
            "{name}: the warning must name the problem ({problem}): {:?}",
            out.stderr
        );
    }
    // Not frontmatter at all: no warning.
    for (name, bytes) in [
        ("dashes.md", &b"----\npreferred_ai: gemini\n---\n"[..]),
        ("blank.md", b"\n---\npreferred_ai: gemini\n---\n"),
        ("toml.md", b"+++\npreferred_ai = \"gemini\"\n+++\n"),
    ] {
        let task = p.task(name, bytes);
        let out = p.run(None, &["decide", s(&task)]);
        out.expect(0);
        assert_eq!(out.stdout, "claude-code\n", "{name}");
        assert_eq!(out.stderr, "", "{name}");
    }
}

#[test]
fn decide_accepts_a_bom_crlf_and_a_dots_closing_line() {
    let p = Project::new();
    let crlf = p.task(
        "crlf.md",
        b"\xEF\xBB\xBF---\r\npreferred_ai: gemini\r\n---\r\nbody\r\n",
    );
    let dots = p.task("dots.md", b"--- \t\npreferred_ai: gpu\n...\t \nbody\n");
    for (task, provider) in [(crlf, "gemini\n"), (dots, "gpu\n")] {
        let out = p.run(None, &["decide", s(&task)]);
        out.expect(0);
        assert_eq!(out.stdout, provider, "{}", task.display());
        assert_eq!(out.stderr, "");
    }
}

#[test]
fn decide_is_pure_no_network_no_writes() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    let before = tree(p.tmp.path());
    let out = p.run(Some(&mock), &["decide", s(&task)]);
    out.expect(0);
    assert_eq!(out.stdout, "gemini\n");
    assert_eq!(mock.requests(), 0, "decide must not call the service");
    assert_eq!(tree(p.tmp.path()), before, "decide must not write anything");
}

// ---------------------------------------------------------------------------
// submit
// ---------------------------------------------------------------------------

#[test]
fn submit_path_not_directly_in_an_inbox_is_a_usage_error() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let body = fm("preferred_ai: gemini");
    std::fs::create_dir_all(p.done()).unwrap();
    std::fs::create_dir_all(p.inbox().join("sub")).unwrap();
    let cases = [
        p.dir.join("a.md"),
        p.done().join("a.md"),
        p.inbox().join("sub/a.md"),
        p.tmp.path().join("inbox/a.md"),
    ];
    for path in &cases {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &body).unwrap();
    }
    let before = tree(p.tmp.path());
    for path in &cases {
        let out = p.run(Some(&mock), &["submit", s(path)]);
        out.expect(64);
        assert_eq!(out.stdout, "", "{}", path.display());
        assert!(out.stderr.contains(s(path)), "{}", out.stderr);
    }
    assert_eq!(tree(p.tmp.path()), before);
    assert_eq!(mock.requests(), 0);
}

#[test]
fn submit_file_not_named_md_is_a_usage_error() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let before_files = ["a.txt", "a.md.delegated", ".hidden.md", "a.md~"];
    for name in before_files {
        p.task(name, &fm("preferred_ai: gemini"));
    }
    std::fs::create_dir(p.inbox().join("dir.md")).unwrap();
    let before = tree(p.tmp.path());
    for name in before_files.iter().chain(&["dir.md"]) {
        let out = p.run(Some(&mock), &["submit", s(&p.inbox().join(name))]);
        out.expect(64);
        assert_eq!(out.stdout, "", "{name}");
    }
    assert_eq!(tree(p.tmp.path()), before);
    assert_eq!(mock.requests(), 0);
}

#[test]
fn submit_missing_task_file_is_a_usage_error() {
    // "The path must be a regular file ...; otherwise exit 64".
    let mock = Mock::start(&[]);
    let p = Project::new();
    let out = p.run(Some(&mock), &["submit", s(&p.inbox().join("nope.md"))]);
    out.expect(64);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("nope.md"), "{}", out.stderr);
    assert_eq!(p.names(&p.inbox()), Vec::<String>::new());
    assert_eq!(mock.requests(), 0);
}

#[test]
fn submit_routed_to_claude_code_prints_local_rule_exits_10_and_writes_nothing() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let cases: &[(&[u8], u8)] = &[
        (
            b"---\nneeds_claude_code: true\npreferred_ai: gemini\n---\nx\n",
            1,
        ),
        (b"---\npreferred_ai: claude-code\n---\nx\n", 2),
        (b"---\nallow_delegation: false\n---\nx\n", 3),
        (b"---\npreferred_ai: mistral\n---\nx\n", 5),
        (b"Just a task, no frontmatter.\n", 7),
        (b"---\npreferred_ai: gemini\nunclosed\n", 7),
    ];
    for (i, (bytes, rule)) in cases.iter().enumerate() {
        let task = p.task(&format!("t{i}.md"), bytes);
        let before = tree(p.tmp.path());
        let out = p.run(Some(&mock), &["submit", s(&task)]);
        out.expect(10);
        assert_eq!(out.stdout, format!("local {rule}\n"));
        assert_eq!(
            tree(p.tmp.path()),
            before,
            "nothing written for rule {rule}"
        );
        // No configuration is needed to decide that a task stays local.
        let out = p.run(None, &["submit", s(&task)]);
        out.expect(10);
        assert_eq!(out.stdout, format!("local {rule}\n"));
    }
    assert_eq!(mock.requests(), 0);
}

#[test]
fn submit_writes_a_marker_with_the_design_keys_in_state_submitted() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let bytes = b"---\npreferred_ai: Gemini\npriority: high\ncomplexity_hint: needs care\n---\n\n    indented: kept\nWrite a haiku.\n";
    let task = p.task("a.md", bytes);
    let out = p.run(Some(&mock), &["submit", s(&task)]);
    out.expect(0);
    let job = mock.jobs()[0]["job_id"].as_str().unwrap().to_string();
    assert_eq!(out.stdout, format!("delegated gemini {job}\n"));

    let m = p.marker("a.md").expect("a marker beside the task");
    assert_eq!(
        keys(&m),
        set(&[
            "version",
            "state",
            "project",
            "task_file",
            "job_id",
            "provider",
            "priority",
            "idempotency_key",
            "started_at",
            "poll_errors",
            "last_error"
        ]),
        "{m}"
    );
    assert_eq!(m["version"], 1);
    assert_eq!(m["state"], "submitted");
    assert_eq!(m["task_file"], "a.md");
    assert_eq!(m["job_id"], job.as_str());
    assert_eq!(m["provider"], "gemini");
    assert_eq!(m["priority"], "high");
    assert_eq!(m["poll_errors"], 0);
    assert_eq!(m["last_error"], serde_json::Value::Null);
    let started = m["started_at"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339_weak(started.trim_end_matches('Z')).is_ok(),
        "{started}"
    );
    let key = m["idempotency_key"].as_str().unwrap();
    assert!(
        (16..=128).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{key}"
    );
    let project = std::fs::canonicalize(&p.dir).unwrap();
    assert_eq!(Path::new(m["project"].as_str().unwrap()), project);

    // What reached the service: the API contract's request.
    let j = mock.job(&job);
    assert_eq!(j["idempotency_key"], key);
    assert_eq!(j["type"], "analyze");
    assert_eq!(j["priority"], "high");
    assert_eq!(j["preferred_ai"], "gemini");
    assert_eq!(j["complexity_hint"], "needs care");
    assert_eq!(
        j["source"],
        concat!("ccl-delegate/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(j["metadata"], json!({"project": "proj", "task": "a.md"}));
    assert_eq!(
        j["prompt"],
        "Task: a.md\n\n\n    indented: kept\nWrite a haiku.\n\n\nProvide a complete, self-contained answer."
    );
    // The task itself is untouched.
    assert_eq!(std::fs::read(&task).unwrap(), bytes);
}

#[test]
fn submit_auto_omits_preferred_ai_and_priority_flag_beats_the_task() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task(
        "a.md",
        b"---\nallow_delegation: true\npriority: high\n---\n",
    );
    let out = p.run(Some(&mock), &["submit", s(&task), "--priority", "low"]);
    out.expect(0);
    assert!(out.stdout.starts_with("delegated auto "), "{}", out.stdout);
    let j = &mock.jobs()[0];
    assert_eq!(j["preferred_ai"], serde_json::Value::Null);
    assert_eq!(j["priority"], "low");
    assert_eq!(
        j["prompt"],
        "Task: a.md\n\n(empty task body)\n\nProvide a complete, self-contained answer."
    );
    assert_eq!(p.marker("a.md").unwrap()["priority"], "low");
    assert_eq!(p.marker("a.md").unwrap()["provider"], "auto");
}

#[test]
fn submit_twice_reports_the_same_job_and_submits_nothing_twice() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gpu"));
    let first = p.run(Some(&mock), &["submit", s(&task)]);
    first.expect(0);
    let marker = std::fs::read(p.marker_path("a.md")).unwrap();
    let second = p.run(Some(&mock), &["submit", s(&task)]);
    second.expect(0);
    assert_eq!(second.stdout, first.stdout);
    assert!(
        first.stdout.starts_with("delegated gpu j-"),
        "{}",
        first.stdout
    );
    assert_eq!(std::fs::read(p.marker_path("a.md")).unwrap(), marker);
    let st = mock.stats();
    assert_eq!(st["jobs_created"], 1);
    let posts = st["posts_by_key"].as_object().unwrap();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(
        posts.values().next().unwrap(),
        1,
        "one POST in all: {posts:?}"
    );
}

#[test]
fn submit_refused_with_503_after_retries_exits_69_and_leaves_no_marker() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let bytes = fm("preferred_ai: gemini");
    let task = p.task("a.md", &bytes);
    mock.faults(json!({"next": ["503", "503", "503"], "path": "/api/v1/jobs", "method": "POST"}));
    let out = p.run(Some(&mock), &["submit", s(&task), "--retries", "2"]);
    out.expect(69);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("503"), "{}", out.stderr);
    assert!(
        out.stderr.contains("mock overload"),
        "the service's error text: {}",
        out.stderr
    );
    assert!(
        p.marker("a.md").is_none(),
        "the pending marker must be removed"
    );
    assert_eq!(p.names(&p.inbox()), ["a.md"]);
    assert_eq!(std::fs::read(&task).unwrap(), bytes);
    let st = mock.stats();
    assert_eq!(st["jobs_created"], 0);
    let posts = st["posts_by_key"].as_object().unwrap();
    assert_eq!(
        posts.values().next().unwrap(),
        3,
        "1 try + 2 retries, same key: {posts:?}"
    );
    assert_eq!(posts.len(), 1);
}

#[test]
fn submit_connection_refused_exits_69_and_leaves_no_marker() {
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    let out = Out::of(
        p.cmd(None)
            .env("SECUTOOLS_URL", dead_url())
            .env("SECUTOOLS_API_KEY", KEY)
            .args(["submit", s(&task), "--retries", "0"]),
    );
    out.expect(69);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
    assert_eq!(p.names(&p.inbox()), ["a.md"]);
}

#[test]
fn submit_refused_with_401_exits_77_and_leaves_no_marker() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    let out = Out::of(
        p.cmd(None)
            .env("SECUTOOLS_URL", &mock.url)
            .env("SECUTOOLS_API_KEY", "wrong-key-abcdef")
            .args(["submit", s(&task)]),
    );
    out.expect(77);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("wrong-key-abcdef"),
        "the key is never printed"
    );
    assert_eq!(p.names(&p.inbox()), ["a.md"]);
    assert_eq!(mock.jobs_created(), 0);
    assert_eq!(mock.requests(), 1, "401 is never retried");
}

#[test]
fn submit_rejected_with_400_or_413_exits_65_and_leaves_no_marker() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    for code in ["400", "413"] {
        mock.faults(json!({"next": [code]}));
        let out = p.run(Some(&mock), &["submit", s(&task)]);
        out.expect(65);
        assert_eq!(out.stdout, "");
        assert!(out.stderr.contains(code), "{}", out.stderr);
        assert_eq!(p.names(&p.inbox()), ["a.md"], "after {code}");
    }
    assert_eq!(mock.jobs_created(), 0);
    assert_eq!(mock.requests(), 2, "a 4xx is never retried");
}

#[test]
fn submit_without_api_url_or_key_exits_78_naming_what_is_missing() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    let before = tree(p.tmp.path());

    let out = Out::of(
        p.cmd(None)
            .env("SECUTOOLS_API_KEY", KEY)
            .args(["submit", s(&task)]),
    );
    out.expect(78);
    assert!(out.stderr.contains("no API URL"), "{}", out.stderr);
    assert!(out.stderr.contains("SECUTOOLS_URL"), "{}", out.stderr);

    let out = Out::of(
        p.cmd(None)
            .env("SECUTOOLS_URL", &mock.url)
            .args(["submit", s(&task)]),
    );
    out.expect(78);
    assert!(out.stderr.contains("no API key"), "{}", out.stderr);
    assert!(out.stderr.contains("SECUTOOLS_API_KEY"), "{}", out.stderr);

    assert_eq!(tree(p.tmp.path()), before, "nothing written");
    assert_eq!(mock.requests(), 0);
}

#[test]
fn plain_http_to_a_non_loopback_host_exits_78() {
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    for url in [
        "http://example.org",
        "http://10.0.0.1:8080",
        "ftp://127.0.0.1",
    ] {
        let out = Out::of(
            p.cmd(None)
                .env("SECUTOOLS_URL", url)
                .env("SECUTOOLS_API_KEY", KEY)
                .args(["submit", s(&task)]),
        );
        out.expect(78);
        assert!(out.stderr.contains("https://"), "{url}: {}", out.stderr);
        assert_eq!(p.names(&p.inbox()), ["a.md"], "{url}");
    }
}

// ---------------------------------------------------------------------------
// reap
// ---------------------------------------------------------------------------

#[test]
fn reap_moves_completed_job_to_done_with_original_task() {
    let mock = Mock::start(&["--statuses", "completed"]);
    // Without token counts: the record's layout as ccl-delegate.md has it.
    mock.set(json!({"response": "The answer.\nSecond line.", "omit_fields": ["tokens_in", "tokens_out"]}));
    let p = Project::new();
    // BOM, CRLF and no final newline: the task must come back byte for byte.
    let bytes =
        b"\xEF\xBB\xBF---\r\npreferred_ai: gemini\r\n---\r\nDo it.\r\nno newline at the end";
    let task = p.task("a.md", bytes);
    let job = p.submit_ok(&mock, "a.md");
    let started = p.marker("a.md").unwrap()["started_at"]
        .as_str()
        .unwrap()
        .to_string();

    let out = p.reap(&mock, &[]);
    out.expect(0);
    let done = p.done().join("a.md");
    assert_eq!(
        out.stdout,
        format!("done {} (job {job}, gemini, 0.0123 CAD)\n", done.display())
    );
    assert_eq!(out.stderr, "");

    let r = Record::read(&done);
    assert_eq!(
        r.file.keys,
        [
            "status",
            "provider",
            "model",
            "cost_cad",
            "job_id",
            "delegated_at",
            "completed_at",
            "task_bytes"
        ]
    );
    let completed = r.str("completed_at").unwrap().to_string();
    assert!(humantime::parse_rfc3339(&completed).is_ok(), "{completed}");
    let mut want = format!(
        "---\nstatus: completed\nprovider: gemini\nmodel: gemini-2.5-pro\ncost_cad: 0.0123\n\
         job_id: {job}\ndelegated_at: {started}\ncompleted_at: {completed}\ntask_bytes: {}\n---\n\
         # Result (delegated to secutools)\nThe answer.\nSecond line.\n---\n\
         provider: gemini, cost_cad: 0.0123\n## Original task (a.md)\n",
        bytes.len()
    )
    .into_bytes();
    want.extend_from_slice(bytes);
    assert_eq!(
        String::from_utf8_lossy(&r.bytes),
        String::from_utf8_lossy(&want),
        "done file layout"
    );
    assert_eq!(r.bytes, want);
    assert_eq!(r.original(), bytes);

    assert!(!task.exists(), "the task leaves the inbox");
    assert_eq!(
        p.names(&p.inbox()),
        Vec::<String>::new(),
        "marker removed too"
    );
    assert_eq!(
        p.names(&p.queue()),
        [".ccl-delegate.lock", "done", "inbox"],
        "no debris"
    );
}

#[test]
fn reap_leaves_queued_and_running_jobs_and_prints_nothing_when_nothing_changed() {
    let mock = Mock::start(&["--statuses", "queued,running,completed"]);
    let p = Project::new();
    let bytes = fm("preferred_ai: gpu");
    p.task("a.md", &bytes);
    let job = p.submit_ok(&mock, "a.md");
    let marker = std::fs::read(p.marker_path("a.md")).unwrap();
    for status in ["queued", "running"] {
        let out = p.reap(&mock, &[]);
        out.expect(0);
        assert_eq!(out.stdout, "", "{status}: cron mails any output");
        assert_eq!(out.stderr, "", "{status}");
        assert_eq!(
            mock.job(&job)["polls"],
            if status == "queued" { 1 } else { 2 }
        );
        assert_eq!(
            std::fs::read(p.marker_path("a.md")).unwrap(),
            marker,
            "{status}: a successful poll is not written"
        );
        assert_eq!(std::fs::read(p.inbox().join("a.md")).unwrap(), bytes);
    }
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(lines(&out).len(), 1);
    assert!(out.stdout.starts_with("done "), "{}", out.stdout);
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(out.stdout, "", "nothing left: quiet");
    assert_eq!(out.stderr, "");
}

#[test]
fn reap_moves_failed_cancelled_and_expired_jobs_to_failed_with_reason() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    let mut jobs = Vec::new();
    for (name, yaml) in [
        ("f.md", "preferred_ai: gemini"),
        ("c.md", "preferred_ai: gpu"),
        ("e.md", "allow_delegation: true"),
        ("r.md", "preferred_ai: claude"),
    ] {
        p.task(name, &fm(yaml));
        jobs.push(p.submit_ok(&mock, name));
    }
    mock.set(json!({"status_of": {
        jobs[0].clone(): "failed", jobs[1].clone(): "cancelled", jobs[2].clone(): "expired"
    }}));
    let out = p.reap(&mock, &[]);
    out.expect(0);
    let mut got: Vec<&str> = lines(&out);
    got.sort();
    let mut want = vec![
        format!(
            "failed {} (job {}: failed)",
            p.failed().join("f.md").display(),
            jobs[0]
        ),
        format!(
            "failed {} (job {}: cancelled)",
            p.failed().join("c.md").display(),
            jobs[1]
        ),
        format!(
            "failed {} (job {}: expired)",
            p.failed().join("e.md").display(),
            jobs[2]
        ),
    ];
    want.sort();
    assert_eq!(got, want, "one line per finished task");

    // The provider the service said ran the job (policy.md "The ledger"):
    // the auto task's job ran on gemini.
    for (name, reason, provider, job) in [
        ("f.md", "failed", "gemini", &jobs[0]),
        ("c.md", "cancelled", "gpu", &jobs[1]),
        ("e.md", "expired", "gemini", &jobs[2]),
    ] {
        let r = Record::read(&p.failed().join(name));
        assert_eq!(
            r.file.keys,
            [
                "status",
                "provider",
                "failed_reason",
                "job_id",
                "delegated_at",
                "failed_at",
                "task_bytes"
            ],
            "{name}"
        );
        assert_eq!(r.str("status"), Some("failed"));
        assert_eq!(r.str("failed_reason"), Some(reason));
        assert_eq!(r.str("provider"), Some(provider));
        assert_eq!(r.str("job_id"), Some(job.as_str()));
        let text = r.text();
        assert!(text.starts_with("# Delegation failed\n"), "{name}: {text}");
        assert!(
            text.ends_with(&format!("\n---\n## Original task ({name})\n")),
            "{name}: {text}"
        );
        assert!(
            !text.contains("cost_cad"),
            "{name}: no footer in failed/: {text}"
        );
        assert_eq!(
            r.original(),
            &fm(match name {
                "f.md" => "preferred_ai: gemini",
                "c.md" => "preferred_ai: gpu",
                _ => "allow_delegation: true",
            })[..]
        );
    }
    assert!(
        Record::read(&p.failed().join("f.md"))
            .text()
            .contains("model crashed (mock)"),
        "what went wrong, from the service"
    );
    // The running job stays.
    assert_eq!(p.names(&p.inbox()), ["r.md", "r.md.delegated"]);
    assert_eq!(p.names(&p.done()), Vec::<String>::new());
}

#[test]
fn reap_cancels_a_job_older_than_max_age_and_fails_it_with_timeout() {
    let mock = Mock::start(&["--statuses", "queued,running"]);
    let p = Project::new();
    let bytes = fm("preferred_ai: gemini");
    p.task("a.md", &bytes);
    let job = p.submit_ok(&mock, "a.md");
    // Two hours pass.
    edit_marker(&p, "a.md", "started_at", json!(rfc3339_ago(7200)));
    let out = p.reap(&mock, &["--max-age", "1h"]);
    out.expect(0);
    assert_eq!(
        out.stdout,
        format!(
            "failed {} (job {job}: timeout)\n",
            p.failed().join("a.md").display()
        )
    );
    assert_eq!(
        mock.job(&job)["status"],
        "cancelled",
        "best-effort cancel sent"
    );
    let r = Record::read(&p.failed().join("a.md"));
    assert_eq!(r.str("failed_reason"), Some("timeout"));
    assert!(r.text().contains("cancelled"), "{}", r.text());
    assert_eq!(r.original(), bytes);
    assert_eq!(p.names(&p.inbox()), Vec::<String>::new());

    // A younger job is left alone, and so is one under a generous max_age.
    p.task("b.md", &bytes);
    let job_b = p.submit_ok(&mock, "b.md");
    let out = p.reap(&mock, &["--max-age", "1h"]);
    out.expect(0);
    assert_eq!(out.stdout, "");
    assert_ne!(mock.job(&job_b)["status"], "cancelled");
}

#[test]
fn reap_gives_up_on_a_pending_submission_older_than_max_age() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let bytes = fm("preferred_ai: gemini");
    p.task("a.md", &bytes);
    p.write_marker(
        "a.md",
        &marker_json(true, None, "ccl-0123456789abcdef0123", &rfc3339_ago(7200)),
    );
    let out = p.reap(&mock, &["--max-age", "1h"]);
    out.expect(0);
    assert_eq!(
        out.stdout,
        format!(
            "failed {} (job none: timeout)\n",
            p.failed().join("a.md").display()
        )
    );
    let r = Record::read(&p.failed().join("a.md"));
    assert_eq!(r.str("failed_reason"), Some("timeout"));
    assert_eq!(r.get("job_id"), Some(&serde_yaml::Value::Null));
    assert_eq!(r.original(), bytes);
    assert_eq!(mock.jobs_created(), 0, "not re-sent");
}

#[test]
fn reap_moves_a_corrupt_marker_to_failed_with_the_task_and_the_marker_bytes() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let cases: [(&str, &[u8]); 4] = [
        ("a.md", b"{\"version\": 1, \"state\": \"submitted\", trunc"),
        ("b.md", b"\xff\xfe\x00binary"),
        ("c.md", b""),
        ("d.md", br#"{"version":1,"state":"submitted","job_id":"../../etc","started_at":"2026-01-01T00:00:00Z"}"#),
    ];
    for (name, marker) in cases {
        p.task(name, &fm(&format!("title: {name}\npreferred_ai: gemini")));
        std::fs::write(p.marker_path(name), marker).unwrap();
    }
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(lines(&out).len(), 4, "{}", out.stdout);
    for (name, marker) in cases {
        assert!(
            out.stdout.contains(&format!(
                "failed {} (job none: corrupt marker)\n",
                p.failed().join(name).display()
            )),
            "{}",
            out.stdout
        );
        let r = Record::read(&p.failed().join(name));
        assert_eq!(r.str("failed_reason"), Some("corrupt marker"), "{name}");
        assert_eq!(
            r.original(),
            fm(&format!("title: {name}\npreferred_ai: gemini"))
        );
        let before_task = &r.bytes[..r.bytes.len() - r.file.task_bytes];
        assert!(
            before_task
                .windows(marker.len().max(1))
                .any(|w| w == marker)
                || marker.is_empty(),
            "{name}: the marker's bytes are kept: {}",
            String::from_utf8_lossy(&r.bytes)
        );
    }
    assert_eq!(p.names(&p.inbox()), Vec::<String>::new());
    assert_eq!(
        mock.requests(),
        0,
        "a corrupt marker names no job to ask about"
    );
}

#[test]
fn reap_never_overwrites_a_second_result_for_the_same_id_gets_a_new_name() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let mut originals = Vec::new();
    for round in 1..=3 {
        let bytes = fm(&format!("preferred_ai: gemini\nround: {round}"));
        p.task("a.md", &bytes);
        let job = p.submit_ok(&mock, "a.md");
        let out = p.reap(&mock, &[]);
        out.expect(0);
        let name = if round == 1 {
            "a.md".to_string()
        } else {
            format!("a.{round}.md")
        };
        let path = p.done().join(&name);
        assert_eq!(
            out.stdout,
            format!("done {} (job {job}, gemini, 0.0123 CAD)\n", path.display())
        );
        originals.push((
            path,
            std::fs::read(p.done().join(&name)).unwrap(),
            bytes,
            job,
        ));
    }
    assert_eq!(p.names(&p.done()), ["a.2.md", "a.3.md", "a.md"]);
    for (path, file, bytes, job) in &originals {
        assert_eq!(
            &std::fs::read(path).unwrap(),
            file,
            "{} unchanged",
            path.display()
        );
        let r = Record::read(path);
        assert_eq!(r.original(), &bytes[..]);
        assert_eq!(r.str("job_id"), Some(job.as_str()));
    }
}

#[test]
fn reap_of_a_marker_whose_task_vanished_writes_task_bytes_0_and_task_missing() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "a.md");
    std::fs::remove_file(&task).unwrap();
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(lines(&out).len(), 1, "{}", out.stdout);
    let r = Record::read(&p.done().join("a.md"));
    assert_eq!(r.get("task_bytes"), Some(&serde_yaml::Value::from(0)));
    assert_eq!(r.get("task_missing"), Some(&serde_yaml::Value::Bool(true)));
    assert_eq!(r.str("job_id"), Some(job.as_str()));
    assert!(
        r.bytes.ends_with(b"## Original task (a.md)\n"),
        "{}",
        String::from_utf8_lossy(&r.bytes)
    );
    assert_eq!(p.names(&p.inbox()), Vec::<String>::new(), "marker removed");
}

#[test]
fn reap_reads_markers_of_the_earlier_go_implementation() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let bytes = fm("preferred_ai: gemini");
    let task = p.task("a.md", &bytes);
    let job = p.submit_ok(&mock, "a.md");
    let go = json!({
        "project": s(&p.dir),
        "task_file": s(&task),
        "job_id": job,
        "provider": "gemini",
        "started_at": "2026-11-24T10:00:00.123456-05:00",
    });
    p.write_marker("a.md", &go.to_string());
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(
        out.stdout,
        format!(
            "done {} (job {job}, gemini, 0.0123 CAD)\n",
            p.done().join("a.md").display()
        )
    );
    let r = Record::read(&p.done().join("a.md"));
    assert_eq!(r.str("job_id"), Some(job.as_str()));
    assert_eq!(r.str("status"), Some("completed"));
    assert!(
        r.str("delegated_at").unwrap().starts_with("2026-11-24T"),
        "{:?}",
        r.get("delegated_at")
    );
    assert_eq!(r.original(), bytes);
    assert_eq!(p.names(&p.inbox()), Vec::<String>::new());
}

#[test]
fn reap_exits_0_at_once_and_silently_when_another_holds_the_run_lock() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    p.task("a.md", &fm("preferred_ai: gemini"));
    p.submit_ok(&mock, "a.md");
    let lock = p.tmp.path().join("run.lock");
    let dir = s(&p.dir);
    let args = [
        "reap",
        "--project",
        dir,
        "--submit-grace",
        "0s",
        "--lock-file",
        s(&lock),
    ];
    {
        let _held = ShellLock::hold(&lock);
        let t0 = Instant::now();
        let out = p.run(Some(&mock), &args);
        out.expect(0);
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "did not wait: {:?}",
            t0.elapsed()
        );
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr, "");
        assert!(
            p.marker("a.md").is_some(),
            "nothing reaped while the lock is held"
        );
    }
    let out = p.run(Some(&mock), &args);
    out.expect(0);
    assert!(out.stdout.starts_with("done "), "{}", out.stdout);
    assert!(lock.exists(), "lock files are never deleted");

    // The default run lock: $XDG_STATE_HOME/ccl-delegate/reap.lock.
    let default = p.reap_lock();
    {
        let _held = ShellLock::hold(&default);
        p.task("b.md", &fm("preferred_ai: gemini"));
        p.submit_ok(&mock, "b.md");
        let out = p.reap(&mock, &[]);
        out.expect(0);
        assert_eq!(out.stdout, "");
        assert!(p.marker("b.md").is_some());
    }
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert!(out.stdout.starts_with("done "), "{}", out.stdout);
    assert!(default.exists());
}

#[test]
fn reap_gives_done_and_failed_files_the_permission_bits_of_the_task() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let a = p.task("a.md", &fm("preferred_ai: gemini"));
    let b = p.task("b.md", &fm("preferred_ai: gpu"));
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o640)).unwrap();
    p.submit_ok(&mock, "a.md");
    let job_b = p.submit_ok(&mock, "b.md");
    mock.set(json!({"status_of": {job_b: "failed"}}));
    p.reap(&mock, &[]).expect(0);
    assert_eq!(mode(&p.done().join("a.md")), 0o600);
    assert_eq!(mode(&p.failed().join("b.md")), 0o640);
}

#[test]
fn reap_without_any_project_exits_78() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let out = p.run(Some(&mock), &["reap"]);
    out.expect(78);
    assert!(out.stderr.contains("--project"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// get and result
// ---------------------------------------------------------------------------

#[test]
fn get_prints_the_job_status_by_job_id_or_task_path() {
    let mock = Mock::start(&["--statuses", "queued,running,completed"]);
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "a.md");
    let out = p.run(Some(&mock), &["get", &job]);
    out.expect(0);
    assert_eq!(out.stdout, "queued\n");
    let out = p.run(Some(&mock), &["get", s(&task)]);
    out.expect(0);
    assert_eq!(out.stdout, "running\n");
    let out = p.run(Some(&mock), &["get", "--json", s(&task)]);
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
    assert_eq!(v["status"], "completed");
    assert_eq!(v["provider"], "gemini");
}

#[test]
fn get_unknown_job_or_undelegated_task_exits_66() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    let out = p.run(Some(&mock), &["get", "j-nope"]);
    out.expect(66);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("404"), "{}", out.stderr);
    let out = p.run(Some(&mock), &["get", s(&task)]);
    out.expect(66);
    assert!(out.stderr.contains("not delegated"), "{}", out.stderr);
    let out = p.run(Some(&mock), &["get", "../etc/passwd?x"]);
    out.expect(64);
}

#[test]
fn get_of_a_pending_task_exits_75() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    p.write_marker(
        "a.md",
        &marker_json(true, None, "ccl-0123456789abcdef0123", &rfc3339_ago(1)),
    );
    for cmd in ["get", "result"] {
        let out = p.run(Some(&mock), &[cmd, s(&task)]);
        out.expect(75);
        assert!(out.stderr.contains("pending"), "{cmd}: {}", out.stderr);
    }
    assert_eq!(mock.requests(), 0);
}

#[test]
fn result_exits_75_when_the_job_is_not_completed_yet() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: gemini"));
    p.submit_ok(&mock, "a.md");
    let out = p.run(Some(&mock), &["result", s(&task)]);
    out.expect(75);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("running"), "{}", out.stderr);
}

#[test]
fn result_prints_the_response_text_and_json_the_service_object() {
    let mock = Mock::start(&["--statuses", "completed"]);
    mock.set(json!({"response": "Line one.\nLine two."}));
    let p = Project::new();
    let task = p.task("a.md", &fm("preferred_ai: claude"));
    let job = p.submit_ok(&mock, "a.md");
    let out = p.run(Some(&mock), &["result", &job]);
    out.expect(0);
    assert_eq!(out.stdout, "Line one.\nLine two.\n");
    let out = p.run(Some(&mock), &["result", "--json", s(&task)]);
    out.expect(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        keys(&v),
        set(&[
            "job_id",
            "provider",
            "model",
            "response",
            "cost_cad",
            "tokens_in",
            "tokens_out"
        ])
    );
    assert_eq!(v["job_id"], job.as_str());
    assert_eq!(v["response"], "Line one.\nLine two.");
    assert_eq!(v["model"], "claude-sonnet-4");
    assert_eq!(v["cost_cad"], 0.0123);
    // Reading a result changes nothing on disk: the task stays delegated.
    assert!(p.marker("a.md").is_some());
}

#[test]
fn result_wait_ends_with_the_response_once_the_job_completes() {
    let mock = Mock::start(&["--statuses", "running,completed"]);
    mock.set(json!({"response": "Finally."}));
    let p = Project::new();
    p.task("a.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "a.md");
    let t0 = Instant::now();
    let out = p.run(Some(&mock), &["result", &job, "--wait", "20s"]);
    out.expect(0);
    assert_eq!(out.stdout, "Finally.\n");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(mock.job(&job)["polls"].as_u64().unwrap() >= 2);
}

#[test]
fn result_of_a_failed_job_says_so_and_does_not_wait() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    p.task("a.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "a.md");
    mock.set(json!({"status_of": {job.clone(): "failed"}}));
    let t0 = Instant::now();
    let out = p.run(Some(&mock), &["result", &job, "--wait", "20s"]);
    out.expect(1);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("failed"), "{}", out.stderr);
    assert!(
        out.stderr.contains("model crashed (mock)"),
        "{}",
        out.stderr
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// What comes back from the service is data
// ---------------------------------------------------------------------------

#[test]
fn reap_keeps_a_pending_marker_when_the_resend_is_refused_for_auth() {
    // The first POST may have created a job: a 401 now proves nothing about
    // it, so the task must stay skipped (nothing runs twice) until the key
    // is fixed.
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let bytes = fm("preferred_ai: gemini");
    p.task("a.md", &bytes);
    let key = "ccl-5eed5eed5eed5eed5eed";
    p.write_marker("a.md", &marker_json(true, None, key, &rfc3339_ago(300)));
    let dir = s(&p.dir);
    let out = Out::of(
        p.cmd(None)
            .env("SECUTOOLS_URL", &mock.url)
            .env("SECUTOOLS_API_KEY", "rotated-key-0000")
            .args(["reap", "--project", dir]),
    );
    // Exit 77: refused by the service (auth); cron mails the message.
    out.expect(77);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    let m = p.marker("a.md").expect("the pending marker stays");
    assert_eq!(m["state"], "pending");
    assert_eq!(m["poll_errors"], 1);
    assert!(m["last_error"].as_str().unwrap().contains("401"), "{m}");
    assert_eq!(std::fs::read(p.inbox().join("a.md")).unwrap(), bytes);

    // With the key fixed, the next reap re-sends it with the same key.
    let out = p.run(Some(&mock), &["reap", "--project", dir]);
    out.expect(0);
    assert_eq!(p.marker("a.md").unwrap()["state"], "submitted");
    assert_eq!(mock.stats()["posts_by_key"][key], 2);
    assert_eq!(mock.jobs_created(), 1);
}

#[test]
fn reap_returns_a_pending_task_the_service_rejects_to_the_dispatcher() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let bytes = fm("preferred_ai: gemini");
    p.task("a.md", &bytes);
    p.write_marker(
        "a.md",
        &marker_json(true, None, "ccl-5eed5eed5eed5eed5eed", &rfc3339_ago(300)),
    );
    mock.faults(json!({"next": ["413"]}));
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(lines(&out).len(), 1, "{}", out.stdout);
    assert!(out.stdout.contains("413"), "{}", out.stdout);
    assert_eq!(
        p.names(&p.inbox()),
        ["a.md"],
        "the task is the dispatcher's again"
    );
    assert_eq!(std::fs::read(p.inbox().join("a.md")).unwrap(), bytes);
}

#[test]
fn reap_resends_a_pending_submission_only_once_older_than_submit_grace() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let bytes = fm("preferred_ai: gpu\npriority: low");
    p.task("a.md", &bytes);
    let key = "ccl-feedfacefeedface0001";
    p.write_marker("a.md", &marker_json(true, None, key, &rfc3339_ago(30)));
    let marker = std::fs::read(p.marker_path("a.md")).unwrap();
    let dir = s(&p.dir);

    let out = p.run(
        Some(&mock),
        &["reap", "--project", dir, "--submit-grace", "1h"],
    );
    out.expect(0);
    assert_eq!(out.stdout, "");
    assert_eq!(mock.requests(), 0, "too young to re-send");
    assert_eq!(std::fs::read(p.marker_path("a.md")).unwrap(), marker);

    let out = p.run(
        Some(&mock),
        &["reap", "--project", dir, "--submit-grace", "10s"],
    );
    out.expect(0);
    assert_eq!(out.stdout, "", "re-sending finishes nothing");
    let m = p.marker("a.md").unwrap();
    assert_eq!(m["state"], "submitted");
    assert_eq!(m["idempotency_key"], key);
    let job = m["job_id"].as_str().unwrap();
    assert_eq!(mock.stats()["posts_by_key"], json!({ key: 1 }));
    let j = mock.job(job);
    assert_eq!(j["priority"], "normal", "the marker's priority");
    assert_eq!(j["preferred_ai"], "gemini", "the marker's provider");
    assert_eq!(std::fs::read(p.inbox().join("a.md")).unwrap(), bytes);
}

#[test]
fn get_shows_the_error_of_a_failed_job() {
    let mock = Mock::start(&["--statuses", "running"]);
    let p = Project::new();
    p.task("a.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "a.md");
    mock.set(json!({"status_of": {job.clone(): "failed"}, "error": "out of GPU memory"}));
    let out = p.run(Some(&mock), &["get", &job]);
    out.expect(0);
    assert_eq!(out.stdout, "failed\nerror: out of GPU memory\n");
}

#[test]
fn submit_and_reap_keep_task_names_with_spaces_and_unicode() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let name = "ma tâche #1 — café.md";
    let bytes = fm("preferred_ai: gemini");
    p.task(name, &bytes);
    let job = p.submit_ok(&mock, name);
    assert_eq!(mock.job(&job)["metadata"]["task"], name);
    let out = p.reap(&mock, &[]);
    out.expect(0);
    let done = p.done().join(name);
    assert_eq!(
        out.stdout,
        format!("done {} (job {job}, gemini, 0.0123 CAD)\n", done.display())
    );
    let r = Record::read(&done);
    assert_eq!(r.original(), bytes);
    assert!(r.text().ends_with(&format!("## Original task ({name})\n")));
}

#[test]
fn result_wait_may_come_before_the_job_argument() {
    // `result JOB_ID|TASK [--wait [DURATION]]`: `--wait JOB` must not take
    // the job for a duration.
    let mock = Mock::start(&["--statuses", "running,completed"]);
    mock.set(json!({"response": "Here."}));
    let p = Project::new();
    p.task("a.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "a.md");
    let out = p.run(Some(&mock), &["result", "--wait", &job]);
    out.expect(0);
    assert_eq!(out.stdout, "Here.\n");
    let task = p.inbox().join("a.md");
    let out = p.run(Some(&mock), &["result", "--wait", "5s", s(&task)]);
    out.expect(0);
    assert_eq!(out.stdout, "Here.\n");
    let out = p.run(Some(&mock), &["result", "--wait"]);
    out.expect(64);
    assert!(out.stderr.contains("JOB_ID"), "{}", out.stderr);
}

#[test]
fn decide_json_keys_come_in_the_design_order() {
    let p = Project::new();
    let t = p.task("a.md", &fm("preferred_ai: claude"));
    let out = p.run(None, &["decide", "--json", s(&t)]);
    out.expect(0);
    assert_eq!(
        out.stdout,
        "{\"provider\":\"claude\",\"delegate\":true,\"rule\":4,\"fallback\":[]}\n"
    );
}

#[test]
fn decide_never_reads_a_symlinked_task_and_routes_it_locally() {
    let p = Project::new();
    let real = p.tmp.path().join("real.md");
    std::fs::write(&real, fm("preferred_ai: gemini")).unwrap();
    let link = p.inbox().join("a.md");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = p.run(None, &["decide", "--explain", s(&link)]);
    out.expect(0);
    assert!(out.stdout.starts_with("claude-code\n"), "{}", out.stdout);
    assert!(
        out.stderr.contains("a.md") && out.stderr.contains("symbolic link"),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_url_and_key_are_both_named() {
    let p = Project::new();
    let t = p.task("a.md", &fm("allow_delegation: true"));
    let out = p.run(None, &["submit", s(&t)]);
    out.expect(78);
    assert!(
        out.stderr.contains("SECUTOOLS_URL") && out.stderr.contains("SECUTOOLS_API_KEY"),
        "{}",
        out.stderr
    );
    assert_eq!(p.names(&p.inbox()), vec!["a.md".to_string()]);
}

#[test]
fn reap_of_a_queue_named_twice_writes_one_record_per_job() {
    let mock = Mock::start(&["--statuses", "completed", "--latency", "20ms"]);
    let p = Project::new();
    for i in 0..6 {
        p.task(&format!("t{i}.md"), &fm("preferred_ai: gemini"));
        p.submit_ok(&mock, &format!("t{i}.md"));
    }
    let queue = p.queue();
    let out = p.reap(&mock, &["--project", s(&queue), "--project", s(&p.dir)]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 6, "{}", out.stdout);
    let done = p.names(&p.done());
    assert_eq!(done, (0..6).map(|i| format!("t{i}.md")).collect::<Vec<_>>());
    assert_eq!(p.names(&p.inbox()), Vec::<String>::new());
}

#[test]
fn reap_hands_back_a_new_task_beside_the_stale_marker_of_a_finished_job() {
    // A run killed between removing a finished task and its marker leaves
    // the marker; the dispatcher then writes a new task of the same name.
    // The new task must not be swallowed into the old job's result.
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    p.task("a.md", &fm("preferred_ai: gemini"));
    let job = p.submit_ok(&mock, "a.md");
    let marker = std::fs::read(p.marker_path("a.md")).unwrap();
    p.reap(&mock, &[]).expect(0);
    assert_eq!(p.names(&p.done()), vec!["a.md".to_string()]);
    let record = std::fs::read(p.done().join("a.md")).unwrap();

    std::fs::write(p.marker_path("a.md"), &marker).unwrap();
    let new_task = b"A new task that reuses the name.\n";
    p.task("a.md", new_task);
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert!(
        out.stdout.starts_with("returned ") && out.stdout.contains(&job),
        "{}",
        out.stdout
    );
    assert_eq!(std::fs::read(p.inbox().join("a.md")).unwrap(), new_task);
    assert_eq!(p.names(&p.inbox()), vec!["a.md".to_string()]);
    assert_eq!(p.names(&p.done()), vec!["a.md".to_string()]);
    assert_eq!(std::fs::read(p.done().join("a.md")).unwrap(), record);
}

#[test]
fn reap_finds_a_later_record_after_a_gap_in_the_numbering() {
    // done/a.md is an older job's; this job's record went to done/a.2.md
    // and its run died before removing the task. A person then archives
    // done/a.md: the next reap must still find a.2.md, not write a third.
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    std::fs::create_dir_all(p.done()).unwrap();
    std::fs::write(p.done().join("a.md"), "an older result\n").unwrap();
    let bytes = fm("preferred_ai: gemini");
    p.task("a.md", &bytes);
    p.submit_ok(&mock, "a.md");
    let marker = std::fs::read(p.marker_path("a.md")).unwrap();
    p.reap(&mock, &[]).expect(0);
    assert_eq!(
        p.names(&p.done()),
        vec!["a.2.md".to_string(), "a.md".to_string()]
    );
    // The interrupted run's trace: task and marker back, a.md archived.
    p.task("a.md", &bytes);
    std::fs::write(p.marker_path("a.md"), &marker).unwrap();
    std::fs::remove_file(p.done().join("a.md")).unwrap();
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(p.names(&p.done()), vec!["a.2.md".to_string()]);
    assert_eq!(p.names(&p.inbox()), Vec::<String>::new());
    assert!(out.stdout.contains("a.2.md"), "{}", out.stdout);
}
