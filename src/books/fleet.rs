//! The fleet's books on PostgreSQL (fleet.md): one ledger, one set of
//! reservations and one admission for every host, so N hosts never pass a
//! limit or a budget. Each host's SQLite books stay its journal: `push`
//! sends what the database lacks.
//!
//! The tables live in the schema `ccl_delegate` of the configured database,
//! named as in the SQLite books, so the reads an admission needs are the
//! same SQL ([`super::queries`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, NoTls, SimpleQueryMessage};

use super::conninfo::{self, SslMode};
use super::entry::{Entry, sane_cost, utc};
use super::queries::{self, Fetched, Reader};
use super::store::{Reservation, Row};
use crate::error::{Code, fail};
use crate::policy::admit::{CapState, budget_states};
use crate::policy::{Counts, Decision, Policy, Provider, Spending, admit};

/// The schema this binary writes and reads.
pub const VERSION: i64 = 1;

/// `pg_advisory_lock` keys: the schema's creation, and admission.
const LOCK_SCHEMA: i64 = 0x6363_6c64_0001;
const LOCK_ADMIT: i64 = 0x6363_6c64_0002;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ccl_delegate.ledger (
    id            bigserial PRIMARY KEY,
    host          text NOT NULL,
    job_id        text,
    project       text NOT NULL,
    task          text NOT NULL,
    provider      text NOT NULL,
    said_provider text,
    model         text,
    status        text NOT NULL,
    cost_cad      double precision NOT NULL CHECK (cost_cad >= 0 AND cost_cad < 1000000),
    tokens_in     bigint,
    tokens_out    bigint,
    delegated_at  text NOT NULL,
    finished_at   text NOT NULL,
    turnaround    bigint,
    step          boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX IF NOT EXISTS ledger_job ON ccl_delegate.ledger (job_id) WHERE job_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS ledger_jobless
    ON ccl_delegate.ledger (host, project, task, finished_at) WHERE job_id IS NULL;
CREATE INDEX IF NOT EXISTS ledger_finished ON ccl_delegate.ledger (finished_at);
CREATE INDEX IF NOT EXISTS ledger_recent ON ccl_delegate.ledger (status, provider, id);
CREATE INDEX IF NOT EXISTS ledger_recent_all ON ccl_delegate.ledger (status, id);

CREATE TABLE IF NOT EXISTS ccl_delegate.spend_day (
    day      text NOT NULL,
    provider text NOT NULL,
    cost_cad double precision NOT NULL,
    PRIMARY KEY (day, provider)
);
CREATE OR REPLACE FUNCTION ccl_delegate.spend_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ccl_delegate.spend_day AS s (day, provider, cost_cad)
        VALUES (substr(NEW.finished_at, 1, 10), NEW.provider, NEW.cost_cad)
        ON CONFLICT (day, provider) DO UPDATE SET cost_cad = greatest(0, s.cost_cad) + excluded.cost_cad;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION ccl_delegate.spend_sub() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ccl_delegate.spend_day SET cost_cad = greatest(0, cost_cad - OLD.cost_cad)
        WHERE day = substr(OLD.finished_at, 1, 10) AND provider = OLD.provider;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS ledger_spend_add ON ccl_delegate.ledger;
CREATE TRIGGER ledger_spend_add AFTER INSERT ON ccl_delegate.ledger
    FOR EACH ROW EXECUTE FUNCTION ccl_delegate.spend_add();
DROP TRIGGER IF EXISTS ledger_spend_sub ON ccl_delegate.ledger;
CREATE TRIGGER ledger_spend_sub AFTER DELETE ON ccl_delegate.ledger
    FOR EACH ROW EXECUTE FUNCTION ccl_delegate.spend_sub();

CREATE TABLE IF NOT EXISTS ccl_delegate.reservation (
    key        text PRIMARY KEY,
    host       text NOT NULL,
    project    text NOT NULL,
    task       text NOT NULL,
    provider   text NOT NULL,
    job_id     text,
    started_at text NOT NULL
);
CREATE INDEX IF NOT EXISTS reservation_host ON ccl_delegate.reservation (host, project);

CREATE TABLE IF NOT EXISTS ccl_delegate.hosts (
    host       text PRIMARY KEY,
    machine_id text NOT NULL,
    first_seen text NOT NULL,
    last_seen  text NOT NULL,
    caps       text NOT NULL DEFAULT ''
);
";

/// `fleet:` in the config.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetConfig {
    /// As written (it may hold a password: never shown as is).
    pub url: String,
    pub password_file: Option<std::path::PathBuf>,
    /// This host's name in the fleet.
    pub host: String,
}

impl FleetConfig {
    /// The URL as it may be shown.
    pub fn shown(&self) -> String {
        conninfo::masked(&self.url)
    }
}

/// A connection to the fleet's database, its schema checked.
pub struct Fleet {
    client: Client,
    host: String,
    shown: String,
    /// Reservations older than this no longer count (their host stopped
    /// reaping; their jobs were cancelled or abandoned).
    max_age: Duration,
    /// The schema's version was read and is this binary's. Only an
    /// [`Admitter`] holds a connection without: its admission reads the
    /// version in its first round trip.
    checked: bool,
}

/// A connection for one admission (a submit's), whose schema is checked by
/// the admission's first round trip rather than by one before it.
pub struct Admitter(Fleet);

impl Admitter {
    pub fn connect(
        cfg: &FleetConfig,
        timeout: Duration,
        max_age: Duration,
    ) -> anyhow::Result<Admitter> {
        Fleet::open(cfg, timeout, max_age).map(Admitter)
    }

    /// [`Fleet::admit_counted`] for a new job.
    pub fn admit(
        mut self,
        policy: &Policy,
        job: &Reservation,
        provider: Provider,
        now: SystemTime,
    ) -> anyhow::Result<(Decision, Counts)> {
        self.0.admit_counted(policy, job, provider, None, now)
    }
}

/// A statement's parameters, each with its type: sent with the statement
/// in one round trip (no prepare first).
type Params<'a> = Vec<(&'a (dyn ToSql + Sync), Type)>;

/// The jobs in flight per provider (`count` rows), as an admission counts
/// them: a reservation past `max_age` (`$1`, the cutoff) no longer counts.
macro_rules! counts_sql {
    () => {
        "SELECT 'count'::text, provider, NULL::float8, count(*)
             FROM reservation WHERE started_at >= $1 GROUP BY provider"
    };
}

/// What a budget reads besides: spent per provider in each window (`day`,
/// `month`: `$2`..`$5`), the mean of the last completed costs (`$7` of
/// them) of each provider (`$6`) and of all (`mean`, the provider null).
/// The same reads as [`queries::SPENT`], [`queries::MEAN_OF`] and
/// [`queries::MEAN_ALL`].
macro_rules! spending_sql {
    () => {
        " UNION ALL
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
             WHERE status = 'completed' ORDER BY id DESC LIMIT $7) AS recent"
    };
}

/// The job's reservation (`$8`..`$14`), inserted by the statement whose
/// reads, on the statement's one snapshot, do not see it.
macro_rules! insert_sql {
    () => {
        "WITH mine AS (INSERT INTO reservation (key, host, project, task, provider, job_id, started_at)
             VALUES ($8, $9, $10, $11, $12, $13, $14) ON CONFLICT (key) DO NOTHING RETURNING key) "
    };
}

/// Everything an admission reads, in one statement (so on one snapshot,
/// taken after the admission lock), with or without spending (none is
/// read without a budget: a statement that reads less is planned sooner,
/// and it is planned under the lock), with or without inserting the
/// job's reservation.
const READS: [[&str; 2]; 2] = [
    [counts_sql!(), concat!(counts_sql!(), spending_sql!())],
    [
        concat!(insert_sql!(), counts_sql!()),
        concat!(insert_sql!(), counts_sql!(), spending_sql!()),
    ],
];

/// [`queries::PROBE`], the job being admitted left out (its reservation
/// may be in the transaction already).
const PROBE_OTHER: &str = "SELECT coalesce(job_id, task) FROM reservation
     WHERE provider = $1 AND key <> $2 ORDER BY job_id IS NULL, started_at LIMIT 1";

/// A push in one statement, so in one transaction: the entries the
/// database lacks inserted in their order (an entry already there counts
/// nothing), the reservations of their jobs deleted, this host noted as
/// seen with its caps. Answers how many entries were new.
const PUSH: &str = "WITH new AS (
        INSERT INTO ledger (host, job_id, project, task, provider, said_provider, model, status,
            cost_cad, tokens_in, tokens_out, delegated_at, finished_at, turnaround, step)
        SELECT $1, j, p, t, pr, sp, m, st, c, ti, tou, d, f, ta, s
        FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::text[], $9::float8[], $10::int8[], $11::int8[], $12::text[], $13::text[],
                    $14::int8[], $15::bool[])
             WITH ORDINALITY AS u (j, p, t, pr, sp, m, st, c, ti, tou, d, f, ta, s, n)
        ORDER BY n
        ON CONFLICT DO NOTHING RETURNING 1),
    released AS (DELETE FROM reservation WHERE key = ANY($16::text[])),
    seen AS (INSERT INTO hosts (host, machine_id, first_seen, last_seen, caps)
        VALUES ($1, $17, $18, $18, $19)
        ON CONFLICT (host) DO UPDATE SET last_seen = excluded.last_seen, caps = excluded.caps)
    SELECT count(*) FROM new";

/// One host as the database knows it (`doctor`, `status`).
#[derive(Debug)]
pub struct HostRow {
    pub host: String,
    pub machine_id: String,
    pub last_seen: String,
    pub caps: String,
}

/// The error of a database that cannot be reached or used: exit 75, the
/// database named (masked), never the password.
fn unreachable(shown: &str, e: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    // The crate's own text is terse ("db error"): the causes say what.
    let mut why = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        why.push_str(": ");
        why.push_str(&s.to_string());
        src = s.source();
    }
    // A database that answered with an error was reached: said so.
    let answered = e
        .downcast_ref::<postgres::Error>()
        .is_some_and(|p| p.as_db_error().is_some());
    let what = if answered {
        "answered with an error"
    } else {
        "is unreachable"
    };
    fail(
        Code::TempFail,
        format!(
            "the fleet database {shown} {what}: {}",
            crate::text::clip(&why, 300)
        ),
    )
}

/// This machine's id, to tell two hosts of the same name apart.
pub fn machine_id() -> String {
    for p in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(s) = std::fs::read_to_string(p) {
            let s = s.trim();
            if !s.is_empty() && s.len() <= 64 {
                return s.to_string();
            }
        }
    }
    hostname()
}

/// The host name, the default fleet name of a host.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-ends it
    // when the name fits.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The password: the file's (refused when others may read it), else the
/// one in the URL, else `PGPASSWORD`.
fn password(cfg: &FleetConfig, in_url: bool) -> anyhow::Result<Option<String>> {
    if let Some(p) = &cfg.password_file {
        return read_password_file(p).map(Some);
    }
    if in_url {
        return Ok(None);
    }
    Ok(std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()))
}

/// A password file: a regular file, never a symlink, readable by its
/// owner alone, as the API key file (the contents never said).
fn read_password_file(p: &Path) -> anyhow::Result<String> {
    let shown = p.display();
    let cannot = |why: String| {
        fail(
            Code::Config,
            format!(
                "cannot read fleet.password_file: {why}; create it with the password and run chmod 600 {shown}"
            ),
        )
    };
    let c = crate::fsread::read(p, crate::fsread::Kind::Key)
        .map_err(|e| cannot(e.to_string()))?
        .ok_or_else(|| cannot(format!("{shown}: no such file")))?;
    if c.mode & 0o077 != 0 {
        return Err(fail(
            Code::Config,
            format!(
                "fleet.password_file {shown} is readable by group or others (mode {:o}); run: chmod 600 {shown}",
                c.mode
            ),
        ));
    }
    let s = String::from_utf8(c.bytes).map_err(|_| cannot(format!("{shown}: not UTF-8 text")))?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() || s.contains('\n') {
        return Err(fail(
            Code::Config,
            format!("fleet.password_file {shown} must hold the password alone on one line"),
        ));
    }
    Ok(s)
}

impl Fleet {
    /// Connects (within `timeout`, statements and locks bounded by it too)
    /// and checks the schema, creating it on first use.
    pub fn connect(
        cfg: &FleetConfig,
        timeout: Duration,
        max_age: Duration,
    ) -> anyhow::Result<Fleet> {
        let mut f = Fleet::open(cfg, timeout, max_age)?;
        f.schema()?;
        Ok(f)
    }

    /// Connects, the schema not checked yet.
    fn open(cfg: &FleetConfig, timeout: Duration, max_age: Duration) -> anyhow::Result<Fleet> {
        let shown = cfg.shown();
        let info = conninfo::parse(&cfg.url)
            .map_err(|why| fail(Code::Config, format!("fleet.url {shown}: {why}")))?;
        let mut pg: postgres::Config = info
            .for_crate
            .parse()
            .map_err(|e: postgres::Error| fail(Code::Config, format!("fleet.url {shown}: {e}")))?;
        if let Some(p) = password(cfg, info.has_password)? {
            pg.password(p);
        }
        // PostgreSQL takes at most i32::MAX ms (24 days) for either.
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128);
        let options = format!(
            "{} -c search_path=ccl_delegate -c statement_timeout={ms} -c lock_timeout={ms}",
            pg.get_options().unwrap_or_default()
        );
        pg.options(options.trim())
            .connect_timeout(timeout)
            .application_name("ccl-delegate");
        let client = match info.sslmode {
            SslMode::Disable => {
                pg.ssl_mode(postgres::config::SslMode::Disable);
                pg.connect(NoTls)
            }
            mode => {
                pg.ssl_mode(if mode == SslMode::Prefer {
                    postgres::config::SslMode::Prefer
                } else {
                    postgres::config::SslMode::Require
                });
                let tls = tls_config(mode, info.sslrootcert.as_deref())
                    .map_err(|e| fail(Code::Config, format!("fleet.url {shown}: {e:#}")))?;
                pg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            }
        }
        .map_err(|e| unreachable(&shown, &e))?;
        Ok(Fleet {
            client,
            host: cfg.host.clone(),
            shown,
            max_age,
            checked: false,
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn err(&self, e: postgres::Error) -> anyhow::Error {
        unreachable(&self.shown, &e)
    }

    /// The schema's version: the tables created under an advisory lock
    /// when missing; a newer version than this binary's is exit 78.
    fn schema(&mut self) -> anyhow::Result<()> {
        let found = self.version()?;
        if found == Some(VERSION) {
            self.checked = true;
            return Ok(());
        }
        if let Some(v) = found
            && v > VERSION
        {
            return Err(self.newer(v));
        }
        let r = (|| {
            // Everything under the lock, the schema itself included: two
            // hosts' `CREATE SCHEMA IF NOT EXISTS` at once make one fail
            // (a duplicate key in pg_namespace).
            let mut tx = self.client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_SCHEMA])?;
            tx.batch_execute("CREATE SCHEMA IF NOT EXISTS ccl_delegate")?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS ccl_delegate.meta (key text PRIMARY KEY, value text NOT NULL)",
            )?;
            let v: Option<String> = tx
                .query_opt(
                    "SELECT value FROM ccl_delegate.meta WHERE key = 'schema_version'",
                    &[],
                )?
                .map(|r| r.get(0));
            if v.is_none() {
                tx.batch_execute(SCHEMA)?;
                tx.execute(
                    "INSERT INTO ccl_delegate.meta (key, value) VALUES ('schema_version', $1)",
                    &[&VERSION.to_string()],
                )?;
            }
            tx.commit()
        })();
        r.map_err(|e| self.err(e))?;
        match self.version()? {
            Some(v) if v > VERSION => Err(self.newer(v)),
            _ => {
                self.checked = true;
                Ok(())
            }
        }
    }

    fn version(&mut self) -> anyhow::Result<Option<i64>> {
        let r = self.client.query_typed_opt(VERSION_SQL, &[]);
        match r {
            Ok(row) => Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok())),
            Err(e) if no_schema(&e) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The first round trip of an admission: its transaction and the
    /// fleet-wide lock (the reads, in the next statement, see everything
    /// committed before the lock was granted); on a connection whose
    /// schema is not checked yet, the schema's version too. A schema
    /// missing or not this binary's is rolled back from and made (or
    /// refused) as on connecting, then the admission begins again.
    fn begin_admission(&mut self) -> anyhow::Result<()> {
        let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({LOCK_ADMIT})");
        if self.checked {
            self.client.batch_execute(&begin)?;
            return Ok(());
        }
        let found = match self.client.simple_query(&format!("{begin}; {VERSION_SQL}")) {
            Ok(messages) => messages.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(r) if r.columns()[0].name() == "value" => {
                    r.get(0).map(str::to_string)
                }
                _ => None,
            }),
            Err(e) if no_schema(&e) => None,
            Err(e) => return Err(e.into()),
        };
        if found.and_then(|v| v.parse().ok()) == Some(VERSION) {
            self.checked = true;
            return Ok(());
        }
        self.client.batch_execute("ROLLBACK")?;
        self.schema()?;
        self.client.batch_execute(&begin)?;
        Ok(())
    }

    fn newer(&self, v: i64) -> anyhow::Error {
        fail(
            Code::Config,
            format!(
                "the fleet database {} has schema version {v}; this ccl-delegate knows version {VERSION}: update ccl-delegate on this host",
                self.shown
            ),
        )
    }

    /// Admission for the whole fleet: under a fleet-wide transaction lock,
    /// read spent and reserved, decide, insert the reservation; as
    /// [`super::Books::admit`] does on one host.
    pub fn admit(
        &mut self,
        policy: &Policy,
        job: &Reservation,
        provider: Provider,
        leaving: Option<&str>,
        now: SystemTime,
    ) -> anyhow::Result<Decision> {
        self.admit_counted(policy, job, provider, leaving, now)
            .map(|(d, _)| d)
    }

    /// [`Fleet::admit`], answering also the jobs in flight the decision
    /// counted (this one not among them).
    pub fn admit_counted(
        &mut self,
        policy: &Policy,
        job: &Reservation,
        provider: Provider,
        leaving: Option<&str>,
        now: SystemTime,
    ) -> anyhow::Result<(Decision, Counts)> {
        let r = self.admission(policy, job, provider, leaving, now);
        if r.is_err() && !self.client.is_closed() {
            // Nothing of an admission that failed stays, nor its lock.
            let _ = self.client.batch_execute("ROLLBACK");
        }
        r.map_err(|e| self.wrap(e))
    }

    /// One transaction in three round trips for a submit: the lock; the
    /// reads, with the job's reservation inserted by the same statement;
    /// the commit, or the rollback that takes the reservation back when
    /// the decision is not to admit. A failover step first deletes the
    /// reservation of the job it leaves, and inserts its own once
    /// admitted; a budget's refusal changes nothing.
    fn admission(
        &mut self,
        policy: &Policy,
        job: &Reservation,
        provider: Provider,
        leaving: Option<&str>,
        now: SystemTime,
    ) -> anyhow::Result<(Decision, Counts)> {
        self.begin_admission()?;
        if let Some(k) = leaving {
            self.client.query_typed(
                "DELETE FROM reservation WHERE key = $1",
                &[(&k, Type::TEXT)],
            )?;
        }
        let early = leaving.is_none().then_some(job);
        let fetched = self.fetch(policy, now, early)?;
        let counts = fetched.counts.clone();
        let spending = if policy.caps().is_empty() {
            Spending::default()
        } else {
            let mut r = fetched.reader(&mut self.client, &job.key);
            queries::spending(&mut r, &counts, now)?
        };
        let d = admit(policy, &spending, &counts, provider);
        let keep = match (&d, leaving) {
            (Decision::Admit, Some(_)) => {
                insert_reservation(&mut self.client, &self.host, job)?;
                true
            }
            (Decision::Admit, None) => true,
            (Decision::Budget { .. }, _) | (_, None) => false,
            // The job left no longer counts.
            (_, Some(_)) => true,
        };
        self.client
            .batch_execute(if keep { "COMMIT" } else { "ROLLBACK" })?;
        Ok((d, counts))
    }

    /// The reads of [`READS`], in one statement (after inserting
    /// `insert`'s reservation, unseen by them, when given).
    fn fetch(
        &mut self,
        policy: &Policy,
        now: SystemTime,
        insert: Option<&Reservation>,
    ) -> Result<Fetch, postgres::Error> {
        let cutoff = self.cutoff(now);
        let windows = queries::windows(now);
        let [(d0, d1), (m0, m1)] = &windows;
        let spending = !policy.caps().is_empty();
        let providers: Vec<&str> = Provider::ALL
            .iter()
            .filter(|p| **p != Provider::Auto)
            .map(|p| p.as_str())
            .collect();
        let recent = queries::RECENT;
        let mut params: Params = vec![
            (&cutoff, Type::TEXT),
            (d0, Type::TEXT),
            (d1, Type::TEXT),
            (m0, Type::TEXT),
            (m1, Type::TEXT),
            (&providers, Type::TEXT_ARRAY),
            (&recent, Type::INT8),
        ];
        if let Some(job) = insert {
            params.extend(reservation_params(&self.host, job));
        }
        let sql = READS[usize::from(insert.is_some())][usize::from(spending)];
        let rows = self.client.query_typed(sql, &params)?;
        Ok(Fetch::of(&rows, spending.then_some(windows)))
    }

    fn wrap(&self, e: anyhow::Error) -> anyhow::Error {
        match e.downcast::<postgres::Error>() {
            Ok(pe) => self.err(pe),
            Err(e) => e,
        }
    }

    fn cutoff(&self, now: SystemTime) -> String {
        crate::timestamp::format(
            now.checked_sub(self.max_age)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        )
    }

    /// Notes the job a reservation became (the price rule names it).
    pub fn set_job(&mut self, key: &str, job_id: &str) -> anyhow::Result<()> {
        self.client
            .query_typed(
                "UPDATE reservation SET job_id = $2 WHERE key = $1",
                &[(&key, Type::TEXT), (&job_id, Type::TEXT)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Takes back a reservation of this host's.
    pub fn release(&mut self, key: &str) -> anyhow::Result<()> {
        self.client
            .query_typed(
                "DELETE FROM reservation WHERE key = $1",
                &[(&key, Type::TEXT)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Pushes journal entries and releases the reservations of their jobs,
    /// in one statement, so in one transaction and one round trip
    /// ([`PUSH`]); an entry already there counts nothing. Notes this host
    /// as seen, with its caps. Answers how many were new.
    pub fn push(&mut self, entries: &[Entry], keys: &[String], caps: &str) -> anyhow::Result<u64> {
        let c = Columns::of(entries);
        let (machine, now) = (machine_id(), crate::timestamp::now());
        let params: Params = vec![
            (&self.host, Type::TEXT),
            (&c.job_id, Type::TEXT_ARRAY),
            (&c.project, Type::TEXT_ARRAY),
            (&c.task, Type::TEXT_ARRAY),
            (&c.provider, Type::TEXT_ARRAY),
            (&c.said_provider, Type::TEXT_ARRAY),
            (&c.model, Type::TEXT_ARRAY),
            (&c.status, Type::TEXT_ARRAY),
            (&c.cost_cad, Type::FLOAT8_ARRAY),
            (&c.tokens_in, Type::INT8_ARRAY),
            (&c.tokens_out, Type::INT8_ARRAY),
            (&c.delegated_at, Type::TEXT_ARRAY),
            (&c.finished_at, Type::TEXT_ARRAY),
            (&c.turnaround, Type::INT8_ARRAY),
            (&c.step, Type::BOOL_ARRAY),
            (&keys, Type::TEXT_ARRAY),
            (&machine, Type::TEXT),
            (&now, Type::TEXT),
            (&caps, Type::TEXT),
        ];
        let r = self.client.query_typed_one(PUSH, &params);
        let n: i64 = r.map_err(|e| self.err(e))?.get(0);
        Ok(n.max(0) as u64)
    }

    /// Makes this host's reservations of a project the markers a reap sees,
    /// under that project's queue lock (the caller's).
    pub fn reconcile(&mut self, project: &str, markers: &[Reservation]) -> anyhow::Result<()> {
        let host = self.host.clone();
        let r = (|| -> Result<(), postgres::Error> {
            let mut tx = self.client.transaction()?;
            let rows: std::collections::HashSet<String> = tx
                .query_typed(
                    "SELECT key FROM reservation WHERE host = $1 AND project = $2",
                    &[(&host, Type::TEXT), (&project, Type::TEXT)],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let ids: Vec<&str> = markers.iter().filter_map(|m| m.job_id.as_deref()).collect();
            let booked: std::collections::HashSet<String> = tx
                .query_typed(
                    "SELECT job_id FROM ledger WHERE job_id = ANY($1)",
                    &[(&ids, Type::TEXT_ARRAY)],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let want: Vec<&Reservation> = markers
                .iter()
                .filter(|m| m.job_id.as_ref().is_none_or(|j| !booked.contains(j)))
                .collect();
            let keep: std::collections::HashSet<&str> =
                want.iter().map(|m| m.key.as_str()).collect();
            let gone: Vec<&String> = rows.iter().filter(|k| !keep.contains(k.as_str())).collect();
            if !gone.is_empty() {
                tx.query_typed(
                    "DELETE FROM reservation WHERE key = ANY($1)",
                    &[(&gone, Type::TEXT_ARRAY)],
                )?;
            }
            for m in want.into_iter().filter(|m| !rows.contains(&m.key)) {
                insert_reservation(&mut tx, &host, m)?;
            }
            tx.commit()
        })();
        r.map_err(|e| self.err(e))
    }

    /// The projects this host holds reservations of.
    pub fn reserved_projects(&mut self) -> anyhow::Result<Vec<String>> {
        let rows = self
            .client
            .query_typed(
                "SELECT DISTINCT project FROM reservation WHERE host = $1",
                &[(&self.host, Type::TEXT)],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Every configured cap's state for the fleet now: the reads of an
    /// admission, in one statement.
    pub fn budget(&mut self, policy: &Policy, now: SystemTime) -> anyhow::Result<Vec<CapState>> {
        if policy.caps().is_empty() {
            return Ok(Vec::new());
        }
        let r = (|| -> anyhow::Result<Vec<CapState>> {
            let fetched = self.fetch(policy, now, None)?;
            let counts = fetched.counts.clone();
            let spending =
                queries::spending(&mut fetched.reader(&mut self.client, ""), &counts, now)?;
            Ok(budget_states(policy, &spending, &counts))
        })();
        r.map_err(|e| self.wrap(e))
    }

    /// Jobs in flight in the fleet, per provider.
    pub fn counts(&mut self, now: SystemTime) -> anyhow::Result<Counts> {
        let r = self.fetch(&Policy::default(), now, None);
        Ok(r.map_err(|e| self.err(e))?.counts)
    }

    /// Calls `each` with every fleet entry that ended in `[since, until)`,
    /// with its host.
    pub fn rows_between(
        &mut self,
        since: &str,
        until: Option<&str>,
        mut each: impl FnMut(&str, Row),
    ) -> anyhow::Result<()> {
        use postgres::fallible_iterator::FallibleIterator;
        let until = until.unwrap_or("~");
        let params: [&(dyn postgres::types::ToSql + Sync); 2] = [&since, &until];
        let r = (|| -> Result<(), postgres::Error> {
            let mut it = self.client.query_raw(
                "SELECT host, project, provider, model, status = 'completed', cost_cad,
                        tokens_in, tokens_out, turnaround, finished_at
                 FROM ledger WHERE finished_at >= $1 AND finished_at < $2",
                params,
            )?;
            while let Some(r) = it.next()? {
                let n = |i: usize| r.get::<_, Option<i64>>(i).unwrap_or(0).max(0) as u64;
                let host: String = r.get(0);
                each(
                    &host,
                    Row {
                        project: r.get(1),
                        provider: r.get(2),
                        model: r.get(3),
                        completed: r.get(4),
                        cost_cad: r.get(5),
                        tokens_in: n(6),
                        tokens_out: n(7),
                        turnaround: r.get::<_, Option<i64>>(8).map(|t| t.max(0) as u64),
                        finished_at: r.get(9),
                    },
                );
            }
            Ok(())
        })();
        r.map_err(|e| self.err(e))
    }

    /// The hosts the database knows.
    pub fn hosts(&mut self) -> anyhow::Result<Vec<HostRow>> {
        let rows = self
            .client
            .query(
                "SELECT host, machine_id, last_seen, caps FROM hosts ORDER BY host",
                &[],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| HostRow {
                host: r.get(0),
                machine_id: r.get(1),
                last_seen: r.get(2),
                caps: r.get(3),
            })
            .collect())
    }

    /// Hosts whose reservations are past `max_age` (they stopped reaping).
    pub fn stale_hosts(&mut self, now: SystemTime) -> anyhow::Result<Vec<String>> {
        let cutoff = self.cutoff(now);
        let rows = self
            .client
            .query(
                "SELECT DISTINCT host FROM reservation WHERE started_at < $1 ORDER BY host",
                &[&cutoff],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// How many entries the fleet's ledger holds.
    pub fn len(&mut self) -> anyhow::Result<u64> {
        let n: i64 = self
            .client
            .query_one("SELECT count(*) FROM ledger", &[])
            .map_err(|e| self.err(e))?
            .get(0);
        Ok(n.max(0) as u64)
    }

    pub fn is_empty(&mut self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// The schema's version, as recorded.
const VERSION_SQL: &str = "SELECT value FROM ccl_delegate.meta WHERE key = 'schema_version'";

/// No schema or table yet.
fn no_schema(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE)
        || e.code() == Some(&postgres::error::SqlState::INVALID_SCHEMA_NAME)
}

/// A reservation's row, as `$1`..`$7` of an insert (`$8`..`$14` of
/// [`READS`] with the insert).
fn reservation_params<'a>(host: &'a String, r: &'a Reservation) -> Params<'a> {
    vec![
        (&r.key, Type::TEXT),
        (host, Type::TEXT),
        (&r.project, Type::TEXT),
        (&r.task, Type::TEXT),
        (&r.provider, Type::TEXT),
        (&r.job_id, Type::TEXT),
        (&r.started_at, Type::TEXT),
    ]
}

fn insert_reservation(
    c: &mut impl GenericClient,
    host: &String,
    r: &Reservation,
) -> Result<(), postgres::Error> {
    c.query_typed(
        "INSERT INTO reservation (key, host, project, task, provider, job_id, started_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key) DO NOTHING",
        &reservation_params(host, r),
    )?;
    Ok(())
}

/// What [`Fleet::fetch`] read: the spending rows only when asked for.
struct Fetch {
    counts: Counts,
    spent: Vec<queries::Window>,
    means: Vec<queries::Mean>,
}

impl Fetch {
    fn of(rows: &[postgres::Row], windows: Option<[(String, String); 2]>) -> Fetch {
        let mut f = Fetch {
            counts: Counts::new(),
            spent: windows
                .into_iter()
                .flatten()
                .map(|w| (w, Vec::new()))
                .collect(),
            means: Vec::new(),
        };
        for r in rows {
            let (what, provider): (&str, Option<String>) = (r.get(0), r.get(1));
            let (x, n): (Option<f64>, Option<i64>) = (r.get(2), r.get(3));
            let window = match what {
                "day" => 0,
                "month" => 1,
                _ => 2,
            };
            match (what, provider) {
                ("count", Some(p)) => {
                    f.counts.insert(p, n.unwrap_or(0).max(0) as u64);
                }
                ("mean", p) => f.means.push((p, (x, n.unwrap_or(0)))),
                (_, Some(p)) if window < f.spent.len() => {
                    f.spent[window].1.push((p, x.unwrap_or(0.0)));
                }
                _ => {}
            }
        }
        f
    }

    /// A [`Reader`] answering from these rows, and from `client` for the
    /// rest, `except` (the job being admitted) left out of probes.
    fn reader<'a>(self, client: &'a mut Client, except: &'a str) -> Fetched<Live<'a>> {
        Fetched {
            spent: self.spent,
            means: self.means,
            rest: Live { client, except },
        }
    }
}

/// The reads a [`Fetch`] does not hold, asked one statement each.
struct Live<'a> {
    client: &'a mut Client,
    except: &'a str,
}

impl Reader for Live<'_> {
    fn spent(&mut self, from_day: &str, to_day: &str) -> anyhow::Result<Vec<(String, f64)>> {
        let rows = self.client.query_typed(
            queries::SPENT,
            &[(&from_day, Type::TEXT), (&to_day, Type::TEXT)],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn mean(&mut self, provider: Option<&str>) -> anyhow::Result<(Option<f64>, i64)> {
        let recent = queries::RECENT;
        let row = match provider {
            Some(p) => self
                .client
                .query_typed_one(queries::MEAN_OF, &[(&p, Type::TEXT), (&recent, Type::INT8)])?,
            None => self
                .client
                .query_typed_one(queries::MEAN_ALL, &[(&recent, Type::INT8)])?,
        };
        Ok((row.get(0), row.get(1)))
    }

    fn probe(&mut self, provider: &str) -> anyhow::Result<Option<String>> {
        let row = self.client.query_typed_opt(
            PROBE_OTHER,
            &[(&provider, Type::TEXT), (&self.except, Type::TEXT)],
        )?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// A push's entries, column by column ([`PUSH`]).
struct Columns<'a> {
    job_id: Vec<Option<&'a str>>,
    project: Vec<&'a str>,
    task: Vec<&'a str>,
    provider: Vec<&'a str>,
    said_provider: Vec<Option<&'a str>>,
    model: Vec<Option<&'a str>>,
    status: Vec<&'a str>,
    cost_cad: Vec<f64>,
    tokens_in: Vec<Option<i64>>,
    tokens_out: Vec<Option<i64>>,
    delegated_at: Vec<&'a str>,
    finished_at: Vec<String>,
    turnaround: Vec<Option<i64>>,
    step: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn of(entries: &'a [Entry]) -> Columns<'a> {
        let tokens = |t: Option<u64>| t.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let mut c = Columns {
            job_id: Vec::new(),
            project: Vec::new(),
            task: Vec::new(),
            provider: Vec::new(),
            said_provider: Vec::new(),
            model: Vec::new(),
            status: Vec::new(),
            cost_cad: Vec::new(),
            tokens_in: Vec::new(),
            tokens_out: Vec::new(),
            delegated_at: Vec::new(),
            finished_at: Vec::new(),
            turnaround: Vec::new(),
            step: Vec::new(),
        };
        for e in entries {
            let finished_at = utc(&e.finished_at).unwrap_or_else(crate::timestamp::now);
            let turnaround = Entry {
                finished_at: finished_at.clone(),
                ..e.clone()
            }
            .turnaround();
            c.job_id.push(e.job_id.as_deref());
            c.project.push(&e.project);
            c.task.push(&e.task);
            c.provider.push(&e.provider);
            c.said_provider.push(e.said_provider.as_deref());
            c.model.push(e.model.as_deref());
            c.status.push(&e.status);
            c.cost_cad.push(sane_cost(e.cost_cad));
            c.tokens_in.push(tokens(e.tokens_in));
            c.tokens_out.push(tokens(e.tokens_out));
            c.delegated_at.push(&e.delegated_at);
            c.finished_at.push(finished_at);
            c.turnaround.push(turnaround);
            c.step.push(e.step);
        }
        c
    }
}

/// The TLS setup of an sslmode, as libpq means it: `prefer` and `require`
/// encrypt without checking the server (unless a root certificate is
/// given: then `require` checks as `verify-ca`); `verify-ca` checks the
/// chain; `verify-full` the chain and the host name. Roots: `sslrootcert`,
/// else the web PKI's.
fn tls_config(mode: SslMode, rootcert: Option<&str>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::client::WebPkiServerVerifier;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mode = match (mode, rootcert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (m, _) => m,
    };
    if matches!(mode, SslMode::Prefer | SslMode::Require) {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCheck(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        Some(path) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let bytes = std::fs::read(Path::new(path))
                .map_err(|e| anyhow::anyhow!("sslrootcert {path}: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| anyhow::anyhow!("sslrootcert {path}: {e:?}"))?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                anyhow::bail!("sslrootcert {path}: no certificate in it");
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
    Ok(if mode == SslMode::VerifyFull {
        builder.with_webpki_verifier(webpki).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            .with_no_client_auth()
    })
}

/// `prefer`/`require`: encrypted, the server not checked (libpq's meaning).
#[derive(Debug)]
struct NoCheck(Arc<rustls::crypto::CryptoProvider>);

/// `verify-ca`: the chain checked, the name not.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
