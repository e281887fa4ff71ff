//! The job service proper, as `shared/design/secutools-api.md` specifies it:
//! authentication, job creation with idempotency keys, the status walk,
//! results and cancel. Faults and the admin endpoints live in `faults.rs`.

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::http::{Body, Request, Response};

/// The statuses after which a job no longer changes.
const TERMINAL: [&str; 4] = ["completed", "failed", "cancelled", "expired"];
/// Error text of a job that fails (unless overridden).
pub const DEFAULT_JOB_ERROR: &str = "model crashed (mock)";

/// Service settings fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The only bearer token accepted; `None` accepts any.
    pub api_key: Option<String>,
    /// The statuses successive polls walk through (never empty).
    pub statuses: Vec<String>,
    /// Share (0..1) of jobs that end in `failed`.
    pub fail_rate: f64,
    pub seed: u64,
}

/// An idempotency key is 16-128 characters of `[A-Za-z0-9_-]`.
pub fn valid_idempotency_key(key: &str) -> bool {
    (16..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The status a job shows after `polls` status polls: `queued` before the
/// first one, then the configured sequence one step per poll, the last entry
/// sticking. A failing job shows `failed` wherever the sequence says
/// `completed`.
pub fn walk_status(statuses: &[String], polls: u64, fails: bool) -> String {
    if polls == 0 || statuses.is_empty() {
        return "queued".to_string();
    }
    let idx = usize::try_from(polls - 1)
        .unwrap_or(usize::MAX)
        .min(statuses.len() - 1);
    let s = &statuses[idx];
    if fails && s == "completed" {
        "failed".to_string()
    } else {
        s.clone()
    }
}

pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

fn model_for(provider: &str) -> &'static str {
    match provider {
        "gemini" => "gemini-2.5-pro",
        "claude" => "claude-sonnet-4",
        "gpu" => "llama-3.1-70b",
        _ => "mock-model",
    }
}

/// JSON string literal of `s`.
fn js(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A job id from a URL path segment: `%XX` escapes decoded, anything
/// malformed kept as it is.
fn decode_id(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// Checks `Authorization: Bearer <key>`: the configured key, or any
/// non-empty token when none is configured.
pub fn check_auth(cfg: &Settings, req: &Request) -> Result<(), Response> {
    let token = req.header("authorization").and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    });
    match (&cfg.api_key, token) {
        (Some(key), t) if t != Some(key.as_str()) => Err(Response::error(401, "invalid API key")),
        (None, None) => Err(Response::error(401, "missing API key")),
        _ => Ok(()),
    }
}

pub fn method_not_allowed(allow: &str) -> Response {
    Response::error(405, "method not allowed").with_header("Allow", allow.to_string())
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub key: String,
    pub kind: String,
    pub priority: String,
    pub preferred_ai: Option<String>,
    pub prompt: String,
    pub complexity_hint: Option<String>,
    pub source: Option<String>,
    pub metadata: Value,
    pub polls: u64,
    fails: bool,
    /// A status set by cancel or by an override; wins over the walk.
    pub forced: Option<String>,
    created_at: SystemTime,
    updated_at: SystemTime,
    last_status: String,
}

impl Job {
    pub fn status(&self, statuses: &[String]) -> String {
        match &self.forced {
            Some(s) => s.clone(),
            None => walk_status(statuses, self.polls, self.fails),
        }
    }

    /// Notes the status shown now, moving `updated_at` when it changed.
    pub fn observe(&mut self, status: &str, now: SystemTime) {
        if self.last_status != status {
            self.last_status = status.to_string();
            self.updated_at = now;
        }
    }
}

/// What a POST /api/v1/jobs body asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    kind: String,
    pub priority: String,
    prompt: String,
    pub preferred_ai: Option<String>,
    complexity_hint: Option<String>,
    pub source: Option<String>,
    metadata: Value,
}

fn optional_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field '{field}' must be a string when present")),
    }
}

pub fn parse_job_body(body: &[u8]) -> Result<JobSpec, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("request body must be a JSON object".into());
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("field 'type' is required (non-empty string)".into()),
    };
    let priority = match obj.get("priority") {
        Some(Value::String(s)) if ["low", "normal", "high"].contains(&s.as_str()) => s.clone(),
        _ => return Err("field 'priority' must be one of low, normal, high".into()),
    };
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err("field 'prompt' is required (string)".into()),
    };
    let preferred_ai = match obj.get("preferred_ai") {
        None => None,
        Some(Value::String(s)) if ["gpu", "gemini", "claude"].contains(&s.as_str()) => {
            Some(s.clone())
        }
        Some(_) => {
            return Err(
                "field 'preferred_ai' must be one of gpu, gemini, claude (omit it for auto)".into(),
            );
        }
    };
    let complexity_hint = optional_string(&obj, "complexity_hint")?;
    let source = optional_string(&obj, "source")?;
    let metadata = match obj.get("metadata") {
        None => Value::Null,
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => return Err("field 'metadata' must be an object when present".into()),
    };
    Ok(JobSpec {
        kind,
        priority,
        prompt,
        preferred_ai,
        complexity_hint,
        source,
        metadata,
    })
}

/// Behaviour changed at run time through POST /_mock/override.
#[derive(Debug, Default)]
pub struct Overrides {
    pub next_job_id: Option<String>,
    pub response: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub error: Option<String>,
    pub result_raw: Option<String>,
    pub status_raw: Option<String>,
    pub result_pad_bytes: u64,
    /// status_of entries for jobs not created yet, applied at creation.
    pub pending_status: HashMap<String, String>,
}

/// Every job the service knows, and the overrides that shape its answers.
#[derive(Debug)]
pub struct Jobs {
    pub jobs: Vec<Job>,
    pub index: HashMap<String, usize>,
    by_key: HashMap<String, usize>,
    pub jobs_created: u64,
    counter: u64,
    pub ov: Overrides,
    /// Overrides scoped to one job (`"job": ID` in the override body); they
    /// win over `ov` for that job.
    pub per_job: HashMap<String, Overrides>,
    fail_rng: fastrand::Rng,
}

impl Jobs {
    pub fn new(seed: u64) -> Jobs {
        Jobs {
            jobs: Vec::new(),
            index: HashMap::new(),
            by_key: HashMap::new(),
            jobs_created: 0,
            counter: 0,
            ov: Overrides::default(),
            per_job: HashMap::new(),
            fail_rng: fastrand::Rng::with_seed(seed ^ 0x5EC0_7001),
        }
    }

    /// An override for one job: its own, else the global one.
    fn ov_of<T>(&self, job_id: &str, field: impl Fn(&Overrides) -> Option<T>) -> Option<T> {
        self.per_job
            .get(job_id)
            .and_then(&field)
            .or_else(|| field(&self.ov))
    }

    fn provider_of(&self, job: &Job) -> String {
        self.ov_of(&job.id, |o| o.provider.clone())
            .or_else(|| job.preferred_ai.clone())
            .unwrap_or_else(|| "gemini".to_string())
    }

    fn status_object(&self, job: &Job, status: &str) -> Value {
        let error = if status == "failed" {
            Value::String(
                self.ov_of(&job.id, |o| o.error.clone())
                    .unwrap_or_else(|| DEFAULT_JOB_ERROR.to_string()),
            )
        } else {
            Value::Null
        };
        let provider = if status == "queued" {
            Value::Null
        } else {
            Value::String(self.provider_of(job))
        };
        json!({
            "job_id": job.id,
            "status": status,
            "error": error,
            "provider": provider,
            "created_at": rfc3339(job.created_at),
            "updated_at": rfc3339(job.updated_at),
        })
    }

    fn result_response(&self, job: &Job) -> Response {
        if let Some(raw) = self.ov_of(&job.id, |o| o.result_raw.clone()) {
            return Response::raw(200, raw);
        }
        let provider = self.provider_of(job);
        let model = self
            .ov_of(&job.id, |o| o.model.clone())
            .unwrap_or_else(|| model_for(&provider).to_string());
        let text = self
            .ov_of(&job.id, |o| o.response.clone())
            .unwrap_or_else(|| {
                let task = job
                    .metadata
                    .get("task")
                    .and_then(Value::as_str)
                    .unwrap_or("(no task)");
                let head: String = job.prompt.chars().take(200).collect();
                format!("Mock answer for {task}:\n{head}")
            });
        let pad = self
            .ov_of(&job.id, |o| Some(o.result_pad_bytes).filter(|&p| p > 0))
            .unwrap_or(0);
        let tokens_in = job.prompt.chars().count() as u64 / 4 + 1;
        let tokens_out = (text.chars().count() as u64).saturating_add(pad) / 4 + 1;
        let text_js = js(&text);
        let head = format!(
            "{{\"job_id\":{},\"provider\":{},\"model\":{},\"response\":{}",
            js(&job.id),
            js(&provider),
            js(&model),
            &text_js[..text_js.len() - 1]
        );
        let tail = format!(
            "\",\"cost_cad\":0.0123,\"tokens_in\":{tokens_in},\"tokens_out\":{tokens_out}}}"
        );
        let body = if pad == 0 {
            Body::Bytes(format!("{head}{tail}").into_bytes())
        } else {
            Body::Padded {
                head: head.into_bytes(),
                pad,
                tail: tail.into_bytes(),
            }
        };
        Response {
            status: 200,
            headers: Vec::new(),
            body,
        }
    }

    /// Answers an authenticated request under /api.
    pub fn route(&mut self, cfg: &Settings, req: &Request) -> Response {
        let path = req.path.as_str();
        let method = req.method.as_str();
        if path == "/api/v1/jobs" {
            return if method == "POST" {
                self.create_job(cfg, req)
            } else {
                method_not_allowed("POST")
            };
        }
        let Some(rest) = path.strip_prefix("/api/v1/jobs/") else {
            return Response::error(404, "not found");
        };
        enum Action {
            Status,
            Result,
            Cancel,
        }
        let (raw_id, action) = if let Some(id) = rest.strip_suffix("/result") {
            (id, Action::Result)
        } else if let Some(id) = rest.strip_suffix("/cancel") {
            (id, Action::Cancel)
        } else {
            (rest, Action::Status)
        };
        let id = decode_id(raw_id);
        if id.is_empty() {
            return Response::error(404, "not found");
        }
        match (action, method) {
            (Action::Status, "GET") => self.get_status(cfg, &id),
            (Action::Result, "GET") => self.get_result(cfg, &id),
            (Action::Cancel, "POST") => self.cancel(cfg, &id),
            (Action::Cancel, _) => method_not_allowed("POST"),
            _ => method_not_allowed("GET"),
        }
    }

    fn create_job(&mut self, cfg: &Settings, req: &Request) -> Response {
        let key = match req.header("idempotency-key") {
            None => return Response::error(400, "missing Idempotency-Key header"),
            Some(k) if !valid_idempotency_key(k) => {
                return Response::error(
                    400,
                    "invalid Idempotency-Key: must be 16-128 characters of [A-Za-z0-9_-]",
                );
            }
            Some(k) => k,
        };
        let spec = match parse_job_body(&req.body) {
            Ok(s) => s,
            Err(e) => return Response::error(400, &e),
        };
        if let Some(&i) = self.by_key.get(key) {
            let job = &self.jobs[i];
            let status = job.status(&cfg.statuses);
            return Response::json(200, &json!({ "job_id": job.id, "status": status }));
        }
        self.counter += 1;
        self.jobs_created += 1;
        let id = self
            .ov
            .next_job_id
            .take()
            .unwrap_or_else(|| format!("j-{:06}", self.counter));
        let fails = cfg.fail_rate > 0.0 && self.fail_rng.f64() < cfg.fail_rate;
        let now = SystemTime::now();
        let forced = self.ov.pending_status.remove(&id);
        let job = Job {
            id: id.clone(),
            key: key.to_string(),
            kind: spec.kind,
            priority: spec.priority,
            preferred_ai: spec.preferred_ai,
            prompt: spec.prompt,
            complexity_hint: spec.complexity_hint,
            source: spec.source,
            metadata: spec.metadata,
            polls: 0,
            fails,
            forced,
            created_at: now,
            updated_at: now,
            last_status: "queued".to_string(),
        };
        let i = self.jobs.len();
        self.jobs.push(job);
        self.index.insert(id.clone(), i);
        self.by_key.insert(key.to_string(), i);
        Response::json(201, &json!({ "job_id": id, "status": "queued" }))
    }

    fn get_status(&mut self, cfg: &Settings, id: &str) -> Response {
        let Some(&i) = self.index.get(id) else {
            return Response::error(404, "job not found");
        };
        let job = &mut self.jobs[i];
        job.polls += 1;
        let status = job.status(&cfg.statuses);
        job.observe(&status, SystemTime::now());
        if let Some(raw) = self.ov_of(id, |o| o.status_raw.clone()) {
            return Response::raw(200, raw);
        }
        Response::json(200, &self.status_object(&self.jobs[i], &status))
    }

    fn get_result(&self, cfg: &Settings, id: &str) -> Response {
        let Some(&i) = self.index.get(id) else {
            return Response::error(404, "job not found");
        };
        let job = &self.jobs[i];
        let status = job.status(&cfg.statuses);
        if status != "completed" {
            return Response::error(409, &format!("job is not completed (status: {status})"));
        }
        self.result_response(job)
    }

    fn cancel(&mut self, cfg: &Settings, id: &str) -> Response {
        let Some(&i) = self.index.get(id) else {
            return Response::error(404, "job not found");
        };
        let job = &mut self.jobs[i];
        let status = job.status(&cfg.statuses);
        if is_terminal(&status) {
            return Response::error(409, &format!("job is already {status}"));
        }
        job.forced = Some("cancelled".to_string());
        job.observe("cancelled", SystemTime::now());
        Response::json(200, &self.status_object(&self.jobs[i], "cancelled"))
    }

    /// Forces (or, with `None`, releases) the status of a job; one not
    /// created yet gets it at creation.
    pub fn force_status(&mut self, cfg: &Settings, id: &str, status: Option<String>) {
        if let Some(&i) = self.index.get(id) {
            let job = &mut self.jobs[i];
            job.forced = status;
            let shown = job.status(&cfg.statuses);
            job.observe(&shown, SystemTime::now());
        } else if let Some(s) = status {
            self.ov.pending_status.insert(id.to_string(), s);
        } else {
            self.ov.pending_status.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys() {
        assert!(valid_idempotency_key("abcdefghijklmnop"));
        assert!(valid_idempotency_key(&"a".repeat(128)));
        assert!(valid_idempotency_key("AZaz09_-AZaz09_-"));
        assert!(!valid_idempotency_key("abcdefghijklmno"));
        assert!(!valid_idempotency_key(&"a".repeat(129)));
        assert!(!valid_idempotency_key("abcdefghijklmno."));
        assert!(!valid_idempotency_key("abcdefghijklmno "));
        assert!(!valid_idempotency_key("abcdefghijklmnoé"));
        assert!(!valid_idempotency_key(""));
    }

    #[test]
    fn status_walk() {
        let s: Vec<String> = ["queued", "running", "completed"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        let walk: Vec<String> = (0..6).map(|p| walk_status(&s, p, false)).collect();
        assert_eq!(
            walk,
            [
                "queued",
                "queued",
                "running",
                "completed",
                "completed",
                "completed"
            ]
        );
        assert_eq!(walk_status(&s, 3, true), "failed");
        assert_eq!(walk_status(&s, 99, true), "failed");
        assert_eq!(walk_status(&s, 2, true), "running");
        assert_eq!(walk_status(&s, u64::MAX, false), "completed");
        let one = vec!["completed".to_string()];
        assert_eq!(walk_status(&one, 1, false), "completed");
        let odd = vec!["paused".to_string()];
        assert_eq!(walk_status(&odd, 5, true), "paused");
    }

    #[test]
    fn ids_are_percent_decoded() {
        assert_eq!(decode_id("j-000001"), "j-000001");
        assert_eq!(decode_id("a%2Fb"), "a/b");
        assert_eq!(decode_id("%2e%2E"), "..");
        assert_eq!(decode_id("bad%zz%"), "bad%zz%");
        assert_eq!(decode_id("%4"), "%4");
        assert_eq!(decode_id("%"), "%");
    }

    #[test]
    fn job_body_validation() {
        let body =
            br#"{"type":"analyze","priority":"normal","prompt":"x","metadata":{"task":"t1.md"}}"#;
        let ok = parse_job_body(body).expect("valid");
        assert_eq!(ok.priority, "normal");
        assert_eq!(ok.preferred_ai, None);
        for bad in [
            "",
            "[]",
            "{",
            r#"{"priority":"normal","prompt":"x"}"#,
            r#"{"type":"analyze","priority":"urgent","prompt":"x"}"#,
            r#"{"type":"analyze","priority":"low"}"#,
            r#"{"type":"analyze","priority":"low","prompt":5}"#,
            r#"{"type":"analyze","priority":"low","prompt":"x","preferred_ai":"auto"}"#,
            r#"{"type":"analyze","priority":"low","prompt":"x","preferred_ai":null}"#,
            r#"{"type":"analyze","priority":"low","prompt":"x","metadata":"m"}"#,
            r#"{"type":"analyze","priority":"low","prompt":"x","complexity_hint":1}"#,
        ] {
            assert!(parse_job_body(bad.as_bytes()).is_err(), "{bad}");
        }
        let full = parse_job_body(
            br#"{"type":"analyze","priority":"high","prompt":"x","preferred_ai":"gpu","complexity_hint":"hard","source":"ccl-delegate/0.1.0","extra":1}"#,
        )
        .expect("valid");
        assert_eq!(full.preferred_ai.as_deref(), Some("gpu"));
        assert_eq!(full.source.as_deref(), Some("ccl-delegate/0.1.0"));
    }
}
