//! The floor of `ccl-delegate submit`, for tests/bench/bench.py: one
//! process doing only what any submit must do, with the same system calls.
//!
//!   1. start (a Rust binary, linked like ccl-delegate: see bench.py);
//!   2. read the task;
//!   3. write the pending marker durably: a temporary file in the queue
//!      root written, chmod 0644, fsynced, renamed into place without
//!      replacing (renameat2 RENAME_NOREPLACE), the inbox fsynced;
//!   4. one POST /api/v1/jobs on a fresh loopback connection, answer read;
//!   5. rewrite the marker with the job id durably: a temporary file
//!      written, fsynced, renamed over the marker, the inbox fsynced.
//!
//! No config, no routing, no lock, no JSON library: whatever submit spends
//! beyond this is its own.
//!
//!   submit-floor ROOT INBOX MARKER_NAME HOST:PORT API_KEY IDEMPOTENCY_KEY TASK_FILE
//!
//! Not part of the tool; compiled by the benchmark with rustc.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::exit;

unsafe extern "C" {
    fn renameat2(olddirfd: i32, old: *const std::ffi::c_char, newdirfd: i32,
                 new: *const std::ffi::c_char, flags: u32) -> i32;
}

const AT_FDCWD: i32 = -100;
const RENAME_NOREPLACE: u32 = 1;

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("submit-floor: {what}: {e}");
    exit(1)
}

fn durable_write(root: &Path, inbox: &Path, target: &Path, bytes: &[u8], n: u32, replace: bool) {
    let tmp = root.join(format!(".floor-tmp-{}-{n}", std::process::id()));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap_or_else(|e| die("create", e));
    f.write_all(bytes).unwrap_or_else(|e| die("write", e));
    f.set_permissions(Permissions::from_mode(0o644))
        .unwrap_or_else(|e| die("chmod", e));
    f.sync_all().unwrap_or_else(|e| die("fsync", e));
    drop(f);
    if replace {
        fs::rename(&tmp, target).unwrap_or_else(|e| die("rename", e));
    } else {
        let a = CString::new(tmp.as_os_str().as_bytes()).unwrap();
        let b = CString::new(target.as_os_str().as_bytes()).unwrap();
        // SAFETY: both are valid NUL-terminated paths for the call.
        if unsafe { renameat2(AT_FDCWD, a.as_ptr(), AT_FDCWD, b.as_ptr(), RENAME_NOREPLACE) } != 0 {
            die("renameat2", std::io::Error::last_os_error());
        }
    }
    File::open(inbox)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| die("dirsync", e));
}

fn marker(task: &str, key: &str, state: &str, job: Option<&str>) -> Vec<u8> {
    let job = job.map_or("null".to_string(), |j| format!("\"{j}\""));
    format!(
        "{{\n  \"version\": 1,\n  \"state\": \"{state}\",\n  \"project\": \"/bench\",\n  \
         \"task_file\": \"{task}\",\n  \"job_id\": {job},\n  \"provider\": \"gemini\",\n  \
         \"priority\": \"normal\",\n  \"idempotency_key\": \"{key}\",\n  \
         \"started_at\": \"2026-01-01T00:00:00Z\",\n  \"poll_errors\": 0,\n  \
         \"last_error\": null\n}}\n"
    )
    .into_bytes()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 8 {
        die("usage", "ROOT INBOX MARKER_NAME HOST:PORT API_KEY IDEMPOTENCY_KEY TASK_FILE");
    }
    let (root, inbox, name) = (Path::new(&a[1]), Path::new(&a[2]), &a[3]);
    let (addr, api_key, key) = (&a[4], &a[5], &a[6]);
    let task = fs::read(&a[7]).unwrap_or_else(|e| die("read the task", e));
    let target = inbox.join(name);

    durable_write(root, inbox, &target, &marker(name, key, "pending", None), 1, false);

    // The request: a job body carrying the task, as submit's (its text
    // escaped for JSON by hand: the bench's task has no quote or backslash).
    let text = String::from_utf8_lossy(&task).replace('\n', "\\n");
    let body = format!(
        "{{\"type\":\"analyze\",\"priority\":\"normal\",\"prompt\":\"Task: {name}\\n\\n{text}\",\
         \"preferred_ai\":\"gemini\",\"source\":\"ccl-delegate/bench\",\
         \"metadata\":{{\"project\":\"floor\",\"task\":\"{name}\"}}}}"
    );
    let req = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {api_key}\r\n\
         Idempotency-Key: {key}\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr.as_str()).unwrap_or_else(|e| die("connect", e));
    s.set_nodelay(true).unwrap_or_else(|e| die("nodelay", e));
    s.write_all(req.as_bytes()).unwrap_or_else(|e| die("send", e));
    // The answer: headers, then Content-Length bytes (no wait for a close).
    let mut got = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    let mut want: Option<usize> = None;
    loop {
        let n = s.read(&mut buf).unwrap_or_else(|e| die("receive", e));
        got.extend_from_slice(&buf[..n]);
        if want.is_none()
            && let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or_else(|| die("answer", "no content-length"));
            want = Some(end + 4 + len);
        }
        if n == 0 || want.is_some_and(|w| got.len() >= w) {
            break;
        }
    }
    if !(got.starts_with(b"HTTP/1.1 201") || got.starts_with(b"HTTP/1.1 200")) {
        die("answer", String::from_utf8_lossy(&got[..got.len().min(80)]));
    }
    let text = String::from_utf8_lossy(&got);
    let job = text
        .split("\"job_id\":")
        .nth(1)
        .and_then(|t| t.trim_start().strip_prefix('"'))
        .and_then(|t| t.split('"').next())
        .unwrap_or_else(|| die("answer", "no job_id"))
        .to_string();
    drop(s);

    durable_write(root, inbox, &target, &marker(name, key, "submitted", Some(&job)), 2, true);
}
