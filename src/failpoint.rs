//! Fault injection for the crash tests (cargo feature `failpoints` only).
//!
//! `CCL_DELEGATE_FAILPOINT=<step>[:<n>][:<errno-name>]` makes the n-th call
//! (default the first) of `<step>` fail with ENOSPC (or EIO with `:eio`).
//! Steps: write, fsync, rename, dirsync, unlink, ledger (reap's append of
//! ledger entries).

use std::io;
use std::sync::Mutex;

static COUNTS: Mutex<Vec<(&'static str, u32)>> = Mutex::new(Vec::new());

pub fn hit(step: &'static str) -> io::Result<()> {
    let Ok(spec) = std::env::var("CCL_DELEGATE_FAILPOINT") else {
        return Ok(());
    };
    let mut parts = spec.split(':');
    if parts.next() != Some(step) {
        return Ok(());
    }
    let nth: u32 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let errno = match parts.next() {
        Some("eio") => libc::EIO,
        _ => libc::ENOSPC,
    };
    let mut counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let seen = match counts.iter_mut().find(|(s, _)| *s == step) {
        Some((_, c)) => {
            *c += 1;
            *c
        }
        None => {
            counts.push((step, 1));
            1
        }
    };
    if seen == nth {
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(())
}
