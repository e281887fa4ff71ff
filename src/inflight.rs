//! The in-flight index: per project, per provider, how many markers are
//! pending or submitted, so that admission need not list every inbox
//! (policy.md "Limits on jobs in flight").
//!
//! `<state_dir>/inflight.tsv`, one line per count, read in order:
//!
//! ```text
//! 25<TAB>"claude"<TAB>"/srv/p1"      the project has 25 claude markers
//! +1<TAB>"claude"<TAB>"/srv/p1"      one more (a submit admitted a job)
//! -1<TAB>"claude"<TAB>"/srv/p1"      one less (its POST surely failed)
//! ```
//!
//! Strings are JSON strings, so no path can break a line. A submit appends
//! one short line (no rewrite, no fsync: this is the cheap part of a
//! submit's admission); every `reap` replaces each project's counts with
//! the markers it saw and writes the file compacted, so a marker deleted
//! by hand stops counting at the next reap, and a line lost in a crash is
//! made good there too. A line that cannot be read is skipped.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::policy::admission::Admission;

pub const INFLIGHT_FILE: &str = "inflight.tsv";
const MAX_BYTES: usize = 16 << 20;

/// Provider → markers in flight.
pub type Counts = BTreeMap<String, u64>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct InFlight {
    /// Project key ([`project_key`]) → counts.
    pub projects: BTreeMap<String, Counts>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(INFLIGHT_FILE)
}

/// How a project is named in the index and the ledger: its canonical path
/// (symlinks resolved), so that a project reached through a link, `~` or a
/// relative path is one key whoever counts it; its absolute path when it
/// cannot be resolved (gone). Counting never needs a key per configured
/// project: the counts are host-wide ([`read_counts`]).
pub fn project_key(dir: &Path) -> String {
    let project = if dir
        .file_name()
        .is_some_and(|n| n == crate::queue::QUEUE_DIR)
    {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    std::fs::canonicalize(project)
        .or_else(|_| std::path::absolute(project))
        .unwrap_or_else(|_| project.to_path_buf())
        .display()
        .to_string()
}

/// The host's counts per provider, read from the file; a problem is a
/// warning and counts nothing. Host-wide: every project a reap reconciled
/// (the configured ones) or a submit delegated from (the task's own), as
/// policy.md's "all projects" asks, without a key per configured project.
pub fn read_counts(state_dir: &Path, warnings: &mut Vec<String>) -> Counts {
    let p = path(state_dir);
    match crate::queue::read_nofollow(&p, crate::fsread::Kind::State) {
        Ok(Some((bytes, _))) => counts_in(&bytes),
        Ok(None) => Counts::new(),
        Err(e) => {
            warnings.push(format!(
                "{e}; jobs in flight count from 0 until the next reap"
            ));
            Counts::new()
        }
    }
}

/// The host's counts straight from the file's bytes, without building
/// the whole index: what a submit reads.
pub fn counts_in(bytes: &[u8]) -> Counts {
    use std::collections::HashMap;
    let mut per: HashMap<(Cow<str>, Cow<str>), u64> = HashMap::new();
    for line in bytes.split(|&b| b == b'\n') {
        let Some((n, provider, project)) = parse_line(line) else {
            continue;
        };
        let v = per.entry((project, provider)).or_default();
        *v = match n {
            Count::Set(n) => n,
            Count::Add(d) | Count::ReapAdd(d) => v.saturating_add_signed(d),
        };
    }
    let mut out = Counts::new();
    for ((_, provider), n) in per {
        if n > 0 {
            *out.entry(provider.into_owned()).or_default() += n;
        }
    }
    out
}

impl InFlight {
    /// Reads the index; a missing one is empty, an unreadable one is empty
    /// with a warning (the next reap rebuilds it).
    pub fn load(state_dir: &Path, warnings: &mut Vec<String>) -> InFlight {
        let p = path(state_dir);
        match crate::queue::read_nofollow(&p, crate::fsread::Kind::State) {
            Ok(None) => InFlight::default(),
            Ok(Some((bytes, _))) if bytes.len() <= MAX_BYTES => InFlight::parse(&bytes),
            Ok(Some(_)) => {
                warnings.push(format!(
                    "{} is too large; jobs in flight count from 0 until the next reap",
                    p.display()
                ));
                InFlight::default()
            }
            Err(e) => {
                warnings.push(format!(
                    "{e}; jobs in flight count from 0 until the next reap"
                ));
                InFlight::default()
            }
        }
    }

    /// Folds the lines in order; a line that is not a count is skipped.
    pub fn parse(bytes: &[u8]) -> InFlight {
        let mut out = InFlight::default();
        for line in bytes.split(|&b| b == b'\n') {
            let Some((n, provider, project)) = parse_line(line) else {
                continue;
            };
            let c = out.projects.entry(project.into_owned()).or_default();
            let v = c.entry(provider.into_owned()).or_default();
            *v = match n {
                Count::Set(n) => n,
                Count::Add(d) | Count::ReapAdd(d) => v.saturating_add_signed(d),
            };
        }
        for c in out.projects.values_mut() {
            c.retain(|_, n| *n > 0);
        }
        out.projects.retain(|_, c| !c.is_empty());
        out
    }

    /// The compacted file.
    pub fn to_text(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (project, c) in &self.projects {
            for (provider, n) in c {
                out.extend_from_slice(&line(&n.to_string(), provider, project));
            }
        }
        out
    }

    /// The index file's length now: a reap notes it before it looks at
    /// any marker, so that [`InFlight::apply_deltas_since`] can keep the
    /// counts submits add while it looks.
    pub fn len_now(state_dir: &Path) -> u64 {
        std::fs::symlink_metadata(path(state_dir)).map_or(0, |m| m.len())
    }

    /// Applies the `+1`/`-1` lines appended at or after `offset` (by
    /// submits that ran while a reap counted markers) on top of counts the
    /// reap just set. A marker such a submit created may also have been
    /// seen by the reap: then it counts twice until the next reap, never
    /// zero times, so a limit is never overshot.
    pub fn apply_deltas_since(&mut self, bytes: &[u8], offset: u64) {
        let Some(tail) = usize::try_from(offset).ok().and_then(|o| bytes.get(o..)) else {
            return;
        };
        for line in tail.split(|&b| b == b'\n') {
            if let Some((Count::Add(d), provider, project)) = parse_line(line) {
                let c = self.projects.entry(project.into_owned()).or_default();
                let v = c.entry(provider.into_owned()).or_default();
                *v = v.saturating_add_signed(d);
            }
        }
        for c in self.projects.values_mut() {
            c.retain(|_, n| *n > 0);
        }
        self.projects.retain(|_, c| !c.is_empty());
    }

    pub fn save(&self, adm: &Admission) -> anyhow::Result<()> {
        crate::ledger::write_cache(&path(adm.state_dir()), &self.to_text())
    }

    /// Appends `+1` or `-1` for one project and provider: one write(2).
    /// `by_reap`: the line is a reap's own (`+1r`), counted like any other
    /// but never applied again by [`InFlight::apply_deltas_since`].
    pub fn append_delta(
        adm: &Admission,
        project: &str,
        provider: &str,
        delta: i64,
        by_reap: bool,
    ) -> anyhow::Result<()> {
        let p = path(adm.state_dir());
        let ctx = || format!("cannot update the in-flight index {}", p.display());
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&p)
            .with_context(ctx)?;
        let meta = f.metadata().with_context(ctx)?;
        if !meta.is_file() {
            anyhow::bail!(
                "the in-flight index {} is not a regular file; remove it (the next reap rebuilds it)",
                p.display()
            );
        }
        let mut buf = Vec::with_capacity(128);
        if meta.len() > 0 {
            let mut last = [0u8];
            f.read_exact_at(&mut last, meta.len() - 1)
                .with_context(ctx)?;
            if last[0] != b'\n' {
                buf.push(b'\n');
            }
        }
        let n = if by_reap {
            format!("{delta:+}r")
        } else {
            format!("{delta:+}")
        };
        buf.extend_from_slice(&line(&n, provider, project));
        f.write_all(&buf).with_context(ctx)
    }

    /// The counts over these projects (each counted once).
    pub fn counts<'a>(&self, projects: impl IntoIterator<Item = &'a str>) -> Counts {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Counts::new();
        for p in projects {
            if !seen.insert(p) {
                continue;
            }
            for (prov, n) in self.projects.get(p).into_iter().flatten() {
                *out.entry(prov.clone()).or_default() += n;
            }
        }
        out.retain(|_, n| *n > 0);
        out
    }

    pub fn bump(&mut self, project: &str, provider: &str) {
        *self
            .projects
            .entry(project.to_string())
            .or_default()
            .entry(provider.to_string())
            .or_default() += 1;
    }

    pub fn release(&mut self, project: &str, provider: &str) {
        if let Some(c) = self.projects.get_mut(project) {
            if let Some(n) = c.get_mut(provider) {
                *n = n.saturating_sub(1);
            }
            c.retain(|_, n| *n > 0);
            if c.is_empty() {
                self.projects.remove(project);
            }
        }
    }

    pub fn reconcile(&mut self, project: &str, mut counts: Counts) {
        counts.retain(|_, n| *n > 0);
        if counts.is_empty() {
            self.projects.remove(project);
        } else {
            self.projects.insert(project.to_string(), counts);
        }
    }
}

enum Count {
    Set(u64),
    Add(i64),
    /// `+1r`/`-1r`: a reap's failover step (see [`InFlight::append_delta`]).
    ReapAdd(i64),
}

fn line(n: &str, provider: &str, project: &str) -> Vec<u8> {
    let q = |s: &str| serde_json::to_string(s).expect("a string always serializes");
    format!("{n}\t{}\t{}\n", q(provider), q(project)).into_bytes()
}

fn parse_line(line: &[u8]) -> Option<(Count, Cow<'_, str>, Cow<'_, str>)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.splitn(3, '\t');
    let n = parts.next()?;
    let n = if let Some(d) = n.strip_suffix('r') {
        // A reap's own delta: counted, never re-applied by its recount.
        Count::ReapAdd(d.parse().ok()?)
    } else if n.starts_with(['+', '-']) {
        Count::Add(n.parse().ok()?)
    } else {
        Count::Set(n.parse().ok()?)
    };
    let provider = unquote(parts.next()?)?;
    let project = unquote(parts.next()?)?;
    Some((n, provider, project))
}

/// A JSON string; the common case (no escapes) without the parser.
fn unquote(s: &str) -> Option<Cow<'_, str>> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains(['\\', '"']) {
        serde_json::from_str::<String>(s).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_release_reconcile_and_count() {
        let mut i = InFlight::default();
        i.bump("/a", "claude");
        i.bump("/a", "claude");
        i.bump("/b", "gpu");
        i.bump("/c", "gpu");
        let c = i.counts(["/a", "/b", "/a"]);
        assert_eq!(c, Counts::from([("claude".into(), 2), ("gpu".into(), 1)]));
        i.release("/a", "claude");
        i.release("/a", "claude");
        i.release("/a", "claude");
        assert!(!i.projects.contains_key("/a"));
        i.reconcile(
            "/b",
            Counts::from([("gemini".into(), 3), ("gpu".into(), 0)]),
        );
        assert_eq!(i.counts(["/b"]), Counts::from([("gemini".into(), 3)]));
        i.reconcile("/b", Counts::new());
        assert_eq!(i.projects.keys().collect::<Vec<_>>(), ["/c"]);
    }

    #[test]
    fn deltas_appended_after_an_offset_are_applied_again() {
        let mut text = line("2", "claude", "/p");
        let since = text.len() as u64;
        text.extend_from_slice(&line("+1", "claude", "/p"));
        text.extend_from_slice(&line("+1", "gpu", "/q"));
        text.extend_from_slice(&line("-1", "gpu", "/q"));
        text.extend_from_slice(&line("5", "gemini", "/p"));
        // A reap's own lines count, but its recount never adds them again:
        // else a deferred step would count twice every run and never go.
        text.extend_from_slice(&line("-1r", "claude", "/p"));
        text.extend_from_slice(&line("+1r", "claude", "/p"));
        text.extend_from_slice(&line("+1r", "gpu", "/p"));
        assert_eq!(counts_in(&text).get("gpu"), Some(&1));
        let mut i = InFlight::default();
        i.reconcile("/p", Counts::from([("claude".into(), 1)]));
        i.apply_deltas_since(&text, since);
        // Set lines after the offset are a reap's own; only deltas count.
        assert_eq!(
            i.projects,
            BTreeMap::from([("/p".to_string(), Counts::from([("claude".into(), 2)]))])
        );
        let mut j = InFlight::default();
        j.apply_deltas_since(&text, u64::MAX);
        assert!(j.projects.is_empty());
    }

    #[test]
    fn the_file_folds_counts_and_deltas_in_order_and_skips_bad_lines() {
        let mut i = InFlight::default();
        i.bump("/a b\n\"c", "claude");
        i.bump("/x", "gpu");
        let mut text = i.to_text();
        text.extend_from_slice(&line("+1", "claude", "/a b\n\"c"));
        text.extend_from_slice(b"garbage\n+x\t\"gpu\"\t\"/x\"\n");
        text.extend_from_slice(&line("-1", "gpu", "/x"));
        text.extend_from_slice(&line("-1", "gpu", "/x"));
        text.extend_from_slice(b"+1\t\"gpu\"\t\"/tor");
        let back = InFlight::parse(&text);
        let keys = ["/a b\n\"c".to_string(), "/x".to_string()];
        assert_eq!(
            counts_in(&text),
            back.counts(keys.iter().map(String::as_str))
        );
        assert_eq!(
            back.projects,
            BTreeMap::from([(
                "/a b\n\"c".to_string(),
                Counts::from([("claude".into(), 2)])
            )])
        );
        assert_eq!(InFlight::parse(&back.to_text()), back);
    }

    #[test]
    fn project_keys_are_absolute_and_ignore_the_queue_dir() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            project_key(Path::new("p")),
            cwd.join("p").display().to_string()
        );
        assert_eq!(project_key(Path::new("/x/p/.agent-queue")), "/x/p");
    }
}
