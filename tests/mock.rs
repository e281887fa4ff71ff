//! `secutools-mock` as a product: its flags and admin endpoints, spoken to
//! over HTTP as a user trying a crontab against it would.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The result object of a completed job, as text.
#[track_caller]
fn result_text(mock: &Mock, id: &str) -> String {
    let (code, text) = mock.api("GET", &format!("/api/v1/jobs/{id}/result"), "", "");
    assert_eq!(code, 200, "result of {id}: {text}");
    text
}

#[track_caller]
fn result(mock: &Mock, id: &str) -> serde_json::Value {
    serde_json::from_str(&result_text(mock, id)).expect("result is JSON")
}

#[test]
fn provider_outcome_walks_each_providers_jobs_to_its_status() {
    let mock = Mock::start(&[
        "--provider-outcome",
        "gemini=failed",
        "--provider-outcome",
        "gpu=expired",
        "--provider-outcome",
        "claude=completed",
        // The fail rate leaves a provider with an outcome alone.
        "--fail-rate",
        "1",
    ]);
    let gemini = mock.post_job_as("key-gemini-000000001", "a.md", Some("gemini"));
    let gpu = mock.post_job_as("key-gpu-0000000000001", "b.md", Some("gpu"));
    let claude = mock.post_job_as("key-claude-000000001", "c.md", Some("claude"));
    let auto = mock.post_job_as("key-auto-00000000001", "d.md", None);

    let s = mock.poll_until_terminal(&gemini);
    assert_eq!(
        (&s["status"], &s["error"], &s["provider"]),
        (
            &json!("failed"),
            &json!("gemini model overloaded"),
            &json!("gemini")
        )
    );
    let s = mock.poll_until_terminal(&gpu);
    assert_eq!(
        (&s["status"], &s["provider"]),
        (&json!("expired"), &json!("gpu"))
    );
    let s = mock.poll_until_terminal(&claude);
    assert_eq!(
        (&s["status"], &s["error"]),
        (&json!("completed"), &json!(null))
    );
    assert_eq!(result(&mock, &claude)["provider"], "claude");
    assert_eq!(result(&mock, &claude)["model"], "claude-sonnet-4");
    // Auto runs on gemini, so it takes gemini's outcome.
    let s = mock.poll_until_terminal(&auto);
    assert_eq!(
        (&s["status"], &s["provider"]),
        (&json!("failed"), &json!("gemini"))
    );
    // A job that did not complete has no result.
    let (code, _) = mock.api("GET", &format!("/api/v1/jobs/{gpu}/result"), "", "");
    assert_eq!(code, 409);
}

#[test]
fn without_provider_outcomes_the_fail_rate_and_the_default_error_still_apply() {
    let mock = Mock::start(&["--fail-rate", "1", "--statuses", "completed"]);
    let id = mock.post_job_as("key-failing-00000001", "a.md", Some("claude"));
    let s = mock.poll_until_terminal(&id);
    assert_eq!(
        (&s["status"], &s["error"]),
        (&json!("failed"), &json!("model crashed (mock)"))
    );
}

#[test]
fn cost_cad_and_provider_cost_set_the_cost_of_completed_jobs() {
    let plain = Mock::start(&["--statuses", "completed"]);
    let id = plain.post_job_as("key-plain-0000000001", "a.md", Some("gpu"));
    plain.poll_until_terminal(&id);
    assert_eq!(result(&plain, &id)["cost_cad"], json!(0.0123));

    let mock = Mock::start(&[
        "--statuses",
        "completed",
        "--cost-cad",
        "0.5",
        "--provider-cost",
        "claude=2.25",
        "--provider-cost",
        "gpu=0",
    ]);
    let costs: Vec<serde_json::Value> = [Some("gemini"), Some("claude"), Some("gpu"), None]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = mock.post_job_as(&format!("key-cost-{i:012}"), "a.md", *p);
            mock.poll_until_terminal(&id);
            result(&mock, &id)["cost_cad"].clone()
        })
        .collect();
    assert_eq!(costs, [json!(0.5), json!(2.25), json!(0.0), json!(0.5)]);
}

#[test]
fn results_carry_token_counts_that_grow_with_the_prompt_and_can_be_set() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let short = mock.post_job(&"k".repeat(16), "s.md");
    let long_body = json!({
        "type": "analyze", "priority": "low", "prompt": "x".repeat(4000),
        "metadata": {"project": "proj", "task": "l.md"},
    });
    let (code, text) = mock.api(
        "POST",
        "/api/v1/jobs",
        "Idempotency-Key: key-long-prompt-0001\r\n",
        &long_body.to_string(),
    );
    assert_eq!(code, 201, "{text}");
    let long: serde_json::Value = serde_json::from_str(&text).unwrap();
    let long = long["job_id"].as_str().unwrap().to_string();
    for id in [&short, &long] {
        mock.poll_until_terminal(id);
    }
    let (s, l) = (result(&mock, &short), result(&mock, &long));
    let tokens = |v: &serde_json::Value, f: &str| v[f].as_u64().expect("integer tokens");
    assert!(
        tokens(&s, "tokens_in") > 0 && tokens(&s, "tokens_out") > 0,
        "{s}"
    );
    assert!(tokens(&l, "tokens_in") >= 1000, "{l}");
    assert!(tokens(&l, "tokens_in") > tokens(&s, "tokens_in"));

    mock.set(json!({"tokens_in": 7, "tokens_out": 9}));
    let set = result(&mock, &short);
    assert_eq!(
        (&set["tokens_in"], &set["tokens_out"]),
        (&json!(7), &json!(9))
    );
    mock.set(json!({"tokens_in": null, "tokens_out": null}));
    assert_eq!(result(&mock, &short), s);
}

#[test]
fn one_jobs_result_fields_can_be_made_hostile_through_the_override() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let ids: Vec<String> = (0..6)
        .map(|i| mock.post_job(&format!("key-hostile-{i:09}"), &format!("t{i}.md")))
        .collect();
    for id in &ids {
        mock.poll_until_terminal(id);
    }
    mock.set(json!({"job": ids[0], "cost_cad": "0.5"}));
    mock.set(json!({"job": ids[1], "cost_cad": -3, "tokens_in": "many"}));
    mock.set(json!({"job": ids[2], "cost_cad": 1e308}));
    mock.set(
        json!({"job": ids[3], "result_fields_raw": {"cost_cad": "1e400", "tokens_out": "-1e999"}}),
    );
    mock.set(json!({"job": ids[4], "omit_fields": ["cost_cad", "tokens_in", "tokens_out"]}));

    assert_eq!(result(&mock, &ids[0])["cost_cad"], json!("0.5"));
    let r = result(&mock, &ids[1]);
    assert_eq!(
        (&r["cost_cad"], &r["tokens_in"]),
        (&json!(-3), &json!("many"))
    );
    assert_eq!(result(&mock, &ids[2])["cost_cad"], json!(1e308));
    let raw = result_text(&mock, &ids[3]);
    assert!(
        raw.contains(r#""cost_cad":1e400"#) && raw.contains(r#""tokens_out":-1e999"#),
        "{raw}"
    );
    let r = result(&mock, &ids[4]);
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["job_id", "provider", "model", "response"]);
    // The other job keeps the ordinary fields.
    let r = result(&mock, &ids[5]);
    assert_eq!(
        (&r["cost_cad"], r["tokens_in"].is_u64()),
        (&json!(0.0123), true)
    );
    // A bad override changes nothing and says why.
    let answer = mock.admin("POST", "/_mock/override", r#"{"omit_fields":"cost_cad"}"#);
    assert_eq!(answer["error"], "invalid value for override 'omit_fields'");
    // null clears a job's override.
    mock.set(json!({"job": ids[4], "omit_fields": null}));
    assert_eq!(result(&mock, &ids[4])["cost_cad"], json!(0.0123));
}

#[test]
fn a_body_over_32_mib_is_refused_with_413_on_its_headers_and_the_connection_closed() {
    let mock = Mock::start(&[]);
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut s = TcpStream::connect(&mock.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t0 = Instant::now();
        // Headers only: the answer must come without a byte of the body.
        write!(
            s,
            "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Idempotency-Key: key-too-large-000001\r\nContent-Type: application/json\r\n\
             {expect}Content-Length: {}\r\n\r\n",
            32 * 1024 * 1024 + 1
        )
        .unwrap();
        let mut resp = String::new();
        // read_to_string returns only once the mock has closed.
        s.read_to_string(&mut resp)
            .expect("the mock closes the connection");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(status_code(&resp), 413, "{resp}");
        assert!(!resp.contains("100 Continue"), "{resp}");
        assert!(resp.ends_with(r#"{"error":"prompt too large"}"#), "{resp}");
    }
    assert_eq!(mock.jobs_created(), 0);
}

#[test]
fn stats_count_the_jobs_created_per_provider() {
    let mock = Mock::start(&[]);
    mock.post_job_as("key-stats-0000000001", "a.md", Some("gemini"));
    mock.post_job_as("key-stats-0000000002", "b.md", Some("claude"));
    mock.post_job_as("key-stats-0000000003", "c.md", None);
    mock.post_job_as("key-stats-0000000004", "d.md", Some("gpu"));
    // The same key again creates nothing.
    mock.post_job_as("key-stats-0000000002", "b.md", Some("claude"));
    let stats = mock.stats();
    assert_eq!(
        stats["jobs_by_provider"],
        json!({"claude": 1, "gemini": 2, "gpu": 1})
    );
    let providers: Vec<&str> = mock_jobs_providers(&stats);
    assert_eq!(providers, ["gemini", "claude", "gemini", "gpu"]);
    mock.admin("POST", "/_mock/reset", "");
    assert_eq!(mock.stats()["jobs_by_provider"], json!({}));
}

fn mock_jobs_providers(stats: &serde_json::Value) -> Vec<&str> {
    stats["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["provider"].as_str().unwrap())
        .collect()
}

#[test]
fn bad_provider_flags_are_refused_at_start_naming_the_value() {
    for (flag, value, says) in [
        (
            "--provider-outcome",
            "gemini=running",
            "not a terminal status",
        ),
        (
            "--provider-outcome",
            "openai=failed",
            "unknown provider 'openai'",
        ),
        ("--provider-outcome", "gemini", "not PROVIDER=VALUE"),
        ("--provider-cost", "claude=-1", "not a cost"),
        ("--cost-cad", "lots", "not a cost"),
    ] {
        let out = Command::new(mock_bin())
            .args(["--port", "0", flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && err.contains(flag),
            "{flag} {value}: {err}"
        );
    }
}

#[test]
fn help_documents_every_new_flag_and_the_override_fields() {
    let out = Command::new(mock_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--provider-outcome",
        "--provider-cost",
        "--cost-cad",
        "runs on gemini",
        "prompt too large",
        "omit_fields",
        "result_fields_raw",
        "jobs_by_provider",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
}
