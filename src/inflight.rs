//! `inflight.json`: per project, per provider, how many markers are pending
//! or submitted, so that admission need not list every inbox (policy.md
//! "Limits on jobs in flight").
//!
//! `submit` adds one under the admission lock when it admits a job (and
//! takes it back when its POST surely failed); every `reap` replaces each
//! project's counts with the markers it saw, so a marker deleted by hand
//! stops counting at the next reap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::admission::Admission;

pub const INFLIGHT_FILE: &str = "inflight.json";
const MAX_BYTES: usize = 16 << 20;

/// Provider → markers in flight.
pub type Counts = BTreeMap<String, u64>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    /// Project key ([`project_key`]) → counts.
    pub projects: BTreeMap<String, Counts>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(INFLIGHT_FILE)
}

/// How a project is named in the index: its absolute path, without
/// touching the file system (so no syscall per configured project).
pub fn project_key(dir: &Path) -> String {
    let q = crate::queue::Queue::at(dir);
    std::path::absolute(&q.project)
        .unwrap_or(q.project)
        .display()
        .to_string()
}

impl InFlight {
    /// Reads the index; a missing one is empty, a damaged one is empty with
    /// a warning (the next reap rebuilds it).
    pub fn load(state_dir: &Path, warnings: &mut Vec<String>) -> InFlight {
        let p = path(state_dir);
        match crate::queue::read_nofollow(&p) {
            Ok(None) => InFlight::default(),
            Ok(Some((bytes, _))) if bytes.len() <= MAX_BYTES => serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| {
                    warnings.push(format!(
                        "{} is corrupt ({e}); jobs in flight count from 0 until the next reap",
                        p.display()
                    ));
                    InFlight::default()
                }),
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

    pub fn save(&self, adm: &Admission) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(self).expect("the index always serializes");
        crate::ledger::write_atomic(&path(adm.state_dir()), &bytes)
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
    fn project_keys_are_absolute_and_ignore_the_queue_dir() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            project_key(Path::new("p")),
            cwd.join("p").display().to_string()
        );
        assert_eq!(project_key(Path::new("/x/p/.agent-queue")), "/x/p");
    }
}
