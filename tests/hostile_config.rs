//! The config file and the API key from a careless or hostile hand, through
//! the real binary: the key's secrecy and its file's mode, configs that are
//! not files, too large or built to be slow, errors that never echo a
//! secret, `doctor` running the commands' own checks, and numbers judged as
//! numbers.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The key never appears on the command line, in a marker, a done/failed
/// file, any file of the queue, or any message, even when the service
/// echoes it back in an error or a result.
#[test]
fn the_api_key_never_appears_in_files_or_messages() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let a = p.task("a.md", b"---\nallow_delegation: true\n---\nA.\n");
    let b = p.task("b.md", b"---\npreferred_ai: gpu\n---\nB.\n");
    let mut outs = vec![
        p.run(Some(&mock), &["submit", a.to_str().unwrap()]),
        p.run(Some(&mock), &["submit", b.to_str().unwrap()]),
    ];
    let ja = mock.jobs()[0]["job_id"].as_str().unwrap().to_string();
    let jb = mock.jobs()[1]["job_id"].as_str().unwrap().to_string();
    // A service that echoes the key: in a job's error, in a result, in a
    // bad answer.
    mock.set(json!({"job": ja, "error": format!("auth {KEY} expired")}));
    mock.set(json!({"status_of": {ja.clone(): "failed"}}));
    mock.set(json!({"job": jb, "response": format!("your key is {KEY}"), "model": KEY}));
    outs.push(p.run(Some(&mock), &["get", &ja, "--json"]));
    outs.push(p.run(Some(&mock), &["get", a.to_str().unwrap()]));
    outs.push(p.run(Some(&mock), &["result", &jb]));
    outs.push(p.run(Some(&mock), &["result", &jb, "--json"]));
    outs.push(p.run(
        Some(&mock),
        &["status", "--project", p.dir.to_str().unwrap()],
    ));
    outs.push(p.reap(&mock, &[]));
    let (pc, pd) = (Project::new(), Project::new());
    pc.task("c.md", b"---\nallow_delegation: true\n---\nC.\n");
    let jc = mock.post_job("ccl-key-echo-c-0123456789", "c.md");
    pc.write_marker(
        "c.md",
        &marker_json(
            false,
            Some(&jc),
            "ccl-key-echo-c-0123456789",
            &rfc3339_ago(60),
        ),
    );
    mock.set(json!({"job": jc, "status_raw": format!("{{\"job_id\": \"{jc}\", \"status\": \"{KEY}\"}}")}));
    outs.push(pc.reap(&mock, &[]));
    mock.set(json!({"job": jc, "status_raw": format!("not json {KEY}")}));
    outs.push(pc.reap(&mock, &[]));
    // A refused key never comes back in the message either.
    let c = pd.task("d.md", b"---\nallow_delegation: true\n---\nD.\n");
    let wrong = Out::of(
        pd.cmd(Some(&mock))
            .args(["submit", c.to_str().unwrap()])
            .env("SECUTOOLS_API_KEY", "wrong-key-9876543210"),
    );
    assert_eq!(wrong.code, 77, "{wrong:?}");
    assert!(!wrong.stderr.contains("wrong-key-9876543210"), "{wrong:?}");
    for (n, out) in outs.iter().enumerate() {
        assert!(
            !out.stdout.contains(KEY) && !out.stderr.contains(KEY),
            "run {n}: {out:?}"
        );
    }
    assert!(p.failed().join("a.md").exists() && p.done().join("b.md").exists());
    for project in [&p, &pc, &pd] {
        for (path, bytes) in tree(project.tmp.path()) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(KEY),
                "{} holds the key",
                path.display()
            );
        }
    }
    // No flag takes the key: it can only come from the environment or a file.
    let out = p.run(None, &["--api-key", KEY, "status"]);
    assert_eq!(out.code, 64, "{out:?}");
    for sub in [
        "submit", "reap", "get", "result", "status", "cancel", "requeue", "doctor",
    ] {
        let help = p.run(None, &[sub, "--help"]);
        assert!(
            !help.stdout.to_lowercase().contains("api-key"),
            "{sub}: {help:?}"
        );
    }
}

#[test]
fn an_api_key_file_readable_by_group_or_others_is_refused() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let key_file = p.home.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let config = p.home.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "api_url: {}\napi_key_file: {}\n",
            mock.url,
            key_file.display()
        ),
    )
    .unwrap();
    let path = p.task("a.md", b"---\nallow_delegation: true\n---\nA.\n");
    let submit = |p: &Project| {
        Out::of(p.cmd(None).args([
            "--config",
            config.to_str().unwrap(),
            "submit",
            path.to_str().unwrap(),
        ]))
    };
    for mode in [
        0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o610, 0o601, 0o666,
    ] {
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = submit(&p);
        assert_eq!(out.code, 78, "mode {mode:o}: {out:?}");
        assert!(
            out.stderr.contains("readable by group or others"),
            "mode {mode:o}: {out:?}"
        );
        assert!(
            out.stderr
                .contains(&format!("chmod 600 {}", key_file.display())),
            "{out:?}"
        );
        assert!(!out.stderr.contains(KEY));
        assert!(!p.inbox().join("a.md.delegated").exists());
    }
    assert_eq!(mock.requests(), 0, "a refused key file sends nothing");
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = submit(&p);
        assert_eq!(out.code, 0, "mode {mode:o}: {out:?}");
        assert!(out.stdout.starts_with("delegated auto "), "{out:?}");
        std::fs::remove_file(p.inbox().join("a.md.delegated")).unwrap();
    }
    // A key file that is a link to a private file is not followed.
    let link = p.home.join("key-link");
    std::os::unix::fs::symlink(&key_file, &link).unwrap();
    std::fs::write(
        &config,
        format!("api_url: {}\napi_key_file: {}\n", mock.url, link.display()),
    )
    .unwrap();
    let out = submit(&p);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(out.stderr.contains("key-link"), "{out:?}");
}

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
        let f = p.write_config(yaml);
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
    p.write_config(
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

/// Durations at the edges of every clock: a `lock_timeout` longer than
/// SQLite's or PostgreSQL's longest wait (24 days) works, a `max_age` of
/// 60 years counts nothing as expired, report windows reaching before 1970
/// or up to 9999 report; past 100 years a duration is refused with its key
/// (exit 78) or its flag (exit 64). Nothing panics.
#[test]
fn durations_at_the_edges_of_the_clocks_work_or_are_refused_never_panic() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    p.write_config("lock_timeout: 30d\nmax_age: 60y\nbudget:\n  daily_cad: 100\n");
    p.task("a.md", b"---\nallow_delegation: true\n---\nA.\n");
    let job = p.submit_ok(&mock, "a.md");
    mock.set(json!({"status_of": {job.clone(): "completed"}}));
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert!(out.stdout.starts_with("done "), "{out:?}");
    assert!(p.queue().join("done/a.md").is_file());
    for args in [
        vec!["report", "--since", "100y"],
        vec!["report", "--until", "9999-12-31"],
        vec!["report", "--since", "1960-01-01", "--json"],
        vec!["status", "--project", s(&p.dir)],
    ] {
        let out = p.run(None, &args);
        out.expect(0);
        assert_eq!(out.stderr, "", "{args:?}");
    }
    let out = p.run(None, &["report", "--since", "100y", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["total"]["jobs"], 1, "{}", out.stdout);

    let f = p.write_config("lock_timeout: 200y\n");
    let out = p.run(None, &["status", "--project", s(&p.dir)]);
    out.expect(78);
    assert!(
        out.stderr
            .contains(&format!("config file {}: line 1: lock_timeout", s(&f))),
        "{}",
        out.stderr
    );
    p.write_config("");
    let out = p.run(Some(&mock), &["reap", "--max-age", "1000y"]);
    out.expect(64);
    assert!(
        out.stderr.contains("longer than 100 years"),
        "{}",
        out.stderr
    );
}
