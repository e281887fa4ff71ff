//! The one way this tool reads a file from disk: regular files only, opened
//! without blocking (a FIFO never hangs a run), without following a symlink
//! where the design says so, and never more than a size cap suited to the
//! kind of file (`/dev/zero` or a huge file is refused, not swallowed).
//!
//! A leaf module: it knows nothing of the queue, the config or YAML.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What a file is, which sets its size cap and whether a symlink to it is
/// followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Config,
    Key,
    Task,
    Marker,
    Record,
    Metrics,
    Ledger,
    /// A small file of the state directory: `spend.json`, `inflight.tsv`.
    State,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

impl Kind {
    /// The largest file of this kind that is read.
    pub fn cap(self) -> u64 {
        match self {
            Kind::Config => MIB,
            Kind::Key => 64 * KIB,
            Kind::Task => 64 * MIB,
            // A record holds a whole task plus a response of up to 32 MiB
            // and its head: it must always be readable again, or a crash
            // after writing it could lead to a second record for the job.
            Kind::Record => 128 * MIB,
            Kind::Marker => 64 * KIB,
            Kind::Metrics => 16 * MIB,
            Kind::Ledger => 256 * MIB,
            Kind::State => 16 * MIB,
        }
    }

    /// Whether a symlink at the last component is followed. Files of the
    /// queue and the key never are (design: "Untrusted bytes"); a config or
    /// metrics file may well be a dotfile manager's symlink.
    pub fn follows_symlinks(self) -> bool {
        matches!(self, Kind::Config | Kind::Metrics)
    }

    /// How a message names this kind of file.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Config => "config file",
            Kind::Key => "key file",
            Kind::Task => "task file",
            Kind::Marker => "marker",
            Kind::Record => "record",
            Kind::Metrics => "metrics file",
            Kind::Ledger => "ledger",
            Kind::State => "state file",
        }
    }
}

/// A file's bytes and its permission bits (`0o777` only: never setuid,
/// setgid or sticky, so a copy made with them cannot gain those bits).
#[derive(Debug)]
pub struct Contents {
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// Reads a whole file of `kind`. `Ok(None)` when it does not exist; an error
/// naming the file when it is a symlink that must not be followed, not a
/// regular file, or larger than the kind's cap.
pub fn read(path: &Path, kind: Kind) -> io::Result<Option<Contents>> {
    let Some((f, mode)) = open(path, kind)? else {
        return Ok(None);
    };
    let cap = kind.cap();
    let mut bytes = Vec::new();
    // `take` bounds the read even when the file grows while it is read.
    f.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_large(path, kind));
    }
    Ok(Some(Contents { bytes, mode }))
}

/// Opens a file of `kind` for a partial read, with the same checks as
/// [`read`] (the caller reads at most [`Kind::cap`] bytes of it). `Ok(None)`
/// when it does not exist. Returns the file and its permission bits.
pub fn open(path: &Path, kind: Kind) -> io::Result<Option<(File, u32)>> {
    let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if !kind.follows_symlinks() {
        flags |= libc::O_NOFOLLOW;
    }
    let f = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && !kind.follows_symlinks() => {
            return Err(io::Error::other(format!(
                "{} is a symbolic link, never followed",
                path.display()
            )));
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    let meta = f.metadata()?;
    if let Some(what) = not_regular(&meta.file_type()) {
        return Err(io::Error::other(format!(
            "{} is not a regular file ({what}); a {} must be a plain file",
            path.display(),
            kind.noun()
        )));
    }
    if meta.len() > kind.cap() {
        return Err(too_large(path, kind));
    }
    // Reads from now on wait for data like any regular file read.
    Ok(Some((f, meta.mode() & 0o777)))
}

/// What a file type is, when it is not a regular file.
fn not_regular(t: &std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else {
        Some("a special file")
    }
}

fn too_large(path: &Path, kind: Kind) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!(
            "{} is larger than {} KiB, the limit for a {}; is it the right file?",
            path.display(),
            kind.cap() / KIB,
            kind.noun()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// Runs `read` on another thread so that a hang fails the test.
    fn read_soon(p: &Path, kind: Kind) -> Result<Option<Contents>, String> {
        let p = p.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(read(&p, kind).map_err(|e| e.to_string())));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("reading must never block")
    }

    #[test]
    fn what_each_kind_of_file_gives() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let file = d.join("f");
        std::fs::write(&file, b"hello").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let fifo = d.join("fifo");
        mkfifo(&fifo);
        let link = d.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let big = d.join("big");
        std::fs::write(&big, vec![b'a'; 64 * 1024 + 1]).unwrap();

        let got = read_soon(&file, Kind::Task).unwrap().unwrap();
        assert_eq!((got.bytes.as_slice(), got.mode), (&b"hello"[..], 0o755));
        assert!(read_soon(&d.join("none"), Kind::Config).unwrap().is_none());
        // (path, kind, expected piece of the error; "" = read fine)
        let rows: &[(&Path, Kind, &str)] = &[
            (&fifo, Kind::Config, "not a regular file (a FIFO)"),
            (&fifo, Kind::Record, "not a regular file (a FIFO)"),
            (d, Kind::Task, "not a regular file (a directory)"),
            (Path::new("/dev/zero"), Kind::Config, "a character device"),
            (Path::new("/dev/null"), Kind::Key, "a character device"),
            (&link, Kind::Task, "symbolic link, never followed"),
            (&link, Kind::Key, "symbolic link, never followed"),
            (&link, Kind::Config, ""),
            (
                &big,
                Kind::Key,
                "larger than 64 KiB, the limit for a key file",
            ),
            (&big, Kind::Marker, "larger than 64 KiB"),
            (&big, Kind::Config, ""),
        ];
        for &(p, kind, want) in rows {
            match read_soon(p, kind) {
                Ok(Some(_)) if want.is_empty() => {}
                Err(e) if !want.is_empty() => {
                    assert!(e.contains(want), "{p:?} {kind:?}: {e}");
                    assert!(e.contains(&p.display().to_string()), "{e}");
                }
                other => panic!("{p:?} {kind:?}: {:?}", other.map(|c| c.map(|c| c.mode))),
            }
        }
    }

    #[test]
    fn caps_fit_their_kinds() {
        assert_eq!(Kind::Config.cap(), 1 << 20);
        assert_eq!(Kind::Key.cap(), 64 << 10);
        assert_eq!(Kind::Task.cap(), 64 << 20);
        assert_eq!(Kind::Metrics.cap(), 16 << 20);
        assert!(
            Kind::Record.cap() >= Kind::Task.cap() + (32 << 20) + (64 << 10),
            "a record holds a whole task, a 32 MiB response and its head"
        );
    }
}
