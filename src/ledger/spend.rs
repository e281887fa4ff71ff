//! `spend.json`: the sums a budget check needs, kept small so that reading
//! them never grows with the ledger (policy.md "Performance").
//!
//! It holds, per UTC day and month (the two latest of each), the cost per
//! provider and for `all`; the last 50 completed costs per provider and
//! for `all` (the estimate); and the ledger byte offset (and inode) it
//! covers. A reader folds in any ledger lines past that offset, so a run
//! killed between an append and the summary's rewrite loses nothing; a
//! ledger replaced (rebuild) or cut short is folded again from the start.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Entry;
use crate::policy::Window;
use crate::policy::admission::Admission;

pub const SPEND_FILE: &str = "spend.json";
/// How many completed costs the estimate averages (policy.md).
pub const RECENT: usize = 50;
/// Windows kept per kind: the current one and the one before.
const KEEP: usize = 2;
/// A summary bigger than this is not ours: fold the ledger again.
const MAX_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// Bytes of ledger.jsonl covered.
    pub offset: u64,
    /// The covered ledger's inode: another inode means a new ledger.
    #[serde(default)]
    pub inode: u64,
    /// `YYYY-MM-DD` → provider or `all` → CAD.
    pub days: BTreeMap<String, BTreeMap<String, f64>>,
    /// `YYYY-MM` → provider or `all` → CAD.
    pub months: BTreeMap<String, BTreeMap<String, f64>>,
    /// provider or `all` → the last completed costs, oldest first.
    pub recent: BTreeMap<String, VecDeque<f64>>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(SPEND_FILE)
}

/// The window key of a time: `YYYY-MM-DD` or `YYYY-MM`.
fn key_of(window: Window, t: &str) -> &str {
    match window {
        Window::Daily => t.get(..10).unwrap_or(t),
        Window::Monthly => t.get(..7).unwrap_or(t),
    }
}

impl Spend {
    /// Counts one entry.
    pub fn fold(&mut self, e: &Entry) {
        let Some(at) = super::utc(&e.finished_at) else {
            return;
        };
        let cost = super::sane_cost(e.cost_cad);
        for (map, window) in [
            (&mut self.days, Window::Daily),
            (&mut self.months, Window::Monthly),
        ] {
            let w = map.entry(key_of(window, &at).to_string()).or_default();
            *w.entry(e.provider.clone()).or_default() += cost;
            *w.entry("all".into()).or_default() += cost;
            while map.len() > KEEP {
                map.pop_first();
            }
        }
        if e.is_completed() {
            for k in [e.provider.as_str(), "all"] {
                let q = self.recent.entry(k.to_string()).or_default();
                q.push_back(cost);
                if q.len() > RECENT {
                    q.pop_front();
                }
            }
        }
    }

    /// Spent in the window holding `now`, by `scope` (a provider or `all`).
    pub fn spent(&self, window: Window, scope: &str, now: SystemTime) -> f64 {
        let t = crate::timestamp::format(now);
        let map = match window {
            Window::Daily => &self.days,
            Window::Monthly => &self.months,
        };
        map.get(key_of(window, &t))
            .and_then(|w| w.get(scope))
            .copied()
            .unwrap_or(0.0)
    }

    /// The mean of the last completed costs of `scope`; 0 when none.
    pub fn mean_recent(&self, scope: &str) -> f64 {
        match self.recent.get(scope) {
            Some(q) if !q.is_empty() => q.iter().sum::<f64>() / q.len() as f64,
            _ => 0.0,
        }
    }

    /// Folds the ledger lines past `self.offset` (all of them when the
    /// ledger is another file or shorter than the offset). Problems with the
    /// ledger are warnings: a check goes on with what could be read.
    pub fn catch_up(&mut self, state_dir: &Path, warnings: &mut Vec<String>) {
        let lp = super::path(state_dir);
        let meta = match std::fs::symlink_metadata(&lp) {
            Ok(m) => m,
            Err(_) => {
                if self.offset != 0 {
                    *self = Spend::default();
                }
                return;
            }
        };
        if !meta.is_file() {
            warnings.push(format!(
                "the ledger {} is not a regular file; spending is not counted; {}",
                lp.display(),
                super::REBUILD_HINT
            ));
            return;
        }
        if meta.ino() != self.inode || meta.len() < self.offset {
            *self = Spend {
                inode: meta.ino(),
                ..Spend::default()
            };
        }
        if meta.len() == self.offset {
            return;
        }
        let mut w = Vec::new();
        let mut bad = Vec::new();
        let mut entries = Vec::new();
        let res = super::scan(&lp, self.offset, &mut w, |line, end| {
            if let Some(e) = super::parse_line(&lp, line, end, &mut bad) {
                entries.push(e);
            }
        });
        w.append(&mut bad);
        match res {
            Ok(end) => {
                for e in &entries {
                    self.fold(e);
                }
                self.offset = end;
            }
            Err(e) => w.push(format!("{e:#}")),
        }
        warnings.extend(w);
    }

    /// Reads `spend.json` and brings it up to date with the ledger (without
    /// writing it: see [`refresh`]).
    pub fn load(state_dir: &Path, warnings: &mut Vec<String>) -> Spend {
        let p = path(state_dir);
        let mut s = match crate::queue::read_nofollow(&p, crate::fsread::Kind::State) {
            Ok(Some((bytes, _))) if bytes.len() <= MAX_BYTES => serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| {
                    warnings.push(format!(
                        "{} is corrupt ({e}); counting the ledger again",
                        p.display()
                    ));
                    Spend::default()
                }),
            Ok(None) => Spend::default(),
            Ok(Some(_)) => Spend::default(),
            Err(e) => {
                warnings.push(format!("{e}; counting the ledger again"));
                Spend::default()
            }
        };
        s.catch_up(state_dir, warnings);
        s
    }

    pub fn save(&self, adm: &Admission) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(self).expect("a summary always serializes");
        super::write_cache(&path(adm.state_dir()), &bytes)
    }
}

/// Brings `spend.json` up to date with the ledger and writes it back if it
/// changed, so the next reader has nothing to fold.
pub fn refresh(adm: &Admission, warnings: &mut Vec<String>) -> anyhow::Result<Spend> {
    let p = path(adm.state_dir());
    let old = crate::queue::read_nofollow(&p, crate::fsread::Kind::State)
        .ok()
        .flatten()
        .and_then(|(b, _)| serde_json::from_slice::<Spend>(&b).ok());
    let mut s = old.clone().unwrap_or_default();
    s.catch_up(adm.state_dir(), warnings);
    if old.as_ref() != Some(&s) {
        s.save(adm)?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(provider: &str, status: &str, cost: f64, at: &str) -> Entry {
        Entry {
            job_id: Some("j".into()),
            project: "/p".into(),
            task: "t.md".into(),
            provider: provider.into(),
            model: None,
            status: status.into(),
            cost_cad: cost,
            tokens_in: None,
            tokens_out: None,
            delegated_at: at.into(),
            finished_at: at.into(),
            step: false,
        }
    }

    #[test]
    fn windows_and_estimates() {
        let mut s = Spend::default();
        s.fold(&e("claude", "completed", 1.0, "2026-10-31T23:00:00Z"));
        s.fold(&e("claude", "completed", 2.0, "2026-11-01T00:30:00+01:00")); // Oct 31 UTC
        s.fold(&e("claude", "failed", 0.5, "2026-11-01T01:00:00Z"));
        s.fold(&e("gemini", "completed", 4.0, "2026-11-01T02:00:00Z"));
        let oct31 = crate::timestamp::parse("2026-10-31T12:00:00Z").unwrap();
        let nov1 = crate::timestamp::parse("2026-11-01T12:00:00Z").unwrap();
        assert_eq!(s.spent(Window::Daily, "claude", oct31), 3.0);
        assert_eq!(s.spent(Window::Daily, "claude", nov1), 0.5);
        assert_eq!(s.spent(Window::Daily, "all", nov1), 4.5);
        assert_eq!(s.spent(Window::Monthly, "all", oct31), 3.0);
        assert_eq!(s.spent(Window::Monthly, "gpu", nov1), 0.0);
        // failed jobs cost but do not enter the estimate
        assert_eq!(s.mean_recent("claude"), 1.5);
        assert_eq!(s.mean_recent("all"), 7.0 / 3.0);
        assert_eq!(s.mean_recent("gpu"), 0.0);
        // only the two latest days are kept
        s.fold(&e("gpu", "completed", 1.0, "2026-11-02T02:00:00Z"));
        assert_eq!(
            s.days.keys().collect::<Vec<_>>(),
            ["2026-11-01", "2026-11-02"]
        );
    }

    fn lock(d: &Path) -> Admission {
        Admission::lock(d, std::time::Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn a_kill_between_append_and_summary_loses_nothing() {
        let d = tempfile::tempdir().unwrap();
        let adm = lock(d.path());
        crate::ledger::append(&adm, &[e("gpu", "completed", 1.0, "2026-11-24T10:00:00Z")]).unwrap();
        let covered = Spend::load(d.path(), &mut Vec::new());
        assert_eq!(
            covered.offset,
            std::fs::metadata(crate::ledger::path(d.path()))
                .unwrap()
                .len()
        );
        // An entry appended by a run killed before it rewrote spend.json.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(crate::ledger::path(d.path()))
            .unwrap()
            .write_all(&e("gpu", "completed", 2.0, "2026-11-24T11:00:00Z").to_line())
            .unwrap();
        let now = crate::timestamp::parse("2026-11-24T12:00:00Z").unwrap();
        let mut w = Vec::new();
        let s = Spend::load(d.path(), &mut w);
        assert_eq!(s.spent(Window::Daily, "gpu", now), 3.0);
        assert!(w.is_empty(), "{w:?}");
        // and the next writer brings the summary up to date
        assert_eq!(refresh(&adm, &mut Vec::new()).unwrap(), s);
    }

    #[test]
    fn reading_what_submit_needs_does_not_read_the_covered_ledger() {
        let d = tempfile::tempdir().unwrap();
        let adm = lock(d.path());
        let entries: Vec<Entry> = (0..100)
            .map(|_| e("claude", "completed", 0.5, "2026-11-24T10:00:00Z"))
            .collect();
        crate::ledger::append(&adm, &entries).unwrap();
        // Overwrite the covered bytes in place (same file, same length):
        // a reader that re-read them would count nothing.
        let p = crate::ledger::path(d.path());
        let len = std::fs::metadata(&p).unwrap().len() as usize;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &vec![b'\n'; len]))
            .unwrap();
        let now = crate::timestamp::parse("2026-11-24T12:00:00Z").unwrap();
        let s = Spend::load(d.path(), &mut Vec::new());
        assert_eq!(s.spent(Window::Daily, "claude", now), 50.0);
        assert_eq!(s.mean_recent("claude"), 0.5);
    }

    #[test]
    fn a_replaced_ledger_is_counted_again() {
        let d = tempfile::tempdir().unwrap();
        let adm = lock(d.path());
        crate::ledger::append(&adm, &[e("gpu", "completed", 1.0, "2026-11-24T10:00:00Z")]).unwrap();
        crate::ledger::write_atomic(
            &crate::ledger::path(d.path()),
            &e("gpu", "completed", 7.0, "2026-11-24T10:00:00Z").to_line(),
        )
        .unwrap();
        let now = crate::timestamp::parse("2026-11-24T12:00:00Z").unwrap();
        let s = Spend::load(d.path(), &mut Vec::new());
        assert_eq!(s.spent(Window::Daily, "gpu", now), 7.0);
    }

    #[test]
    fn the_estimate_is_the_mean_of_the_last_fifty() {
        let mut s = Spend::default();
        for i in 0..60 {
            s.fold(&e(
                "gpu",
                "completed",
                if i < 10 { 100.0 } else { 1.0 },
                "2026-11-01T00:00:00Z",
            ));
        }
        assert_eq!(s.mean_recent("gpu"), 1.0);
    }
}
