//! The job service proper, as `shared/design/secutools-api.md` specifies it:
//! authentication, job creation with idempotency keys, the status walk,
//! results and cancel. Faults and the admin endpoints live in `faults.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::http::{Body, Request, Response};

/// The statuses after which a job no longer changes.
const TERMINAL: [&str; 4] = ["completed", "failed", "cancelled", "expired"];
/// Error text of a job that fails by `--fail-rate` (unless overridden).
pub const DEFAULT_JOB_ERROR: &str = "model crashed (mock)";
/// The providers a job may ask for.
pub const PROVIDERS: [&str; 3] = ["gpu", "gemini", "claude"];
/// The provider of a job that names none (auto).
pub const AUTO_PROVIDER: &str = "gemini";
/// `cost_cad` of every completed job unless set otherwise.
pub const DEFAULT_COST_CAD: f64 = 0.0123;

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
    /// `cost_cad` of a completed job whose provider has no cost of its own.
    pub cost_cad: f64,
    /// The terminal status a provider's jobs end in (instead of `completed`).
    pub provider_outcome: BTreeMap<String, String>,
    /// `cost_cad` of a provider's completed jobs.
    pub provider_cost: BTreeMap<String, f64>,
}

/// Parses `PROVIDER=STATUS` with a terminal status (`--provider-outcome`).
pub fn parse_provider_outcome(s: &str) -> Result<(String, String), String> {
    let (provider, status) = split_provider(s)?;
    if !is_terminal(status) {
        return Err(format!(
            "'{status}' is not a terminal status (expected one of {})",
            TERMINAL.join(", ")
        ));
    }
    Ok((provider.to_string(), status.to_string()))
}

/// Parses `PROVIDER=N`, a cost in CAD (`--provider-cost`).
pub fn parse_provider_cost(s: &str) -> Result<(String, f64), String> {
    let (provider, n) = split_provider(s)?;
    Ok((provider.to_string(), parse_cost(n)?))
}

/// Parses a cost in CAD: a finite number, not negative.
pub fn parse_cost(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a cost (a number, 0 or more)")),
    }
}

fn split_provider(s: &str) -> Result<(&str, &str), String> {
    let (provider, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not PROVIDER=VALUE"))?;
    let provider = provider.trim();
    if !PROVIDERS.contains(&provider) {
        return Err(format!(
            "unknown provider '{provider}' (expected one of {})",
            PROVIDERS.join(", ")
        ));
    }
    Ok((provider, value.trim()))
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
/// sticking, with the job's own `end` (`failed` for a failing job, its
/// provider's outcome) wherever the sequence says `completed`.
pub fn walk_status(statuses: &[String], polls: u64, end: &str) -> String {
    if polls == 0 || statuses.is_empty() {
        return "queued".to_string();
    }
    let idx = usize::try_from(polls - 1)
        .unwrap_or(usize::MAX)
        .min(statuses.len() - 1);
    let s = &statuses[idx];
    if s == "completed" {
        end.to_string()
    } else {
        s.clone()
    }
}

/// How a new job ends, and the error text a `failed` end shows: its
/// provider's outcome when one is set, else `failed` for a job the fail
/// rate picked, else `completed`.
pub fn job_end(cfg: &Settings, provider: &str, fails: bool) -> (String, String) {
    match cfg.provider_outcome.get(provider) {
        Some(status) => (status.clone(), format!("{provider} model overloaded")),
        None if fails => ("failed".to_string(), DEFAULT_JOB_ERROR.to_string()),
        None => ("completed".to_string(), DEFAULT_JOB_ERROR.to_string()),
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

/// A result object of these fields (name, raw JSON text), with `pad` bytes
/// of `x` streamed at the end of the `response` string.
fn result_body(fields: &[(String, String)], pad: u64) -> Response {
    let mut head = String::from("{");
    let mut tail = String::new();
    let mut padded = false;
    for (i, (name, value)) in fields.iter().enumerate() {
        let out = if padded { &mut tail } else { &mut head };
        if i > 0 {
            out.push(',');
        }
        out.push_str(&js(name));
        out.push(':');
        // The padding goes inside the response string, before its quote.
        if pad > 0 && !padded && name == "response" && value.ends_with('"') {
            out.push_str(&value[..value.len() - 1]);
            tail.push('"');
            padded = true;
        } else {
            out.push_str(value);
        }
    }
    if padded {
        tail.push('}');
    } else {
        head.push('}');
    }
    let body = if padded {
        Body::Padded {
            head: head.into_bytes(),
            pad,
            tail: tail.into_bytes(),
        }
    } else {
        Body::Bytes(head.into_bytes())
    };
    Response {
        status: 200,
        headers: Vec::new(),
        body,
    }
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
    /// `preferred_ai`, or the provider auto picked.
    pub provider: String,
    pub polls: u64,
    /// The status shown where the walk says `completed`.
    end: String,
    /// The error text shown when the job has failed.
    error: String,
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
            None => walk_status(statuses, self.polls, &self.end),
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
    /// Values of the result's `cost_cad`, `tokens_in` and `tokens_out`, sent
    /// as they are (a string, a negative number, ...).
    pub cost_cad: Option<Value>,
    pub tokens_in: Option<Value>,
    pub tokens_out: Option<Value>,
    /// Result fields sent as this raw text (for what JSON numbers cannot
    /// hold, such as `1e400`), replacing or adding the field.
    pub result_fields_raw: BTreeMap<String, String>,
    /// Result fields left out.
    pub omit_fields: Option<Vec<String>>,
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
    /// Jobs created, by provider.
    pub by_provider: BTreeMap<String, u64>,
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
            by_provider: BTreeMap::new(),
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
            .unwrap_or_else(|| job.provider.clone())
    }

    fn status_object(&self, job: &Job, status: &str) -> Value {
        let error = if status == "failed" {
            Value::String(
                self.ov_of(&job.id, |o| o.error.clone())
                    .unwrap_or_else(|| job.error.clone()),
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

    fn result_response(&self, cfg: &Settings, job: &Job) -> Response {
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
        let cost = cfg
            .provider_cost
            .get(&job.provider)
            .copied()
            .unwrap_or(cfg.cost_cad);
        let number = |field: fn(&Overrides) -> &Option<Value>, default: Value| {
            self.ov_of(&job.id, |o| field(o).clone())
                .unwrap_or(default)
                .to_string()
        };
        let tokens_in = job.prompt.chars().count() as u64 / 4 + 1;
        let tokens_out = (text.chars().count() as u64).saturating_add(pad) / 4 + 1;
        let mut fields: Vec<(String, String)> = vec![
            ("job_id".into(), js(&job.id)),
            ("provider".into(), js(&provider)),
            ("model".into(), js(&model)),
            ("response".into(), js(&text)),
            ("cost_cad".into(), number(|o| &o.cost_cad, json!(cost))),
            (
                "tokens_in".into(),
                number(|o| &o.tokens_in, json!(tokens_in)),
            ),
            (
                "tokens_out".into(),
                number(|o| &o.tokens_out, json!(tokens_out)),
            ),
        ];
        let mut raw = self.ov.result_fields_raw.clone();
        if let Some(own) = self.per_job.get(&job.id) {
            raw.extend(own.result_fields_raw.clone());
        }
        for (name, text) in raw {
            match fields.iter_mut().find(|(n, _)| *n == name) {
                Some(f) => f.1 = text,
                None => fields.push((name, text)),
            }
        }
        let omit = self
            .ov_of(&job.id, |o| o.omit_fields.clone())
            .unwrap_or_default();
        fields.retain(|(n, _)| !omit.contains(n));
        result_body(&fields, pad)
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
        let provider = spec
            .preferred_ai
            .clone()
            .unwrap_or_else(|| AUTO_PROVIDER.to_string());
        // Only a job whose provider has no outcome of its own draws.
        let fails = !cfg.provider_outcome.contains_key(&provider)
            && cfg.fail_rate > 0.0
            && self.fail_rng.f64() < cfg.fail_rate;
        let (end, error) = job_end(cfg, &provider, fails);
        *self.by_provider.entry(provider.clone()).or_default() += 1;
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
            provider,
            polls: 0,
            end,
            error,
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
        self.result_response(cfg, job)
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
        let walk: Vec<String> = (0..6).map(|p| walk_status(&s, p, "completed")).collect();
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
        assert_eq!(walk_status(&s, 3, "failed"), "failed");
        assert_eq!(walk_status(&s, 99, "expired"), "expired");
        assert_eq!(walk_status(&s, 2, "failed"), "running");
        assert_eq!(walk_status(&s, u64::MAX, "completed"), "completed");
        let one = vec!["completed".to_string()];
        assert_eq!(walk_status(&one, 1, "completed"), "completed");
        let odd = vec!["paused".to_string()];
        assert_eq!(walk_status(&odd, 5, "failed"), "paused");
    }

    fn settings(outcomes: &[(&str, &str)]) -> Settings {
        Settings {
            api_key: None,
            statuses: vec!["completed".into()],
            fail_rate: 0.0,
            seed: 1,
            cost_cad: DEFAULT_COST_CAD,
            provider_outcome: outcomes
                .iter()
                .map(|(p, s)| (p.to_string(), s.to_string()))
                .collect(),
            provider_cost: BTreeMap::new(),
        }
    }

    #[test]
    fn how_a_job_ends() {
        let cfg = settings(&[("gemini", "failed"), ("gpu", "expired")]);
        // (provider, picked by the fail rate) -> (end, error when failed)
        let table = [
            ("gemini", false, "failed", "gemini model overloaded"),
            ("gemini", true, "failed", "gemini model overloaded"),
            ("gpu", false, "expired", "gpu model overloaded"),
            ("claude", false, "completed", DEFAULT_JOB_ERROR),
            ("claude", true, "failed", DEFAULT_JOB_ERROR),
        ];
        for (provider, fails, end, error) in table {
            let got = job_end(&cfg, provider, fails);
            assert_eq!(
                (got.0.as_str(), got.1.as_str()),
                (end, error),
                "{provider} {fails}"
            );
        }
    }

    #[test]
    fn provider_flags() {
        assert_eq!(
            parse_provider_outcome("gemini=failed"),
            Ok(("gemini".into(), "failed".into()))
        );
        assert_eq!(
            parse_provider_outcome(" gpu = expired "),
            Ok(("gpu".into(), "expired".into()))
        );
        assert_eq!(
            parse_provider_cost("claude=0.5"),
            Ok(("claude".into(), 0.5))
        );
        for bad in [
            "gemini",
            "gemini=running",
            "gemini=",
            "openai=failed",
            "=failed",
            "auto=completed",
        ] {
            assert!(parse_provider_outcome(bad).is_err(), "{bad}");
        }
        for bad in ["gpu=-1", "gpu=NaN", "gpu=inf", "gpu=x", "gpu", "x=1"] {
            assert!(parse_provider_cost(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cost("0"), Ok(0.0));
        assert!(parse_cost("1e400").is_err());
    }

    #[test]
    fn result_bodies() {
        let fields = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let f = fields(&[
            ("job_id", "\"j\""),
            ("response", "\"ab\""),
            ("cost_cad", "1e400"),
        ]);
        assert_eq!(
            result_body(&f, 0).body_bytes(),
            br#"{"job_id":"j","response":"ab","cost_cad":1e400}"#
        );
        assert_eq!(
            result_body(&f, 3).body_bytes(),
            br#"{"job_id":"j","response":"abxxx","cost_cad":1e400}"#
        );
        // A response replaced by a non-string is sent unpadded.
        let f = fields(&[("response", "7")]);
        assert_eq!(result_body(&f, 3).body_bytes(), br#"{"response":7}"#);
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
