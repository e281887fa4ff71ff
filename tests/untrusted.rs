//! "Untrusted bytes" in the design, through the real binary: files that are
//! not files, YAML built to be slow, secrets a config error could echo,
//! control characters from names and the server, keys that look like
//! routing keys, and the bits a record keeps.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(s(p)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Runs `cmd` and fails the test if it has not ended within `limit`: a
/// hang is the defect these tests look for.
#[track_caller]
fn run_within(cmd: &mut Command, limit: Duration) -> (Out, Duration) {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ccl-delegate");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(o) => {
            let o = o.unwrap();
            let out = Out {
                code: o.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            };
            (out, start.elapsed())
        }
        Err(_) => {
            // SAFETY: killing the child this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("still running after {limit:?}: {cmd:?}");
        }
    }
}

/// No raw control or bidi character in what a run printed.
#[track_caller]
fn assert_clean(what: &str, text: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    assert!(bad.is_empty(), "{what} holds raw {bad:?}: {text:?}");
}

// --- item 10: a key that looks like a routing key -------------------------

#[test]
fn a_misspelt_routing_key_is_named_by_decide_and_submit() {
    let p = Project::new();
    let typo = p.task("typo.md", b"---\nallow_delegaton: true\n---\nDo it.\n");
    let case = p.task("case.md", b"---\nAllow_Delegation: true\n---\nDo it.\n");
    let other = p.task("other.md", b"---\ntitle: x\ntags: [a]\n---\nDo it.\n");

    let out = p.run(None, &["decide", s(&typo)]);
    out.expect(0);
    assert_eq!(out.stdout, "claude-code\n");
    assert!(
        out.stderr.contains(s(&typo))
            && out.stderr.contains("`allow_delegaton`")
            && out.stderr.contains("`allow_delegation`"),
        "{}",
        out.stderr
    );

    let out = p.run(None, &["decide", s(&case)]);
    assert!(
        out.stderr.contains("`Allow_Delegation`") && out.stderr.contains("`allow_delegation`"),
        "{}",
        out.stderr
    );

    // Submit says the same, and its stdout stays `local <rule>`.
    let mock = Mock::start(&[]);
    let out = p.run(Some(&mock), &["submit", s(&typo)]);
    out.expect(10);
    assert_eq!(out.stdout, "local 7\n");
    assert!(
        out.stderr.contains(s(&typo)) && out.stderr.contains("`allow_delegation`"),
        "{}",
        out.stderr
    );

    // Keys that resemble no routing key stay silent.
    let out = p.run(None, &["decide", s(&other)]);
    out.expect(0);
    assert_eq!(out.stderr, "");
}

// --- item 11: control characters never reach the terminal -----------------

#[test]
fn server_strings_with_control_characters_are_escaped() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    p.task("a.md", b"---\nallow_delegation: true\n---\nA.\n");
    let job = p.submit_ok(&mock, "a.md");
    let evil = "x\u{1b}]0;pwned\u{7}\r\nforged line\u{1b}[2J\u{202e}";
    mock.set(json!({"status_of": {job.clone(): format!("running{evil}")}}));

    let out = p.run(Some(&mock), &["get", &job]);
    out.expect(0);
    assert_clean("get stdout", &out.stdout);
    assert_eq!(out.stdout.lines().count(), 1, "{:?}", out.stdout);
    assert!(
        out.stdout.contains("\\x1b]0;pwned\\x07"),
        "{:?}",
        out.stdout
    );

    let out = p.run(Some(&mock), &["result", &job]);
    out.expect(75);
    assert_clean("result stderr", &out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);

    mock.set(json!({"status_of": {job.clone(): "failed"}, "error": format!("boom{evil}")}));
    let out = p.run(Some(&mock), &["get", &job]);
    assert_clean("get stdout", &out.stdout);
    assert_eq!(out.stdout.lines().count(), 2, "{:?}", out.stdout);
    let out = p.run(Some(&mock), &["result", &job]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_clean("result stderr", &out.stderr);
    assert!(
        out.stderr.contains("boomx\\x1b]0;pwned"),
        "{:?}",
        out.stderr
    );
    let out = p.run(Some(&mock), &["cancel", &job]);
    assert_clean("cancel stdout", &out.stdout);
    assert_clean("cancel stderr", &out.stderr);
}

#[test]
fn task_names_with_control_characters_are_escaped_in_warnings_and_errors() {
    let p = Project::new();
    let name = "evil\u{1b}]0;pwned\u{7}\r.md";
    let task = p.task(name, b"---\npreferred_ai: gpu\n");
    let out = p.run(None, &["decide", s(&task)]);
    out.expect(0);
    assert_clean("decide stderr", &out.stderr);
    assert!(
        out.stderr.contains("evil\\x1b]0;pwned\\x07\\r.md"),
        "{:?}",
        out.stderr
    );
    // An error about the name goes through the same escaper.
    let missing = p.inbox().join("gone\u{1b}[2J.md");
    let out = p.run(None, &["decide", s(&missing)]);
    out.expect(66);
    assert_clean("decide error", &out.stderr);
    assert!(out.stderr.contains("gone\\x1b[2J.md"), "{:?}", out.stderr);
}

/// The error lines of `reap` and the stdout line of `submit` carry names
/// and marker text through the same escaper: a task nobody can read, named
/// with escapes, and a marker whose provider holds a line break.
#[test]
fn reap_errors_and_submit_lines_escape_names_and_marker_text() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let name = "locked\u{1b}[2J\n.md";
    // A directory where the task should be: reap cannot read it and says
    // so (an error, printed even with -q).
    std::fs::create_dir(p.inbox().join(name)).unwrap();
    p.write_marker(
        name,
        &marker_json(true, None, "ccl-lock-0123456789abcdef", &rfc3339_ago(600)),
    );
    let out = p.reap(&mock, &["-q"]);
    assert!(
        out.stderr.contains("locked\\x1b[2J\\n.md"),
        "{:?}",
        out.stderr
    );
    assert_clean("reap stderr", &out.stderr);
    assert_clean("reap stdout", &out.stdout);

    let other = p.task("two.md", b"---\npreferred_ai: gpu\n---\nx\n");
    let marker = marker_json(
        false,
        Some("j-1"),
        "ccl-two-0123456789abcdef",
        &rfc3339_ago(1),
    )
    .replace("\"gemini\"", "\"gem\\nini\\u001b[2J\"");
    p.write_marker("two.md", &marker);
    let out = p.run(Some(&mock), &["submit", s(&other)]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 1, "{:?}", out.stdout);
    assert_clean("submit stdout", &out.stdout);
    assert!(
        out.stdout.starts_with("delegated gem\\nini\\x1b[2J j-1"),
        "{:?}",
        out.stdout
    );
}

// --- item 12: files that are not files -------------------------------------

#[test]
fn a_config_that_is_a_fifo_or_a_device_is_refused_at_once() {
    let p = Project::new();
    let fifo = p.home.join("config.yaml");
    mkfifo(&fifo);
    for (config, want) in [
        (s(&fifo), "not a regular file (a FIFO)"),
        ("/dev/zero", "not a regular file (a character device)"),
    ] {
        for cmd in ["reap", "status"] {
            let (out, _) = run_within(
                p.cmd(None).args(["--config", config, cmd]),
                Duration::from_secs(10),
            );
            assert_eq!(out.code, 78, "{cmd} {config}: {out:?}");
            assert!(
                out.stderr.contains(config) && out.stderr.contains(want),
                "{}",
                out.stderr
            );
        }
    }
    // Through a symlink too (a config may be one), and through the
    // environment variable.
    let link = p.home.join("link.yaml");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let (out, _) = run_within(
        p.cmd(None)
            .env("CCL_DELEGATE_CONFIG", &link)
            .args(["status"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 78, "{out:?}");
}

#[test]
fn a_config_larger_than_its_cap_is_refused() {
    let p = Project::new();
    let big = p.home.join("big.yaml");
    let mut text = String::from("retries: 3\n");
    while text.len() <= 1 << 20 {
        text.push_str("# a long comment line to grow the file past its cap\n");
    }
    std::fs::write(&big, text).unwrap();
    let out = p.run(
        None,
        &["--config", s(&big), "status", "--project", s(&p.dir)],
    );
    out.expect(78);
    assert!(
        out.stderr
            .contains("larger than 1024 KiB, the limit for a config file"),
        "{}",
        out.stderr
    );
}

#[test]
fn status_skips_a_fifo_in_done_and_failed() {
    let p = Project::new();
    for dir in [p.done(), p.failed()] {
        std::fs::create_dir_all(&dir).unwrap();
        mkfifo(&dir.join("x.md"));
    }
    let (out, _) = run_within(
        p.cmd(None).args(["status", "--project", s(&p.dir)]),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("No done or failed tasks yet."),
        "{out:?}"
    );
}

// --- item 13: YAML from disk goes through the guard ------------------------

#[test]
fn a_crafted_done_file_does_not_slow_status() {
    let p = Project::new();
    std::fs::create_dir_all(p.done()).unwrap();
    let mut crafted = String::from("---\nstatus: completed\nprovider: gpu\nx: ");
    crafted.push_str(&"[".repeat(40_000));
    crafted.push_str("\n---\nbody\n");
    std::fs::write(p.done().join("a.md"), crafted).unwrap();
    let (out, took) = run_within(
        p.cmd(None).args(["status", "--project", s(&p.dir)]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(took < Duration::from_millis(1500), "status took {took:?}");
}

#[test]
fn a_config_of_nested_brackets_is_refused_quickly() {
    let p = Project::new();
    let config = p.home.join("config.yaml");
    std::fs::write(&config, format!("projects: {}\n", "[".repeat(200_000))).unwrap();
    let (out, took) = run_within(
        p.cmd(None).args(["--config", s(&config), "status"]),
        Duration::from_secs(120),
    );
    assert_eq!(out.code, 78, "{out:?}");
    assert!(out.stderr.contains("too complex"), "{}", out.stderr);
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

// --- item 14: config errors never echo a secret ----------------------------

#[test]
fn a_config_error_names_file_and_line_but_never_echoes_the_file() {
    let p = Project::new();
    let key_file = p.home.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let shadow = p.home.join("shadow");
    std::fs::write(
        &shadow,
        "root:$6$SECRETSALT$SECRETHASH:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
    )
    .unwrap();
    let link = p.home.join("config.yaml");
    std::os::unix::fs::symlink(&shadow, &link).unwrap();
    let bad_value = p.home.join("value.yaml");
    std::fs::write(&bad_value, "retries: 3\napi_url: [SECRETVALUE]\n").unwrap();
    let bad_key = p.home.join("key.yaml");
    std::fs::write(&bad_key, "retries: 3\n\"SECRET Key\": 1\n").unwrap();
    for (config, line) in [
        (&key_file, "line 1"),
        (&link, "line 1"),
        (&bad_value, "line 2"),
        (&bad_key, "line 2"),
    ] {
        let out = p.run(None, &["--config", s(config), "status"]);
        out.expect(78);
        assert!(
            out.stderr.contains(s(config)) && out.stderr.contains(line),
            "{config:?}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(KEY) && !out.stderr.contains("SECRET"),
            "{config:?}: {}",
            out.stderr
        );
    }
    // A key name that looks like one is named, to say what to fix.
    let unknown = p.home.join("unknown.yaml");
    std::fs::write(&unknown, "retries: 3\nretires: 4\n").unwrap();
    let out = p.run(None, &["--config", s(&unknown), "status"]);
    out.expect(78);
    assert!(
        out.stderr.contains("line 2: unknown key `retires`"),
        "{}",
        out.stderr
    );
}

// --- item 15: doctor runs the commands' own checks --------------------------

fn config_with_key(p: &Project, mock: &Mock, key: &str, mode: u32) -> std::path::PathBuf {
    let key_file = p.home.join("key");
    std::fs::write(&key_file, key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).unwrap();
    let config = p.home.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "api_url: {}\napi_key_file: {}\nprojects: [{}]\n",
            mock.url,
            key_file.display(),
            p.dir.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn doctor_refuses_a_two_line_key_like_every_command() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let config = config_with_key(&p, &mock, &format!("{KEY}\nsecond line\n"), 0o600);
    let task = p.task("a.md", b"---\nallow_delegation: true\n---\nA.\n");
    let out = p.run(None, &["--config", s(&config), "submit", s(&task)]);
    out.expect(78);
    assert!(out.stderr.contains("more than one line"), "{}", out.stderr);

    let out = p.run(None, &["--config", s(&config), "doctor"]);
    assert_ne!(out.code, 0, "{out:?}");
    let key_line = out
        .stdout
        .lines()
        .find(|l| l.contains("api key"))
        .unwrap_or_default();
    assert!(
        key_line.starts_with("FAIL") && key_line.contains("more than one line"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(KEY), "{}", out.stdout);
}

#[test]
fn doctor_says_a_key_refused_for_its_mode_is_refused_not_missing() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let config = config_with_key(&p, &mock, KEY, 0o644);
    let out = p.run(None, &["--config", s(&config), "doctor"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("readable by group or others") && out.stdout.contains("chmod 600"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("missing"), "{}", out.stdout);
    // With the mode fixed, every check passes.
    std::fs::set_permissions(p.home.join("key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = p.run(None, &["--config", s(&config), "doctor"]);
    out.expect(0);
}

#[test]
fn doctor_suggests_init_for_a_project_without_a_queue() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let bare = p.tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    let out = p.run(Some(&mock), &["doctor", "--project", s(&bare)]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("run: ccl-delegate init {}", bare.display())),
        "{}",
        out.stdout
    );
}

// --- item 16: records keep only the permission bits ------------------------

#[test]
fn a_setuid_task_yields_a_done_file_without_the_bit() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let task = p.task("a.md", b"---\nallow_delegation: true\n---\nA.\n");
    std::fs::set_permissions(&task, std::fs::Permissions::from_mode(0o4750)).unwrap();
    assert_eq!(
        mode(&task) & 0o4000,
        0o4000,
        "the test needs the setuid bit"
    );
    p.submit_ok(&mock, "a.md");
    p.reap(&mock, &[]).expect(0);
    assert_eq!(p.names(&p.done()), ["a.md"]);
    assert_eq!(mode(&p.done().join("a.md")), 0o750);
}

// --- report and status: service strings in every format --------------------

/// The host's state directory under the test's home.
fn state_dir_of(p: &Project) -> std::path::PathBuf {
    p.home.join(".local/state/ccl-delegate")
}

/// Writes the config file the runs find by default.
fn write_default_config(p: &Project, yaml: &str) -> std::path::PathBuf {
    let d = p.home.join(".config/ccl-delegate");
    std::fs::create_dir_all(&d).unwrap();
    let f = d.join("config.yaml");
    std::fs::write(&f, yaml).unwrap();
    f
}

/// The first cell of a CSV line, as a spreadsheet reads it (quotes off).
fn first_csv_cell(line: &str) -> String {
    match line.strip_prefix('"') {
        Some(rest) => {
            let mut cell = String::new();
            let mut chars = rest.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        cell.push('"');
                        chars.next();
                    }
                    '"' => break,
                    c => cell.push(c),
                }
            }
            cell
        }
        None => line.split(',').next().unwrap_or("").to_string(),
    }
}

/// A ledger of an earlier version (`ledger.jsonl`), imported by the first
/// run, whose model, provider and project strings are a hostile service's
/// and a hostile directory's: `report` in CSV, table and JSON prints no
/// raw control or bidi character, and no CSV cell is a formula.
#[test]
fn report_escapes_service_strings_and_disarms_formulas_in_every_format() {
    let p = Project::new();
    let evil_project = "/srv/evil\u{1b}[2J\u{202e}gpj.exe";
    let rows: &[(&str, &str, &str)] = &[
        // (project, provider, model)
        (
            evil_project,
            "gpt\u{1b}[31m\u{202e}",
            "\u{1b}]0;pwned\u{7}\u{1b}[2Jred\u{202e}gpj.exe",
        ),
        ("/p", "claude", "=HYPERLINK(\"http://evil.example\",\"ok\")"),
        ("/p", "claude", "@SUM(1+1)*cmd|' /C calc'!A0"),
        ("/p", "gemini", "+1+1"),
        ("/p", "gemini", "-2+3"),
        ("/p", "gpu", "-5"),
        ("/p", "gpu", "\tx"),
        ("=cmd|' /C calc'!A0", "gpu", "\u{9b}2Jc1"),
    ];
    let lines: String = rows
        .iter()
        .enumerate()
        .map(|(i, (project, provider, model))| {
            json!({
                "job_id": format!("j-{i}"), "project": project, "task": format!("t{i}.md"),
                "provider": provider, "model": model, "status": "completed",
                "cost_cad": 0.25, "tokens_in": 10, "tokens_out": 5,
                "delegated_at": rfc3339_ago(600), "finished_at": rfc3339_ago(540),
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::create_dir_all(state_dir_of(&p)).unwrap();
    std::fs::write(state_dir_of(&p).join("ledger.jsonl"), lines).unwrap();

    for by in ["model", "provider", "project"] {
        let csv = p.run(None, &["report", "--by", by, "--csv"]);
        csv.expect(0);
        assert_clean(&format!("report --by {by} --csv"), &csv.stdout);
        assert_clean(&format!("report --by {by} --csv (stderr)"), &csv.stderr);
        let keys: std::collections::BTreeSet<&str> = rows
            .iter()
            .map(|r| match by {
                "model" => r.2,
                "provider" => r.1,
                _ => r.0,
            })
            .collect();
        // The header, one line per key, the total.
        assert_eq!(csv.stdout.lines().count(), keys.len() + 2, "{}", csv.stdout);
        for line in csv.stdout.lines().skip(1) {
            let cell = first_csv_cell(line);
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
                    || cell.parse::<f64>().is_ok_and(f64::is_finite),
                "report --by {by} --csv: a formula cell {cell:?} in {line:?}"
            );
        }
        let table = p.run(None, &["report", "--by", by]);
        table.expect(0);
        assert_clean(&format!("report --by {by}"), &table.stdout);
        assert_clean(&format!("report --by {by} (stderr)"), &table.stderr);
        let j = p.run(None, &["report", "--by", by, "--json"]);
        j.expect(0);
        assert_clean(&format!("report --by {by} --json"), &j.stdout);
        let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
        assert_eq!(v["total"]["jobs"], rows.len());
    }

    let csv = p.run(None, &["report", "--by", "model", "--csv"]).stdout;
    let has = |start: &str| csv.lines().any(|l| l.starts_with(start));
    for start in [
        "\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"ok\"\")\",1,",
        "'@SUM(1+1)*cmd|' /C calc'!A0,1,",
        "'+1+1,1,",
        "'-2+3,1,",
        "-5,1,",
        // The books keep the tab escaped: no longer a tab at the start.
        "\\tx,1,",
        "\\x1b]0;pwned\\x07\\x1b[2Jred\\u{202e}gpj.exe,1,",
        "\\x9b2Jc1,1,",
    ] {
        assert!(has(start), "no CSV line starts with {start:?}:\n{csv}");
    }
    let csv = p.run(None, &["report", "--by", "project", "--csv"]).stdout;
    assert!(
        csv.lines().any(|l| l.starts_with("'=cmd|' /C calc'!A0,1,")),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("/srv/evil\\x1b[2J\\u{202e}gpj.exe,1,")),
        "{csv}"
    );
    // JSON keeps the project as it is, in escapes a terminal does not run.
    let v: serde_json::Value =
        serde_json::from_str(&p.run(None, &["report", "--by", "project", "--json"]).stdout)
            .unwrap();
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["project"] == evil_project),
        "{v}"
    );
}

/// A marker's error and a record's provider from a hostile service, in a
/// project whose directory name holds ESC and a bidi override: `status`
/// prints neither raw, in the table or in JSON, and JSON keeps them.
#[test]
fn status_escapes_marker_record_and_directory_strings_in_table_and_json() {
    let p = Project::new();
    let dir = p.tmp.path().join("evil\u{1b}[2J\u{202e}proj");
    std::fs::create_dir_all(dir.join(".agent-queue/inbox")).unwrap();
    std::fs::create_dir_all(dir.join(".agent-queue/done")).unwrap();
    std::fs::write(dir.join(".agent-queue/inbox/t1.md"), "Do it.\n").unwrap();
    let evil_error = "boom\u{1b}]0;pwned\u{7}\u{202e}\u{2066}txt";
    let mut marker: serde_json::Value =
        serde_json::from_str(&marker_json(false, Some("j-1"), "k-1", &rfc3339_ago(60))).unwrap();
    marker["last_error"] = json!(evil_error);
    marker["poll_errors"] = json!(1);
    std::fs::write(
        dir.join(".agent-queue/inbox/t1.md.delegated"),
        marker.to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join(".agent-queue/done/t0.md"),
        "---\nstatus: completed\nprovider: \"gpt\\e[31m\\u202e\\u0085\"\ncost_cad: 0.5\n---\nDone.\n",
    )
    .unwrap();
    let d = s(&dir);
    let table = p.run(None, &["status", "--project", d]);
    table.expect(0);
    assert_clean("status", &table.stdout);
    assert_clean("status (stderr)", &table.stderr);
    assert!(table.stdout.contains("\\x1b"), "{}", table.stdout);
    let j = p.run(None, &["status", "--project", d, "--json"]);
    j.expect(0);
    assert_clean("status --json", &j.stdout);
    assert_clean("status --json (stderr)", &j.stderr);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["in_flight"][0]["last_error"], evil_error, "{v}");
    assert!(
        v["in_flight"][0]["project"]
            .as_str()
            .unwrap()
            .ends_with("evil\u{1b}[2J\u{202e}proj"),
        "{v}"
    );
}

// --- config numbers are judged as numbers -----------------------------------

/// A number a policy key refuses is named with its key, its value as
/// written and the rule in words, exit 78, by `doctor` as by `status`; a
/// number is never said to be of the wrong type.
#[test]
fn a_refused_config_number_names_the_key_the_value_and_the_rule() {
    let rows = [
        (
            "budget:\n  daily_cad: 1e400\n",
            "line 2: budget.daily_cad: 1e400 is not a finite amount of CAD (expected a number from 0 to 1000000000, like 20.00)",
        ),
        (
            "max_in_flight: {all: 18446744073709551616}\n",
            "line 1: max_in_flight.all: 18446744073709551616 is too large (at most 18446744073709551615 jobs)",
        ),
        (
            "budget:\n  monthly_cad: 1e300\n",
            "line 2: budget.monthly_cad: 1e300 is too large (at most 1000000000 CAD)",
        ),
        (
            "budget:\n  providers:\n    claude: {estimate_cad: -0.5}\n",
            "line 3: budget.providers.claude.estimate_cad: -0.5 is below 0 (expected a number from 0 to 1000000000, like 20.00)",
        ),
        (
            "max_in_flight:\n  gpu: 2.5\n",
            "line 2: max_in_flight.gpu: 2.5 is not a whole number (expected a whole number of jobs at or above 0, like 5)",
        ),
        (
            "max_in_flight:\n  gpu: \"\\e[2J\\u202e7\"\n",
            "line 2: max_in_flight.gpu: \\x1b[2J\\u{202e}7 is not a number",
        ),
    ];
    for (yaml, want) in rows {
        let p = Project::new();
        let f = write_default_config(&p, yaml);
        for cmd in [
            vec!["doctor"],
            vec!["status", "--project", s(&p.dir)],
            vec!["report"],
        ] {
            let out = p.run(None, &cmd);
            out.expect(78);
            assert!(
                out.stderr
                    .contains(&format!("config file {}: {want}", s(&f))),
                "{cmd:?} {yaml:?}: {}",
                out.stderr
            );
            for bad in [
                "not a string",
                "not an integer",
                "invalid type",
                "not valid YAML",
            ] {
                assert!(!out.stderr.contains(bad), "{yaml:?}: {}", out.stderr);
            }
            assert_clean(&format!("{cmd:?} {yaml:?}"), &out.stderr);
            assert_eq!(out.stdout, "", "{cmd:?} {yaml:?}");
        }
    }
}

/// `-0.0` is a cap of 0, shown as `0.0000` (never `-0.0000`), by `status`
/// and `report`, in the table and in JSON.
#[test]
fn a_cap_of_minus_zero_is_zero() {
    let p = Project::new();
    write_default_config(
        &p,
        "budget:\n  daily_cad: -0.0\n  providers:\n    gpu: {monthly_cad: -0, estimate_cad: -0.0}\n",
    );
    for args in [
        vec!["status", "--project", s(&p.dir)],
        vec!["report"],
        vec!["status", "--project", s(&p.dir), "--json"],
        vec!["report", "--json"],
    ] {
        let out = p.run(None, &args);
        out.expect(0);
        assert!(!out.stdout.contains("-0"), "{args:?}: {}", out.stdout);
        if args.contains(&"--json") {
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            let limits: Vec<f64> = v["budget"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["limit_cad"].as_f64().unwrap())
                .collect();
            assert_eq!(limits.len(), 2, "{v}");
            assert!(limits.iter().all(|l| l.is_sign_positive()), "{v}");
        } else {
            for want in [
                "budget daily all: 0.0000 of 0.0000 CAD spent, 0.0000 reserved (0 in flight)",
                "budget monthly gpu: 0.0000 of 0.0000 CAD spent, 0.0000 reserved (0 in flight)",
            ] {
                assert!(out.stdout.contains(want), "{args:?}: {}", out.stdout);
            }
        }
    }
}
