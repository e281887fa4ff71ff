//! `secutools-mock`: a stand-in for the secutools job service that serves the
//! whole contract of `shared/design/secutools-api.md` on a loopback port, so
//! that the tests, the benchmarks, the README's first command and users without
//! a secutools account can drive `ccl-delegate` end to end. This file holds
//! the flags, startup and the dispatch of a request to its concern: the HTTP
//! layer (`http.rs`), the job service (`service.rs`), and faults and the
//! admin endpoints under `/_mock/` (`faults.rs`).

mod faults;
mod http;
mod service;

use std::io::{self, Write};
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use clap::Parser;

use crate::faults::{Admin, Faults};
use crate::http::{Outcome, Request, Response};
use crate::service::Jobs;

/// The admin endpoints, for `--help`.
const ADMIN_HELP: &str = "\
A request body over 32 MiB is answered 413 {\"error\":\"prompt too large\"} on its headers, \
and the connection closed unread.

Admin endpoints (no key needed):
  GET  /_mock/stats     jobs (with provider, polls, prompt...), jobs_created, \
jobs_by_provider, requests, faults_served, posts_by_key
  POST /_mock/faults    {\"next\":[\"503\",\"429-date\",\"drop\",\"slow:2s\",...], \
\"path\":SUBSTRING, \"method\":M}: one-shot faults for the next matching /api requests
  POST /_mock/override  {FIELD: VALUE, ...} for every job, or for one with \"job\":ID; \
null clears. Fields: next_job_id, response, model, provider, error, result_raw, \
status_raw, result_pad_bytes, cost_cad, tokens_in, tokens_out (any JSON value), \
result_fields_raw ({FIELD: RAW_JSON_TEXT}), omit_fields ([FIELD...]), status_of ({ID: STATUS})
  POST /_mock/reset     forget every job, fault and override";

#[derive(Parser, Debug)]
#[command(
    name = "secutools-mock",
    version,
    about = "Mock secutools job service for ccl-delegate (loopback only, for tests and trials)",
    after_help = ADMIN_HELP
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Require `Authorization: Bearer KEY` on /api requests (also read from
    /// SECUTOOLS_MOCK_API_KEY). Without it any bearer token is accepted.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,

    /// Comma-separated statuses that successive status polls of a job return;
    /// the last one sticks.
    #[arg(long, default_value = "queued,running,completed", value_parser = parse_statuses)]
    statuses: StatusList,

    /// Share (0..1) of jobs that end in `failed` instead of `completed`
    /// (jobs of a provider given --provider-outcome excepted).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_rate: f64,

    /// The terminal status (completed, failed, cancelled, expired) the jobs
    /// of PROVIDER (gpu, gemini, claude) end in, e.g. `gemini=failed` (error
    /// "gemini model overloaded"); repeatable. A job without preferred_ai
    /// (auto) runs on gemini.
    #[arg(long, value_name = "PROVIDER=STATUS", value_parser = service::parse_provider_outcome)]
    provider_outcome: Vec<(String, String)>,

    /// `cost_cad` reported by every completed job.
    #[arg(long, value_name = "N", default_value_t = service::DEFAULT_COST_CAD, value_parser = service::parse_cost)]
    cost_cad: f64,

    /// `cost_cad` reported by the completed jobs of PROVIDER, e.g.
    /// `claude=0.25`; repeatable; wins over --cost-cad.
    #[arg(long, value_name = "PROVIDER=N", value_parser = service::parse_provider_cost)]
    provider_cost: Vec<(String, f64)>,

    /// Seed of the pseudo-random choices (failing jobs, random faults).
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Delay before every /api answer (humantime, e.g. 20ms).
    #[arg(long, default_value = "0", value_parser = humantime::parse_duration)]
    latency: Duration,

    /// Share (0..1) of /api requests answered 503 {"error":"mock overload"}.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    error_rate: f64,

    /// Share (0..1) of /api requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    throttle_rate: f64,

    /// Share (0..1) of /api requests whose connection is closed unanswered.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    drop_rate: f64,

    /// Seconds sent in Retry-After with 429 answers.
    #[arg(long, default_value_t = 1, value_name = "SECONDS")]
    retry_after: u64,

    /// Log one line per request to stderr.
    #[arg(long)]
    log: bool,
}

/// The parsed `--statuses` list (never empty).
#[derive(Debug, Clone, PartialEq)]
struct StatusList(Vec<String>);

fn parse_statuses(s: &str) -> Result<StatusList, String> {
    let list: Vec<String> = s.split(',').map(|p| p.trim().to_string()).collect();
    if list.iter().any(String::is_empty) {
        return Err("statuses must be a comma-separated list of non-empty names".into());
    }
    Ok(StatusList(list))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a number between 0 and 1")),
    }
}

/// Settings fixed at start, by concern.
#[derive(Debug, Clone)]
struct Config {
    service: service::Settings,
    faults: faults::Settings,
    log: bool,
}

impl Config {
    fn from_args(args: &Args, env_key: Option<String>) -> Result<Config, String> {
        let sum = args.error_rate + args.throttle_rate + args.drop_rate;
        if sum > 1.0 + 1e-9 {
            return Err("--error-rate + --throttle-rate + --drop-rate must be at most 1".into());
        }
        let api_key = args.api_key.clone().or(env_key).filter(|k| !k.is_empty());
        Ok(Config {
            service: service::Settings {
                api_key,
                statuses: args.statuses.0.clone(),
                fail_rate: args.fail_rate,
                seed: args.seed,
                cost_cad: args.cost_cad,
                provider_outcome: args.provider_outcome.iter().cloned().collect(),
                provider_cost: args.provider_cost.iter().cloned().collect(),
            },
            faults: faults::Settings {
                latency: args.latency,
                error_rate: args.error_rate,
                throttle_rate: args.throttle_rate,
                drop_rate: args.drop_rate,
                retry_after: args.retry_after,
                seed: args.seed,
            },
            log: args.log,
        })
    }
}

/// Locks a mutex, going on with the data of a thread that panicked holding
/// it (each answer leaves the state whole between steps).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Server {
    cfg: Config,
    faults: Mutex<Faults>,
    jobs: Mutex<Jobs>,
}

impl Server {
    fn new(cfg: Config) -> Server {
        Server {
            faults: Mutex::new(Faults::new(cfg.faults.seed)),
            jobs: Mutex::new(Jobs::new(cfg.service.seed)),
            cfg,
        }
    }

    fn handle(&self, req: &Request) -> Outcome {
        let path = req.path.as_str();
        if path == "/_mock" || path.starts_with("/_mock/") {
            let admin = Admin {
                faults: &self.faults,
                jobs: &self.jobs,
                service: &self.cfg.service,
                seed: self.cfg.faults.seed,
            };
            Outcome::Respond(admin.handle(req))
        } else if path == "/api" || path.starts_with("/api/") {
            if let Some(outcome) = faults::gate(&self.cfg.faults, &self.faults, req) {
                return outcome;
            }
            if let Err(resp) = service::check_auth(&self.cfg.service, req) {
                return Outcome::Respond(resp);
            }
            Outcome::Respond(lock(&self.jobs).route(&self.cfg.service, req))
        } else {
            Outcome::Respond(Response::error(404, "not found"))
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env_key = std::env::var("SECUTOOLS_MOCK_API_KEY").ok();
    let cfg = match Config::from_args(&args, env_key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("secutools-mock: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind((args.host.as_str(), args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "secutools-mock: cannot listen on {}:{}: {e}",
                args.host, args.port
            );
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("secutools-mock: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "listening on http://{addr}");
        let _ = stdout.flush();
    }
    let log = cfg.log;
    let server = Arc::new(Server::new(cfg));
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let server = Arc::clone(&server);
                let spawned = thread::Builder::new()
                    .name("secutools-mock-conn".into())
                    .spawn(move || http::serve_connection(stream, log, |r| server.handle(r)));
                if spawned.is_err() {
                    // The stream went down with the closure; back off a little.
                    thread::sleep(Duration::from_millis(10));
                }
            }
            // Out of descriptors and the like: back off instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Body;
    use crate::service::DEFAULT_JOB_ERROR;
    use serde_json::{Value, json};

    fn cfg() -> Config {
        let args = Args::try_parse_from(["secutools-mock"]).expect("defaults");
        Config::from_args(&args, None).expect("valid")
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut h: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        if !h
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            h.push(("Authorization".into(), "Bearer test".into()));
        }
        Request {
            method: method.into(),
            path: path.into(),
            version: 1,
            headers: h,
            body: body.as_bytes().to_vec(),
        }
    }

    const KEY: &str = "key-0123456789abcdef";
    const BODY: &str = r#"{"type":"analyze","priority":"normal","prompt":"Task: t1.md\n\nhello","metadata":{"project":"p","task":"t1.md"}}"#;

    fn respond(server: &Server, r: &Request) -> Response {
        match server.handle(r) {
            Outcome::Respond(resp) => resp,
            Outcome::Drop => panic!("unexpected drop"),
        }
    }

    fn create(server: &Server, key: &str) -> Response {
        respond(
            server,
            &req("POST", "/api/v1/jobs", &[("Idempotency-Key", key)], BODY),
        )
    }

    #[test]
    fn status_lists_and_rates() {
        assert_eq!(
            parse_statuses(" queued, running ,completed"),
            Ok(StatusList(vec![
                "queued".into(),
                "running".into(),
                "completed".into()
            ]))
        );
        assert!(parse_statuses("").is_err());
        assert!(parse_statuses("queued,,completed").is_err());
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("x").is_err());
    }

    #[test]
    fn args_parse() {
        let a = Args::try_parse_from([
            "secutools-mock",
            "--port",
            "0",
            "--latency",
            "20ms",
            "--statuses",
            "completed",
            "--fail-rate",
            "0.5",
            "--error-rate",
            "0.1",
            "--throttle-rate",
            "0.1",
            "--drop-rate",
            "0.1",
            "--retry-after",
            "3",
            "--seed",
            "7",
            "--log",
        ])
        .expect("parses");
        let c = Config::from_args(&a, Some("envkey".into())).expect("valid");
        assert_eq!(c.faults.latency, Duration::from_millis(20));
        assert_eq!(c.service.statuses, vec!["completed".to_string()]);
        assert_eq!(c.service.api_key.as_deref(), Some("envkey"));
        assert_eq!(c.faults.retry_after, 3);
        let d = Args::try_parse_from(["secutools-mock"]).expect("defaults");
        assert_eq!(d.host, "127.0.0.1");
        assert_eq!(d.latency, Duration::ZERO);
        assert_eq!(
            Config::from_args(&d, Some(String::new()))
                .unwrap()
                .service
                .api_key,
            None
        );
        let over = Args::try_parse_from([
            "secutools-mock",
            "--error-rate",
            "0.6",
            "--drop-rate",
            "0.6",
        ])
        .expect("parses");
        assert!(Config::from_args(&over, None).is_err());
        assert!(Args::try_parse_from(["secutools-mock", "--fail-rate", "2"]).is_err());
        assert!(Args::try_parse_from(["secutools-mock", "--latency", "fast"]).is_err());
    }

    #[test]
    fn lifecycle_and_idempotency() {
        let server = Server::new(cfg());
        let r = create(&server, KEY);
        assert_eq!(r.status, 201);
        assert_eq!(
            r.body_json(),
            json!({"job_id": "j-000001", "status": "queued"})
        );
        let again = create(&server, KEY);
        assert_eq!(again.status, 200);
        assert_eq!(again.body_json()["job_id"], "j-000001");
        let get = |p: &str| respond(&server, &req("GET", p, &[], ""));
        assert_eq!(get("/api/v1/jobs/j-000001/result").status, 409);
        let seen: Vec<Value> = (0..4)
            .map(|_| get("/api/v1/jobs/j-000001").body_json()["status"].clone())
            .collect();
        assert_eq!(seen, ["queued", "running", "completed", "completed"]);
        let res = get("/api/v1/jobs/j-000001/result");
        assert_eq!(res.status, 200);
        let v = res.body_json();
        assert_eq!(v["provider"], "gemini");
        assert_eq!(v["model"], "gemini-2.5-pro");
        assert_eq!(
            v["response"],
            "Mock answer for t1.md:\nTask: t1.md\n\nhello"
        );
        assert_eq!(v["cost_cad"], 0.0123);
        assert_eq!(get("/api/v1/jobs/nope").status, 404);
        assert_eq!(get("/api/v1/jobs/nope/result").status, 404);
        let cancel = |id: &str| {
            respond(
                &server,
                &req("POST", &format!("/api/v1/jobs/{id}/cancel"), &[], ""),
            )
        };
        assert_eq!(cancel("j-000001").status, 409);
        assert_eq!(cancel("nope").status, 404);
        assert_eq!(create(&server, "another-key-0000001").status, 201);
        let c = cancel("j-000002");
        assert_eq!(c.status, 200);
        assert_eq!(c.body_json()["status"], "cancelled");
        assert_eq!(cancel("j-000002").status, 409);
        let stats = respond(&server, &req("GET", "/_mock/stats", &[], "")).body_json();
        assert_eq!(stats["jobs_created"], 2);
        assert_eq!(stats["posts_by_key"][KEY], 2);
        assert_eq!(stats["jobs"][0]["polls"], 4);
        assert_eq!(stats["jobs"][1]["status"], "cancelled");
    }

    #[test]
    fn bad_requests_and_auth() {
        let mut c = cfg();
        c.service.api_key = Some("sekrit".into());
        let server = Server::new(c);
        let r = respond(&server, &req("GET", "/api/v1/jobs/j-1", &[], ""));
        assert_eq!(r.status, 401);
        assert_eq!(r.body_json(), json!({"error": "invalid API key"}));
        let mut bare = req("GET", "/api/v1/jobs/j-1", &[], "");
        bare.headers.clear();
        assert_eq!(
            respond(&server, &bare).body_json()["error"],
            "invalid API key"
        );
        let open = Server::new(cfg());
        assert_eq!(
            respond(&open, &bare).body_json()["error"],
            "missing API key"
        );
        let any = req(
            "GET",
            "/api/v1/jobs/j-1",
            &[("Authorization", "bearer whatever")],
            "",
        );
        assert_eq!(respond(&open, &any).status, 404);
        let auth = [
            ("Authorization", "Bearer sekrit"),
            ("Idempotency-Key", "short"),
        ];
        let r = respond(&server, &req("POST", "/api/v1/jobs", &auth, BODY));
        assert_eq!(r.status, 400);
        let auth = [("Authorization", "Bearer sekrit"), ("Idempotency-Key", KEY)];
        let r = respond(&server, &req("POST", "/api/v1/jobs", &auth, "{}"));
        assert_eq!(r.status, 400);
        let r = respond(&server, &req("POST", "/api/v1/jobs", &auth, BODY));
        assert_eq!(r.status, 201);
        let open = Server::new(cfg());
        let r = respond(&open, &req("GET", "/api/v1/jobs", &[], ""));
        assert_eq!(r.status, 405);
    }

    #[test]
    fn failing_jobs_are_seeded() {
        let mut c = cfg();
        c.service.fail_rate = 0.5;
        c.service.statuses = vec!["completed".into()];
        let outcomes = |seed: u64| {
            let mut c = c.clone();
            c.service.seed = seed;
            c.faults.seed = seed;
            let server = Server::new(c);
            (0..20)
                .map(|i| {
                    let key = format!("key-{i:016}");
                    let id = create(&server, &key).body_json()["job_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let s = respond(&server, &req("GET", &format!("/api/v1/jobs/{id}"), &[], ""));
                    s.body_json()["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect::<Vec<_>>()
        };
        let a = outcomes(1);
        assert_eq!(a, outcomes(1));
        assert!(a.iter().any(|s| s == "failed"));
        assert!(a.iter().any(|s| s == "completed"));
        let mut all = c.clone();
        all.service.fail_rate = 1.0;
        let server = Server::new(all);
        create(&server, KEY);
        let s = respond(&server, &req("GET", "/api/v1/jobs/j-000001", &[], "")).body_json();
        assert_eq!(s["error"], DEFAULT_JOB_ERROR);
        let r = respond(
            &server,
            &req("GET", "/api/v1/jobs/j-000001/result", &[], ""),
        );
        assert_eq!(r.status, 409);
    }

    #[test]
    fn queued_faults() {
        let server = Server::new(cfg());
        let admin = |path: &str, body: &str| respond(&server, &req("POST", path, &[], body));
        let r = admin(
            "/_mock/faults",
            r#"{"next":["503","429-date","404","drop"],"method":"POST"}"#,
        );
        assert_eq!(r.status, 200);
        assert_eq!(admin("/_mock/faults", r#"{"next":["boom"]}"#).status, 400);
        // A GET does not match the POST-only faults.
        assert_eq!(
            respond(&server, &req("GET", "/api/v1/jobs/x", &[], "")).status,
            404
        );
        let r = create(&server, KEY);
        assert_eq!(r.status, 503);
        assert_eq!(r.body_json()["error"], "mock overload");
        let r = create(&server, KEY);
        assert_eq!(r.status, 429);
        assert!(
            r.headers
                .iter()
                .any(|(n, v)| *n == "Retry-After" && v.ends_with("GMT"))
        );
        assert_eq!(create(&server, KEY).status, 404);
        let post = req("POST", "/api/v1/jobs", &[("Idempotency-Key", KEY)], BODY);
        assert!(matches!(server.handle(&post), Outcome::Drop));
        assert_eq!(create(&server, KEY).status, 201);
        let stats = respond(&server, &req("GET", "/_mock/stats", &[], "")).body_json();
        assert_eq!(stats["jobs_created"], 1);
        assert_eq!(stats["posts_by_key"][KEY], 5);
        assert_eq!(stats["faults_served"], 4);
        admin("/_mock/faults", r#"{"next":["500"],"path":"/result"}"#);
        let get = |p: &str| respond(&server, &req("GET", p, &[], ""));
        assert_eq!(get("/api/v1/jobs/j-000001").status, 200);
        assert_eq!(get("/api/v1/jobs/j-000001/result").status, 500);
        assert_eq!(admin("/_mock/reset", "").status, 200);
        let stats = get("/_mock/stats").body_json();
        assert_eq!(stats["jobs_created"], 0);
        assert_eq!(stats["requests"], 0);
    }

    #[test]
    fn random_faults_follow_rates() {
        let mut c = cfg();
        c.faults.error_rate = 1.0;
        let server = Server::new(c);
        assert_eq!(create(&server, KEY).status, 503);
        let mut c = cfg();
        c.faults.drop_rate = 1.0;
        let server = Server::new(c);
        let post = req("POST", "/api/v1/jobs", &[("Idempotency-Key", KEY)], BODY);
        assert!(matches!(server.handle(&post), Outcome::Drop));
        let mut c = cfg();
        c.faults.throttle_rate = 1.0;
        c.faults.retry_after = 7;
        let server = Server::new(c);
        let r = create(&server, KEY);
        assert_eq!(r.status, 429);
        assert!(r.headers.contains(&("Retry-After", "7".to_string())));
        let stats = respond(&server, &req("GET", "/_mock/stats", &[], "")).body_json();
        assert_eq!(stats["jobs_created"], 0);
        // The same seed gives the same fault sequence.
        let sequence = |seed: u64| {
            let mut c = cfg();
            c.faults.error_rate = 0.5;
            c.faults.seed = seed;
            let server = Server::new(c);
            (0..32)
                .map(|_| respond(&server, &req("GET", "/api/v1/jobs/x", &[], "")).status)
                .collect::<Vec<_>>()
        };
        let a = sequence(3);
        assert_eq!(a, sequence(3));
        assert!(a.contains(&503) && a.contains(&404));
    }

    #[test]
    fn overrides() {
        let mut c = cfg();
        c.service.statuses = vec!["completed".into()];
        let server = Server::new(c);
        let admin = |body: &str| respond(&server, &req("POST", "/_mock/override", &[], body));
        assert_eq!(admin(r#"{"nonsense":1}"#).status, 400);
        assert_eq!(admin(r#"{"result_pad_bytes":-1}"#).status, 400);
        assert_eq!(
            admin(r#"{"next_job_id":"../x","status_of":{"a/b":"paused"}}"#).status,
            200
        );
        assert_eq!(create(&server, KEY).body_json()["job_id"], "../x");
        admin(r#"{"next_job_id":"a/b"}"#);
        create(&server, "key-bbbbbbbbbbbbbbbb");
        let get = |p: &str| respond(&server, &req("GET", p, &[], ""));
        assert_eq!(get("/api/v1/jobs/a/b").body_json()["status"], "paused");
        assert_eq!(get("/api/v1/jobs/a%2Fb/result").status, 409);
        admin(r#"{"status_of":{"a/b":null}}"#);
        assert_eq!(get("/api/v1/jobs/a/b").body_json()["status"], "completed");
        admin(r#"{"response":"R","model":"m","provider":"claude","result_pad_bytes":10}"#);
        let r = get("/api/v1/jobs/a/b/result");
        assert!(matches!(r.body, Body::Padded { .. }));
        let v = r.body_json();
        assert_eq!(v["response"], "Rxxxxxxxxxx");
        assert_eq!(v["model"], "m");
        assert_eq!(v["provider"], "claude");
        admin(r#"{"result_raw":"{not json","status_raw":"<html>"}"#);
        assert_eq!(get("/api/v1/jobs/a/b/result").body_bytes(), b"{not json");
        assert_eq!(get("/api/v1/jobs/a/b").body_bytes(), b"<html>");
        admin(r#"{"status_raw":null,"error":"boom","status_of":{"a/b":"failed"}}"#);
        assert_eq!(get("/api/v1/jobs/a/b").body_json()["error"], "boom");
    }

    #[test]
    fn overrides_scoped_to_one_job() {
        let mut c = cfg();
        c.service.statuses = vec!["completed".into()];
        let server = Server::new(c);
        let admin = |body: &str| respond(&server, &req("POST", "/_mock/override", &[], body));
        let a = create(&server, KEY).body_json()["job_id"]
            .as_str()
            .unwrap()
            .to_string();
        let b = create(&server, "key-bbbbbbbbbbbbbbbb").body_json()["job_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(admin(r#"{"job":"x","next_job_id":"y"}"#).status, 400);
        assert_eq!(admin(r#"{"job":"x","status_of":{}}"#).status, 400);
        assert_eq!(admin(r#"{"job":7}"#).status, 400);
        let scoped = json!({"job": a, "status_raw": "{not json", "result_raw": "<html>",
            "model": "m-a", "result_pad_bytes": 3});
        assert_eq!(admin(&scoped.to_string()).status, 200);
        admin(r#"{"model":"m-all"}"#);
        let get = |p: &str| respond(&server, &req("GET", p, &[], ""));
        assert_eq!(get(&format!("/api/v1/jobs/{a}")).body_bytes(), b"{not json");
        assert_eq!(
            get(&format!("/api/v1/jobs/{a}/result")).body_bytes(),
            b"<html>"
        );
        assert_eq!(
            get(&format!("/api/v1/jobs/{b}")).body_json()["status"],
            "completed"
        );
        let r = get(&format!("/api/v1/jobs/{b}/result"));
        assert!(matches!(r.body, Body::Bytes(_)));
        assert_eq!(r.body_json()["model"], "m-all");
        admin(&json!({"job": a, "status_raw": null, "result_raw": null}).to_string());
        let r = get(&format!("/api/v1/jobs/{a}/result"));
        assert!(matches!(r.body, Body::Padded { pad: 3, .. }));
        assert_eq!(r.body_json()["model"], "m-a");
    }
}
