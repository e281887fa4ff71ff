//! The SQLite store: opening it (created, migrated and checked on first
//! use), and every query and transaction the commands need. No SQL lives
//! outside the books.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::entry::{Entry, counted_provider, sane_cost, utc};
use super::schema;
use crate::error::{Code, fail};
use crate::policy::admit::{CapState, budget_states};
use crate::policy::{Counts, Decision, Policy, Provider, Spending, admit};

/// The ledger file of earlier versions: imported once, then renamed.
const OLD_LEDGER: &str = "ledger.jsonl";
/// Caches of earlier versions, made obsolete by the store.
const OLD_CACHES: [&str; 2] = ["spend.json", "inflight.tsv"];

/// A job in flight: what a marker pending or submitted holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    /// The marker's idempotency key: one per job sent.
    pub key: String,
    /// [`crate::names::project_key`].
    pub project: String,
    pub task: String,
    pub provider: String,
    pub job_id: Option<String>,
    pub started_at: String,
}

/// One ledger row, as `report` reads it.
#[derive(Debug)]
pub struct Row {
    pub project: String,
    pub provider: String,
    pub model: Option<String>,
    pub completed: bool,
    pub cost_cad: f64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub turnaround: Option<u64>,
    pub finished_at: String,
}

/// What waits for a push: entries (with their row ids) and released keys.
#[derive(Debug, Default)]
pub struct Unpushed {
    pub entries: Vec<(i64, Entry)>,
    pub keys: Vec<String>,
}

/// Jobs with a record of their own, per project, provider and outcome.
#[derive(Debug)]
pub struct RecordTotal {
    pub project: String,
    pub provider: String,
    pub completed: bool,
    pub cost_cad: f64,
    pub jobs: u64,
}

/// Every job in the books (each job of a chain included), per project,
/// provider and outcome: the metrics' `_total` counters.
#[derive(Debug)]
pub struct JobTotal {
    pub project: String,
    pub provider: String,
    pub completed: bool,
    pub jobs: u64,
    pub cost_cad: f64,
}

/// What the metrics' counters say, summed by the books.
#[derive(Debug, Default)]
pub struct Counters {
    pub jobs: Vec<JobTotal>,
    /// Failover steps sent, per (from, to).
    pub failovers: Vec<(String, String, u64)>,
    /// When a reap last finished without an error (Unix seconds; 0: never).
    pub last_success: f64,
}

/// What a rebuild kept besides the entries it made.
#[derive(Debug, Default, PartialEq)]
pub struct Rebuilt {
    /// Entries of projects not rebuilt.
    pub other: u64,
    /// Entries of rebuilt projects whose job has no record now (requeued,
    /// or its record deleted by hand): the jobs happened, they stay.
    pub without_record: u64,
}

/// An open store.
pub struct Books {
    conn: Connection,
    path: PathBuf,
    /// A fleet is configured: the keys entries release are kept until
    /// pushed.
    journal: bool,
    /// How long a writer waits for another (`lock_timeout`).
    timeout: Duration,
}

/// Opens the books when there are any (the store, or a ledger of an earlier
/// version to import): `None` on a host that never booked anything.
pub fn open_if_present(state_dir: &Path, timeout: Duration) -> anyhow::Result<Option<Books>> {
    let there = |name: &str| std::fs::symlink_metadata(state_dir.join(name)).is_ok();
    if !there(super::BOOKS_FILE) && !there(OLD_LEDGER) {
        return Ok(None);
    }
    Books::open(state_dir, timeout).map(Some)
}

impl Books {
    /// Opens the store, creating the state directory (0700) and the store
    /// (0600) when missing; waits up to `timeout` for another writer.
    /// A store that is no regular file, cannot be read, or is of a newer
    /// schema is an error naming the file.
    pub fn open(state_dir: &Path, timeout: Duration) -> anyhow::Result<Books> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| {
                format!("cannot create the state directory {}", state_dir.display())
            })?;
        let path = super::path(state_dir);
        let shown = path.display().to_string();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
            return Err(not_a_file(&shown));
        }
        // Created here, so that it is 0600 (SQLite gives its -wal and -shm
        // files the same bits) and never a symlink's target.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| unavailable(&shown, &e.to_string()))?;
        let meta = f
            .metadata()
            .map_err(|e| unavailable(&shown, &e.to_string()))?;
        if !meta.is_file() {
            return Err(not_a_file(&shown));
        }
        drop(f);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(|e| unavailable(&shown, &e.to_string()))?;
        let mut books = Books {
            conn,
            path,
            journal: false,
            timeout,
        };
        books
            .prepare(timeout)
            .map_err(|e| match e.downcast_ref::<crate::error::Coded>() {
                Some(_) => e,
                None => unavailable(&shown, &format!("{e:#}")),
            })?;
        Ok(books)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// With a fleet: keep what the fleet's database must learn (fleet.md).
    pub fn set_journal(&mut self, on: bool) {
        self.journal = on;
    }

    /// Records a reservation the fleet admitted (this host's own copy,
    /// which tells an idle reap whether it has anything to reconcile).
    pub fn reserve(&mut self, job: &Reservation) -> anyhow::Result<()> {
        insert_reservation(&self.conn, job)
    }

    /// Whether anything waits for a push: entries or released keys.
    pub fn has_unpushed(&self) -> anyhow::Result<bool> {
        let e = self
            .conn
            .prepare_cached("SELECT 1 FROM ledger WHERE pushed = 0 LIMIT 1")?
            .exists([])?;
        let k = self
            .conn
            .prepare_cached("SELECT 1 FROM released LIMIT 1")?
            .exists([])?;
        Ok(e || k)
    }

    /// Whether this host holds any reservation.
    pub fn has_reservations(&self) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM reservation LIMIT 1")?
            .exists([])?)
    }

    /// Up to `limit` entries not pushed yet (with their row ids), and the
    /// keys released but not pushed, read on one snapshot. The keys only
    /// with the last entries: a job's reservation is released in the fleet
    /// in the batch that brings its entry or after it, never before (a
    /// push cut off between batches never leaves a job counted neither
    /// reserved nor spent).
    pub fn unpushed(&self, limit: i64) -> anyhow::Result<Unpushed> {
        let snapshot = self.conn.unchecked_transaction()?;
        let mut q = snapshot.prepare_cached(
            "SELECT id, job_id, project, task, provider, said_provider, model, status, cost_cad,
                    tokens_in, tokens_out, delegated_at, finished_at, step
             FROM ledger WHERE pushed = 0 ORDER BY id LIMIT ?1",
        )?;
        let entries = q
            .query_map([limit], |r| {
                Ok((
                    r.get(0)?,
                    Entry {
                        job_id: r.get(1)?,
                        project: r.get(2)?,
                        task: r.get(3)?,
                        provider: r.get(4)?,
                        said_provider: r.get(5)?,
                        model: r.get(6)?,
                        status: r.get(7)?,
                        cost_cad: r.get(8)?,
                        tokens_in: r.get::<_, Option<i64>>(9)?.map(|t| t.max(0) as u64),
                        tokens_out: r.get::<_, Option<i64>>(10)?.map(|t| t.max(0) as u64),
                        delegated_at: r.get(11)?,
                        finished_at: r.get(12)?,
                        step: r.get(13)?,
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let keys = if (entries.len() as i64) < limit {
            let mut q = snapshot.prepare_cached("SELECT key FROM released LIMIT ?1")?;
            q.query_map([limit], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        drop(q);
        snapshot.finish()?;
        Ok(Unpushed { entries, keys })
    }

    /// Notes what a push sent: the entries are in the fleet's database, the
    /// keys released there.
    pub fn mark_pushed(&mut self, ids: &[i64], keys: &[String]) -> anyhow::Result<()> {
        let (ids, keys) = (serde_json::to_string(ids)?, serde_json::to_string(keys)?);
        let tx = self.immediate()?;
        tx.prepare_cached(
            "UPDATE ledger SET pushed = 1 WHERE id IN (SELECT value FROM json_each(?1))",
        )?
        .execute([&ids])?;
        tx.prepare_cached("DELETE FROM released WHERE key IN (SELECT value FROM json_each(?1))")?
            .execute([&keys])?;
        tx.commit()?;
        Ok(())
    }

    /// Empties the write-ahead log into the store, when it holds anything,
    /// so that the next run opens the books without reading it back (an
    /// idle reap stays cheap): `wal_checkpoint(TRUNCATE)`, which syncs the
    /// store before it truncates the log, so nothing committed is at risk
    /// whenever the process dies. Never waits: with another run reading or
    /// writing, it is left for a later run.
    pub fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.checkpoint_over(0)
    }

    /// [`Books::checkpoint`] when the log holds more than `kept` bytes.
    fn checkpoint_over(&mut self, kept: u64) -> anyhow::Result<()> {
        let wal = self
            .path
            .with_file_name(format!("{}-wal", super::BOOKS_FILE));
        if std::fs::metadata(&wal).map_or(true, |m| m.len() <= kept) {
            return Ok(());
        }
        self.conn.busy_timeout(Duration::ZERO)?;
        let done = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        self.conn.busy_timeout(busy(self.timeout))?;
        match done {
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => Ok(()),
            r => Ok(r?),
        }
    }

    /// Settings of the connection, then the schema: created (and an old
    /// ledger imported) on first use, refused when newer than this binary.
    fn prepare(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.conn.busy_timeout(busy(timeout))?;
        // The -wal and -shm files stay between runs, and closing does not
        // checkpoint: a run that opens the books creates, fsyncs and
        // deletes nothing (SQLite's own checkpoints, every 1000 pages,
        // keep the log short).
        self.conn.file_control(
            Some(rusqlite::MAIN_DB),
            rusqlite::FileControl::PersistWal(&mut 1),
        )?;
        self.conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        // Plans never depend on the values bound: a statement is prepared
        // once, not again at its first bind (SQLite re-prepares a statement
        // whose LIMIT is a bound value, as the estimate's is).
        self.conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        // NORMAL in WAL mode: a commit survives any crash of the process
        // (SIGKILL included); a power loss may lose the last ones, which
        // the records and the next reap's reconcile make good.
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == schema::VERSION {
            return Ok(());
        }
        if version > schema::VERSION {
            return Err(fail(
                Code::Config,
                format!(
                    "the books {} have schema version {version}; this ccl-delegate knows version {}: update ccl-delegate",
                    self.path.display(),
                    schema::VERSION
                ),
            ));
        }
        // WAL is a property of the file: set once, outside a transaction.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            anyhow::bail!("cannot switch to WAL mode (got {mode})");
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let mut imported = None;
        if version < schema::VERSION {
            tx.execute_batch(schema::CREATE)?;
            if version == 0 {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                imported = import_old_ledger(&tx, dir)?;
            }
            if version == 1 {
                tx.execute_batch(schema::UPGRADE_FROM_1)?;
            }
            if (1..=2).contains(&version) {
                tx.execute_batch(schema::UPGRADE_FROM_2)?;
            }
            tx.execute_batch(&format!("PRAGMA user_version = {}", schema::VERSION))?;
        }
        tx.commit()?;
        if let Some(old) = imported {
            // Imported once (the version now says so): the old files are
            // put aside, never read again.
            let _ = std::fs::rename(&old, old.with_extension("jsonl.imported"));
            let dir = self.path.parent().unwrap_or(Path::new("."));
            for c in OLD_CACHES {
                let _ = std::fs::remove_file(dir.join(c));
            }
        }
        Ok(())
    }

    /// A write transaction, waiting up to `lock_timeout` for another
    /// writer: past that, exit 75 (try again later).
    fn immediate(&mut self) -> anyhow::Result<rusqlite::Transaction<'_>> {
        let path = self.path.display().to_string();
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    fail(
                        Code::TempFail,
                        format!(
                            "the books {path} have been locked by another run for longer than lock_timeout; try again later"
                        ),
                    )
                }
                _ => anyhow::Error::new(e),
            })
    }

    /// Admission (policy.md): in one transaction, read what is spent and
    /// reserved, decide, and on admit insert the job's reservation. For a
    /// failover step, `leaving` is the reservation of the job it leaves,
    /// and `ended` that job's entry: both change with the step's decision
    /// (on a budget refusal, neither: the record that ends the chain books
    /// the job). `None` as `job`: a step a limit or the price rule defers
    /// holds no job.
    pub fn admit(
        &mut self,
        policy: &Policy,
        job: &Reservation,
        provider: Provider,
        step: Option<(&str, Option<&Entry>)>,
        now: SystemTime,
    ) -> anyhow::Result<Decision> {
        let tx = self.immediate()?;
        if let Some((leaving, _)) = step {
            tx.execute("DELETE FROM reservation WHERE key = ?1", [leaving])?;
        }
        let counts = counts_in(&tx)?;
        let spending = if policy.caps().is_empty() {
            Spending::default()
        } else {
            spending_in(&tx, &counts, now)?
        };
        let d = admit(policy, &spending, &counts, provider);
        match (&d, step) {
            (Decision::Budget { .. }, Some(_)) => {
                // Nothing changes: the chain ends in failed/, whose record
                // books the job and releases it.
                drop(tx);
                return Ok(d);
            }
            (Decision::Admit, _) => insert_reservation(&tx, job)?,
            _ => {}
        }
        if let Some((_, Some(e))) = step {
            insert_entry(&tx, e)?;
        }
        tx.commit()?;
        Ok(d)
    }

    /// Takes back the reservation of a job that surely was not created.
    pub fn release(&mut self, key: &str) -> anyhow::Result<()> {
        self.conn
            .execute("DELETE FROM reservation WHERE key = ?1", [key])?;
        Ok(())
    }

    /// Notes the job a reservation became (the price rule names it).
    pub fn set_job(&mut self, key: &str, job_id: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE reservation SET job_id = ?2 WHERE key = ?1",
            [key, job_id],
        )?;
        Ok(())
    }

    /// A job whose record was requeued: it stays in the books (it
    /// happened), as a job with no record of its own.
    pub fn unrecord(&mut self, job_id: &str) -> anyhow::Result<()> {
        self.conn
            .execute("UPDATE ledger SET step = 1 WHERE job_id = ?1", [job_id])?;
        Ok(())
    }

    /// Books entries and releases the reservations of their jobs, in one
    /// transaction. An entry already there counts nothing. Answers how
    /// many were new.
    pub fn book(&mut self, entries: &[Entry], keys: &[&str]) -> anyhow::Result<usize> {
        let journal = self.journal;
        let tx = self.immediate()?;
        let mut n = 0;
        for e in entries {
            n += insert_entry(&tx, e)?;
        }
        {
            let mut del = tx.prepare_cached("DELETE FROM reservation WHERE key = ?1")?;
            let mut keep = tx.prepare_cached("INSERT OR IGNORE INTO released (key) VALUES (?1)")?;
            for k in keys.iter().filter(|k| !k.is_empty()) {
                del.execute([k])?;
                if journal {
                    keep.execute([k])?;
                }
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Which of `ids` the ledger lacks.
    pub fn lacking(&self, ids: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut q = self
            .conn
            .prepare_cached("SELECT 1 FROM ledger WHERE job_id = ?1")?;
        let mut out = Vec::new();
        for id in ids {
            if !q.exists([id])? {
                out.push(id.to_string());
            }
        }
        Ok(out)
    }

    /// Makes a project's reservations the markers a reap sees (each a job
    /// in flight), under that project's queue lock (the caller's): a row
    /// without a marker goes, a marker without a row is added unless its
    /// job is already in the ledger.
    pub fn reconcile(&mut self, project: &str, markers: &[Reservation]) -> anyhow::Result<()> {
        let tx = self.immediate()?;
        let rows: HashSet<String> = {
            let mut q = tx.prepare_cached("SELECT key FROM reservation WHERE project = ?1")?;
            q.query_map([project], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut want = HashSet::new();
        {
            let mut booked = tx.prepare_cached("SELECT 1 FROM ledger WHERE job_id = ?1")?;
            for m in markers {
                let done = match &m.job_id {
                    Some(j) => booked.exists([j])?,
                    None => false,
                };
                if !done {
                    want.insert(m.key.as_str());
                }
            }
        }
        {
            let mut del = tx.prepare_cached("DELETE FROM reservation WHERE key = ?1")?;
            for k in rows.iter().filter(|k| !want.contains(k.as_str())) {
                del.execute([k])?;
            }
        }
        for m in markers {
            if want.contains(m.key.as_str()) && !rows.contains(&m.key) {
                insert_reservation(&tx, m)?;
            } else if m.job_id.is_some() {
                tx.execute(
                    "UPDATE reservation SET job_id = ?2 WHERE key = ?1 AND job_id IS NULL",
                    params![m.key, m.job_id],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The projects that hold reservations.
    pub fn reserved_projects(&self) -> anyhow::Result<Vec<String>> {
        let mut q = self
            .conn
            .prepare_cached("SELECT DISTINCT project FROM reservation")?;
        let v = q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Jobs in flight per provider.
    pub fn counts(&self) -> anyhow::Result<Counts> {
        counts_in(&self.conn)
    }

    /// Every configured cap's state now (one read transaction).
    pub fn budget(&mut self, policy: &Policy, now: SystemTime) -> anyhow::Result<Vec<CapState>> {
        if policy.caps().is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.conn.transaction()?;
        let counts = counts_in(&tx)?;
        let spending = spending_in(&tx, &counts, now)?;
        Ok(budget_states(policy, &spending, &counts))
    }

    /// Replaces the entries of `projects` with `fresh` in one transaction
    /// (the others stay); answers how many entries of other projects were
    /// kept. A job that ended stays in the books even when its record is
    /// gone (requeued): only entries whose job a fresh one names, or
    /// jobless ones, are replaced.
    pub fn rebuild(&mut self, projects: &[String], fresh: &[Entry]) -> anyhow::Result<Rebuilt> {
        let tx = self.immediate()?;
        // A record names the provider the service said; when that is no
        // provider of ours, reap counted the job under the one asked for,
        // which the record does not hold: kept from the entry it replaces
        // (looked up for those entries alone, by the job's unique index).
        let known = |p: &str| crate::policy::Provider::parse(p).is_some();
        let mut counted = std::collections::HashMap::new();
        {
            let mut q = tx.prepare_cached("SELECT provider FROM ledger WHERE job_id = ?1")?;
            for e in fresh.iter().filter(|e| !known(&e.provider)) {
                if let Some(j) = &e.job_id
                    && let Some(p) = q.query_row([j], |r| r.get::<_, String>(0)).optional()?
                    && known(&p)
                {
                    counted.insert(j.as_str(), p);
                }
            }
        }
        {
            let mut del = tx.prepare_cached(
                "DELETE FROM ledger WHERE project = ?1 AND (job_id IS NULL OR job_id IN (SELECT value FROM json_each(?2)))",
            )?;
            let ids: Vec<&str> = fresh.iter().filter_map(|e| e.job_id.as_deref()).collect();
            let ids = serde_json::to_string(&ids)?;
            for p in projects {
                del.execute(params![p, ids])?;
            }
        }
        let mut inserted = 0i64;
        for e in fresh {
            let kept = e.job_id.as_deref().and_then(|j| counted.get(j));
            let e = match kept {
                Some(p) => &Entry {
                    said_provider: e.said_provider.clone().or_else(|| Some(e.provider.clone())),
                    provider: p.clone(),
                    ..e.clone()
                },
                None => e,
            };
            // A job booked under another project key keeps its entry.
            inserted += insert_entry(&tx, e)? as i64;
        }
        let total: i64 = tx.query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))?;
        let mine: i64 = {
            let mut q = tx.prepare_cached("SELECT count(*) FROM ledger WHERE project = ?1")?;
            let mut n = 0;
            for p in projects {
                n += q.query_row([p], |r| r.get::<_, i64>(0))?;
            }
            n
        };
        // The sums again from the ledger, exactly.
        tx.execute_batch(
            "DELETE FROM spend_day;
             INSERT INTO spend_day (day, provider, cost_cad)
                 SELECT substr(finished_at, 1, 10), provider, sum(cost_cad) FROM ledger GROUP BY 1, 2;
             DELETE FROM in_flight;
             INSERT INTO in_flight (provider, n) SELECT provider, count(*) FROM reservation GROUP BY 1;
             DELETE FROM record_total;
             INSERT INTO record_total (project, provider, completed, jobs, cost_cad)
                 SELECT project, provider, status = 'completed', count(*), total(cost_cad)
                 FROM ledger WHERE step = 0 GROUP BY 1, 2, 3;",
        )?;
        tx.commit()?;
        Ok(Rebuilt {
            other: (total - mine).max(0) as u64,
            without_record: (mine - inserted).max(0) as u64,
        })
    }

    /// Calls `each` with every entry that ended in `[since, until)`.
    pub fn rows_between(
        &self,
        since: &str,
        until: Option<&str>,
        mut each: impl FnMut(Row),
    ) -> anyhow::Result<()> {
        let mut q = self.conn.prepare(
            "SELECT project, provider, model, status = 'completed', cost_cad, tokens_in,
                    tokens_out, turnaround, finished_at
             FROM ledger WHERE finished_at >= ?1 AND finished_at < ?2",
        )?;
        let mut rows = q.query(params![since, until.unwrap_or("~")])?;
        while let Some(r) = rows.next()? {
            let n = |i: usize| -> rusqlite::Result<u64> {
                Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
            };
            each(Row {
                project: r.get(0)?,
                provider: r.get(1)?,
                model: r.get(2)?,
                completed: r.get(3)?,
                cost_cad: r.get(4)?,
                tokens_in: n(5)?,
                tokens_out: n(6)?,
                turnaround: r.get::<_, Option<i64>>(7)?.map(|t| t.max(0) as u64),
                finished_at: r.get(8)?,
            });
        }
        Ok(())
    }

    /// Per project, provider and outcome: the jobs the records hold (the
    /// earlier jobs of chains left out) and their cost.
    pub fn record_totals(&self) -> anyhow::Result<Vec<RecordTotal>> {
        let mut q = self.conn.prepare(
            "SELECT project, provider, completed, cost_cad, jobs FROM record_total WHERE jobs > 0",
        )?;
        let v = q
            .query_map([], |r| {
                Ok(RecordTotal {
                    project: r.get(0)?,
                    provider: r.get(1)?,
                    completed: r.get(2)?,
                    cost_cad: r.get(3)?,
                    jobs: r.get::<_, i64>(4)?.max(0) as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// A failover step sent (`key` is the step's idempotency key): counted
    /// once, however many runs note it.
    pub fn note_failover(&mut self, key: &str, from: &str, to: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO failover (key, from_provider, to_provider) VALUES (?1, ?2, ?3)",
            [key, from, to],
        )?;
        Ok(())
    }

    /// The metrics' counters, summed by the books: every job per project,
    /// provider and outcome; failover steps per (from, to); the last
    /// successful run (0 when none).
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let mut q = self.conn.prepare_cached(
            "SELECT project, provider, completed, jobs, cost_cad FROM job_total WHERE jobs > 0",
        )?;
        let jobs = q
            .query_map([], |r| {
                Ok(JobTotal {
                    project: r.get(0)?,
                    provider: r.get(1)?,
                    completed: r.get(2)?,
                    jobs: r.get::<_, i64>(3)?.max(0) as u64,
                    cost_cad: r.get::<_, f64>(4)?.max(0.0),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut q = self.conn.prepare_cached(
            "SELECT from_provider, to_provider, count(*) FROM failover GROUP BY 1, 2",
        )?;
        let failovers = q
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
            })?
            .collect::<Result<_, _>>()?;
        let last_success = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'last_success'")?
            .query_row([], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Ok(Counters {
            jobs,
            failovers,
            last_success,
        })
    }

    /// Notes a reap that finished without an error, at `at` (Unix seconds).
    pub fn note_success(&mut self, at: f64) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('last_success', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [format!("{at:.3}")],
        )?;
        Ok(())
    }

    /// Every entry, oldest first (tests and small books).
    pub fn entries(&self) -> anyhow::Result<Vec<Entry>> {
        let mut q = self.conn.prepare(
            "SELECT job_id, project, task, provider, said_provider, model, status, cost_cad,
                    tokens_in, tokens_out, delegated_at, finished_at, step
             FROM ledger ORDER BY id",
        )?;
        let v = q
            .query_map([], |r| {
                Ok(Entry {
                    job_id: r.get(0)?,
                    project: r.get(1)?,
                    task: r.get(2)?,
                    provider: r.get(3)?,
                    said_provider: r.get(4)?,
                    model: r.get(5)?,
                    status: r.get(6)?,
                    cost_cad: r.get(7)?,
                    tokens_in: r.get::<_, Option<i64>>(8)?.map(|t| t as u64),
                    tokens_out: r.get::<_, Option<i64>>(9)?.map(|t| t as u64),
                    delegated_at: r.get(10)?,
                    finished_at: r.get(11)?,
                    step: r.get(12)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Every reservation (tests, `doctor`).
    pub fn reservations(&self) -> anyhow::Result<Vec<Reservation>> {
        let mut q = self.conn.prepare(
            "SELECT key, project, task, provider, job_id, started_at FROM reservation ORDER BY key",
        )?;
        let v = q
            .query_map([], |r| {
                Ok(Reservation {
                    key: r.get(0)?,
                    project: r.get(1)?,
                    task: r.get(2)?,
                    provider: r.get(3)?,
                    job_id: r.get(4)?,
                    started_at: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// How many entries the ledger holds.
    pub fn len(&self) -> anyhow::Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// SQLite's own check of the file (`doctor`).
    pub fn check(&self) -> anyhow::Result<()> {
        let r: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if r != "ok" {
            anyhow::bail!("{}", crate::text::clip(&r, 200));
        }
        Ok(())
    }
}

/// The error of books that cannot be used: the file and the cause.
fn unavailable(path: &str, cause: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the books {path} cannot be used: {}; {}",
        crate::text::clip(cause, 300),
        super::REBUILD_HINT
    )
}

fn not_a_file(path: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the books {path} cannot be used: not a regular file; {}",
        super::REBUILD_HINT
    )
}

/// The log a run leaves behind, at most (about 64 pages): a new process
/// reads the whole log back when it opens the books (SQLite rebuilds its
/// index of it), so a log that grew over many submits without a reap made
/// each of them slower (measured: 1.0 MB of log, +1.7 ms a submit).
const WAL_KEPT: u64 = 256 * 1024;

/// A wait SQLite takes: at most `i32::MAX` milliseconds (24 days), which
/// its busy timeout cannot exceed.
fn busy(timeout: Duration) -> Duration {
    timeout.min(Duration::from_millis(i32::MAX as u64))
}

/// Closing the books empties a long log (never waiting for another run).
impl Drop for Books {
    fn drop(&mut self) {
        let _ = self.checkpoint_over(WAL_KEPT);
    }
}

/// Moves books that cannot be opened aside (with their -wal and -shm), so
/// that `ledger rebuild` can make them again: answers where they went.
pub fn move_aside(state_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = super::path(state_dir);
    let stamp = crate::timestamp::now().replace(':', "");
    let aside = state_dir.join(format!("{}.damaged-{stamp}", super::BOOKS_FILE));
    std::fs::rename(&path, &aside)
        .map_err(|e| anyhow::anyhow!("cannot move {} aside: {e}", path.display()))?;
    for suffix in ["-wal", "-shm"] {
        let side = state_dir.join(format!("{}{suffix}", super::BOOKS_FILE));
        if std::fs::symlink_metadata(&side).is_ok() {
            let _ = std::fs::rename(&side, format!("{}{suffix}", aside.display()));
        }
    }
    Ok(aside)
}

/// Inserts an entry unless its job (or, without one, its project, task and
/// end) is there: 1 when it was new.
fn insert_entry(conn: &Connection, e: &Entry) -> anyhow::Result<usize> {
    let finished_at = utc(&e.finished_at).unwrap_or_else(crate::timestamp::now);
    let delegated_at = utc(&e.delegated_at).unwrap_or_else(|| e.delegated_at.clone());
    let turnaround = Entry {
        finished_at: finished_at.clone(),
        ..e.clone()
    }
    .turnaround();
    let tokens = |t: Option<u64>| t.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
    let clip = |s: &str| crate::text::clip(s, 200);
    let mut q = conn.prepare_cached(
        "INSERT INTO ledger (job_id, project, task, provider, said_provider, model, status,
             cost_cad, tokens_in, tokens_out, delegated_at, finished_at, turnaround, step)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT DO NOTHING",
    )?;
    let n = q.execute(params![
        e.job_id,
        e.project,
        e.task,
        clip(&e.provider),
        e.said_provider.as_deref().map(clip),
        e.model.as_deref().map(clip),
        clip(&e.status),
        sane_cost(e.cost_cad),
        tokens(e.tokens_in),
        tokens(e.tokens_out),
        delegated_at,
        finished_at,
        turnaround,
        e.step,
    ])?;
    if n == 0 && !e.step && e.job_id.is_some() {
        // Booked first as an earlier job of its chain, it is now its
        // record's own (a chain a budget ended after a deferred step).
        conn.prepare_cached("UPDATE ledger SET step = 0 WHERE job_id = ?1 AND step = 1")?
            .execute([&e.job_id])?;
    }
    Ok(n)
}

fn insert_reservation(conn: &Connection, r: &Reservation) -> anyhow::Result<()> {
    let mut q = conn.prepare_cached(
        "INSERT INTO reservation (key, project, task, provider, job_id, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (key) DO NOTHING",
    )?;
    q.execute(params![
        r.key,
        r.project,
        r.task,
        r.provider,
        r.job_id,
        r.started_at
    ])?;
    Ok(())
}

fn counts_in(conn: &Connection) -> anyhow::Result<Counts> {
    let mut q = conn.prepare_cached("SELECT provider, n FROM in_flight WHERE n > 0")?;
    let v = q
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .collect::<Result<_, _>>()?;
    Ok(v)
}

fn spending_in(conn: &Connection, counts: &Counts, now: SystemTime) -> anyhow::Result<Spending> {
    super::queries::spending(&mut SqliteReader(conn), counts, now)
}

/// The shared reads ([`super::queries`]) on SQLite.
struct SqliteReader<'a>(&'a Connection);

impl super::queries::Reader for SqliteReader<'_> {
    fn spent(&mut self, from_day: &str, to_day: &str) -> anyhow::Result<Vec<(String, f64)>> {
        let mut q = self.0.prepare_cached(super::queries::SPENT)?;
        let v = q
            .query_map(params![from_day, to_day], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    fn mean(&mut self, provider: Option<&str>) -> anyhow::Result<(Option<f64>, i64)> {
        let recent = super::queries::RECENT;
        Ok(match provider {
            Some(p) => self
                .0
                .prepare_cached(super::queries::MEAN_OF)?
                .query_row(params![p, recent], |r| Ok((r.get(0)?, r.get(1)?)))?,
            None => self
                .0
                .prepare_cached(super::queries::MEAN_ALL)?
                .query_row(params![recent], |r| Ok((r.get(0)?, r.get(1)?)))?,
        })
    }

    fn probe(&mut self, provider: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .0
            .prepare_cached(super::queries::PROBE)?
            .query_row([provider], |r| r.get(0))
            .optional()?)
    }
}

/// Imports the entries of an earlier version's `ledger.jsonl`, once, in the
/// transaction that creates the schema. Lines that are no entry (torn by a
/// crash, damaged) are skipped: `ledger rebuild` restores from the records.
fn import_old_ledger(conn: &Connection, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    use std::io::BufRead;
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join(OLD_LEDGER);
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&p)
    {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
        _ => return Ok(None),
    };
    let r = std::io::BufReader::with_capacity(1 << 18, f);
    for line in r.split(b'\n') {
        let Ok(line) = line else { break };
        let Ok(mut e) = serde_json::from_slice::<Entry>(&line) else {
            continue;
        };
        if e.said_provider.is_none() {
            let (p, said) = counted_provider(&e.provider, None);
            e.provider = p;
            e.said_provider = said;
        }
        insert_entry(conn, &e)?;
    }
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(id: &str, provider: &str, status: &str, cost: f64, at: &str) -> Entry {
        Entry {
            job_id: Some(id.into()),
            project: "/p".into(),
            task: format!("{id}.md"),
            provider: provider.into(),
            said_provider: None,
            model: Some("m".into()),
            status: status.into(),
            cost_cad: cost,
            tokens_in: Some(10),
            tokens_out: None,
            delegated_at: at.into(),
            finished_at: at.into(),
            step: false,
        }
    }

    fn reservation(key: &str, provider: &str) -> Reservation {
        Reservation {
            key: key.into(),
            project: "/p".into(),
            task: format!("{key}.md"),
            provider: provider.into(),
            job_id: None,
            started_at: "2026-11-24T10:00:00Z".into(),
        }
    }

    fn open(d: &Path) -> Books {
        Books::open(d, Duration::from_secs(5)).unwrap()
    }

    fn at(s: &str) -> SystemTime {
        crate::timestamp::parse(s).unwrap()
    }

    #[test]
    fn an_entry_counts_once_whoever_books_it() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open(d.path());
        let a = entry("j-1", "gpu", "completed", 0.5, "2026-11-24T10:00:00Z");
        let c = entry("j-2", "gpu", "completed", 0.25, "2026-11-24T10:00:00Z");
        assert_eq!(b.book(std::slice::from_ref(&a), &[]).unwrap(), 1);
        assert_eq!(b.book(&[a.clone(), c.clone()], &[]).unwrap(), 1);
        let mut other = open(d.path());
        assert_eq!(other.book(&[a, c], &[]).unwrap(), 0);
        // Without a job: by project, task and end.
        let mut none = entry("x", "gpu", "timeout", 0.0, "2026-11-24T11:00:00Z");
        none.job_id = None;
        let mut elsewhere = none.clone();
        elsewhere.task = "other.md".into();
        assert_eq!(b.book(std::slice::from_ref(&none), &[]).unwrap(), 1);
        assert_eq!(b.book(&[none, elsewhere], &[]).unwrap(), 1);
        assert_eq!(b.len().unwrap(), 4);
    }

    #[test]
    fn a_job_is_reserved_until_it_is_spent() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open(d.path());
        let policy = Policy {
            max_in_flight: [(crate::policy::LimitKey::All, crate::policy::Count(1))].into(),
            ..Policy::default()
        };
        let now = at("2026-11-24T12:00:00Z");
        let r = reservation("k1", "claude");
        let d1 = b.admit(&policy, &r, Provider::Claude, None, now).unwrap();
        assert_eq!(d1, Decision::Admit);
        let r2 = reservation("k2", "gpu");
        let d2 = b.admit(&policy, &r2, Provider::Gpu, None, now).unwrap();
        assert_eq!(
            d2.stdout_line().unwrap(),
            "deferred gpu: 1 in flight, limit 1"
        );
        let e = entry("j-1", "claude", "completed", 1.0, "2026-11-24T11:00:00Z");
        b.book(&[e], &["k1"]).unwrap();
        assert!(b.counts().unwrap().is_empty());
        assert_eq!(
            b.admit(&policy, &r2, Provider::Gpu, None, now).unwrap(),
            Decision::Admit
        );
        b.release("k2").unwrap();
        assert!(b.counts().unwrap().is_empty());
    }

    /// A push sends released keys only with the last entries: a batch cut
    /// off midway never releases a job whose entry the fleet lacks.
    #[test]
    fn released_keys_go_only_with_the_last_unpushed_entries() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open(d.path());
        b.set_journal(true);
        b.book(
            &[
                entry("j-1", "gemini", "completed", 0.5, "2026-01-02T00:00:00Z"),
                entry("j-2", "gemini", "completed", 0.5, "2026-01-02T00:00:01Z"),
                entry("j-3", "claude", "completed", 0.5, "2026-01-02T00:00:02Z"),
            ],
            &["k-1", "k-2", "k-3"],
        )
        .unwrap();
        let first = b.unpushed(2).unwrap();
        assert_eq!(first.entries.len(), 2);
        assert!(first.keys.is_empty(), "{:?}", first.keys);
        let ids: Vec<i64> = first.entries.iter().map(|(i, _)| *i).collect();
        b.mark_pushed(&ids, &first.keys).unwrap();
        // The last entry, then the keys (a batch each at most).
        for (n_entries, n_keys) in [(1, 2), (0, 1)] {
            let batch = b.unpushed(2).unwrap();
            assert_eq!(batch.entries.len(), n_entries);
            assert_eq!(batch.keys.len(), n_keys, "{:?}", batch.keys);
            let ids: Vec<i64> = batch.entries.iter().map(|(i, _)| *i).collect();
            b.mark_pushed(&ids, &batch.keys).unwrap();
        }
        assert!(!b.has_unpushed().unwrap());
    }

    #[test]
    fn spend_dated_ahead_never_hides_todays() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open(d.path());
        b.book(
            &[
                entry("j-1", "claude", "completed", 1.0, "2026-11-26T10:00:00Z"),
                entry("j-2", "claude", "completed", 1.0, "2026-11-27T10:00:00Z"),
                entry("j-3", "claude", "completed", 2.0, "2026-11-24T10:00:00Z"),
                entry("j-4", "gemini", "completed", 4.0, "2026-10-24T10:00:00Z"),
            ],
            &[],
        )
        .unwrap();
        let policy = Policy {
            budget: crate::policy::Budget {
                daily_cad: Some(crate::policy::Cad(3.0)),
                monthly_cad: Some(crate::policy::Cad(100.0)),
                ..Default::default()
            },
            ..Policy::default()
        };
        let lines: Vec<String> = b
            .budget(&policy, at("2026-11-24T12:00:00Z"))
            .unwrap()
            .iter()
            .map(CapState::line)
            .collect();
        assert_eq!(
            lines,
            [
                "budget daily all: 2.0000 of 3.0000 CAD spent, 0.0000 reserved (0 in flight)",
                "budget monthly all: 4.0000 of 100.0000 CAD spent, 0.0000 reserved (0 in flight)"
            ]
        );
    }

    #[test]
    fn reconcile_keeps_exactly_the_markers() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open(d.path());
        let p = Policy::default();
        let now = at("2026-11-24T12:00:00Z");
        for k in ["a", "b"] {
            b.admit(&p, &reservation(k, "gpu"), Provider::Gpu, None, now)
                .unwrap();
        }
        let mut c = reservation("c", "claude");
        c.job_id = Some("j-9".into());
        let mut gone = reservation("d", "claude");
        gone.job_id = Some("j-10".into());
        b.book(
            &[entry(
                "j-10",
                "claude",
                "completed",
                0.1,
                "2026-11-24T11:00:00Z",
            )],
            &[],
        )
        .unwrap();
        // "a" lost its marker; "c" has a marker but no row; "d"'s job is
        // already spent: not reserved again.
        b.reconcile("/p", &[reservation("b", "gpu"), c, gone])
            .unwrap();
        let keys: Vec<String> = b
            .reservations()
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, ["b", "c"]);
        assert_eq!(
            b.counts().unwrap(),
            Counts::from([("claude".into(), 1), ("gpu".into(), 1)])
        );
        b.reconcile("/p", &[]).unwrap();
        assert!(b.counts().unwrap().is_empty());
    }

    #[test]
    fn an_old_ledger_is_imported_once() {
        let d = tempfile::tempdir().unwrap();
        let lines = [
            serde_json::to_string(&entry(
                "j-1",
                "Claude",
                "completed",
                0.5,
                "2026-11-24T10:00:00Z",
            ))
            .unwrap(),
            "{\"job_id\":\"j-2\",\"pro".to_string(),
            serde_json::to_string(&entry(
                "j-1",
                "claude",
                "completed",
                0.5,
                "2026-11-24T10:00:00Z",
            ))
            .unwrap(),
        ];
        std::fs::write(d.path().join(OLD_LEDGER), lines.join("\n")).unwrap();
        std::fs::write(d.path().join("spend.json"), "{}").unwrap();
        let b = open(d.path());
        let e = b.entries().unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].provider.as_str(), e[0].said_provider.as_deref()),
            ("claude", Some("Claude"))
        );
        assert!(!d.path().join(OLD_LEDGER).exists());
        assert!(!d.path().join("spend.json").exists());
        assert!(d.path().join("ledger.jsonl.imported").exists());
        drop(b);
        assert_eq!(open(d.path()).len().unwrap(), 1);
    }

    #[test]
    fn a_newer_schema_is_refused_naming_both_versions() {
        let d = tempfile::tempdir().unwrap();
        drop(open(d.path()));
        let c = Connection::open(super::super::path(d.path())).unwrap();
        c.execute_batch("PRAGMA user_version = 7").unwrap();
        drop(c);
        let e = Books::open(d.path(), Duration::from_secs(1)).err().unwrap();
        assert_eq!(crate::error::code_of(&e), Code::Config);
        let m = format!("{e:#}");
        assert!(
            m.contains("version 7") && m.contains(&format!("version {}", schema::VERSION)),
            "{m}"
        );
    }

    /// Books of version 1 (no `job_total`, no `failover`) are upgraded in
    /// place at the first open: the metrics' sums start from the ledger.
    #[test]
    fn version_1_books_are_upgraded_with_their_sums() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open(d.path());
        b.book(
            &[
                entry("j-1", "gemini", "completed", 0.5, "2026-01-02T00:00:00Z"),
                entry("j-2", "gemini", "failed", 0.0, "2026-01-02T00:00:01Z"),
            ],
            &[],
        )
        .unwrap();
        drop(b);
        let c = Connection::open(super::super::path(d.path())).unwrap();
        c.execute_batch(
            "DROP TABLE job_total; DROP TABLE failover; DROP TRIGGER ledger_job_add;
             DROP TRIGGER ledger_job_sub; PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(c);
        let mut b = open(d.path());
        b.note_failover("k-2", "gemini", "claude").unwrap();
        b.note_failover("k-2", "gemini", "claude").unwrap();
        b.book(
            &[entry(
                "j-3",
                "claude",
                "completed",
                0.25,
                "2026-01-02T00:00:02Z",
            )],
            &[],
        )
        .unwrap();
        let c = b.counters().unwrap();
        let mut jobs: Vec<_> = c
            .jobs
            .iter()
            .map(|t| (t.provider.as_str(), t.completed, t.jobs, t.cost_cad))
            .collect();
        jobs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(
            jobs,
            [
                ("claude", true, 1, 0.25),
                ("gemini", false, 1, 0.0),
                ("gemini", true, 1, 0.5)
            ]
        );
        assert_eq!(c.failovers, [("gemini".into(), "claude".into(), 1)]);
        assert_eq!(c.last_success, 0.0);
        b.note_success(12.5).unwrap();
        assert_eq!(b.counters().unwrap().last_success, 12.5);
    }

    /// The estimate (the mean of the last completed costs) is read from an
    /// index alone, on new books and on books of version 2 upgraded in
    /// place: an admission reads no row of a large ledger.
    #[test]
    fn the_estimate_reads_an_index_alone_also_after_an_upgrade_from_2() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open(d.path());
        b.book(
            &[
                entry("j-1", "gemini", "completed", 0.5, "2026-01-02T00:00:00Z"),
                entry("j-2", "gemini", "completed", 0.25, "2026-01-02T00:00:01Z"),
                entry("j-3", "claude", "failed", 0.0, "2026-01-02T00:00:02Z"),
            ],
            &[],
        )
        .unwrap();
        drop(b);
        let plans = |b: &Books| -> Vec<String> {
            [
                (super::super::queries::MEAN_OF, 2),
                (super::super::queries::MEAN_ALL, 1),
            ]
            .iter()
            .map(|(sql, n)| {
                let args: Vec<&dyn rusqlite::ToSql> = if *n == 2 {
                    vec![&"gemini", &50i64]
                } else {
                    vec![&50i64]
                };
                let mut q = b
                    .conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .unwrap();
                let rows: Vec<String> = q
                    .query_map(args.as_slice(), |r| r.get(3))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                rows.join("; ")
            })
            .collect()
        };
        for p in plans(&open(d.path())) {
            assert!(p.contains("USING COVERING INDEX ledger_recent"), "{p}");
        }
        let c = Connection::open(super::super::path(d.path())).unwrap();
        c.execute_batch(
            "DROP INDEX ledger_recent_cost; DROP INDEX ledger_recent_all_cost;
             CREATE INDEX ledger_recent ON ledger(status, provider, id);
             CREATE INDEX ledger_recent_all ON ledger(status, id);
             PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(c);
        let b = open(d.path());
        for p in plans(&b) {
            assert!(p.contains("USING COVERING INDEX ledger_recent"), "{p}");
        }
        let names: Vec<String> = b
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE name LIKE 'ledger_recent%' ORDER BY 1")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(names, ["ledger_recent_all_cost", "ledger_recent_cost"]);
        let mean: (Option<f64>, i64) = b
            .conn
            .query_row(super::super::queries::MEAN_OF, params!["gemini", 50], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(mean, (Some(0.375), 2));
    }

    #[test]
    fn books_that_are_not_a_file_are_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(super::super::path(d.path())).unwrap();
        let e = Books::open(d.path(), Duration::from_secs(1)).err().unwrap();
        let m = format!("{e:#}");
        assert!(
            m.contains("books.sqlite") && m.contains("not a regular file"),
            "{m}"
        );
    }

    #[test]
    fn token_sums_never_wrap() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open(d.path());
        let mut es = Vec::new();
        for i in 0..3 {
            let mut e = entry(
                &format!("j-{i}"),
                "gpu",
                "completed",
                0.1,
                "2026-11-24T10:00:00Z",
            );
            e.tokens_in = Some(u64::MAX);
            es.push(e);
        }
        b.book(&es, &[]).unwrap();
        let mut sum = 0u64;
        b.rows_between("2026-11-24T00:00:00Z", None, |r| {
            sum = sum.saturating_add(r.tokens_in)
        })
        .unwrap();
        assert_eq!(sum, u64::MAX);
    }
}
