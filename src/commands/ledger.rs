//! `ledger rebuild`: the books' ledger again from the done/ and failed/
//! records (the source of truth), in one transaction; then the projects'
//! jobs in flight from their markers.
//!
//! Locks, in the one order every command takes them (queue locks, then the
//! books' transaction): the queue locks of the projects rebuilt are held
//! from before their records are read until the new entries are in, so no
//! reap can write a record (and book its entry) in between and have it
//! counted twice or not at all. Submits and reaps of those projects wait
//! meanwhile.

use std::fs;
use std::path::{Path, PathBuf};

use crate::books::{Books, Entry, Rebuilt};
use crate::cli::LedgerRebuildArgs;
use crate::config::Settings;
use crate::error::{Code, fail};
use crate::names::project_key;
use crate::queue::{self, Queue, QueueLock};
use crate::record::Record;
use crate::ui::Ui;

pub fn rebuild(args: &LedgerRebuildArgs, settings: &Settings, ui: Ui) -> anyhow::Result<Code> {
    let mut projects = super::projects_for_person(&args.projects, settings)?;
    projects.sort_by_key(|p| project_key(p));
    projects.dedup_by_key(|p| project_key(p));
    let locks = lock_all(&projects)?;
    let found = read_all(&projects, ui)?;
    let keys: Vec<String> = projects.iter().map(|p| project_key(p)).collect();
    let mut books = open_or_renew(settings, ui)?;
    let kept = books.rebuild(&keys, &found.entries)?;
    // The jobs in flight of these projects again from their markers, under
    // the same locks (books made anew have none until then).
    for (dir, key) in projects.iter().zip(&keys) {
        let marked = super::reap::book::in_flight(&Queue::at(dir), key)
            .map_err(|e| anyhow::anyhow!("cannot read the markers of {}: {e}", dir.display()))?;
        books.reconcile(key, &marked)?;
    }
    // What runs owed these projects is in the records just read.
    for dir in &projects {
        let owed = Queue::at(dir).root.join(".ccl-delegate.owed");
        if owed.is_dir() {
            let _ = fs::remove_dir_all(&owed);
        }
    }
    drop(locks);
    println!("{}", rebuilt_line(&books, projects.len(), &found, &kept));
    // With a fleet: the rebuilt journal is pushed (entries already there
    // count nothing twice).
    if let Some(cfg) = &settings.fleet {
        books.set_journal(true);
        let mut fleet =
            crate::books::fleet::Fleet::connect(cfg, settings.lock_timeout, settings.max_age)?;
        let n = crate::books::sync::push(&mut books, &mut fleet, &settings.policy)?;
        println!("pushed {n} new entries to {}", fleet.shown());
    }
    Ok(Code::Ok)
}

/// The queue locks of the projects, in their order; a project without a
/// queue ends the run before anything is read.
fn lock_all(projects: &[PathBuf]) -> anyhow::Result<Vec<QueueLock>> {
    let mut locks = Vec::new();
    for dir in projects {
        let q = Queue::at(dir);
        if !q.root.is_dir() {
            return Err(fail(
                Code::NoInput,
                format!(
                    "{}: no .agent-queue here; check --project or `projects` in the config",
                    q.project.display()
                ),
            ));
        }
        locks.push(q.lock()?);
    }
    Ok(locks)
}

/// The entries of every project's records, warning of the files that are
/// not records.
fn read_all(projects: &[PathBuf], ui: Ui) -> anyhow::Result<Found> {
    let mut all = Found::default();
    for dir in projects {
        let found = from_records(dir)?;
        for s in &found.skipped {
            ui.warn(format!(
                "{}: not a record of ccl-delegate; skipped",
                crate::text::clip(s, 300)
            ));
        }
        all.done += found.done;
        all.failed += found.failed;
        all.entries.extend(found.entries);
    }
    Ok(all)
}

/// The books, opened; damaged ones moved aside and made again.
fn open_or_renew(settings: &Settings, ui: Ui) -> anyhow::Result<Books> {
    match Books::open(&settings.state_dir, settings.lock_timeout) {
        Ok(b) => Ok(b),
        // Locked too long, or a newer schema: not damaged, left as it is.
        Err(e) if matches!(crate::error::code_of(&e), Code::TempFail | Code::Config) => Err(e),
        // Damaged (not a regular file, not a database): moved aside and
        // made again. Entries of projects not rebuilt now are in the file
        // moved aside only.
        Err(e) => {
            let aside = crate::books::move_aside(&settings.state_dir)?;
            ui.warn(format_args!(
                "{e:#}; moved it to {}: entries of projects not rebuilt now are only there",
                aside.display()
            ));
            Books::open(&settings.state_dir, settings.lock_timeout)
        }
    }
}

/// `rebuilt <path>: N entries from P projects (...)`, and what was kept.
fn rebuilt_line(books: &Books, projects: usize, found: &Found, kept: &Rebuilt) -> String {
    let (done, failed) = (found.done, found.failed);
    let entries = found.entries.len();
    let steps = entries.saturating_sub(done + failed);
    let mut line = format!(
        "rebuilt {}: {entries} entries from {} project{} ({done} done, {failed} failed{})",
        books.path().display(),
        projects,
        if projects == 1 { "" } else { "s" },
        if steps > 0 {
            format!(", {steps} earlier jobs of failover chains")
        } else {
            String::new()
        },
    );
    if kept.other > 0 {
        line.push_str(&format!("; kept {} entries of other projects", kept.other));
    }
    if kept.without_record > 0 {
        line.push_str(&format!(
            "; kept {} entries of jobs whose records are gone (requeued or deleted: the jobs happened)",
            kept.without_record
        ));
    }
    line
}

/// What one project's records gave.
#[derive(Debug, Default)]
pub struct Found {
    pub entries: Vec<Entry>,
    pub done: usize,
    pub failed: usize,
    /// Files in done/ or failed/ that are not records of ours.
    pub skipped: Vec<String>,
}

/// How many bytes of a record the frontmatter fits in.
const HEAD_BYTES: u64 = 64 * 1024;

/// The entries of one project's records.
pub fn from_records(dir: &Path) -> anyhow::Result<Found> {
    let q = Queue::at(dir);
    let project = project_key(dir);
    let mut found = Found::default();
    for (sub, done) in [(&q.done, true), (&q.failed, false)] {
        let rd = match fs::read_dir(sub) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => anyhow::bail!("cannot list {}: {e}", sub.display()),
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| queue::is_task_name(n))
            .collect();
        names.sort();
        for name in names {
            let p = sub.join(&name);
            match entries_of(&p, &name, &project) {
                Some(e) => {
                    if done {
                        found.done += 1;
                    } else {
                        found.failed += 1;
                    }
                    found.entries.extend(e);
                }
                None => found.skipped.push(p.display().to_string()),
            }
        }
    }
    Ok(found)
}

fn read_head(p: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    f.take(HEAD_BYTES).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// `a.2.md` was written for task `a.md` when `done/a.md` existed.
fn task_of(file: &str) -> String {
    let stem = file.strip_suffix(".md").unwrap_or(file);
    match stem.rsplit_once('.') {
        Some((base, n)) if !base.is_empty() && n.parse::<u32>().is_ok_and(|n| n >= 2) => {
            format!("{base}.md")
        }
        _ => file.to_string(),
    }
}

fn entries_of(p: &Path, name: &str, project: &str) -> Option<Vec<Entry>> {
    let head = read_head(p)?;
    // The name in the record is exact; read the whole file for it only
    // when the file name may carry a `.N` of its own.
    let task = if task_of(name) != name {
        crate::queue::read_nofollow(p, crate::fsread::Kind::Record)
            .ok()
            .flatten()
            .and_then(|(bytes, _)| Record::parse(&bytes)?.task_name(&bytes))
            .unwrap_or_else(|| task_of(name))
    } else {
        name.to_string()
    };
    crate::books::entries_from_record(project, &task, &head, None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbered_record_names_map_back_to_their_task() {
        for (file, task) in [
            ("a.md", "a.md"),
            ("a.2.md", "a.md"),
            ("a.17.md", "a.md"),
            ("v1.0.md", "v1.0.md"),
            ("x.1.md", "x.1.md"),
            (".2.md", ".2.md"),
        ] {
            assert_eq!(super::task_of(file), task, "{file}");
        }
    }
}
