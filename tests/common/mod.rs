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
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the mock: {line:?}"))
            .to_string();
        let addr = url.trim_start_matches("http://").to_string();
        Mock { child, url, addr }
    }

    /// A plain HTTP/1.1 request to the mock; gives the whole answer and
    /// its body.
    fn raw(&self, method: &str, path: &str, headers: &str, body: &str) -> (String, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        (resp, body)
    }

    /// A request to the mock's admin endpoints.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let (_, body) = self.raw(method, path, "", body);
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
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
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
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
        assert_eq!(
            self.code, code,
            "exit code; stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

// ---------------------------------------------------------------------------
// Crash, fault and hostile-input helpers (tests/crash.rs, faults.rs,
// server_faults.rs, hostile.rs, concurrency.rs).
// ---------------------------------------------------------------------------

use std::collections::BTreeMap;

/// Prefix of the temporary files ccl-delegate writes in `.agent-queue/`.
pub const TMP_PREFIX: &str = ".ccl-delegate-tmp-";

impl Mock {
    /// Creates a job directly on the mock (as a submit would) and returns
    /// its id.
    pub fn post_job(&self, key: &str, task: &str) -> String {
        let body = serde_json::json!({
            "type": "analyze",
            "priority": "normal",
            "prompt": format!("Task: {task}\n\n(set up by the test)"),
            "metadata": {"project": "proj", "task": task},
        })
        .to_string();
        let headers = format!("Authorization: Bearer {KEY}\r\nIdempotency-Key: {key}\r\n");
        let (resp, body) = self.raw("POST", "/api/v1/jobs", &headers, &body);
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("mock answered {resp:?} to a job creation: {e}"));
        v["job_id"]
            .as_str()
            .expect("job_id in the answer")
            .to_string()
    }

    /// The mock's jobs, as `stats()` lists them.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        self.stats()["jobs"].as_array().cloned().unwrap_or_default()
    }
}

/// A marker in this tool's JSON format.
pub fn marker_json(pending: bool, job_id: Option<&str>, key: &str, started_at: &str) -> String {
    serde_json::json!({
        "version": 1,
        "state": if pending { "pending" } else { "submitted" },
        "project": "proj",
        "task_file": "",
        "job_id": job_id,
        "provider": "gemini",
        "priority": "normal",
        "idempotency_key": key,
        "started_at": started_at,
        "poll_errors": 0,
        "last_error": null,
    })
    .to_string()
}

/// An RFC 3339 time `secs_ago` seconds in the past.
pub fn rfc3339_ago(secs_ago: u64) -> String {
    let t = std::time::SystemTime::now() - Duration::from_secs(secs_ago);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Project {
    /// Writes `inbox/<task>.delegated`.
    pub fn write_marker(&self, task: &str, json: &str) -> PathBuf {
        let p = self.inbox().join(format!("{task}.delegated"));
        std::fs::write(&p, json).unwrap();
        p
    }

    /// Runs `reap` until it exits 0 and leaves no marker (at most `max`
    /// runs); returns the last run.
    pub fn reap_until_settled(&self, mock: &Mock, extra: &[&str], max: usize) -> Out {
        let mut last = None;
        for _ in 0..max {
            let out = self.reap(mock, extra);
            let markers = self
                .names(&self.inbox())
                .iter()
                .any(|n| n.ends_with(".delegated"));
            let ok = out.code == 0 && !markers;
            last = Some(out);
            if ok {
                break;
            }
        }
        last.expect("max > 0")
    }
}

/// A small deterministic generator for the randomised tests.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from `env` when set (to replay a failure), else from the
    /// clock; the seed is printed.
    pub fn from_env(env: &str) -> Rng {
        let seed = std::env::var(env)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("random seed: {env}={seed}");
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A done/ or failed/ file, read back independently of the crate's parser.
#[derive(Debug)]
pub struct RecordFile {
    pub keys: Vec<String>,
    pub map: serde_yaml::Mapping,
    pub task_bytes: usize,
    pub task_missing: bool,
    pub job_id: Option<String>,
}

impl RecordFile {
    /// Parses the frontmatter (opening `---` line, YAML mapping, first line
    /// that is `---` or `...`) and checks `task_bytes`.
    pub fn parse(bytes: &[u8]) -> Result<RecordFile, String> {
        let text = std::str::from_utf8(bytes.get(..bytes.len().min(64 * 1024)).unwrap_or(bytes))
            .or_else(|e| std::str::from_utf8(&bytes[..e.valid_up_to()]))
            .map_err(|e| e.to_string())?;
        let rest = text
            .strip_prefix("---\n")
            .ok_or("does not open with `---`")?;
        let mut yaml_len = None;
        let mut pos = 0;
        for line in rest.split_inclusive('\n') {
            // The design's closing line: `---` or `...`, trailing blanks.
            let content = line
                .trim_end_matches(['\n', '\r'])
                .trim_end_matches([' ', '\t']);
            if content == "---" || content == "..." {
                yaml_len = Some(pos);
                break;
            }
            pos += line.len();
        }
        let yaml = &rest[..yaml_len.ok_or("no closing `---` line")?];
        let map: serde_yaml::Mapping =
            serde_yaml::from_str(yaml).map_err(|e| format!("frontmatter is not a mapping: {e}"))?;
        let keys = map
            .keys()
            .map(|k| {
                k.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{k:?}"))
            })
            .collect();
        let task_bytes = map
            .get("task_bytes")
            .and_then(serde_yaml::Value::as_u64)
            .ok_or("no integer task_bytes")? as usize;
        if task_bytes > bytes.len() {
            return Err(format!(
                "task_bytes {task_bytes} > file size {}",
                bytes.len()
            ));
        }
        let task_missing = map
            .get("task_missing")
            .and_then(serde_yaml::Value::as_bool)
            .unwrap_or(false);
        if map
            .get("status")
            .and_then(serde_yaml::Value::as_str)
            .is_none()
        {
            return Err("no status".into());
        }
        let job_id = map
            .get("job_id")
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_string);
        Ok(RecordFile {
            keys,
            map,
            task_bytes,
            task_missing,
            job_id,
        })
    }

    /// The original task: the file's last `task_bytes` bytes.
    pub fn original<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[bytes.len() - self.task_bytes..]
    }
}

/// Where [`check_invariant`] found the tasks.
#[derive(Debug, Default, Clone)]
pub struct Found {
    pub inbox: usize,
    pub done: usize,
    pub failed: usize,
    pub markers: usize,
    /// Temporary files in `.agent-queue/` (debris of a killed run).
    pub debris: usize,
}

/// `<id>` of `<id>.md` or `<id>.<N>.md` (N >= 2) when `<id>` is a task of
/// `originals`.
fn record_id<'a>(name: &str, originals: &'a BTreeMap<String, Vec<u8>>) -> Option<&'a String> {
    let stem = name.strip_suffix(".md")?;
    if let Some((k, _)) = originals.get_key_value(stem) {
        return Some(k);
    }
    let (id, n) = stem.rsplit_once('.')?;
    let n: u32 = n.parse().ok()?;
    (n >= 2).then_some(())?;
    originals.get_key_value(id).map(|(k, _)| k)
}

/// The design's invariant for the tasks `originals` (`<id>` → bytes of
/// `inbox/<id>.md`): each is found whole in `inbox/<id>.md`, `done/<id>*.md`
/// or `failed/<id>*.md` (as the file's last `task_bytes` bytes) — at least
/// once after a kill, exactly once when `settled` (after a run that
/// finished). Always: no file in inbox/done/failed is partial or altered, no
/// task has two records, no temporary file is visible in inbox/, done/ or
/// failed/. When `settled`: no debris in `.agent-queue/` and no marker
/// without its task.
pub fn check_invariant(
    p: &Project,
    originals: &BTreeMap<String, Vec<u8>>,
    settled: bool,
) -> Result<Found, String> {
    let mut errors = Vec::new();
    let mut found = Found::default();
    let mut whole: BTreeMap<&String, Vec<String>> = BTreeMap::new();
    let mut records: BTreeMap<&String, Vec<String>> = BTreeMap::new();
    let mut markers = Vec::new();

    for name in p.names(&p.inbox()) {
        let path = p.inbox().join(&name);
        if name.starts_with(TMP_PREFIX) || name.starts_with('.') {
            errors.push(format!("temporary or hidden file visible: inbox/{name}"));
        } else if let Some(task) = name.strip_suffix(".delegated") {
            found.markers += 1;
            markers.push(task.to_string());
        } else if let Some((id, orig)) = name
            .strip_suffix(".md")
            .and_then(|s| originals.get_key_value(s))
        {
            let bytes = std::fs::read(&path).map_err(|e| format!("inbox/{name}: {e}"))?;
            if &bytes != orig {
                errors.push(format!(
                    "inbox/{name}: {} bytes, not the original {} bytes (truncated or altered)",
                    bytes.len(),
                    orig.len()
                ));
            } else {
                found.inbox += 1;
                whole.entry(id).or_default().push(format!("inbox/{name}"));
            }
        }
    }
    for (dir, label) in [(p.done(), "done"), (p.failed(), "failed")] {
        for name in p.names(&dir) {
            let shown = format!("{label}/{name}");
            if name.starts_with(TMP_PREFIX) || name.starts_with('.') {
                errors.push(format!("temporary or hidden file visible: {shown}"));
                continue;
            }
            let Some(id) = record_id(&name, originals) else {
                errors.push(format!("{shown}: not named after a known task"));
                continue;
            };
            records.entry(id).or_default().push(shown.clone());
            let bytes = std::fs::read(dir.join(&name)).map_err(|e| format!("{shown}: {e}"))?;
            let rec = match RecordFile::parse(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(format!("{shown}: partial or unreadable record: {e}"));
                    continue;
                }
            };
            let want = if label == "done" {
                "completed"
            } else {
                "failed"
            };
            if rec.map.get("status").and_then(serde_yaml::Value::as_str) != Some(want) {
                errors.push(format!("{shown}: status is not {want}"));
            }
            let orig = &originals[id];
            if rec.task_missing {
                if rec.task_bytes != 0 {
                    errors.push(format!(
                        "{shown}: task_missing with task_bytes {}",
                        rec.task_bytes
                    ));
                }
                continue;
            }
            let header = format!("## Original task ({id}.md)\n");
            let before = &bytes[..bytes.len() - rec.task_bytes];
            if rec.task_bytes != orig.len() || rec.original(&bytes) != orig.as_slice() {
                errors.push(format!(
                    "{shown}: the original task is not its last {} bytes (task_bytes {}; truncated or altered)",
                    orig.len(),
                    rec.task_bytes
                ));
            } else if !before.ends_with(header.as_bytes()) {
                errors.push(format!(
                    "{shown}: no `{}` line before the task",
                    header.trim_end()
                ));
            } else {
                if label == "done" {
                    found.done += 1;
                } else {
                    found.failed += 1;
                }
                whole.entry(id).or_default().push(shown);
            }
        }
    }
    for (id, files) in &records {
        if files.len() > 1 {
            errors.push(format!(
                "{id}: duplicated: {} records: {files:?}",
                files.len()
            ));
        }
    }
    for id in originals.keys() {
        let at = whole.get(id).map(Vec::as_slice).unwrap_or_default();
        match at.len() {
            0 => errors.push(format!("{id}: LOST: not found whole anywhere")),
            1 => {}
            _ if settled => errors.push(format!(
                "{id}: found in {} places after a finished run: {at:?}",
                at.len()
            )),
            _ => {}
        }
    }
    for name in p.names(&p.queue()) {
        if name.starts_with(TMP_PREFIX) {
            found.debris += 1;
            if settled {
                errors.push(format!(
                    "debris left after a finished run: .agent-queue/{name}"
                ));
            }
        }
    }
    if settled {
        for task in &markers {
            let id = task.strip_suffix(".md").unwrap_or(task);
            let in_inbox = p.inbox().join(task).exists();
            if !in_inbox && originals.contains_key(id) {
                errors.push(format!(
                    "marker {task}.delegated without its task after a finished run"
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(found)
    } else {
        Err(errors.join("\n"))
    }
}

// ---------------------------------------------------------------------------
// Helpers of tests/cycle.rs and tests/inspect.rs: what a run left on disk and
// on the mock, read independently of the crate's own parsers.
// ---------------------------------------------------------------------------

/// A file of done/ or failed/ with its bytes: the design's layout (`---`,
/// YAML, `---`, text, and the original task as the last `task_bytes` bytes).
#[derive(Debug)]
pub struct Record {
    pub bytes: Vec<u8>,
    pub file: RecordFile,
}

impl Record {
    #[track_caller]
    pub fn read(path: &Path) -> Record {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let file = RecordFile::parse(&bytes).unwrap_or_else(|e| {
            panic!(
                "{}: {e}:\n{}",
                path.display(),
                String::from_utf8_lossy(&bytes)
            )
        });
        Record { bytes, file }
    }

    /// A frontmatter value as a string (`None` when absent or not a string).
    pub fn str(&self, key: &str) -> Option<&str> {
        self.file.map.get(key).and_then(serde_yaml::Value::as_str)
    }

    pub fn get(&self, key: &str) -> Option<&serde_yaml::Value> {
        self.file.map.get(key)
    }

    /// The original task: the file's last `task_bytes` bytes.
    pub fn original(&self) -> &[u8] {
        self.file.original(&self.bytes)
    }

    /// Everything after the frontmatter's closing line, up to the original
    /// task.
    pub fn text(&self) -> String {
        let without_task = &self.bytes[..self.bytes.len() - self.file.task_bytes];
        let s = String::from_utf8_lossy(without_task).into_owned();
        let after_open = s.strip_prefix("---\n").expect("opens with ---");
        let close = after_open.find("\n---\n").expect("closing ---");
        after_open[close + 5..].to_string()
    }
}

/// Every file, directory and symlink under `dir` with its bytes (a
/// symlink's target), for "nothing was written" checks.
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(p, target.to_string_lossy().into_owned().into_bytes());
            } else if ft.is_dir() {
                out.insert(p.clone(), b"<dir>".to_vec());
                walk(&p, out);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

/// The permission bits of a file (not following a symlink).
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// A loopback URL on which nothing listens.
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

impl Mock {
    /// `jobs_created` of the mock's stats.
    pub fn jobs_created(&self) -> u64 {
        self.stats()["jobs_created"].as_u64().unwrap()
    }

    /// `requests` of the mock's stats: every /api request it received.
    pub fn requests(&self) -> u64 {
        self.stats()["requests"].as_u64().unwrap()
    }

    /// The mock's view of one job (an entry of `jobs` in its stats).
    #[track_caller]
    pub fn job(&self, id: &str) -> serde_json::Value {
        self.jobs()
            .into_iter()
            .find(|j| j["job_id"] == id)
            .unwrap_or_else(|| panic!("the mock has no job {id}"))
    }
}

impl Project {
    pub fn marker_path(&self, task: &str) -> PathBuf {
        self.inbox().join(format!("{task}.delegated"))
    }

    /// The marker beside `inbox/<task>`, parsed; `None` when there is none.
    pub fn marker(&self, task: &str) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.marker_path(task)).ok()?;
        Some(serde_json::from_slice(&bytes).expect("marker is JSON"))
    }

    /// Like [`Project::run`], with `input` on stdin.
    pub fn run_with_stdin(&self, mock: Option<&Mock>, args: &[&str], input: &[u8]) -> Out {
        let mut child = self
            .cmd(mock)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ccl-delegate");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let o = child.wait_with_output().unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// `submit inbox/<task>` against `mock`, expecting exit 0 and
    /// `delegated <provider> <job>`; returns the job id.
    #[track_caller]
    pub fn submit_ok(&self, mock: &Mock, task: &str) -> String {
        let path = self.inbox().join(task);
        let out = self.run(Some(mock), &["submit", path.to_str().unwrap()]);
        out.expect(0);
        let line = out.stdout.trim_end();
        let words: Vec<&str> = line.split(' ').collect();
        assert!(
            words.len() == 3 && words[0] == "delegated",
            "stdout: {line:?}"
        );
        words[2].to_string()
    }
}

/// `flock <lock> sleep 60` in its own process group: a lock held by a
/// shell, as flock(1) takes it, until the group is killed on drop.
pub struct ShellLock(Child);

impl ShellLock {
    pub fn hold(lock: &Path) -> ShellLock {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        // -o: only flock itself holds the lock (not `sleep`), so it is
        // released once flock is reaped.
        let child = Command::new("flock")
            .arg("-o")
            .arg(lock)
            .args(["sleep", "60"])
            .process_group(0)
            .stdout(Stdio::null())
            .spawn()
            .expect("flock(1) is installed");
        let t0 = std::time::Instant::now();
        // Held once a non-blocking flock finds it taken (exit 42 by -E).
        while Command::new("flock")
            .args(["-n", "-E", "42"])
            .arg(lock)
            .arg("true")
            .status()
            .unwrap()
            .code()
            != Some(42)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "flock never took the lock"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        ShellLock(child)
    }
}

impl Drop for ShellLock {
    fn drop(&mut self) {
        // SAFETY: signals the process group this helper started, by its id.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// The mock's own API, spoken directly (tests/mock.rs).
// ---------------------------------------------------------------------------

impl Mock {
    /// An authorised request to the mock's API: the status code and the
    /// body text.
    pub fn api(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
        let headers = format!("Authorization: Bearer {KEY}\r\n{headers}");
        let (resp, body) = self.raw(method, path, &headers, body);
        (status_code(&resp), body)
    }

    /// Creates a job asking for `preferred_ai` (`None`: auto) and returns
    /// its id.
    #[track_caller]
    pub fn post_job_as(&self, key: &str, task: &str, preferred_ai: Option<&str>) -> String {
        let mut body = serde_json::json!({
            "type": "analyze",
            "priority": "normal",
            "prompt": format!("Task: {task}\n\n(set up by the test)"),
            "metadata": {"project": "proj", "task": task},
        });
        if let Some(p) = preferred_ai {
            body["preferred_ai"] = p.into();
        }
        let (code, text) = self.api(
            "POST",
            "/api/v1/jobs",
            &format!("Idempotency-Key: {key}\r\n"),
            &body.to_string(),
        );
        assert!(code == 200 || code == 201, "job creation: {code} {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON answer");
        v["job_id"].as_str().expect("job_id").to_string()
    }

    /// Polls a job until its status is terminal (at most 20 polls) and
    /// returns the last status object.
    #[track_caller]
    pub fn poll_until_terminal(&self, id: &str) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        for _ in 0..20 {
            let (code, text) = self.api("GET", &format!("/api/v1/jobs/{id}"), "", "");
            assert_eq!(code, 200, "status of {id}: {text}");
            last = serde_json::from_str(&text).expect("JSON status");
            let s = last["status"].as_str().unwrap_or_default();
            if ["completed", "failed", "cancelled", "expired"].contains(&s) {
                return last;
            }
        }
        panic!("{id} never reached a terminal status: {last}");
    }
}

/// The status code of a raw HTTP answer (0 when there is none).
pub fn status_code(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Small helpers shared by the cycle, hostile and fault tests.
// ---------------------------------------------------------------------------

/// A task with this YAML frontmatter and a one-line body.
pub fn fm(yaml: &str) -> Vec<u8> {
    format!("---\n{yaml}\n---\nDo the thing.\n").into_bytes()
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The lines a run printed on stdout.
pub fn lines(out: &Out) -> Vec<&str> {
    out.stdout.lines().collect()
}

/// The keys of a JSON object, sorted.
pub fn keys(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

pub fn set(names: &[&str]) -> std::collections::BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The job ids of the host's ledger, and of the done/failed records, each
/// sorted (a record without a job id, a submission never confirmed, is
/// left out of both).
pub fn ledger_and_record_ids(p: &Project) -> (Vec<String>, Vec<String>) {
    let mut entries: Vec<String> = p
        .ledger()
        .iter()
        .filter_map(|e| e["job_id"].as_str().map(String::from))
        .collect();
    entries.sort();
    let mut records = Vec::new();
    for dir in [p.done(), p.failed()] {
        for n in p.names(&dir) {
            if let Some(id) = Record::read(&dir.join(n)).str("job_id") {
                records.push(id.to_string());
            }
        }
    }
    records.sort();
    (entries, records)
}

/// No idempotency key made two jobs on the mock.
pub fn check_one_job_per_key(mock: &Mock, context: &str) {
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for j in mock.jobs() {
        let key = j["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *per_key.entry(key).or_default() += 1;
    }
    for (key, n) in &per_key {
        assert!(*n <= 1, "{context}: idempotency key {key} made {n} jobs");
    }
}

// ---------------------------------------------------------------------------
// The books (policy.md "The ledger"), read through the crate's library as
// any run reads them: the ledger's entries and the jobs in flight.
// ---------------------------------------------------------------------------

impl Project {
    /// The host's state directory (`$XDG_STATE_HOME/ccl-delegate`).
    pub fn state_dir(&self) -> PathBuf {
        self.home.join(".local/state/ccl-delegate")
    }

    /// The books' store under the state directory.
    pub fn books_path(&self) -> PathBuf {
        ccl_delegate::books::path(&self.state_dir())
    }

    /// The books, opened as a run opens them (an old `ledger.jsonl` is
    /// imported by the first opening); `None` when the host has none yet.
    #[track_caller]
    pub fn books(&self) -> Option<ccl_delegate::books::Books> {
        ccl_delegate::books::open_if_present(&self.state_dir(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("the books cannot be opened: {e:#}"))
    }

    /// Every ledger entry, oldest first, as the JSON an entry serialises to
    /// (`job_id`, `provider`, `status`, `cost_cad`, `tokens_in`, ...);
    /// empty when there are no books.
    #[track_caller]
    pub fn ledger(&self) -> Vec<serde_json::Value> {
        self.entries()
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    /// The jobs in flight the books hold (one per marker pending or
    /// submitted), by idempotency key; empty when there are no books.
    #[track_caller]
    pub fn reservations(&self) -> Vec<ccl_delegate::books::Reservation> {
        self.books().map_or_else(Vec::new, |b| {
            b.reservations()
                .unwrap_or_else(|e| panic!("the reservations cannot be read: {e:#}"))
        })
    }

    /// Another project under the same temp directory, with its own queue,
    /// sharing this one's home (config and books).
    pub fn sibling(&self, name: &str) -> Project {
        let dir = self.tmp.path().join(name);
        for d in ["inbox", "done", "failed"] {
            std::fs::create_dir_all(dir.join(".agent-queue").join(d)).unwrap();
        }
        Project {
            tmp: tempfile::tempdir().unwrap(),
            dir,
            home: self.home.clone(),
        }
    }
}

/// The books' write lock held by a stranger: an open `BEGIN IMMEDIATE`
/// transaction on the store, as a long writer holds it, until dropped.
pub struct BooksLock(rusqlite::Connection);

impl BooksLock {
    /// Makes the books (as the first run would) and takes their write lock.
    pub fn hold(state_dir: &Path) -> BooksLock {
        drop(
            ccl_delegate::books::Books::open(state_dir, Duration::from_secs(5))
                .expect("the books open"),
        );
        let c = rusqlite::Connection::open(ccl_delegate::books::path(state_dir)).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        BooksLock(c)
    }
}

// ---------------------------------------------------------------------------
// Shared fixtures: the config file, the state directory's files, the
// ledger's entries and the `report --json` rows, and the checks on what a
// run printed.
// ---------------------------------------------------------------------------

/// A task that routes to `gemini`.
pub const GEMINI: &[u8] = b"---\npreferred_ai: gemini\n---\nDo it.\n";

/// A task asking for `provider`, with `fallback: [<fallback>]` unless
/// `fallback` is empty.
pub fn provider_task(provider: &str, fallback: &str) -> Vec<u8> {
    let fb = if fallback.is_empty() {
        String::new()
    } else {
        format!("fallback: [{fallback}]\n")
    };
    fm(&format!("preferred_ai: {provider}\n{fb}"))
}

/// One line of an earlier version's `ledger.jsonl`, as it wrote them.
#[allow(clippy::too_many_arguments)]
pub fn ledger_line(
    id: &str,
    project: &str,
    provider: &str,
    model: &str,
    status: &str,
    cost: f64,
    tokens: (u64, u64),
    delegated_at: &str,
    finished_at: &str,
) -> String {
    serde_json::json!({
        "job_id": id, "project": project, "task": format!("{id}.md"),
        "provider": provider, "model": model, "status": status, "cost_cad": cost,
        "tokens_in": tokens.0, "tokens_out": tokens.1,
        "delegated_at": delegated_at, "finished_at": finished_at,
    })
    .to_string()
        + "\n"
}

impl Project {
    /// The directory of the config file the runs find by default.
    pub fn config_dir(&self) -> PathBuf {
        self.home.join(".config/ccl-delegate")
    }

    /// Writes the config file the runs find by default; gives its path.
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let dir = self.config_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(&file, yaml).unwrap();
        file
    }

    /// The default run lock, under the state directory.
    pub fn reap_lock(&self) -> PathBuf {
        self.state_dir().join("reap.lock")
    }

    /// A ledger of an earlier version, which the first run imports.
    pub fn old_ledger(&self) -> PathBuf {
        self.state_dir().join("ledger.jsonl")
    }

    /// Writes [`Project::old_ledger`] from [`ledger_line`]s.
    pub fn write_old_ledger(&self, lines: &[String]) {
        std::fs::create_dir_all(self.state_dir()).unwrap();
        std::fs::write(self.old_ledger(), lines.concat()).unwrap();
    }

    /// Every ledger entry, oldest first, as the library reads it.
    #[track_caller]
    pub fn entries(&self) -> Vec<ccl_delegate::books::Entry> {
        self.books().map_or_else(Vec::new, |b| {
            b.entries()
                .unwrap_or_else(|e| panic!("the ledger cannot be read: {e:#}"))
        })
    }

    /// A run's `--json` output (the run must exit 0).
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(None, args);
        out.expect(0);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }

    /// `report --json --by <by>`.
    #[track_caller]
    pub fn report_json(&self, by: &str) -> serde_json::Value {
        self.json(&["report", "--json", "--by", by])
    }

    /// Creates a job on the mock and a `submitted` marker for it beside
    /// `inbox/<task>` (a task routed to gemini); gives the job id.
    pub fn delegated(&self, mock: &Mock, task: &str, started_at: &str) -> String {
        self.task(task, GEMINI);
        let hash = task.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let key = format!("ccl-test-{hash:016x}");
        let job = mock.post_job(&key, task);
        self.write_marker(task, &marker_json(false, Some(&job), &key, started_at));
        job
    }
}

/// The row of a `report --json` whose `<by>` is `key`.
pub fn row<'a>(
    report: &'a serde_json::Value,
    by: &str,
    key: &str,
) -> Option<&'a serde_json::Value> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[by] == key)
}

/// Makes a FIFO at `p`.
pub fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(s(p)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Runs `cmd` and fails the test if it has not ended within `limit`: a
/// hang is the defect these tests look for.
#[track_caller]
pub fn run_within(cmd: &mut Command, limit: Duration) -> (Out, Duration) {
    let start = std::time::Instant::now();
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
pub fn assert_clean(what: &str, text: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    assert!(bad.is_empty(), "{what} holds raw {bad:?}: {text:?}");
}

/// No ESC, CR, BEL or CSI on a run's stdout or stderr.
#[track_caller]
pub fn no_raw_controls(out: &Out) {
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        for c in ['\x1b', '\r', '\x07', '\u{9b}'] {
            assert!(!text.contains(c), "{name} holds {c:?}: {text:?}");
        }
    }
}
