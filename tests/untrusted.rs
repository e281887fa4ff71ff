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
