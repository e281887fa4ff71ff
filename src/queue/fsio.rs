//! The file I/O under the queue: the one atomic write (a temporary file,
//! fsynced, renamed into place, its directory fsynced), removals, reads
//! that never follow a symlink, and the fault points of the crash tests.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

/// The one way a file is written whole: under a temporary name in `dir`
/// (beginning with `prefix`), then renamed into place. A `durable` write
/// fsyncs the file before the rename and its directory after, and passes
/// the fault points of the crash tests; one that is not (the metrics file)
/// is only atomic.
pub struct AtomicWriter<'a> {
    pub dir: &'a Path,
    pub prefix: &'a str,
    pub durable: bool,
}

impl AtomicWriter<'_> {
    /// Writes `bytes` at `target` with the permission bits `mode`.
    /// `replace: false` never replaces an existing file and answers
    /// `Ok(false)` instead.
    pub fn write(
        &self,
        target: &Path,
        bytes: &[u8],
        mode: u32,
        replace: bool,
    ) -> anyhow::Result<bool> {
        let tmp = self.tmp(bytes, mode)?;
        if !self.persist(tmp, target, replace)? {
            return Ok(false);
        }
        if self.durable {
            let dir = target
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            sync_dir(dir)?;
        }
        Ok(true)
    }

    /// A whole temporary file in `dir` (synced when durable).
    pub(super) fn tmp(&self, bytes: &[u8], mode: u32) -> anyhow::Result<tempfile::NamedTempFile> {
        let ctx = || format!("cannot write a temporary file in {}", self.dir.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(self.prefix)
            .tempfile_in(self.dir)
            .with_context(ctx)?;
        self.fault("write").with_context(ctx)?;
        tmp.write_all(bytes).with_context(ctx)?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode & 0o777))
            .with_context(ctx)?;
        if self.durable {
            fault("fsync").with_context(ctx)?;
            tmp.as_file().sync_all().with_context(ctx)?;
        }
        Ok(tmp)
    }

    /// Renames a synced temporary file into place. `replace: false` never
    /// replaces an existing file and answers `Ok(false)` instead.
    pub(super) fn persist(
        &self,
        tmp: tempfile::NamedTempFile,
        target: &Path,
        replace: bool,
    ) -> anyhow::Result<bool> {
        self.fault("rename")
            .with_context(|| format!("cannot write {}", target.display()))?;
        let r = if replace {
            tmp.persist(target).map(drop)
        } else {
            tmp.persist_noclobber(target).map(drop)
        };
        match r {
            Ok(()) => Ok(true),
            Err(e) if !replace && e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => {
                Err(anyhow::Error::new(e.error)
                    .context(format!("cannot write {}", target.display())))
            }
        }
    }

    fn fault(&self, step: &'static str) -> io::Result<()> {
        if self.durable { fault(step) } else { Ok(()) }
    }
}

/// [`sync_dir`], for a directory that may not exist yet.
pub(super) fn sync_dir_if_present(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() { sync_dir(dir) } else { Ok(()) }
}

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    let ctx = || format!("cannot sync directory {}", dir.display());
    fault("dirsync").with_context(ctx)?;
    File::open(dir).and_then(|d| d.sync_all()).with_context(ctx)
}

pub(super) fn remove(path: &Path) -> anyhow::Result<()> {
    let ctx = || format!("cannot remove {}", path.display());
    fault("unlink").with_context(ctx)?;
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(ctx),
        _ => Ok(()),
    }
}

/// Reads a regular file without following a symlink at its last component,
/// through the one reader (`fsread`): a marker is capped as a marker, a task
/// or record as a record; the mode is the permission bits only.
pub fn read_nofollow(path: &Path, kind: crate::fsread::Kind) -> io::Result<Option<(Vec<u8>, u32)>> {
    Ok(crate::fsread::read(path, kind)?.map(|c| (c.bytes, c.mode)))
}

/// Fault injection for the crash tests: with the `failpoints` feature,
/// `CCL_DELEGATE_FAILPOINT=<step>[:<n>][:enospc]` makes the n-th (default
/// first) `<step>` (write, fsync, rename, dirsync, unlink) fail. Without the
/// feature this is nothing.
#[cfg(feature = "failpoints")]
pub(super) fn fault(step: &'static str) -> io::Result<()> {
    crate::failpoint::hit(step)
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(super) fn fault(_step: &'static str) -> io::Result<()> {
    Ok(())
}
