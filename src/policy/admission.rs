//! Admission under the host-wide lock (`<state_dir>/admission.lock`): read
//! the spend summary and the in-flight index, decide ([`super::admit`]),
//! and on admit count the job before letting go, so concurrent submits
//! never overshoot a limit. Every write of the state directory's files
//! (ledger, spend.json, inflight.tsv) holds this lock too.

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
    /// Taken by a reap for its failover steps: the index lines it appends
    /// are marked as the reap's own, so that its recount at the end of the
    /// run does not add them again (see [`Admission::reconcile_all`]).
    by_reap: bool,
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
            by_reap: false,
        })
    }

    /// [`Admission::lock`] for a reap's failover step.
    pub fn lock_for_reap(state_dir: &Path, timeout: Duration) -> anyhow::Result<Admission> {
        Ok(Admission {
            by_reap: true,
            ..Admission::lock(state_dir, timeout)?
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// Decides whether a job for `provider` from `project` may go, counting
    /// the host's markers in flight ([`crate::inflight::read_counts`]).
    /// On admit the job counts as in flight before this returns. Warnings
    /// (a damaged ledger or index) never stop a submit: the caller prints
    /// them.
    pub fn check_and_reserve(
        &self,
        policy: &Policy,
        project: &Path,
        provider: Provider,
        now: SystemTime,
        warnings: &mut Vec<String>,
    ) -> anyhow::Result<Decision> {
        let own = project_key(project);
        let counts = crate::inflight::read_counts(&self.dir, warnings);
        // Under the lock, a summary that had to catch up is stored again,
        // so the next submit reads it as is.
        let spend = if policy.caps().is_empty() {
            Spend::default()
        } else {
            crate::ledger::spend::refresh(self, warnings).unwrap_or_else(|e| {
                warnings.push(format!("{e:#}"));
                Spend::load(&self.dir, warnings)
            })
        };
        let d = admit(policy, &spend, &counts, provider, now);
        if d == Decision::Admit {
            InFlight::append_delta(self, &own, provider.as_str(), 1, self.by_reap)?;
        }
        Ok(d)
    }

    /// Takes back a count of [`Admission::check_and_reserve`] when the POST
    /// surely failed (the marker is gone).
    pub fn release(&self, project: &Path, provider: Provider) -> anyhow::Result<()> {
        InFlight::append_delta(
            self,
            &project_key(project),
            provider.as_str(),
            -1,
            self.by_reap,
        )
    }

    /// Replaces a project's counts with the markers a reap saw (provider →
    /// markers pending or submitted).
    pub fn reconcile(&self, project: &Path, counts: Counts) -> anyhow::Result<()> {
        let since = InFlight::len_now(&self.dir);
        self.reconcile_all([(project, counts)], since)
    }

    /// [`Admission::reconcile`] for every project a reap went through, in
    /// one rewrite.
    /// `since` is [`InFlight::len_now`] taken before the reap looked at
    /// its first marker: the deltas submits appended after it are kept.
    pub fn reconcile_all<'a>(
        &self,
        projects: impl IntoIterator<Item = (&'a Path, Counts)>,
        since: u64,
    ) -> anyhow::Result<()> {
        let mut index = InFlight::load(&self.dir, &mut Vec::new());
        let mut seen = Vec::new();
        for (project, counts) in projects {
            let key = project_key(project);
            index.reconcile(&key, counts);
            seen.push(key);
        }
        // Only the reconciled projects take the late deltas again: the
        // others' counts already hold them.
        if let Ok(Some((bytes, _))) = crate::queue::read_nofollow(
            &crate::inflight::path(&self.dir),
            crate::fsread::Kind::State,
        ) {
            let mut late = InFlight::default();
            late.apply_deltas_since(&bytes, since);
            for key in seen {
                if let Some(add) = late.projects.remove(&key) {
                    let c = index.projects.entry(key).or_default();
                    for (provider, n) in add {
                        *c.entry(provider).or_default() += n;
                    }
                }
            }
        }
        // Written even when the counts did not change: it compacts the
        // lines submits appended.
        index.save(self)
    }
}

/// The state of every cap, for `report`, `status` and metrics: read without
/// the lock (a reader may be a moment behind a writer).
pub fn budget_snapshot(
    state_dir: &Path,
    policy: &Policy,
    now: SystemTime,
    warnings: &mut Vec<String>,
) -> Vec<super::admit::CapState> {
    if policy.caps().is_empty() {
        return Vec::new();
    }
    let spend = Spend::load(state_dir, warnings);
    let counts = crate::inflight::read_counts(state_dir, warnings);
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

    /// policy.md "Performance": what admission adds to a submit with a
    /// 100 000-entry ledger and 10 000 markers in flight across 100
    /// projects.
    #[test]
    #[ignore = "a measurement: cargo test --release --lib admission_cost -- --ignored --nocapture"]
    fn admission_cost() {
        use crate::ledger::Entry;
        use crate::policy::{Budget, Cad, Caps};
        let d = tempfile::tempdir().unwrap();
        let providers = ["gpu", "gemini", "claude", "auto"];
        let now = SystemTime::now();
        let entries: Vec<Entry> = (0..100_000u64)
            .map(|i| Entry {
                job_id: Some(format!("j-{i:08}")),
                project: format!("/srv/p{:03}", i % 100),
                task: format!("t{i}.md"),
                provider: providers[(i % 3) as usize].into(),
                model: Some("m".into()),
                status: if i % 10 == 0 { "failed" } else { "completed" }.into(),
                cost_cad: 0.01 + (i % 7) as f64 * 0.001,
                tokens_in: Some(100),
                tokens_out: Some(50),
                delegated_at: crate::timestamp::format(now - Duration::from_secs(100_000 - i)),
                finished_at: crate::timestamp::format(
                    now - Duration::from_secs(100_000 - i) + Duration::from_secs(10),
                ),
                step: false,
            })
            .collect();
        let projects: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/srv/p{i:03}")))
            .collect();
        {
            let adm = Admission::lock(d.path(), Duration::from_secs(5)).unwrap();
            crate::ledger::append(&adm, &entries).unwrap();
            let mut idx = InFlight::default();
            for p in &projects {
                idx.reconcile(
                    &project_key(p),
                    providers.iter().map(|k| (k.to_string(), 25)).collect(),
                );
            }
            idx.save(&adm).unwrap();
        }
        let caps = Caps {
            daily_cad: Some(Cad(1e6)),
            monthly_cad: Some(Cad(1e6)),
        };
        let policy = Policy {
            budget: Budget {
                daily_cad: Some(Cad(1e6)),
                monthly_cad: Some(Cad(1e6)),
                providers: [(Provider::Claude, caps)].into(),
            },
            max_in_flight: [(super::super::LimitKey::All, super::super::Count(1_000_000))].into(),
            ..Policy::default()
        };
        let n = 2000;
        let mut spent = Duration::ZERO;
        for i in 0..n {
            let t = Instant::now();
            let adm = Admission::lock(d.path(), Duration::from_secs(5)).unwrap();
            let dec = adm
                .check_and_reserve(
                    &policy,
                    &projects[i % 100],
                    Provider::Claude,
                    now,
                    &mut Vec::new(),
                )
                .unwrap();
            spent += t.elapsed();
            assert_eq!(dec, Decision::Admit);
            // As a reap would, every minute: compact the appended count.
            InFlight::load(d.path(), &mut Vec::new())
                .save(&adm)
                .unwrap();
        }
        let per = spent / n as u32;
        println!(
            "admission (lock, read spend.json + inflight.tsv, decide, count the job): {per:?} per submit"
        );
        let t = Instant::now();
        for _ in 0..n {
            let _adm = Admission::lock(d.path(), Duration::from_secs(5)).unwrap();
        }
        println!("  of which the lock: {:?}", t.elapsed() / n as u32);
        let t = Instant::now();
        for _ in 0..n {
            let s = Spend::load(d.path(), &mut Vec::new());
            assert!(s.offset > 0);
        }
        println!(
            "  of which reading spend.json: {:?}",
            t.elapsed() / n as u32
        );
        let t = Instant::now();
        for _ in 0..n {
            let c = crate::inflight::read_counts(d.path(), &mut Vec::new());
            assert!(!c.is_empty());
        }
        println!(
            "  of which reading inflight.tsv: {:?}",
            t.elapsed() / n as u32
        );
        let adm = Admission::lock(d.path(), Duration::from_secs(5)).unwrap();
        let t = Instant::now();
        for _ in 0..n {
            InFlight::append_delta(&adm, "/srv/p001", "claude", 1, false).unwrap();
        }
        println!(
            "  of which counting the job in inflight.tsv: {:?}",
            t.elapsed() / n as u32
        );
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
