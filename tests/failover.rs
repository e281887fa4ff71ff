//! Failover across providers (policy.md "Failover"), through the real
//! binary against the real mock: chains followed to done/, what never fails
//! over, budgets and limits on a step, hostile `fallback` values, markers
//! from before failover, and kills of a reap mid-step.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const CHAINED: &[u8] =
    b"---\npreferred_ai: gemini\nfallback: [claude, gpu]\n---\n# Summarise the log\nbody\n";

/// A mock whose jobs end at once: gemini failed, claude expired, the rest
/// completed.
fn mock_failing() -> Mock {
    Mock::start(&[
        "--statuses",
        "completed",
        "--provider-outcome",
        "gemini=failed",
        "--provider-outcome",
        "claude=expired",
    ])
}

fn write_config(p: &Project, yaml: &str) {
    let dir = p.home.join(".config/ccl-delegate");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.yaml"), yaml).unwrap();
}

fn ledger(p: &Project) -> Vec<serde_json::Value> {
    let path = p.home.join(".local/state/ccl-delegate/ledger.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn task_path(p: &Project, name: &str) -> String {
    p.inbox().join(name).display().to_string()
}

#[test]
fn a_task_fails_over_twice_and_lands_in_done_with_its_attempts() {
    let mock = mock_failing();
    let p = Project::new();
    p.task("t.md", CHAINED);
    let first = p.submit_ok(&mock, "t.md");
    let m = p.marker("t.md").unwrap();
    assert_eq!(m["fallback"], serde_json::json!(["claude", "gpu"]));
    let started = m["started_at"].clone();

    let out = p.reap(&mock, &[]);
    out.expect(0);
    let m = p.marker("t.md").expect("a marker for the next provider");
    let second = m["job_id"].as_str().unwrap().to_string();
    assert_eq!(
        out.stdout,
        format!(
            "failover {} (job {first} failed: gemini model overloaded) -> claude job {second}\n",
            task_path(&p, "t.md")
        )
    );
    assert_eq!(m["state"], "submitted");
    assert_eq!(m["provider"], "claude");
    assert_eq!(m["started_at"], started, "the chain keeps its first clock");
    assert_eq!(m["fallback"], serde_json::json!(["gpu"]));
    assert_eq!(
        m["attempts"],
        serde_json::json!([{"provider": "gemini", "job_id": first, "status": "failed",
                            "error": "gemini model overloaded"}])
    );
    assert_eq!(mock.job(&second)["provider"], "claude");

    let out = p.reap(&mock, &[]);
    out.expect(0);
    let third = p.marker("t.md").unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        out.stdout,
        format!(
            "failover {} (job {second} expired) -> gpu job {third}\n",
            task_path(&p, "t.md")
        )
    );

    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert!(out.stdout.starts_with("done "), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("job {third}")),
        "{}",
        out.stdout
    );
    assert_eq!(p.names(&p.inbox()), Vec::<String>::new());
    let r = Record::read(&p.done().join("t.md"));
    assert_eq!(r.str("job_id"), Some(third.as_str()));
    assert_eq!(r.original(), CHAINED);
    let attempts: serde_json::Value =
        serde_json::to_value(r.get("attempts").expect("attempts in the record")).unwrap();
    assert_eq!(
        attempts,
        serde_json::json!([
            {"provider": "gemini", "job_id": first, "status": "failed",
             "error": "gemini model overloaded"},
            {"provider": "claude", "job_id": second, "status": "expired",
             "error": null},
        ])
    );
    // One job per provider, each once; the ended ones in the ledger.
    assert_eq!(mock.jobs_created(), 3);
    let ids: Vec<_> = ledger(&p)
        .iter()
        .map(|e| {
            (
                e["job_id"].clone(),
                e["provider"].clone(),
                e["status"].clone(),
            )
        })
        .collect();
    for (job, provider, status) in [(&first, "gemini", "failed"), (&second, "claude", "expired")] {
        assert_eq!(
            ids.iter().filter(|(j, ..)| j == job).collect::<Vec<_>>(),
            vec![&(
                serde_json::json!(job),
                serde_json::json!(provider),
                serde_json::json!(status)
            )],
            "{ids:?}"
        );
    }
}
