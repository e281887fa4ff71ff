//! What the mock does wrong on purpose, and how a test steers it: latency,
//! random and queued faults (5xx, 429 with Retry-After, dropped
//! connections, slow answers) in front of every /api request, and the admin
//! endpoints under `/_mock/` (faults, overrides, stats, reset).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{Outcome, Request, Response};
use crate::lock;
use crate::service::{self, Jobs, method_not_allowed};

/// Fault settings fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Delay before every /api answer.
    pub latency: Duration,
    pub error_rate: f64,
    pub throttle_rate: f64,
    pub drop_rate: f64,
    /// Seconds sent in Retry-After with 429 answers.
    pub retry_after: u64,
    pub seed: u64,
}

/// How a fault answer carries `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryAfter {
    None,
    Seconds,
    Date,
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer this status with an error body.
    Status { code: u16, retry: RetryAfter },
    /// Read the request, then close the connection without answering.
    Drop,
    /// Sleep this long, then answer normally.
    Slow(Duration),
}

/// Parses a fault spec: `drop`, `slow:DURATION`, or a status code 400-599
/// optionally followed by `-retry` (Retry-After in seconds) or `-date`
/// (Retry-After as an HTTP date 1-2 s ahead). A plain `429` carries
/// Retry-After in seconds.
pub fn parse_fault(spec: &str) -> Result<Fault, String> {
    let spec = spec.trim();
    if spec == "drop" {
        return Ok(Fault::Drop);
    }
    if let Some(d) = spec.strip_prefix("slow:") {
        return humantime::parse_duration(d.trim())
            .map(Fault::Slow)
            .map_err(|e| format!("invalid fault '{spec}': {e}"));
    }
    let (code, retry) = match spec.split_once('-') {
        None => (spec, None),
        Some((c, "retry")) => (c, Some(RetryAfter::Seconds)),
        Some((c, "date")) => (c, Some(RetryAfter::Date)),
        Some(_) => return Err(format!("invalid fault '{spec}'")),
    };
    let code: u16 = match code.parse() {
        Ok(c) if (400..=599).contains(&c) && code.len() == 3 => c,
        _ => {
            return Err(format!(
                "invalid fault '{spec}': expected drop, slow:DURATION or a status 400-599 \
                 (optionally with -retry or -date)"
            ));
        }
    };
    let retry = retry.unwrap_or(if code == 429 {
        RetryAfter::Seconds
    } else {
        RetryAfter::None
    });
    Ok(Fault::Status { code, retry })
}

fn fault_response(code: u16, retry: RetryAfter, retry_after: u64) -> Response {
    let text = match code {
        503 => "mock overload".to_string(),
        429 => "mock throttled".to_string(),
        500 => "mock internal error".to_string(),
        404 => "job not found".to_string(),
        c => format!("mock fault {c}"),
    };
    let resp = Response::error(code, &text);
    match retry {
        RetryAfter::None => resp,
        RetryAfter::Seconds => resp.with_header("Retry-After", retry_after.to_string()),
        RetryAfter::Date => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let at = UNIX_EPOCH + Duration::from_secs(now + 2);
            resp.with_header("Retry-After", httpdate::fmt_http_date(at))
        }
    }
}

/// A one-shot fault waiting for a matching request.
#[derive(Debug, Clone)]
struct QueuedFault {
    fault: Fault,
    path: Option<String>,
    method: Option<String>,
}

impl QueuedFault {
    fn matches(&self, method: &str, path: &str) -> bool {
        self.path.as_deref().is_none_or(|p| path.contains(p))
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
    }
}

/// The faults waiting for requests, and the traffic the stats report.
#[derive(Debug)]
pub struct Faults {
    queue: VecDeque<QueuedFault>,
    rng: fastrand::Rng,
    requests: u64,
    served: u64,
    posts_by_key: BTreeMap<String, u64>,
}

impl Faults {
    pub fn new(seed: u64) -> Faults {
        Faults {
            queue: VecDeque::new(),
            rng: fastrand::Rng::with_seed(seed),
            requests: 0,
            served: 0,
            posts_by_key: BTreeMap::new(),
        }
    }

    /// The fault for this request: the first matching queued one, else a
    /// random one by the configured rates, else none.
    fn take(&mut self, method: &str, path: &str, cfg: &Settings) -> Option<Fault> {
        if let Some(i) = self.queue.iter().position(|f| f.matches(method, path)) {
            return self.queue.remove(i).map(|f| f.fault);
        }
        if cfg.error_rate + cfg.throttle_rate + cfg.drop_rate <= 0.0 {
            return None;
        }
        let r = self.rng.f64();
        if r < cfg.error_rate {
            Some(Fault::Status {
                code: 503,
                retry: RetryAfter::None,
            })
        } else if r < cfg.error_rate + cfg.throttle_rate {
            Some(Fault::Status {
                code: 429,
                retry: RetryAfter::Seconds,
            })
        } else if r < cfg.error_rate + cfg.throttle_rate + cfg.drop_rate {
            Some(Fault::Drop)
        } else {
            None
        }
    }

    /// Counts an /api request and picks its fault.
    fn admit(&mut self, req: &Request, cfg: &Settings) -> Option<Fault> {
        self.requests += 1;
        if req.method == "POST"
            && req.path == "/api/v1/jobs"
            && let Some(key) = req.header("idempotency-key")
        {
            *self.posts_by_key.entry(key.to_string()).or_default() += 1;
        }
        let fault = self.take(&req.method, &req.path, cfg);
        if fault.is_some() {
            self.served += 1;
        }
        fault
    }
}

/// What stands between an /api request and the service: the latency, then
/// a fault. `Some` is the answer instead of the service's; `None` lets the
/// request through (after a slow fault's sleep).
pub fn gate(cfg: &Settings, faults: &Mutex<Faults>, req: &Request) -> Option<Outcome> {
    // Sleep before taking the lock so that concurrent requests overlap.
    if !cfg.latency.is_zero() {
        thread::sleep(cfg.latency);
    }
    let fault = lock(faults).admit(req, cfg);
    match fault {
        Some(Fault::Drop) => Some(Outcome::Drop),
        Some(Fault::Status { code, retry }) => Some(Outcome::Respond(fault_response(
            code,
            retry,
            cfg.retry_after,
        ))),
        Some(Fault::Slow(d)) => {
            thread::sleep(d);
            None
        }
        None => None,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsRequest {
    next: Vec<String>,
    path: Option<String>,
    method: Option<String>,
}

/// The admin endpoints, with the state they read and change.
pub struct Admin<'a> {
    pub faults: &'a Mutex<Faults>,
    pub jobs: &'a Mutex<Jobs>,
    pub service: &'a service::Settings,
    pub seed: u64,
}

impl Admin<'_> {
    pub fn handle(&self, req: &Request) -> Response {
        let method = req.method.as_str();
        match req.path.as_str() {
            "/_mock/stats" if method == "GET" => self.stats(),
            "/_mock/stats" => method_not_allowed("GET"),
            "/_mock/faults" if method == "POST" => self.add_faults(&req.body),
            "/_mock/override" if method == "POST" => self.set_overrides(&req.body),
            "/_mock/reset" if method == "POST" => {
                // Lock order everywhere: faults, then jobs.
                let mut f = lock(self.faults);
                let mut j = lock(self.jobs);
                *f = Faults::new(self.seed);
                *j = Jobs::new(self.seed);
                Response::json(200, &json!({ "ok": true }))
            }
            "/_mock/faults" | "/_mock/override" | "/_mock/reset" => method_not_allowed("POST"),
            _ => Response::error(404, "not found"),
        }
    }

    fn stats(&self) -> Response {
        let f = lock(self.faults);
        let st = lock(self.jobs);
        let jobs: Vec<Value> = st
            .jobs
            .iter()
            .map(|j| {
                json!({
                    "job_id": j.id,
                    "status": j.status(&self.service.statuses),
                    "provider": j.provider,
                    "idempotency_key": j.key,
                    "polls": j.polls,
                    "priority": j.priority,
                    "preferred_ai": j.preferred_ai,
                    "prompt": j.prompt,
                    "metadata": j.metadata,
                    "type": j.kind,
                    "complexity_hint": j.complexity_hint,
                    "source": j.source,
                })
            })
            .collect();
        Response::json(
            200,
            &json!({
                "jobs_created": st.jobs_created,
                "jobs_by_provider": st.by_provider,
                "requests": f.requests,
                "faults_served": f.served,
                "faults_pending": f.queue.len(),
                "posts_by_key": f.posts_by_key,
                "jobs": jobs,
            }),
        )
    }

    fn add_faults(&self, body: &[u8]) -> Response {
        let req: FaultsRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return Response::error(400, &format!("invalid faults request: {e}")),
        };
        let mut parsed = Vec::with_capacity(req.next.len());
        for spec in &req.next {
            match parse_fault(spec) {
                Ok(f) => parsed.push(f),
                Err(e) => return Response::error(400, &e),
            }
        }
        let mut f = lock(self.faults);
        for fault in parsed {
            f.queue.push_back(QueuedFault {
                fault,
                path: req.path.clone().filter(|p| !p.is_empty()),
                method: req.method.clone().filter(|m| !m.is_empty()),
            });
        }
        Response::json(200, &json!({ "queued": f.queue.len() }))
    }

    fn set_overrides(&self, body: &[u8]) -> Response {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Response::error(400, &format!("invalid JSON body: {e}")),
        };
        let Value::Object(obj) = v else {
            return Response::error(400, "override body must be a JSON object");
        };
        // `"job": ID` scopes the other fields to that job (created or not).
        let job_scope = match obj.get("job") {
            None => None,
            Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
            Some(_) => return Response::error(400, "invalid value for override 'job'"),
        };
        // Validate everything first so that a bad request changes nothing.
        for (k, val) in &obj {
            if job_scope.is_some() && (k == "next_job_id" || k == "status_of") {
                return Response::error(400, &format!("override '{k}' cannot be scoped to a job"));
            }
            let ok = match k.as_str() {
                "job" => true,
                "next_job_id" | "response" | "model" | "provider" | "error" | "result_raw"
                | "status_raw" => val.is_string() || val.is_null(),
                "result_pad_bytes" => val.is_u64() || val.is_null(),
                // Any value, hostile ones included: that is their use.
                "cost_cad" | "tokens_in" | "tokens_out" => true,
                "result_fields_raw" => {
                    val.is_null()
                        || val
                            .as_object()
                            .is_some_and(|m| m.values().all(|s| s.is_string() || s.is_null()))
                }
                "omit_fields" => {
                    val.is_null()
                        || val
                            .as_array()
                            .is_some_and(|a| a.iter().all(Value::is_string))
                }
                "status_of" => val
                    .as_object()
                    .is_some_and(|m| m.values().all(|s| s.is_string() || s.is_null())),
                _ => return Response::error(400, &format!("unknown override field '{k}'")),
            };
            if !ok {
                return Response::error(400, &format!("invalid value for override '{k}'"));
            }
        }
        let mut guard = lock(self.jobs);
        let st = &mut *guard;
        for (k, val) in obj {
            let text = val.as_str().map(str::to_string);
            if k == "status_of" {
                for (id, s) in val.as_object().into_iter().flatten() {
                    st.force_status(self.service, id, s.as_str().map(str::to_string));
                }
                continue;
            }
            let ov = match &job_scope {
                Some(id) => st.per_job.entry(id.clone()).or_default(),
                None => &mut st.ov,
            };
            match k.as_str() {
                "next_job_id" => ov.next_job_id = text,
                "response" => ov.response = text,
                "model" => ov.model = text,
                "provider" => ov.provider = text,
                "error" => ov.error = text,
                "result_raw" => ov.result_raw = text,
                "status_raw" => ov.status_raw = text,
                "result_pad_bytes" => ov.result_pad_bytes = val.as_u64().unwrap_or(0),
                "cost_cad" => ov.cost_cad = Some(val).filter(|v| !v.is_null()),
                "tokens_in" => ov.tokens_in = Some(val).filter(|v| !v.is_null()),
                "tokens_out" => ov.tokens_out = Some(val).filter(|v| !v.is_null()),
                "result_fields_raw" => match val {
                    Value::Object(m) => {
                        for (field, raw) in m {
                            match raw {
                                Value::String(text) => {
                                    ov.result_fields_raw.insert(field, text);
                                }
                                _ => {
                                    ov.result_fields_raw.remove(&field);
                                }
                            }
                        }
                    }
                    _ => ov.result_fields_raw.clear(),
                },
                "omit_fields" => {
                    ov.omit_fields = val.as_array().map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    });
                }
                _ => {}
            }
        }
        Response::json(200, &json!({ "ok": true }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs() {
        let status = |code, retry| Ok(Fault::Status { code, retry });
        assert_eq!(parse_fault("drop"), Ok(Fault::Drop));
        assert_eq!(parse_fault("503"), status(503, RetryAfter::None));
        assert_eq!(parse_fault("429"), status(429, RetryAfter::Seconds));
        assert_eq!(parse_fault("429-date"), status(429, RetryAfter::Date));
        assert_eq!(parse_fault("503-retry"), status(503, RetryAfter::Seconds));
        assert_eq!(
            parse_fault("slow:2s"),
            Ok(Fault::Slow(Duration::from_secs(2)))
        );
        assert_eq!(
            parse_fault("slow:150ms"),
            Ok(Fault::Slow(Duration::from_millis(150)))
        );
        for bad in [
            "",
            "200",
            "600",
            "99",
            "0503",
            "abc",
            "slow:",
            "slow:x",
            "429-later",
            "drop2",
        ] {
            assert!(parse_fault(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        // Retry-After's IMF-fixdate, as the mock sends it.
        assert_eq!(httpdate::fmt_http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(service::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
