//! Admission under the host-wide lock (`<state_dir>/admission.lock`): read
//! the spend summary and the in-flight index, decide ([`super::admit`]),
//! and on admit count the job before letting go, so concurrent submits
//! never overshoot a limit. Every write of the state directory's files
//! (ledger, spend.json, inflight.json) holds this lock too.

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::{Decision, Policy, Provider, admit};
use crate::error::{Code, fail};
use crate::inflight::{Counts, InFlight, project_key};
use crate::ledger::spend::Spend;

pub const LOCK_FILE: &str = "admission.lock";

/// Proof that the admission lock is held, and where the state lives.
pub struct Admission {
    _file: File,
    dir: PathBuf,
}

impl Admission {
    /// Takes the lock, creating the state directory (0700) if needed.
    /// Held by another run longer than `timeout`: exit 75, nothing written.
    pub fn lock(state_dir: &Path, timeout: Duration) -> anyhow::Result<Admission> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| {
                format!("cannot create the state directory {}", state_dir.display())
            })?;
        let p = state_dir.join(LOCK_FILE);
        let file = crate::queue::open_lock_file(&p, libc::O_NOFOLLOW)
            .with_context(|| format!("cannot open the admission lock {}", p.display()))?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(fail(
                        Code::TempFail,
                        format!(
                            "the admission lock {} has been held for more than {}; try again later",
                            p.display(),
                            humantime::format_duration(timeout)
                        ),
                    ));
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", p.display()));
                }
            }
        }
        Ok(Admission {
            _file: file,
            dir: state_dir.to_path_buf(),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// Decides whether a job for `provider` from `project` may go, counting
    /// the markers of `projects` (the configured ones; `project` is added).
    /// On admit the job counts as in flight before this returns. Warnings
    /// (a damaged ledger or index) never stop a submit: the caller prints
    /// them.
    pub fn check_and_reserve(
        &self,
        policy: &Policy,
        projects: &[PathBuf],
        project: &Path,
        provider: Provider,
        now: SystemTime,
        warnings: &mut Vec<String>,
    ) -> anyhow::Result<Decision> {
        let mut index = InFlight::load(&self.dir, warnings);
        let own = project_key(project);
        let keys = all_keys(projects, &own);
        let counts = index.counts(keys.iter().map(String::as_str));
        let spend = if policy.caps().is_empty() {
            Spend::default()
        } else {
            Spend::load(&self.dir, warnings)
        };
        let d = admit(policy, &spend, &counts, provider, now);
        if d == Decision::Admit {
            index.bump(&own, provider.as_str());
            index.save(self)?;
        }
        Ok(d)
    }

    /// Takes back a count of [`Admission::check_and_reserve`] when the POST
    /// surely failed (the marker is gone).
    pub fn release(&self, project: &Path, provider: Provider) -> anyhow::Result<()> {
        let mut index = InFlight::load(&self.dir, &mut Vec::new());
        index.release(&project_key(project), provider.as_str());
        index.save(self)
    }

    /// Replaces a project's counts with the markers a reap saw (provider →
    /// markers pending or submitted).
    pub fn reconcile(&self, project: &Path, counts: Counts) -> anyhow::Result<()> {
        let mut index = InFlight::load(&self.dir, &mut Vec::new());
        let before = index.clone();
        index.reconcile(&project_key(project), counts);
        if index != before {
            index.save(self)?;
        }
        Ok(())
    }
}

/// The keys of the configured projects and the task's own.
pub fn all_keys(projects: &[PathBuf], own: &str) -> Vec<String> {
    let mut keys: Vec<String> = projects.iter().map(|p| project_key(p)).collect();
    keys.push(own.to_string());
    keys
}

/// The state of every cap, for `report`, `status` and metrics: read without
/// the lock (a reader may be a moment behind a writer).
pub fn budget_snapshot(
    state_dir: &Path,
    policy: &Policy,
    projects: &[PathBuf],
    now: SystemTime,
    warnings: &mut Vec<String>,
) -> Vec<super::admit::CapState> {
    if policy.caps().is_empty() {
        return Vec::new();
    }
    let spend = Spend::load(state_dir, warnings);
    let index = InFlight::load(state_dir, warnings);
    let keys: Vec<String> = projects.iter().map(|p| project_key(p)).collect();
    let counts = index.counts(keys.iter().map(String::as_str));
    super::admit::budget_states(policy, &spend, &counts, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Count, LimitKey};

    #[test]
    fn ten_concurrent_admissions_against_a_limit_of_three_admit_three() {
        let d = tempfile::tempdir().unwrap();
        let policy = Policy {
            max_in_flight: [(LimitKey::Claude, Count(3))].into(),
            ..Policy::default()
        };
        let admitted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..10)
                .map(|i| {
                    let (dir, policy) = (d.path(), &policy);
                    s.spawn(move || {
                        let adm = Admission::lock(dir, Duration::from_secs(10)).unwrap();
                        let proj = PathBuf::from(format!("/p{}", i % 2));
                        let dec = adm
                            .check_and_reserve(
                                policy,
                                &[PathBuf::from("/p0"), PathBuf::from("/p1")],
                                &proj,
                                Provider::Claude,
                                SystemTime::now(),
                                &mut Vec::new(),
                            )
                            .unwrap();
                        usize::from(dec == Decision::Admit)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 3);
        let count = || {
            InFlight::load(d.path(), &mut Vec::new())
                .counts(["/p0", "/p1"])
                .values()
                .sum::<u64>()
        };
        assert_eq!(count(), 3);
        let adm = Admission::lock(d.path(), Duration::from_secs(1)).unwrap();
        adm.reconcile(Path::new("/p0"), Counts::from([("claude".into(), 1)]))
            .unwrap();
        adm.reconcile(Path::new("/p1"), Counts::new()).unwrap();
        assert_eq!(count(), 1);
        adm.release(Path::new("/p0"), Provider::Claude).unwrap();
        assert_eq!(count(), 0);
    }

    #[test]
    fn a_held_lock_times_out_with_exit_75() {
        let d = tempfile::tempdir().unwrap();
        let _held = Admission::lock(d.path(), Duration::from_secs(1)).unwrap();
        let e = Admission::lock(d.path(), Duration::from_millis(50))
            .err()
            .expect("held");
        assert_eq!(crate::error::code_of(&e), Code::TempFail);
        assert!(e.to_string().contains("admission.lock"), "{e}");
    }
}
