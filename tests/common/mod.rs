//! Test helpers: a temp project with an inbox, a real `secutools-mock` on a
//! free loopback port, and the real `ccl-delegate` binary run against them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const KEY: &str = "test-key-0123456789";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ccl-delegate")
}

pub fn mock_bin() -> &'static str {
    env!("CARGO_BIN_EXE_secutools-mock")
}

/// A running `secutools-mock`, killed on drop.
pub struct Mock {
    child: Child,
    pub url: String,
    pub addr: String,
}

impl Mock {
    /// Starts the mock with `--port 0` and these extra flags; expects the
    /// key [`KEY`].
    pub fn start(args: &[&str]) -> Mock {
        let mut child = Command::new(mock_bin())
            .args(["--port", "0", "--api-key", KEY])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start secutools-mock");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the mock: {line:?}"))
            .to_string();
        let addr = url.trim_start_matches("http://").to_string();
        Mock { child, url, addr }
    }

    /// A plain HTTP/1.1 request to the mock's admin endpoints.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
    }

    pub fn stats(&self) -> serde_json::Value {
        self.admin("GET", "/_mock/stats", "")
    }

    pub fn faults(&self, spec: serde_json::Value) {
        self.admin("POST", "/_mock/faults", &spec.to_string());
    }

    pub fn set(&self, spec: serde_json::Value) {
        self.admin("POST", "/_mock/override", &spec.to_string());
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temp directory holding a home (for XDG paths) and one project.
pub struct Project {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub home: PathBuf,
}

impl Project {
    pub fn new() -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("proj");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(dir.join(".agent-queue/inbox")).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        Project { tmp, dir, home }
    }

    pub fn queue(&self) -> PathBuf {
        self.dir.join(".agent-queue")
    }
    pub fn inbox(&self) -> PathBuf {
        self.queue().join("inbox")
    }
    pub fn done(&self) -> PathBuf {
        self.queue().join("done")
    }
    pub fn failed(&self) -> PathBuf {
        self.queue().join("failed")
    }

    /// Writes `inbox/<name>` and returns its path.
    pub fn task(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.inbox().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Sorted file names in a directory (empty when it does not exist).
    pub fn names(&self, dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `ccl-delegate` with a clean environment pointing at `mock`.
    pub fn cmd(&self, mock: Option<&Mock>) -> Command {
        let mut c = Command::new(bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("XDG_STATE_HOME", self.home.join(".local/state"))
            .stdin(Stdio::null());
        if let Some(m) = mock {
            c.env("SECUTOOLS_URL", &m.url).env("SECUTOOLS_API_KEY", KEY);
        }
        c
    }

    pub fn run(&self, mock: Option<&Mock>, args: &[&str]) -> Out {
        Out::of(self.cmd(mock).args(args))
    }

    pub fn reap(&self, mock: &Mock, extra: &[&str]) -> Out {
        let dir = self.dir.to_str().unwrap().to_string();
        let mut args = vec!["reap", "--project", dir.as_str(), "--submit-grace", "0s"];
        args.extend_from_slice(extra);
        self.run(Some(mock), &args)
    }
}

/// What a finished run printed and returned.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn of(cmd: &mut Command) -> Out {
        let o = cmd.output().expect("run ccl-delegate");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn expect(&self, code: i32) -> &Out {
        assert_eq!(self.code, code, "exit code; stdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }
}
