//! The floor of an admission by the books, for tests/bench/bench.py: one
//! new process making one admission transaction on the store, with the
//! crate the tool uses (`rusqlite`, SQLite bundled) and nothing else:
//!
//!   1. open the store (read-write, no symlink followed, no mutex), a busy
//!      timeout, the write-ahead log kept between runs and not emptied at
//!      close (as the tool), `PRAGMA synchronous = NORMAL` (the first
//!      statement: SQLite
//!      sets up the write-ahead log's index and reads the schema);
//!   2. `BEGIN IMMEDIATE`; the jobs in flight per provider (`in_flight`);
//!      spent today and this month (`spend_day`); the mean of the last 50
//!      completed costs of gpu, gemini, claude and all (src/books/queries.rs,
//!      copied below);
//!   3. INSERT the reservation; COMMIT.
//!
//! Timed inside the process from before the open to after the commit (the
//! connection is then closed as the tool closes it, untimed); one line per run: `<microseconds>`.
//! No config, no checks on the file, no decision, no schema version: what
//! a budgeted submit spends beyond this and a plain submit is its own.
//!
//!   CCL_BOOKS_FLOOR_STORE=<books.sqlite> CCL_BOOKS_FLOOR_PROJECT=<path>
//!
//! Without CCL_BOOKS_FLOOR_STORE the program does nothing and exits 0, so
//! that `cargo test` stays green. Not part of the tool: a `harness = false`
//! test target that the benchmark builds with
//! `cargo test --release --test books_floor --no-run`.

use std::process::exit;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, params};

/// As src/books/queries.rs.
const RECENT: i64 = 50;
const SPENT: &str = "SELECT provider, coalesce(sum(cost_cad), 0) FROM spend_day
     WHERE day >= $1 AND day <= $2 GROUP BY provider";
const MEAN_OF: &str = "SELECT avg(cost_cad), count(*) FROM (SELECT cost_cad FROM ledger
     WHERE status = 'completed' AND provider = $1 ORDER BY id DESC LIMIT $2) AS recent";
const MEAN_ALL: &str = "SELECT avg(cost_cad), count(*) FROM (SELECT cost_cad FROM ledger
     WHERE status = 'completed' ORDER BY id DESC LIMIT $1) AS recent";
const COUNTS: &str = "SELECT provider, n FROM in_flight WHERE n > 0";
const INSERT: &str = "INSERT INTO reservation (key, project, task, provider, job_id, started_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (key) DO NOTHING";
const PROVIDERS: [&str; 3] = ["gpu", "gemini", "claude"];

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("books-floor: {what}: {e}");
    exit(1)
}

fn main() {
    let Some(store) = std::env::var_os("CCL_BOOKS_FLOOR_STORE") else {
        return;
    };
    let project = std::env::var("CCL_BOOKS_FLOOR_PROJECT").unwrap_or_else(|_| "/floor".into());
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // The day and month windows as text (UTC), as the tool reads them.
    let (y, m, d) = civil(secs / 86_400);
    let day = format!("{y:04}-{m:02}-{d:02}");
    let (month_lo, month_hi) = (format!("{y:04}-{m:02}-01"), format!("{y:04}-{m:02}-31"));
    let key = format!("floor-{}-{secs}", std::process::id());

    let t = Instant::now();
    let conn = Connection::open_with_flags(
        &store,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .unwrap_or_else(|e| die("open", e));
    let run = || -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(10))?;
        // As src/books/store.rs: the log stays between runs.
        conn.file_control(
            Some(rusqlite::MAIN_DB),
            rusqlite::FileControl::PersistWal(&mut 1),
        )?;
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE")?;
        let mut n = 0i64;
        conn.prepare(COUNTS)?
            .query_map([], |r| r.get::<_, i64>(1))?
            .for_each(|c| n += c.unwrap_or(0));
        let mut spent = conn.prepare(SPENT)?;
        for (lo, hi) in [(&day, &day), (&month_lo, &month_hi)] {
            spent
                .query_map([lo, hi], |r| r.get::<_, f64>(1))?
                .for_each(drop);
        }
        let mut mean = conn.prepare(MEAN_OF)?;
        for p in PROVIDERS {
            mean.query_row(params![p, RECENT], |r| r.get::<_, Option<f64>>(0))?;
        }
        conn.query_row(MEAN_ALL, [RECENT], |r| r.get::<_, Option<f64>>(0))?;
        conn.execute(
            INSERT,
            params![
                key,
                project,
                "floor.md",
                "gemini",
                None::<String>,
                "2026-01-01T00:00:00Z"
            ],
        )?;
        conn.execute_batch("COMMIT")
    };
    run().unwrap_or_else(|e| die("admission", e));
    let took = t.elapsed();
    println!("{}", took.as_micros());
    // As the tool closes the books: a log over 256 KiB emptied (untimed).
    let mut wal = store.clone();
    wal.push("-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 256 * 1024) {
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    drop(conn);
}

/// Days since 1970-01-01 as (year, month, day): Howard Hinnant's
/// `civil_from_days`.
fn civil(z: u64) -> (i64, u32, u32) {
    let z = z as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
