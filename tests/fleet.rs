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
    name: String,
}

fn host(pg: &pg::Pg, name: &str, extra: &str) -> Host {
    let p = Project::new();
    let dir = p.home.join(".config/ccl-delegate");
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pg-password");
    std::fs::write(&pw, format!("{}\n", pg::PASSWORD)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "fleet:\n  url: {}\n  password_file: {}\n  host: {name}\nlock_timeout: 20s\n{extra}",
            pg.url(),
            pw.display()
        ),
    )
    .unwrap();
    Host {
        p,
        name: name.into(),
    }
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
