//! One budget for a fleet of hosts (fleet.md), against a real PostgreSQL
//! server the tests start themselves (tests/pg): several hosts simulated on
//! one machine, each with its own state directory, config and `host` name,
//! all against one database, as real concurrent processes.

mod common;
mod pg;

use std::time::{Duration, SystemTime};

use ccl_delegate::books::Reservation;
use ccl_delegate::books::fleet::{Fleet, FleetConfig};
use ccl_delegate::policy::{Count, Decision, LimitKey, Policy, Provider};

fn lib_config(pg: &pg::Pg, host: &str) -> FleetConfig {
    FleetConfig {
        url: pg.url_with_password(),
        password_file: None,
        host: host.into(),
    }
}

/// Hosts that start at once against a new database all get the schema:
/// none fails on another's half-made one (PostgreSQL's `CREATE SCHEMA IF
/// NOT EXISTS` is no guard against a concurrent one).
#[test]
fn hosts_starting_at_once_on_a_new_database_all_connect() {
    let Some(pg) = pg::Pg::start() else { return };
    for round in 0..8 {
        pg.psql("DROP SCHEMA IF EXISTS ccl_delegate CASCADE");
        let start = std::sync::Barrier::new(12);
        let failed: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..12)
                .map(|i| {
                    let (pg, start) = (&pg, &start);
                    s.spawn(move || {
                        start.wait();
                        Fleet::connect(
                            &lib_config(pg, &format!("h{i}")),
                            Duration::from_secs(10),
                            Duration::from_secs(86_400),
                        )
                        .err()
                        .map(|e| format!("round {round}, host h{i}: {e:#}"))
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
        });
        assert!(failed.is_empty(), "{failed:#?}");
        let version = pg.psql("SELECT value FROM ccl_delegate.meta WHERE key = 'schema_version'");
        assert!(version.trim().parse::<i64>().is_ok(), "{version:?}");
    }
}

#[test]
fn the_library_admits_across_connections_exactly_to_the_limit() {
    let Some(pg) = pg::Pg::start() else { return };
    let policy = Policy {
        max_in_flight: [(LimitKey::All, Count(3))].into(),
        ..Policy::default()
    };
    let admitted: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..10)
            .map(|i| {
                let (pg, policy) = (&pg, &policy);
                s.spawn(move || {
                    let mut f = Fleet::connect(
                        &lib_config(pg, &format!("h{}", i % 3)),
                        Duration::from_secs(10),
                        Duration::from_secs(86_400),
                    )
                    .unwrap();
                    let job = Reservation {
                        key: format!("k{i}"),
                        project: "/p".into(),
                        task: format!("t{i}.md"),
                        provider: "claude".into(),
                        job_id: None,
                        started_at: ccl_delegate::timestamp::now(),
                    };
                    let d = f
                        .admit(policy, &job, Provider::Claude, None, SystemTime::now())
                        .unwrap();
                    usize::from(d == Decision::Admit)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted, 3);
    assert_eq!(
        pg.psql("SELECT count(*) FROM ccl_delegate.reservation")
            .trim(),
        "3"
    );
}

use common::*;

/// One host of the fleet: its own home (state directory, config) and
/// project, against the shared database.
struct Host {
    p: Project,
}

fn host(pg: &pg::Pg, name: &str, extra: &str) -> Host {
    let p = Project::new();
    let dir = p.config_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pg-password");
    std::fs::write(&pw, format!("{}\n", pg::PASSWORD)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.write_config(&format!(
        "fleet:\n  url: {}\n  password_file: {}\n  host: {name}\nlock_timeout: 20s\n{extra}",
        pg.url(),
        pw.display()
    ));
    Host { p }
}

impl Host {
    fn submit(&self, mock: &Mock, task: &str) -> Out {
        let path = self.p.inbox().join(task);
        self.p
            .run(Some(mock), &["submit", "-q", path.to_str().unwrap()])
    }
}

fn burst(hosts: &[Host], mock: &Mock, per_host: usize, body: &[u8]) -> Vec<Out> {
    for h in hosts {
        for i in 0..per_host {
            h.p.task(&format!("t{i}.md"), body);
        }
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = hosts
            .iter()
            .flat_map(|h| (0..per_host).map(move |i| (h, i)))
            .map(|(h, i)| s.spawn(move || h.submit(mock, &format!("t{i}.md"))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// fleet.md: 4 hosts × 25 simultaneous submits against `all: 40` with
/// none in flight delegate exactly 40.
#[test]
fn hosts_submitting_at_once_delegate_exactly_the_fleet_limit() {
    let Some(pg) = pg::Pg::start() else { return };
    let mock = Mock::start(&["--statuses", "running"]);
    let hosts: Vec<Host> = (0..4)
        .map(|i| host(&pg, &format!("h{i}"), "max_in_flight:\n  all: 40\n"))
        .collect();
    let outs = burst(&hosts, &mock, 25, &fm("preferred_ai: gemini\n"));
    let sent = outs.iter().filter(|o| o.code == 0).count();
    for o in outs.iter().filter(|o| o.code != 0) {
        assert_eq!(o.code, 75, "{o:?}");
        assert!(
            o.stdout
                .starts_with("deferred gemini: 40 in flight, limit 40"),
            "{}",
            o.stdout
        );
    }
    assert_eq!(sent, 40);
    assert_eq!(mock.jobs_created(), 40);
    assert_eq!(
        pg.psql("SELECT count(*) FROM ccl_delegate.reservation")
            .trim(),
        "40"
    );
}

/// A submit whose POST surely failed gives its count back; when the fleet
/// cannot be told then, the key waits in the host's journal and the next
/// reap, idle as it is, deletes the reservation in the fleet's database:
/// it never holds the fleet's limit until max_age.
#[test]
fn a_release_the_fleet_missed_is_pushed_by_the_next_reap() {
    let Some(pg) = pg::Pg::start() else { return };
    let mock = Mock::start(&[]);
    let h = host(&pg, "h0", "max_in_flight:\n  gpu: 1\n");
    h.p.task("a.md", &fm("preferred_ai: gpu\n"));
    // The release's DELETE is refused by the database, the admission's
    // INSERT is not.
    h.p.task("warm.md", &fm("preferred_ai: gpu\n"));
    mock.faults(serde_json::json!({"next": ["400"], "method": "POST"}));
    h.submit(&mock, "warm.md");
    pg.psql(
        "CREATE FUNCTION ccl_delegate.no_delete() RETURNS trigger LANGUAGE plpgsql AS \
         $$BEGIN RAISE EXCEPTION 'deletes refused for the test'; END$$; \
         CREATE TRIGGER no_delete BEFORE DELETE ON ccl_delegate.reservation \
         FOR EACH ROW EXECUTE FUNCTION ccl_delegate.no_delete()",
    );
    mock.faults(serde_json::json!({"next": ["400"], "method": "POST"}));
    let out = h.submit(&mock, "a.md");
    assert_eq!(out.code, 65, "{out:?}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM ccl_delegate.reservation")
            .trim(),
        "1",
        "the fleet could not be told"
    );
    pg.psql("DROP TRIGGER no_delete ON ccl_delegate.reservation");
    let dir = h.p.dir.to_str().unwrap();
    h.p.run(Some(&mock), &["reap", "--project", dir, "-q"])
        .expect(0);
    assert_eq!(
        pg.psql("SELECT count(*) FROM ccl_delegate.reservation")
            .trim(),
        "0",
        "the next reap pushed the release"
    );
    h.p.task("b.md", &fm("preferred_ai: gpu\n"));
    let out = h.submit(&mock, "b.md");
    assert_eq!(out.code, 0, "{out:?}");
}

/// Against a fleet budget: exactly what fits, whichever host asks.
#[test]
fn hosts_submitting_at_once_spend_exactly_what_the_fleet_budget_allows() {
    let Some(pg) = pg::Pg::start() else { return };
    let mock = Mock::start(&["--statuses", "running"]);
    let cfg = "budget:\n  daily_cad: 5.00\n  providers:\n    claude: {estimate_cad: 0.50}\n";
    let hosts: Vec<Host> = (0..3).map(|i| host(&pg, &format!("h{i}"), cfg)).collect();
    let outs = burst(&hosts, &mock, 8, &fm("preferred_ai: claude\n"));
    let sent = outs.iter().filter(|o| o.code == 0).count();
    assert_eq!(sent, 10, "5.00 at 0.50 a job, over three hosts");
    assert!(outs.iter().all(|o| matches!(o.code, 0 | 10)), "{outs:#?}");
    assert_eq!(mock.jobs_created(), 10);
}

/// The whole cycle on two hosts: reaps push, `report` sums the fleet and
/// `--by host` names each host; a push repeated counts nothing twice.
#[test]
fn reaps_push_and_report_sums_the_fleet_by_host() {
    let Some(pg) = pg::Pg::start() else { return };
    let mock = Mock::start(&["--statuses", "completed", "--provider-cost", "gemini=0.25"]);
    let hosts: Vec<Host> = (0..2).map(|i| host(&pg, &format!("h{i}"), "")).collect();
    for (n, h) in hosts.iter().enumerate() {
        for i in 0..(n + 2) {
            h.p.task(&format!("t{i}.md"), &fm("preferred_ai: gemini\n"));
            h.p.submit_ok(&mock, &format!("t{i}.md"));
        }
        h.p.reap(&mock, &[]).expect(0);
    }
    let out = hosts[0].p.run(None, &["report", "--json", "--by", "host"]);
    out.expect(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(
        (rows[0]["host"].as_str(), rows[0]["jobs"].as_u64()),
        (Some("h0"), Some(2))
    );
    assert_eq!(
        (rows[1]["host"].as_str(), rows[1]["jobs"].as_u64()),
        (Some("h1"), Some(3))
    );
    assert_eq!(v["total"]["cost_cad"], 1.25);
    // A push again (and a rebuild, which pushes) counts nothing twice.
    hosts[1].p.run(None, &["fleet", "push"]).expect(0);
    let dir = hosts[1].p.dir.to_str().unwrap().to_string();
    hosts[1]
        .p
        .run(None, &["ledger", "rebuild", "--project", &dir])
        .expect(0);
    assert_eq!(
        pg.psql("SELECT count(*) FROM ccl_delegate.ledger").trim(),
        "5"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM ccl_delegate.reservation")
            .trim(),
        "0"
    );
}

/// fleet.md "When the database is away": submits defer with the
/// contract's line, reaps still move tasks and exit 75 naming the database,
/// an idle reap exits 0 at once; after a restart every job counts once.
#[test]
fn the_database_away_defers_submits_and_never_stops_reaps() {
    let Some(pg) = pg::Pg::start() else { return };
    let mock = Mock::start(&["--statuses", "queued,completed"]);
    let h = host(&pg, "h0", "max_in_flight:\n  all: 10\n");
    for i in 0..3 {
        h.p.task(&format!("t{i}.md"), &fm("preferred_ai: gemini\n"));
        h.p.submit_ok(&mock, &format!("t{i}.md"));
    }
    h.p.reap(&mock, &[]).expect(0); // queued: nothing finished yet
    pg.stop();
    h.p.task("late.md", &fm("preferred_ai: gemini\n"));
    let out = h.submit(&mock, "late.md");
    out.expect(75);
    assert_eq!(out.stdout, "deferred gemini: fleet database unreachable\n");
    assert!(out.stderr.contains("127.0.0.1"), "{}", out.stderr);
    assert!(h.p.marker("late.md").is_none());
    std::fs::remove_file(h.p.inbox().join("late.md")).unwrap();
    // The jobs complete; the reap moves them all the same.
    let metrics = h.p.tmp.path().join("reap.prom");
    let out =
        h.p.reap(&mock, &["-q", "--metrics-file", metrics.to_str().unwrap()]);
    out.expect(75);
    assert_eq!(h.p.names(&h.p.done()).len(), 3, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("fleet database"), "{}", out.stderr);
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert!(m.contains("ccl_delegate_reap_success 0"), "{m}");
    // Idle (nothing in flight, but the journal not pushed yet): the run
    // still has something to push, so it says so again.
    let out = h.p.reap(&mock, &["-q"]);
    out.expect(75);
    pg.restart();
    h.p.reap(&mock, &[]).expect(0);
    assert_eq!(
        pg.psql("SELECT count(*) FROM ccl_delegate.ledger").trim(),
        "3"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM ccl_delegate.reservation")
            .trim(),
        "0"
    );
    // Now truly idle, the database down: exit 0 at once, no connection.
    pg.stop();
    let t = std::time::Instant::now();
    let out = h.p.reap(&mock, &["-q"]);
    out.expect(0);
    assert_eq!(out.stderr, "");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // decide and init never connect either.
    let task = h.p.task("d.md", &fm("preferred_ai: claude\n"));
    h.p.run(None, &["decide", task.to_str().unwrap()]).expect(0);
    let fresh = h.p.tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    h.p.run(None, &["init", fresh.to_str().unwrap()]).expect(0);
    pg.restart();
    assert_eq!(
        pg.psql("SELECT count(*) FROM ccl_delegate.ledger").trim(),
        "3"
    );
}

/// The password is a secret: never in output, errors, files or argv,
/// also when written inside the URL (shown as `***`).
#[test]
fn the_password_never_shows() {
    let Some(pg) = pg::Pg::start() else { return };
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    p.write_config(&format!(
        "fleet:\n  url: {}\n  host: h-secret\nmax_in_flight:\n  all: 5\nmetrics_file: {}\n",
        pg.url_with_password(),
        p.tmp.path().join("m.prom").display()
    ));
    let mut seen = String::new();
    p.task("a.md", &fm("preferred_ai: gemini\n"));
    p.submit_ok(&mock, "a.md");
    for args in [
        vec!["status"],
        vec!["doctor"],
        vec!["report"],
        vec!["fleet", "push"],
    ] {
        let mut a = args.clone();
        let d = p.dir.to_str().unwrap().to_string();
        if args[0] == "status" {
            a.extend(["--project", &d]);
        }
        let out = p.run(Some(&mock), &a);
        seen += &out.stdout;
        seen += &out.stderr;
    }
    let out = p.reap(&mock, &[]);
    seen += &out.stdout;
    seen += &out.stderr;
    let doctor = p.run(Some(&mock), &["doctor"]);
    assert!(
        doctor
            .stdout
            .contains("ok    fleet database: postgres://ccl:***@"),
        "{}",
        doctor.stdout
    );
    // With the database away, the errors name it, masked.
    pg.stop();
    p.task("b.md", &fm("preferred_ai: gemini\n"));
    let out = p.run(
        Some(&mock),
        &["submit", p.inbox().join("b.md").to_str().unwrap()],
    );
    out.expect(75);
    assert!(out.stderr.contains("ccl:***@127.0.0.1"), "{}", out.stderr);
    seen += &out.stderr;
    let out = p.run(None, &["report"]);
    seen += &out.stdout;
    seen += &out.stderr;
    assert!(!seen.contains(pg::PASSWORD), "{seen}");
    for (path, bytes) in tree(p.tmp.path()) {
        if path.ends_with("config.yaml") {
            continue;
        }
        assert!(
            !bytes
                .windows(pg::PASSWORD.len())
                .any(|w| w == pg::PASSWORD.as_bytes()),
            "{} holds the password",
            path.display()
        );
    }
    pg.restart();
}

/// A database of a newer schema than the binary knows is refused, naming
/// both versions; a host name taken by another machine is a doctor failure;
/// hosts with other caps are a warning.
#[test]
fn doctor_checks_the_schema_the_host_name_and_the_caps() {
    let Some(pg) = pg::Pg::start() else { return };
    let mock = Mock::start(&["--statuses", "completed"]);
    let a = host(&pg, "alpha", "max_in_flight:\n  all: 5\n");
    a.p.task("t.md", &fm("preferred_ai: gemini\n"));
    a.p.submit_ok(&mock, "t.md");
    a.p.reap(&mock, &[]).expect(0);
    let b = host(&pg, "beta", "max_in_flight:\n  all: 9\n");
    let out = b.p.run(Some(&mock), &["doctor"]);
    assert!(
        out.stdout.contains("ok    fleet database:"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("warn  fleet caps: host alpha has other caps (max_in_flight all 5)"),
        "{}",
        out.stdout
    );
    pg.psql("UPDATE ccl_delegate.hosts SET machine_id = 'another-machine' WHERE host = 'alpha'");
    let out = a.p.run(Some(&mock), &["doctor"]);
    assert!(
        out.stdout
            .contains("FAIL  fleet host: the name alpha is taken by another machine"),
        "{}",
        out.stdout
    );
    assert_ne!(out.code, 0);
    pg.psql("UPDATE ccl_delegate.meta SET value = '9' WHERE key = 'schema_version'");
    a.p.task("u.md", &fm("preferred_ai: gemini\n"));
    let out = a.submit(&mock, "u.md");
    out.expect(78);
    assert!(
        out.stderr.contains("schema version 9") && out.stderr.contains("version 1"),
        "{}",
        out.stderr
    );
}

/// SIGKILL of reaps at random instants while they book and push: after a
/// clean run every job is once in the fleet's ledger, and none reserved.
#[test]
#[ignore = "kill test: run with --include-ignored (CCL_KILL_ROUNDS rounds)"]
fn reaps_killed_while_pushing_count_every_job_once() {
    let Some(pg) = pg::Pg::start() else { return };
    let rounds: usize = std::env::var("CCL_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut rng = Rng::from_env("CCL_KILL_SEED");
    let mock = Mock::start(&["--statuses", "completed", "--fail-rate", "0.2"]);
    let h = host(&pg, "h0", "max_in_flight:\n  all: 1000\n");
    let dir = h.p.dir.to_str().unwrap().to_string();
    let mut jobs = 0;
    for round in 0..rounds {
        for i in 0..10 {
            let name = format!("r{round}-{i}.md");
            h.p.task(&name, &fm("preferred_ai: gemini\n"));
            h.p.submit_ok(&mock, &name);
            jobs += 1;
        }
        let mut c =
            h.p.cmd(Some(&mock))
                .args(["reap", "--project", &dir, "-q"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
        let delay = Duration::from_micros(rng.below(80_000));
        std::thread::sleep(delay);
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
        let _ = c.wait();
    }
    h.p.reap_until_settled(&mock, &[], 5);
    h.p.run(None, &["fleet", "push"]).expect(0);
    let n: u64 = pg
        .psql("SELECT count(*) FROM ccl_delegate.ledger")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, jobs, "every job once in the fleet's ledger");
    let distinct: u64 = pg
        .psql("SELECT count(DISTINCT job_id) FROM ccl_delegate.ledger")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(distinct, jobs);
    assert_eq!(
        pg.psql("SELECT count(*) FROM ccl_delegate.reservation")
            .trim(),
        "0"
    );
    assert_eq!(mock.jobs_created(), jobs);
    println!("{rounds} reaps killed, {jobs} jobs counted once");
}

/// sslmode as libpq means it, over rustls: `require` encrypts without
/// checking, `verify-ca` checks the chain, `verify-full` the name too.
#[test]
fn sslmodes_mean_what_they_mean_for_libpq() {
    let Some(pg) = pg::Pg::start_tls() else {
        return;
    };
    let connect = |query: &str| {
        let cfg = FleetConfig {
            url: format!(
                "postgres://{}:{}@127.0.0.1:{}/postgres?{query}",
                pg::USER,
                pg::PASSWORD,
                pg.port
            ),
            password_file: None,
            host: "h".into(),
        };
        Fleet::connect(&cfg, Duration::from_secs(10), Duration::from_secs(86_400))
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    };
    let ca = pg.ca().display().to_string();
    let rows: Vec<(String, bool)> = vec![
        ("sslmode=disable".into(), true),
        ("sslmode=prefer".into(), true),
        ("sslmode=require".into(), true),
        (format!("sslmode=verify-ca&sslrootcert={ca}"), true),
        // The certificate names db.example, not 127.0.0.1.
        (format!("sslmode=verify-full&sslrootcert={ca}"), false),
        // Not signed by a web PKI root.
        ("sslmode=verify-ca".into(), false),
        // With a root given, require checks the chain as verify-ca does.
        (
            format!(
                "sslmode=require&sslrootcert={}",
                pg.dir.path().join("server.pem").display()
            ),
            false,
        ),
    ];
    for (q, ok) in rows {
        let r = connect(&q);
        assert_eq!(r.is_ok(), ok, "{q}: {r:?}");
        if let Err(e) = r {
            assert!(!e.contains(pg::PASSWORD), "{e}");
            assert!(e.contains("***"), "{e}");
        }
    }
}
