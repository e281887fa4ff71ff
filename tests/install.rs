//! Setting up on a fresh account: the README's install lines, run as written
//! with an empty HOME, give a `ccl-delegate` on PATH and man pages `man`
//! finds; `ccl-delegate init` makes a project's queue without any config.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ccl-delegate")
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shell lines between the README's install markers.
fn install_lines() -> Vec<String> {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("<!-- install:begin -->")
        .expect("README.md has an <!-- install:begin --> marker");
    let end = readme
        .find("<!-- install:end -->")
        .expect("README.md has an <!-- install:end --> marker");
    readme[start..end]
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("```") && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn has(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The README's lines, run by bash with `-e` in a clone (the repository),
/// HOME an empty directory and a system PATH without cargo's. A real
/// `cargo install` would rebuild the release profile for minutes, so its
/// line is checked to install into `~/.local/bin` (`--root ~/.local`) and
/// replaced by copying the binaries this test run built to that very
/// place.
#[test]
fn readme_install_lines_work_on_a_fresh_account() {
    if !has("man") {
        eprintln!("note: man is not installed; the install test is skipped (CI installs man-db)");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let mut script = String::from("set -e\n");
    let mut saw_cargo = false;
    for line in install_lines() {
        if line.trim_start().starts_with("cargo install") {
            assert!(
                line.contains("--root ~/.local") && line.contains("--path ."),
                "the README's cargo install line must install into ~/.local/bin: {line}"
            );
            saw_cargo = true;
            let mock = env!("CARGO_BIN_EXE_secutools-mock");
            script.push_str(&format!("cp '{}' '{mock}' ~/.local/bin/\n", bin()));
        } else {
            script.push_str(&line);
            script.push('\n');
        }
    }
    assert!(
        saw_cargo,
        "the README's install lines have no cargo install"
    );
    script.push_str(
        "echo \"which=$(command -v ccl-delegate)\"\n\
         echo \"version=$(ccl-delegate --version)\"\n\
         echo \"man=$(man -w ccl-delegate)\"\n\
         echo \"man-reap=$(man -w ccl-delegate-reap)\"\n\
         echo \"man-init=$(man -w ccl-delegate-init)\"\n",
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .current_dir(root())
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the README's install lines failed on a fresh HOME: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let home = fs::canonicalize(home.path()).unwrap();
    let home = home.display();
    let get = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= line in {stdout}"))
            .to_string()
    };
    assert_eq!(get("which"), format!("{home}/.local/bin/ccl-delegate"));
    assert_eq!(
        get("version"),
        format!("ccl-delegate {}", env!("CARGO_PKG_VERSION"))
    );
    for (key, page) in [
        ("man", "ccl-delegate"),
        ("man-reap", "ccl-delegate-reap"),
        ("man-init", "ccl-delegate-init"),
    ] {
        assert_eq!(
            get(key),
            format!("{home}/.local/share/man/man1/{page}.1"),
            "man -w {page}"
        );
    }
    for f in [
        ".local/share/bash-completion/completions/ccl-delegate",
        ".zfunc/_ccl-delegate",
        ".config/fish/completions/ccl-delegate.fish",
    ] {
        assert!(
            Path::new(&format!("{home}/{f}")).is_file(),
            "~/{f} not installed"
        );
    }
}

/// `ccl-delegate init ARGS` in `cwd`, with no URL, no key and a config file
/// that every other command refuses.
fn init(cwd: &Path, args: &[&str]) -> Output {
    let cfg = cwd.join("broken-config.yaml");
    fs::write(&cfg, "api_url: [this is not a URL\n").unwrap();
    Command::new(bin())
        .arg("init")
        .args(args)
        .current_dir(cwd)
        .env_remove("SECUTOOLS_URL")
        .env_remove("SECUTOOLS_API_KEY")
        .env("CCL_DELEGATE_CONFIG", &cfg)
        .env("XDG_CONFIG_HOME", cwd.join("no-config"))
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn init_creates_the_queue_without_a_config_and_says_what_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("site");
    fs::create_dir(&project).unwrap();
    let out = init(tmp.path(), &["site"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "created site/.agent-queue\ncreated site/.agent-queue/inbox\n\
         created site/.agent-queue/done\ncreated site/.agent-queue/failed\n"
    );
    for d in ["inbox", "done", "failed"] {
        assert!(project.join(".agent-queue").join(d).is_dir(), "{d}/");
    }
    // The queue is usable at once: submit finds it (and routes locally).
    let task = project.join(".agent-queue/inbox/t.md");
    fs::write(&task, "no frontmatter\n").unwrap();
    let out = Command::new(bin())
        .arg("submit")
        .arg(&task)
        .env_remove("CCL_DELEGATE_CONFIG")
        .env("XDG_CONFIG_HOME", tmp.path().join("no-config"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(10), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "local 7\n");
}

#[test]
fn init_defaults_to_the_current_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = init(tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("created .agent-queue/inbox\n"));
    assert!(tmp.path().join(".agent-queue/failed").is_dir());
}

#[test]
fn init_again_changes_nothing_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(init(tmp.path(), &["."]).status.code(), Some(0));
    let q = tmp.path().join(".agent-queue");
    fs::write(q.join("inbox/a.md"), "task a\n").unwrap();
    fs::write(q.join("done/b.md"), "record b\n").unwrap();
    fs::remove_dir(q.join("failed")).unwrap();
    // One missing directory: only it is made.
    let out = init(tmp.path(), &["."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "created ./.agent-queue/failed\n");
    // Nothing missing: one line, exit 0.
    let out = init(tmp.path(), &["."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "already there: ./.agent-queue/{inbox,done,failed}\n"
    );
    assert_eq!(fs::read(q.join("inbox/a.md")).unwrap(), b"task a\n");
    assert_eq!(fs::read(q.join("done/b.md")).unwrap(), b"record b\n");
}

#[test]
fn init_refuses_a_dir_that_is_not_a_directory_or_a_queue_that_is_a_link_or_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fs::write(t.join("file"), "x").unwrap();
    fs::create_dir_all(t.join("linked")).unwrap();
    fs::create_dir_all(t.join("elsewhere")).unwrap();
    symlink(t.join("elsewhere"), t.join("linked/.agent-queue")).unwrap();
    fs::create_dir_all(t.join("filed")).unwrap();
    fs::write(t.join("filed/.agent-queue"), "x").unwrap();
    fs::create_dir_all(t.join("half/.agent-queue")).unwrap();
    fs::write(t.join("half/.agent-queue/done"), "x").unwrap();
    for (dir, says) in [
        ("file", "not a directory"),
        ("missing", "no such directory"),
        ("linked", "symbolic link"),
        ("filed", "not a directory"),
        ("half", "not a directory"),
    ] {
        let out = init(t, &[dir]);
        assert_eq!(out.status.code(), Some(64), "init {dir}");
        assert!(
            text(&out.stderr).contains(says),
            "init {dir}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stdout).is_empty(), "init {dir} printed on stdout");
    }
    // Nothing was made anywhere: not through the link, not beside the file.
    assert_eq!(fs::read_dir(t.join("elsewhere")).unwrap().count(), 0);
    assert!(!t.join("half/.agent-queue/inbox").exists());
    assert!(!t.join("missing").exists());
}
