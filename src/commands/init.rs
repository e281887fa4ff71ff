//! `init [DIR]`: create `DIR/.agent-queue/{inbox,done,failed}`, never
//! touching what is already there. Needs no config, no key, no network.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::InitArgs;
use crate::error::{Code, fail};
use crate::queue::{self, QUEUE_DIR};

/// What is found at one of the queue's paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Missing,
    Dir,
    /// A symlink, to a directory or not: queue directories are never
    /// followed through links, so one is never adopted either.
    Symlink,
    /// A regular file, a FIFO, a socket...
    Other,
}

/// The directories `init` makes, parents first.
const PARTS: [&str; 4] = ["", "inbox", "done", "failed"];

/// Which of [`PARTS`] to create, or why not to touch anything: any part
/// that exists but is not a real directory refuses the whole run, so a
/// half-made queue is never left beside a file the user put there.
fn plan(found: &[Found; 4]) -> Result<Vec<usize>, (usize, &'static str)> {
    let mut create = Vec::new();
    for (i, f) in found.iter().enumerate() {
        match f {
            Found::Dir => {}
            Found::Missing => create.push(i),
            Found::Symlink => return Err((i, "is a symbolic link")),
            Found::Other => return Err((i, "exists and is not a directory")),
        }
    }
    Ok(create)
}

fn look(path: &Path) -> io::Result<Found> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Missing),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_symlink() => Ok(Found::Symlink),
        Ok(m) if m.is_dir() => Ok(Found::Dir),
        Ok(_) => Ok(Found::Other),
    }
}

pub fn run(args: &InitArgs) -> anyhow::Result<Code> {
    // Shown as given: `init` alone speaks of `.agent-queue/inbox`.
    let base = args.dir.clone().unwrap_or_default();
    let dir = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base.clone()
    };
    let shown = |p: &Path| crate::text::clip(&p.display().to_string(), 400);
    // The project directory itself may be reached through a link (a
    // checkout under a symlinked home); it must exist: a typo never
    // creates a stray project.
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(fail(
                Code::Usage,
                format!("{}: not a directory; give a project directory", shown(&dir)),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(fail(
                Code::Usage,
                format!(
                    "{}: no such directory; create the project directory first",
                    shown(&dir)
                ),
            ));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", shown(&dir))),
    }
    let root = base.join(QUEUE_DIR);
    let paths: Vec<PathBuf> = PARTS
        .iter()
        .map(|p| {
            if p.is_empty() {
                root.clone()
            } else {
                root.join(p)
            }
        })
        .collect();
    let mut found = [Found::Missing; 4];
    for (i, p) in paths.iter().enumerate() {
        // Inside an .agent-queue that is not a directory there is nothing
        // to look at (and the plan refuses it).
        if i > 0 && found[0] != Found::Dir {
            break;
        }
        found[i] = look(p).with_context(|| format!("cannot look at {}", shown(p)))?;
    }
    let create = plan(&found).map_err(|(i, why)| {
        fail(
            Code::Usage,
            format!(
                "{} {why}; move it away, then run init again (nothing was changed)",
                shown(&paths[i])
            ),
        )
    })?;
    let mut out = io::stdout().lock();
    if create.is_empty() {
        writeln!(out, "already there: {}/{{inbox,done,failed}}", shown(&root))?;
        return Ok(Code::Ok);
    }
    for i in create {
        let p = &paths[i];
        match fs::create_dir(p) {
            Ok(()) => writeln!(out, "created {}", shown(p))?,
            // Made by someone else meanwhile: fine if it is a real directory.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => queue::check_real_dir(p)?,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", shown(p))),
        }
    }
    // The new entries survive a crash: the queue's directory and the
    // project's are synced.
    queue::sync_dir(&root)?;
    queue::sync_dir(&dir)?;
    Ok(Code::Ok)
}

#[cfg(test)]
mod tests {
    use super::{Found::*, plan};

    #[test]
    fn plan_creates_what_is_missing_and_refuses_anything_not_a_directory() {
        // What is found at .agent-queue, inbox, done, failed → what to
        // create, or the index of the part that refuses the run.
        type Row = ([super::Found; 4], Result<Vec<usize>, usize>);
        let rows: &[Row] = &[
            ([Missing, Missing, Missing, Missing], Ok(vec![0, 1, 2, 3])),
            ([Dir, Dir, Dir, Dir], Ok(vec![])),
            ([Dir, Dir, Missing, Missing], Ok(vec![2, 3])),
            ([Symlink, Missing, Missing, Missing], Err(0)),
            ([Other, Missing, Missing, Missing], Err(0)),
            ([Dir, Other, Missing, Missing], Err(1)),
            ([Dir, Missing, Dir, Symlink], Err(3)),
        ];
        for (found, want) in rows {
            let got = plan(found).map_err(|(i, _)| i);
            assert_eq!(&got, want, "for {found:?}");
        }
    }
}
