//! The queue lock: flock(2) on `.ccl-delegate.lock` across processes, a
//! gate (condition variable) between the threads of one process, waited
//! for at most `lock_timeout`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{LOCK_NAME, Queue, shown};
use crate::error::{Code, fail};

/// Proof that the queue lock is held; mutating calls take it.
pub struct QueueLock {
    file: File,
    gate: std::sync::Arc<Gate>,
}

impl Drop for QueueLock {
    fn drop(&mut self) {
        // The flock(2) goes first, so the thread the gate lets in next
        // finds it free.
        let _ = self.file.unlock();
        self.gate.open();
    }
}

/// The threads of one process take a queue's lock in turn, waiting on a
/// condition variable: flock(2) locks of separate opens exclude each other
/// even within a process, and polling them (as across processes) would
/// make a reap's threads sleep while the lock is free.
#[derive(Default)]
struct Gate {
    busy: std::sync::Mutex<bool>,
    freed: std::sync::Condvar,
}

impl Gate {
    /// The gate of the lock file `path`, one per path in this process.
    fn of(path: &Path) -> std::sync::Arc<Gate> {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock};
        static GATES: OnceLock<Mutex<HashMap<PathBuf, Arc<Gate>>>> = OnceLock::new();
        let mut gates = GATES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        gates.entry(path.to_path_buf()).or_default().clone()
    }

    /// Waits until `deadline` at most; whether it got in.
    fn enter(&self, deadline: Instant) -> bool {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            busy = self
                .freed
                .wait_timeout(busy, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *busy = true;
        true
    }

    fn open(&self) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.freed.notify_one();
    }
}

impl Queue {
    /// Takes the queue lock, waiting for it at most `lock_timeout` (a lock
    /// taken by hand, `flock(1)`, must not block every run forever): then
    /// exit 75, nothing changed. Held only while files change.
    pub fn lock(&self) -> anyhow::Result<QueueLock> {
        let path = self.root.join(LOCK_NAME);
        let file = open_lock_file(&path, libc::O_NOFOLLOW)
            .with_context(|| format!("cannot open the queue lock {}", shown(&path)))?;
        let deadline = Instant::now() + self.lock_timeout;
        let gate = Gate::of(&path);
        if !gate.enter(deadline) {
            return Err(self.held_too_long(&path));
        }
        match self.flock_until(&file, &path, deadline) {
            Ok(()) => Ok(QueueLock { file, gate }),
            Err(e) => {
                gate.open();
                Err(e)
            }
        }
    }

    /// Takes the flock(2) of `file`, polling until `deadline`.
    fn flock_until(&self, file: &File, path: &Path, deadline: Instant) -> anyhow::Result<()> {
        let mut pause = Duration::from_millis(2);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(()),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("cannot lock {}", shown(path)))
                    );
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.held_too_long(path));
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn held_too_long(&self, path: &Path) -> anyhow::Error {
        fail(
            Code::TempFail,
            format!(
                "{}: held by another process for more than lock_timeout ({}); nothing was changed; try again later, or see who holds it with `fuser -v {}`",
                shown(path),
                humantime::format_duration(self.lock_timeout),
                shown(path)
            ),
        )
    }
}

/// Opens (creating) a lock file. Lock files are never truncated or deleted:
/// another process may hold a lock on them.
pub fn open_lock_file(path: &Path, extra_flags: i32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | extra_flags)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QUEUE_DIR;

    /// The threads of one process take a queue lock in turn: a waiter gets
    /// it as soon as it is freed (not after a polling pause), and one held
    /// longer than `lock_timeout` is an exit-75 error.
    #[test]
    fn threads_take_the_queue_lock_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(QUEUE_DIR).join("inbox")).unwrap();
        let q = Queue::at(dir.path()).with_lock_timeout(Duration::from_secs(5));
        let held = q.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let q2 = q.clone();
            s.spawn(move || {
                let _l = q2.lock().unwrap();
                tx.send(Instant::now()).unwrap();
            });
            std::thread::sleep(Duration::from_millis(300));
            let freed = Instant::now();
            drop(held);
            let got = rx.recv().unwrap();
            assert!(got.duration_since(freed) < Duration::from_millis(50));
        });
        let _held = q.lock().unwrap();
        let short = q.clone().with_lock_timeout(Duration::from_millis(100));
        let e = std::thread::scope(|s| s.spawn(|| short.lock().err()).join().unwrap())
            .expect("times out");
        assert_eq!(crate::error::code_of(&e), Code::TempFail);
    }
}
