//! The store's tables, created on first use, with a version.

/// The schema this binary writes and reads (`PRAGMA user_version`).
pub const VERSION: i64 = 3;

/// Version 3 (version 1 without `job_total` and `failover`, which
/// [`UPGRADE_FROM_1`] adds; versions 1 and 2 with the estimate's indexes
/// without `cost_cad`, which [`UPGRADE_FROM_2`] drops). Times are `YYYY-MM-DDTHH:MM:SSZ` text, so they compare as
/// strings and a day is the first 10 bytes.
pub const CREATE: &str = "
CREATE TABLE IF NOT EXISTS ledger (
    id            INTEGER PRIMARY KEY,
    job_id        TEXT,
    project       TEXT NOT NULL,
    task          TEXT NOT NULL,
    provider      TEXT NOT NULL,
    said_provider TEXT,
    model         TEXT,
    status        TEXT NOT NULL,
    cost_cad      REAL NOT NULL CHECK (cost_cad >= 0 AND cost_cad < 1000000),
    tokens_in     INTEGER CHECK (tokens_in >= 0),
    tokens_out    INTEGER CHECK (tokens_out >= 0),
    delegated_at  TEXT NOT NULL,
    finished_at   TEXT NOT NULL,
    turnaround    INTEGER,
    step          INTEGER NOT NULL DEFAULT 0,
    -- In the fleet's database already (fleet.md: this host's journal).
    pushed        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ledger_unpushed ON ledger(id) WHERE pushed = 0;
CREATE UNIQUE INDEX IF NOT EXISTS ledger_job ON ledger(job_id) WHERE job_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS ledger_jobless
    ON ledger(project, task, finished_at) WHERE job_id IS NULL;
CREATE INDEX IF NOT EXISTS ledger_finished ON ledger(finished_at);
-- The estimate's last completed costs (queries::MEAN_OF, MEAN_ALL), read
-- from the index alone: an admission touches no row of the ledger.
CREATE INDEX IF NOT EXISTS ledger_recent_cost ON ledger(status, provider, id, cost_cad);
CREATE INDEX IF NOT EXISTS ledger_recent_all_cost ON ledger(status, id, cost_cad);
CREATE INDEX IF NOT EXISTS ledger_project ON ledger(project, step);

-- Spent per UTC day and provider: kept by the ledger's triggers.
CREATE TABLE IF NOT EXISTS spend_day (
    day      TEXT NOT NULL,
    provider TEXT NOT NULL,
    cost_cad REAL NOT NULL,
    PRIMARY KEY (day, provider)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS ledger_spend_add AFTER INSERT ON ledger BEGIN
    INSERT INTO spend_day (day, provider, cost_cad)
        VALUES (substr(NEW.finished_at, 1, 10), NEW.provider, NEW.cost_cad)
        ON CONFLICT (day, provider) DO UPDATE SET cost_cad = max(0, cost_cad) + excluded.cost_cad;
END;
CREATE TRIGGER IF NOT EXISTS ledger_spend_sub AFTER DELETE ON ledger BEGIN
    UPDATE spend_day SET cost_cad = max(0, cost_cad - OLD.cost_cad)
        WHERE day = substr(OLD.finished_at, 1, 10) AND provider = OLD.provider;
END;

-- Jobs with a record of their own (not an earlier job of a chain, not
-- requeued) per project, provider and outcome, for `status`: kept by the
-- ledger's triggers.
CREATE TABLE IF NOT EXISTS record_total (
    project   TEXT NOT NULL,
    provider  TEXT NOT NULL,
    completed INTEGER NOT NULL,
    jobs      INTEGER NOT NULL,
    cost_cad  REAL NOT NULL,
    PRIMARY KEY (project, provider, completed)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS ledger_record_add AFTER INSERT ON ledger WHEN NEW.step = 0 BEGIN
    INSERT INTO record_total (project, provider, completed, jobs, cost_cad)
        VALUES (NEW.project, NEW.provider, NEW.status = 'completed', 1, NEW.cost_cad)
        ON CONFLICT (project, provider, completed)
        DO UPDATE SET jobs = jobs + 1, cost_cad = cost_cad + excluded.cost_cad;
END;
CREATE TRIGGER IF NOT EXISTS ledger_record_sub AFTER DELETE ON ledger WHEN OLD.step = 0 BEGIN
    UPDATE record_total SET jobs = max(0, jobs - 1), cost_cad = max(0, cost_cad - OLD.cost_cad)
        WHERE project = OLD.project AND provider = OLD.provider
          AND completed = (OLD.status = 'completed');
END;
CREATE TRIGGER IF NOT EXISTS ledger_record_gone AFTER UPDATE OF step ON ledger
    WHEN OLD.step = 0 AND NEW.step = 1 BEGIN
    UPDATE record_total SET jobs = max(0, jobs - 1), cost_cad = max(0, cost_cad - OLD.cost_cad)
        WHERE project = OLD.project AND provider = OLD.provider
          AND completed = (OLD.status = 'completed');
END;

CREATE TRIGGER IF NOT EXISTS ledger_record_back AFTER UPDATE OF step ON ledger
    WHEN OLD.step = 1 AND NEW.step = 0 BEGIN
    INSERT INTO record_total (project, provider, completed, jobs, cost_cad)
        VALUES (NEW.project, NEW.provider, NEW.status = 'completed', 1, NEW.cost_cad)
        ON CONFLICT (project, provider, completed)
        DO UPDATE SET jobs = jobs + 1, cost_cad = cost_cad + excluded.cost_cad;
END;

-- Every job the books hold (each job of a chain included) per project,
-- provider and outcome, for the metrics' counters: kept by the ledger's
-- triggers.
CREATE TABLE IF NOT EXISTS job_total (
    project   TEXT NOT NULL,
    provider  TEXT NOT NULL,
    completed INTEGER NOT NULL,
    jobs      INTEGER NOT NULL,
    cost_cad  REAL NOT NULL,
    PRIMARY KEY (project, provider, completed)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS ledger_job_add AFTER INSERT ON ledger BEGIN
    INSERT INTO job_total (project, provider, completed, jobs, cost_cad)
        VALUES (NEW.project, NEW.provider, NEW.status = 'completed', 1, NEW.cost_cad)
        ON CONFLICT (project, provider, completed)
        DO UPDATE SET jobs = jobs + 1, cost_cad = cost_cad + excluded.cost_cad;
END;
CREATE TRIGGER IF NOT EXISTS ledger_job_sub AFTER DELETE ON ledger BEGIN
    UPDATE job_total SET jobs = max(0, jobs - 1), cost_cad = max(0, cost_cad - OLD.cost_cad)
        WHERE project = OLD.project AND provider = OLD.provider
          AND completed = (OLD.status = 'completed');
END;

-- Each failover step sent to the service, once (by the step's
-- idempotency key, so two reaps count it once).
CREATE TABLE IF NOT EXISTS failover (
    key           TEXT PRIMARY KEY,
    from_provider TEXT NOT NULL,
    to_provider   TEXT NOT NULL
) WITHOUT ROWID;

-- A job in flight: one row per marker pending or submitted (a failover
-- step a limit deferred holds no job and has none).
CREATE TABLE IF NOT EXISTS reservation (
    key        TEXT PRIMARY KEY,
    project    TEXT NOT NULL,
    task       TEXT NOT NULL,
    provider   TEXT NOT NULL,
    job_id     TEXT,
    started_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reservation_project ON reservation(project);
CREATE INDEX IF NOT EXISTS reservation_provider ON reservation(provider);

-- Jobs in flight per provider: kept by the reservation's triggers.
CREATE TABLE IF NOT EXISTS in_flight (
    provider TEXT PRIMARY KEY,
    n        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS reservation_add AFTER INSERT ON reservation BEGIN
    INSERT INTO in_flight (provider, n) VALUES (NEW.provider, 1)
        ON CONFLICT (provider) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS reservation_sub AFTER DELETE ON reservation BEGIN
    UPDATE in_flight SET n = max(0, n - 1) WHERE provider = OLD.provider;
END;

-- With a fleet: the reservations this host's entries released, until the
-- push that releases them in the fleet's database too.
CREATE TABLE IF NOT EXISTS released (
    key TEXT PRIMARY KEY
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// From version 1: the tables and triggers of [`CREATE`] it lacks, and
/// `job_total` summed from the ledger it has (steps sent before the
/// upgrade are not known: `failover` starts empty).
pub const UPGRADE_FROM_1: &str = "
INSERT INTO job_total (project, provider, completed, jobs, cost_cad)
    SELECT project, provider, status = 'completed', count(*), sum(cost_cad)
    FROM ledger GROUP BY 1, 2, 3
    ON CONFLICT (project, provider, completed) DO NOTHING;
";

/// From versions 1 and 2: the estimate's indexes of [`CREATE`] replace the
/// earlier ones, which lacked the cost (each admission read its last 50
/// completed costs from the ledger's rows).
pub const UPGRADE_FROM_2: &str = "
DROP INDEX IF EXISTS ledger_recent;
DROP INDEX IF EXISTS ledger_recent_all;
";
