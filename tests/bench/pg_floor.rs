//! The floor of a fleet admission, for tests/bench/bench.py: one connection
//! and one admission transaction made by the client crate the tool uses
//! (the sync `postgres` crate), with the options src/books/fleet.rs
//! connects with and the statements its admission runs:
//!
//!   1. connect (search_path, statement_timeout and lock_timeout in
//!      `options`, application_name, sslmode disable, a password);
//!   2. BEGIN; `SELECT pg_advisory_xact_lock(..)`;
//!   3. the reservations in flight per provider; spent today and this month
//!      (`spend_day`); the mean of the last 50 completed costs of gpu,
//!      gemini, claude and all; a job in flight of each counted provider
//!      whose mean is not known (src/books/queries.rs, copied below);
//!   4. INSERT the reservation; COMMIT.
//!
//! Each iteration is timed from before the connection to after the commit;
//! then (untimed) its reservation is deleted and the connection closed.
//! Then the same again with the transaction as the tool now makes it, in
//! three round trips (`BEGIN` and the lock in one simple query; the reads,
//! with the reservation inserted by the same statement, sent with their
//! parameter types so that nothing is prepared first; `COMMIT`). One line
//! per iteration: `<microseconds> <microseconds of the transaction alone>
//! <the same two, three round trips>`. No schema check, no decision, no
//! local books: whatever a fleet submit spends beyond this is its own.
//!
//! Environment: CCL_PG_FLOOR_URL (a URL the crate parses; without it the
//! program does nothing and exits 0, so that `cargo test` stays green),
//! CCL_PG_FLOOR_PASSWORD_FILE, CCL_PG_FLOOR_RUNS (default 1),
//! CCL_PG_FLOOR_TIMEOUT_MS (default 10000, the tool's lock_timeout).
//!
//! Not part of the tool: a `harness = false` test target that the
//! benchmark builds with `cargo test --release --test pg_floor --no-run`.

use std::process::exit;
use std::time::{Duration, Instant, SystemTime};

use postgres::{Client, Config, NoTls};

/// As src/books/fleet.rs's `LOCK_ADMIT`.
const LOCK_ADMIT: i64 = 0x6363_6c64_0002;
/// As src/books/queries.rs.
const RECENT: i64 = 50;
const SPENT: &str = "SELECT provider, coalesce(sum(cost_cad), 0) FROM spend_day
     WHERE day >= $1 AND day <= $2 GROUP BY provider";
const MEAN_OF: &str = "SELECT avg(cost_cad), count(*) FROM (SELECT cost_cad FROM ledger
     WHERE status = 'completed' AND provider = $1 ORDER BY id DESC LIMIT $2) AS recent";
const MEAN_ALL: &str = "SELECT avg(cost_cad), count(*) FROM (SELECT cost_cad FROM ledger
     WHERE status = 'completed' ORDER BY id DESC LIMIT $1) AS recent";
const PROBE: &str = "SELECT coalesce(job_id, task) FROM reservation WHERE provider = $1
     ORDER BY job_id IS NULL, started_at LIMIT 1";
/// As src/books/fleet.rs's `counts_in` and `insert_reservation`.
const COUNTS: &str =
    "SELECT provider, count(*) FROM reservation WHERE started_at >= $1 GROUP BY provider";
const INSERT: &str =
    "INSERT INTO reservation (key, host, project, task, provider, job_id, started_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key) DO NOTHING";
/// Provider::ALL without auto.
const PROVIDERS: [&str; 3] = ["gpu", "gemini", "claude"];
/// As src/books/fleet.rs's `READS` with the insert and the spending.
const INSERT_THEN_READS: &str =
    "WITH mine AS (INSERT INTO reservation (key, host, project, task, provider, job_id, started_at)
         VALUES ($8, $9, $10, $11, $12, $13, $14) ON CONFLICT (key) DO NOTHING RETURNING key)
     SELECT 'count'::text, provider, NULL::float8, count(*)
         FROM reservation WHERE started_at >= $1 GROUP BY provider
     UNION ALL
     SELECT 'day', provider, coalesce(sum(cost_cad), 0), NULL FROM spend_day
         WHERE day >= $2 AND day <= $3 GROUP BY provider
     UNION ALL
     SELECT 'month', provider, coalesce(sum(cost_cad), 0), NULL FROM spend_day
         WHERE day >= $4 AND day <= $5 GROUP BY provider
     UNION ALL
     SELECT 'mean', p.provider, m.avg, m.count FROM unnest($6::text[]) AS p (provider)
         CROSS JOIN LATERAL (SELECT avg(cost_cad), count(*) FROM (SELECT cost_cad FROM ledger
             WHERE status = 'completed' AND provider = p.provider
             ORDER BY id DESC LIMIT $7) AS recent) AS m
     UNION ALL
     SELECT 'mean', NULL, avg(cost_cad), count(*) FROM (SELECT cost_cad FROM ledger
         WHERE status = 'completed' ORDER BY id DESC LIMIT $7) AS recent";

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("pg-floor: {what}: {e}");
    exit(1)
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|e| die(name, e)),
        Err(_) => default,
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn connect(url: &str, password: Option<&str>, timeout: Duration) -> Client {
    let mut pg: Config = url.parse().unwrap_or_else(|e| die("url", e));
    if let Some(p) = password {
        pg.password(p);
    }
    let ms = timeout.as_millis().max(1);
    let options = format!(
        "{} -c search_path=ccl_delegate -c statement_timeout={ms} -c lock_timeout={ms}",
        pg.get_options().unwrap_or_default()
    );
    pg.options(options.trim())
        .connect_timeout(timeout)
        .application_name("ccl-delegate")
        .ssl_mode(postgres::config::SslMode::Disable);
    pg.connect(NoTls).unwrap_or_else(|e| die("connect", e))
}

/// One admission's reads and its reservation, committed.
fn admit(c: &mut Client, key: &str, now: SystemTime) -> Result<(), postgres::Error> {
    let cutoff = rfc3339(now - Duration::from_secs(24 * 3600));
    let today = rfc3339(now);
    let (day, month) = (&today[..10], &today[..7]);
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_ADMIT])?;
    let counts: Vec<String> = tx
        .query(COUNTS, &[&cutoff])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.query(SPENT, &[&day, &day])?;
    tx.query(SPENT, &[&format!("{month}-01"), &format!("{month}-31")])?;
    let mut known = Vec::new();
    for p in PROVIDERS {
        let r = tx.query_one(MEAN_OF, &[&p, &RECENT])?;
        if r.get::<_, i64>(1) > 0 {
            known.push(p);
        }
    }
    let r = tx.query_one(MEAN_ALL, &[&RECENT])?;
    let all_known = r.get::<_, i64>(1) > 0;
    for p in &counts {
        let scoped = PROVIDERS.contains(&p.as_str());
        if (scoped && known.contains(&p.as_str())) || (!scoped && all_known) {
            continue;
        }
        tx.query_opt(PROBE, &[p])?;
    }
    tx.execute(
        INSERT,
        &[
            &key,
            &"floor",
            &"/bench/floor",
            &"floor.md",
            &"gemini",
            &None::<String>,
            &today,
        ],
    )?;
    tx.commit()
}

/// The same admission in three round trips, as the tool makes it.
fn admit_batched(c: &mut Client, key: &str, now: SystemTime) -> Result<(), postgres::Error> {
    use postgres::types::Type;
    let cutoff = rfc3339(now - Duration::from_secs(24 * 3600));
    let today = rfc3339(now);
    let (day, month) = (today[..10].to_string(), &today[..7]);
    let (m0, m1) = (format!("{month}-01"), format!("{month}-31"));
    c.batch_execute(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({LOCK_ADMIT})"
    ))?;
    let providers = PROVIDERS.to_vec();
    let none = None::<String>;
    c.query_typed(
        INSERT_THEN_READS,
        &[
            (&cutoff, Type::TEXT),
            (&day, Type::TEXT),
            (&day, Type::TEXT),
            (&m0, Type::TEXT),
            (&m1, Type::TEXT),
            (&providers, Type::TEXT_ARRAY),
            (&RECENT, Type::INT8),
            (&key, Type::TEXT),
            (&"floor", Type::TEXT),
            (&"/bench/floor", Type::TEXT),
            (&"floor.md", Type::TEXT),
            (&"gemini", Type::TEXT),
            (&none, Type::TEXT),
            (&today, Type::TEXT),
        ],
    )?;
    c.batch_execute("COMMIT")
}

/// One timed connection and admission: (total, transaction alone).
fn timed(
    url: &str,
    password: Option<&str>,
    timeout: Duration,
    key: &str,
    admission: fn(&mut Client, &str, SystemTime) -> Result<(), postgres::Error>,
) -> (Duration, Duration) {
    let t0 = Instant::now();
    let mut c = connect(url, password, timeout);
    let t1 = Instant::now();
    admission(&mut c, key, SystemTime::now()).unwrap_or_else(|e| die("admission", e));
    let (took, tx) = (t0.elapsed(), t1.elapsed());
    c.execute("DELETE FROM reservation WHERE key = $1", &[&key])
        .unwrap_or_else(|e| die("delete", e));
    drop(c);
    (took, tx)
}

fn main() {
    let Ok(url) = std::env::var("CCL_PG_FLOOR_URL") else {
        // `cargo test` runs this target too: without a server, nothing.
        return;
    };
    let password = std::env::var("CCL_PG_FLOOR_PASSWORD_FILE").ok().map(|p| {
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| die(&p, e))
            .trim_end_matches(['\n', '\r'])
            .to_string()
    });
    let runs = env_num("CCL_PG_FLOOR_RUNS", 1);
    let timeout = Duration::from_millis(env_num("CCL_PG_FLOOR_TIMEOUT_MS", 10_000));
    for i in 0..runs {
        let key = format!("floor-{}-{i}", std::process::id());
        let pw = password.as_deref();
        let (took, tx) = timed(&url, pw, timeout, &key, admit);
        let (took3, tx3) = timed(&url, pw, timeout, &key, admit_batched);
        println!(
            "{} {} {} {}",
            took.as_micros(),
            tx.as_micros(),
            took3.as_micros(),
            tx3.as_micros()
        );
    }
}
