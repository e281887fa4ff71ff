//! The HTTP client for the secutools job API (`design/secutools-api.md`).
//!
//! One [`Client`] holds one `ureq::Agent`; it is `Send + Sync` and meant to be
//! shared by the reaper's polling threads, which then share its connection
//! pool.
//!
//! What the client guarantees:
//!
//! - Every request carries `Authorization: Bearer <key>`; the key never
//!   appears in an error message (server text that echoes it is redacted).
//! - Plain `http://` only for loopback hosts; no redirect is followed (a 3xx
//!   answer is [`ClientError::Rejected`]); no env proxy for `http://`.
//! - Job ids are checked with [`valid_job_id`] before they go into a URL and
//!   when they come back from the service.
//! - Transport errors, `429` and `5xx` are retried (`retries` extra
//!   attempts, full-jitter exponential backoff, `Retry-After` honoured, all
//!   waits capped by `max_retry_wait`); `401`/`403` and other `4xx` never are.
//! - After the last attempt, a failure is [`ClientError::Unavailable`] when no
//!   attempt can have reached the service (refused connection, DNS failure,
//!   connect timeout, TLS handshake failure, or an error status answer), and
//!   [`ClientError::Unknown`] when some attempt may have been delivered
//!   (timeout or broken connection after the request was sent) and no later
//!   attempt settled it with a `2xx` or `4xx` answer.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::text::{clip, is_unsafe_char};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};

/// `ccl-delegate/<version>`: the User-Agent and the `source` of a submission.
pub const USER_AGENT: &str = concat!("ccl-delegate/", env!("CARGO_PKG_VERSION"));

/// Largest response body accepted (after any content decoding).
pub const MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;

/// Largest error body read for its `{"error": "..."}` text.
const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;

/// Server text in messages is cut to this many characters.
const MESSAGE_MAX_CHARS: usize = 300;

/// Ceiling of the connect phase (TCP + TLS) of one attempt.
const CONNECT_TIMEOUT_CAP: Duration = Duration::from_secs(10);

/// Ceiling of the DNS phase of one attempt.
const RESOLVE_TIMEOUT_CAP: Duration = Duration::from_secs(5);

/// Idle connections kept per host: the reaper polls with many threads.
const MAX_IDLE_CONNECTIONS: usize = 64;

/// Buffers of each connection. ureq's defaults (128 KiB each, zero-filled)
/// cost 8 MiB of resident memory for a reap polling on 32 connections. The
/// input buffer must hold a whole response header block, which is capped
/// below it so that a larger one is a clear error; bodies stream through.
const INPUT_BUFFER_BYTES: usize = 32 * 1024;
const OUTPUT_BUFFER_BYTES: usize = 16 * 1024;
const MAX_RESPONSE_HEADER_BYTES: usize = 16 * 1024;

const JOBS_PATH: &str = "/api/v1/jobs";

/// How to reach the service.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host[:port][/prefix]`, or `http://` for a loopback host.
    pub base_url: String,
    /// The bearer token. Never printed.
    pub api_key: String,
    /// Overall budget of one attempt: DNS, connect, TLS, send, and the whole
    /// response body (`http_timeout`).
    pub timeout: Duration,
    /// Extra attempts after a transient failure.
    pub retries: u32,
    /// Cap of any single wait between attempts (`Retry-After` or backoff).
    pub max_retry_wait: Duration,
    /// Base of the exponential backoff: before retry `n` (0-based) the wait is
    /// uniform in `[0, min(max_retry_wait, backoff_base * 2^n)]`.
    pub backoff_base: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            base_url: String::new(),
            api_key: String::new(),
            timeout: Duration::from_secs(30),
            retries: 3,
            max_retry_wait: Duration::from_secs(30),
            backoff_base: Duration::from_millis(200),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("max_retry_wait", &self.max_retry_wait)
            .field("backoff_base", &self.backoff_base)
            .finish()
    }
}

/// The body of `POST /api/v1/jobs`.
#[derive(Clone, Debug, Serialize)]
pub struct SubmitRequest {
    #[serde(rename = "type")]
    kind: &'static str,
    /// `low`, `normal` or `high`.
    pub priority: String,
    pub prompt: String,
    /// `gpu`, `gemini` or `claude`; omitted (`None`) for auto.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_ai: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complexity_hint: Option<String>,
    source: &'static str,
    pub metadata: SubmitMetadata,
}

/// `metadata` of a submission.
#[derive(Clone, Debug, Serialize)]
pub struct SubmitMetadata {
    /// The project directory's name.
    pub project: String,
    /// `<id>.md`.
    pub task: String,
}

impl SubmitRequest {
    /// An `analyze` request from `ccl-delegate/<version>`.
    pub fn new(
        priority: String,
        prompt: String,
        preferred_ai: Option<String>,
        complexity_hint: Option<String>,
        project: String,
        task: String,
    ) -> SubmitRequest {
        SubmitRequest {
            kind: "analyze",
            priority,
            prompt,
            preferred_ai,
            complexity_hint,
            source: USER_AGENT,
            metadata: SubmitMetadata { project, task },
        }
    }
}

/// The answer to a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: String,
    /// `200 OK`: the idempotency key was seen before; no new job was created.
    pub replayed: bool,
}

/// A job's state, as the service names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    Expired,
    /// A status the contract does not know: not terminal.
    Unknown(String),
}

impl Status {
    pub fn parse(s: &str) -> Status {
        match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            "expired" => Status::Expired,
            other => Status::Unknown(other.to_string()),
        }
    }

    /// `completed`, `failed`, `cancelled` and `expired` are terminal.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::Expired
        )
    }

    /// The service's word; an unknown one as received.
    pub fn as_str(&self) -> &str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::Unknown(s) => s,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Unknown(s) => write!(f, "unknown status {:?}", clip(s, 64)),
            known => f.write_str(known.as_str()),
        }
    }
}

/// `GET /api/v1/jobs/{id}` (and the answer to a cancel).
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    pub job_id: String,
    pub status: Status,
    pub error: Option<String>,
    pub provider: Option<String>,
    /// The service's whole object, unknown fields included (`get --json`).
    pub raw: serde_json::Value,
}

/// `GET /api/v1/jobs/{id}/result`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    pub job_id: String,
    pub provider: String,
    pub model: String,
    pub response: String,
    pub cost_cad: f64,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    /// The service's whole object.
    pub raw: serde_json::Value,
}

/// Why a call failed. `request` is `METHOD URL` (never with the key).
#[derive(Debug)]
pub enum ClientError {
    /// `404`: the service does not know the job (or the path).
    NotFound { request: String, message: String },
    /// `409`: result not ready, job already terminal.
    Conflict { request: String, message: String },
    /// `401`/`403`: never retried.
    Auth {
        request: String,
        status: u16,
        message: String,
    },
    /// Any other `4xx` (and an unexpected `3xx` or `1xx`): never retried.
    Rejected {
        request: String,
        status: u16,
        message: String,
    },
    /// Failed for sure after `attempts` tries: nothing reached the service,
    /// or every answer was `429`/`5xx`.
    Unavailable {
        request: String,
        attempts: u32,
        message: String,
    },
    /// No definite answer after `attempts` tries, and some attempt may have
    /// reached the service (a timeout or broken connection after sending).
    Unknown {
        request: String,
        attempts: u32,
        message: String,
    },
    /// A `2xx` answer that is not what the contract says: bad JSON, missing
    /// fields, an invalid or foreign job id, a body over 32 MiB.
    BadAnswer { request: String, message: String },
    /// A job id that is not `1-128 of [A-Za-z0-9._-]`, or is `.`/`..`:
    /// refused before any request. `id` is shown clipped and cleaned.
    InvalidJobId { id: String },
    /// An idempotency key that is not `16-128 of [A-Za-z0-9_-]`.
    InvalidIdempotencyKey { key: String },
    /// Bad URL, key or timeout given to [`Client::new`].
    Config { message: String },
}

impl ClientError {
    /// For an error from [`Client::submit`]: true when it proves the service
    /// created no job, so the pending marker may go. False for
    /// [`ClientError::Unknown`], [`ClientError::BadAnswer`] (a `2xx` came, so
    /// a job may exist) and [`ClientError::Conflict`] (a request with the
    /// same key may still be in flight).
    pub fn nothing_created(&self) -> bool {
        match self {
            ClientError::NotFound { .. }
            | ClientError::Auth { .. }
            | ClientError::Rejected { .. }
            | ClientError::Unavailable { .. }
            | ClientError::InvalidJobId { .. }
            | ClientError::InvalidIdempotencyKey { .. }
            | ClientError::Config { .. } => true,
            ClientError::Conflict { .. }
            | ClientError::Unknown { .. }
            | ClientError::BadAnswer { .. } => false,
        }
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "attempt" } else { "attempts" }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotFound { request, message } => {
                write!(f, "{request}: not found (404): {message}")
            }
            ClientError::Conflict { request, message } => {
                write!(f, "{request}: conflict (409): {message}")
            }
            ClientError::Auth {
                request,
                status,
                message,
            } => write!(f, "{request}: refused by the service ({status}): {message}"),
            ClientError::Rejected {
                request,
                status,
                message,
            } => write!(
                f,
                "{request}: rejected by the service ({status}): {message}"
            ),
            ClientError::Unavailable {
                request,
                attempts,
                message,
            } => write!(
                f,
                "{request}: service unavailable after {attempts} {}: {message}",
                plural(*attempts)
            ),
            ClientError::Unknown {
                request,
                attempts,
                message,
            } => write!(
                f,
                "{request}: no definite answer after {attempts} {} \
                 (the request may have reached the service): {message}",
                plural(*attempts)
            ),
            ClientError::BadAnswer { request, message } => {
                write!(f, "{request}: bad answer from the service: {message}")
            }
            ClientError::InvalidJobId { id } => write!(
                f,
                "invalid job id {id:?}: expected 1-128 characters of [A-Za-z0-9._-], \
                 not \".\" or \"..\""
            ),
            ClientError::InvalidIdempotencyKey { key } => write!(
                f,
                "invalid idempotency key {key:?}: expected 16-128 characters of [A-Za-z0-9_-]"
            ),
            ClientError::Config { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for ClientError {}

/// 1-128 characters of `[A-Za-z0-9._-]`, neither `.` nor `..`.
pub fn valid_job_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 16-128 characters of `[A-Za-z0-9_-]`.
pub fn valid_idempotency_key(k: &str) -> bool {
    (16..=128).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// The secutools client. Cheap to share by reference across threads.
pub struct Client {
    agent: ureq::Agent,
    /// Normalised base URL, no trailing slash.
    base: String,
    /// `Bearer <key>`.
    auth: String,
    /// For redacting server text.
    api_key: String,
    timeout: Duration,
    retries: u32,
    max_retry_wait: Duration,
    backoff_base: Duration,
    /// Set when a call used up its retries on a failing service, cleared
    /// by any answer: while set, calls try once, so a reap of many jobs
    /// against a service that is down does not sleep through every
    /// job's retries.
    failing: AtomicBool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// One logical call, attempted up to `retries + 1` times.
struct Call<'a> {
    method: Method,
    url: String,
    /// `METHOD URL`, for messages.
    request: String,
    /// JSON body; `None` sends an empty body on POST.
    body: Option<&'a [u8]>,
    idempotency_key: Option<&'a str>,
}

/// What one attempt gave.
enum Attempt {
    /// A complete answer. For a non-2xx status, `body` is at most 64 KiB
    /// (empty if longer or unreadable).
    Answer {
        status: u16,
        body: Vec<u8>,
        retry_after: Option<Duration>,
        location: Option<String>,
    },
    /// A 2xx whose body is over [`MAX_BODY_BYTES`].
    TooLarge,
    /// No (complete) answer.
    Transport {
        error: ureq::Error,
        maybe_delivered: bool,
    },
}

impl Client {
    /// Checks the URL (https, or http for loopback only), the key and the
    /// timeout, and builds the agent.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let (base, plain_http) = normalise_base_url(&cfg.base_url)?;
        if cfg.api_key.is_empty() {
            return Err(config_error("the API key is empty"));
        }
        if !cfg.api_key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(config_error(
                "the API key contains spaces, control or non-ASCII characters",
            ));
        }
        if cfg.timeout.is_zero() {
            return Err(config_error("the HTTP timeout must be more than zero"));
        }

        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(USER_AGENT)
            .accept("application/json")
            .timeout_global(Some(cfg.timeout))
            .timeout_resolve(Some(resolve_timeout(cfg.timeout)))
            .timeout_connect(Some(connect_timeout(cfg.timeout)))
            .max_idle_connections(MAX_IDLE_CONNECTIONS)
            .max_idle_connections_per_host(MAX_IDLE_CONNECTIONS)
            .input_buffer_size(INPUT_BUFFER_BYTES)
            .output_buffer_size(OUTPUT_BUFFER_BYTES)
            .max_response_header_size(MAX_RESPONSE_HEADER_BYTES);
        if plain_http {
            // The key would travel in clear to an HTTP proxy from the
            // environment: loopback http goes direct.
            builder = builder.proxy(None);
        }
        let agent = ureq::Agent::with_parts(
            builder.build(),
            ureq::unversioned::transport::DefaultConnector::default(),
            OnceResolver::default(),
        );

        Ok(Client {
            agent,
            base,
            auth: format!("Bearer {}", cfg.api_key),
            api_key: cfg.api_key,
            timeout: cfg.timeout,
            retries: cfg.retries,
            max_retry_wait: cfg.max_retry_wait,
            backoff_base: cfg.backoff_base,
            failing: AtomicBool::new(false),
        })
    }

    /// `POST /api/v1/jobs` with the idempotency key.
    pub fn submit(
        &self,
        req: &SubmitRequest,
        idempotency_key: &str,
    ) -> Result<Submitted, ClientError> {
        if !valid_idempotency_key(idempotency_key) {
            return Err(ClientError::InvalidIdempotencyKey {
                key: clip(idempotency_key, 140),
            });
        }
        let body = serde_json::to_vec(req)
            .map_err(|e| config_error(&format!("cannot encode the request: {e}")))?;
        let call = self.call(Method::Post, JOBS_PATH, Some(&body), Some(idempotency_key));
        let (status, body) = self.execute(&call)?;
        let raw = self.parse_object(&call, &body)?;

        #[derive(Deserialize)]
        struct Wire {
            job_id: String,
        }
        let wire: Wire = self.decode(&call, &raw)?;
        self.check_answer_id(&call, &wire.job_id, None)?;
        Ok(Submitted {
            job_id: wire.job_id,
            replayed: status == 200,
        })
    }

    /// `GET /api/v1/jobs/{job_id}`.
    pub fn status(&self, job_id: &str) -> Result<JobStatus, ClientError> {
        check_job_id(job_id)?;
        let call = self.call(Method::Get, &format!("{JOBS_PATH}/{job_id}"), None, None);
        let (_, body) = self.execute(&call)?;
        self.job_status(&call, job_id, &body)
    }

    /// `GET /api/v1/jobs/{job_id}/result`. `409` (not completed) is
    /// [`ClientError::Conflict`].
    pub fn result(&self, job_id: &str) -> Result<JobResult, ClientError> {
        check_job_id(job_id)?;
        let path = format!("{JOBS_PATH}/{job_id}/result");
        let call = self.call(Method::Get, &path, None, None);
        let (_, body) = self.execute(&call)?;
        let raw = self.parse_object(&call, &body)?;
        // A response may be up to 32 MiB, on every polling thread: hold it
        // as few times as possible.
        drop(body);

        // The response is what the user paid for: a result that lacks (or
        // nulls) only provider, model or cost is still taken, with those
        // empty or zero, rather than refused until the job times out.
        #[derive(Deserialize)]
        struct Wire {
            job_id: String,
            #[serde(default)]
            provider: Option<String>,
            #[serde(default)]
            model: Option<String>,
            response: String,
            #[serde(default)]
            cost_cad: Option<f64>,
        }
        // Token counts are informative only: a float or a string there
        // never costs the result.
        let tokens = |k: &str| raw.get(k).and_then(serde_json::Value::as_u64);
        let w: Wire = self.decode(&call, &raw)?;
        self.check_answer_id(&call, &w.job_id, Some(job_id))?;
        Ok(JobResult {
            job_id: w.job_id,
            provider: w.provider.unwrap_or_default(),
            model: w.model.unwrap_or_default(),
            response: w.response,
            cost_cad: w.cost_cad.unwrap_or(0.0),
            tokens_in: tokens("tokens_in"),
            tokens_out: tokens("tokens_out"),
            raw,
        })
    }

    /// `POST /api/v1/jobs/{job_id}/cancel`. `409` (already terminal) is
    /// [`ClientError::Conflict`].
    pub fn cancel(&self, job_id: &str) -> Result<JobStatus, ClientError> {
        check_job_id(job_id)?;
        let path = format!("{JOBS_PATH}/{job_id}/cancel");
        let call = self.call(Method::Post, &path, None, None);
        let (_, body) = self.execute(&call)?;
        self.job_status(&call, job_id, &body)
    }

    fn call<'a>(
        &self,
        method: Method,
        path: &str,
        body: Option<&'a [u8]>,
        idempotency_key: Option<&'a str>,
    ) -> Call<'a> {
        let url = format!("{}{}", self.base, path);
        Call {
            method,
            request: format!("{} {}", method.as_str(), url),
            url,
            body,
            idempotency_key,
        }
    }

    fn job_status(&self, call: &Call, job_id: &str, body: &[u8]) -> Result<JobStatus, ClientError> {
        let raw = self.parse_object(call, body)?;

        #[derive(Deserialize)]
        struct Wire {
            job_id: String,
            status: String,
        }
        let w: Wire = self.decode(call, &raw)?;
        self.check_answer_id(call, &w.job_id, Some(job_id))?;
        // `error` and `provider` are shown, never acted on: an object or a
        // number there is shown as JSON rather than refusing the answer
        // (which would keep a failed job from ever reaching failed/).
        let text = |k: &str| match raw.get(k) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        Ok(JobStatus {
            job_id: w.job_id,
            status: Status::parse(&w.status),
            error: text("error"),
            provider: text("provider"),
            raw,
        })
    }

    /// Runs the attempts; gives the status and body of a 2xx answer.
    fn execute(&self, call: &Call) -> Result<(u16, Vec<u8>), ClientError> {
        let attempts = if self.failing.load(Ordering::Relaxed) {
            1
        } else {
            self.retries.saturating_add(1)
        };
        let mut maybe_delivered = false;
        let mut last = String::new();
        for attempt in 0..attempts {
            let retry_after = match self.attempt(call) {
                Attempt::Answer {
                    status,
                    body,
                    retry_after,
                    location,
                } => {
                    // An answer that is not 429/5xx shows the service works.
                    if !matches!(status, 429 | 500..=599) {
                        self.failing.store(false, Ordering::Relaxed);
                    }
                    if (200..300).contains(&status) {
                        return Ok((status, body));
                    }
                    let message = self.error_text(status, &body);
                    let request = call.request.clone();
                    match status {
                        401 | 403 => {
                            return Err(ClientError::Auth {
                                request,
                                status,
                                message,
                            });
                        }
                        404 => return Err(ClientError::NotFound { request, message }),
                        409 => return Err(ClientError::Conflict { request, message }),
                        429 | 500..=599 => {
                            last = format!("{status} {message}");
                            retry_after
                        }
                        300..=399 => {
                            let to = location
                                .map(|l| format!(" to {:?}", self.clean(&l)))
                                .unwrap_or_default();
                            return Err(ClientError::Rejected {
                                request,
                                status,
                                message: format!("redirect{to} not followed: check the API URL"),
                            });
                        }
                        _ => {
                            return Err(ClientError::Rejected {
                                request,
                                status,
                                message,
                            });
                        }
                    }
                }
                Attempt::TooLarge => {
                    return Err(ClientError::BadAnswer {
                        request: call.request.clone(),
                        message: "response body over 32 MiB".to_string(),
                    });
                }
                Attempt::Transport {
                    error,
                    maybe_delivered: delivered,
                } => {
                    if is_local_error(&error) {
                        return Err(config_error(&format!(
                            "{}: {}",
                            call.request,
                            self.clean(&error.to_string())
                        )));
                    }
                    maybe_delivered |= delivered;
                    last = self.describe_transport(&error);
                    None
                }
            };
            if attempt + 1 < attempts {
                std::thread::sleep(self.retry_wait(attempt, retry_after));
            }
        }
        let request = call.request.clone();
        self.failing.store(true, Ordering::Relaxed);
        Err(if maybe_delivered {
            ClientError::Unknown {
                request,
                attempts,
                message: last,
            }
        } else {
            ClientError::Unavailable {
                request,
                attempts,
                message: last,
            }
        })
    }

    /// One request, its answer read whole.
    fn attempt(&self, call: &Call) -> Attempt {
        let sent = match call.method {
            Method::Get => self
                .agent
                .get(&call.url)
                .header("Authorization", &self.auth)
                .call(),
            Method::Post => {
                let mut b = self
                    .agent
                    .post(&call.url)
                    .header("Authorization", &self.auth);
                if let Some(key) = call.idempotency_key {
                    b = b.header("Idempotency-Key", key);
                }
                match call.body {
                    Some(body) => b.content_type("application/json").send(body),
                    None => b.send_empty(),
                }
            }
        };
        let mut response = match sent {
            Ok(r) => r,
            Err(error) => {
                return Attempt::Transport {
                    maybe_delivered: maybe_delivered(&error),
                    error,
                };
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after =
            header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
        let location = header("location");

        if (200..300).contains(&status) {
            match response
                .body_mut()
                .with_config()
                .limit(MAX_BODY_BYTES)
                .read_to_vec()
            {
                Ok(body) => Attempt::Answer {
                    status,
                    body,
                    retry_after,
                    location,
                },
                Err(ureq::Error::BodyExceedsLimit(_)) => Attempt::TooLarge,
                // The status came, the body did not: the request was
                // delivered, the answer is lost.
                Err(error) => Attempt::Transport {
                    error,
                    maybe_delivered: true,
                },
            }
        } else {
            // The status is the answer; the body only adds words.
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_ERROR_BODY_BYTES)
                .read_to_vec()
                .unwrap_or_default();
            Attempt::Answer {
                status,
                body,
                retry_after,
                location,
            }
        }
    }

    /// Wait before retry number `attempt` (0-based).
    fn retry_wait(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(d) => d.min(self.max_retry_wait),
            None => {
                let ceiling = self
                    .backoff_base
                    .saturating_mul(2u32.saturating_pow(attempt))
                    .min(self.max_retry_wait);
                jitter(ceiling)
            }
        }
    }

    fn describe_transport(&self, e: &ureq::Error) -> String {
        let text = match e {
            ureq::Error::Timeout(ureq::Timeout::Connect) => format!(
                "connect timed out after {}",
                secs(connect_timeout(self.timeout))
            ),
            ureq::Error::Timeout(ureq::Timeout::Resolve) => format!(
                "DNS lookup timed out after {}",
                secs(resolve_timeout(self.timeout))
            ),
            ureq::Error::Timeout(t) => {
                format!("timed out after {} ({t})", secs(self.timeout))
            }
            ureq::Error::HostNotFound => "host not found".to_string(),
            ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
                "connection refused".to_string()
            }
            ureq::Error::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
                "connection closed without a complete answer".to_string()
            }
            other => other.to_string(),
        };
        self.clean(&text)
    }

    /// The `error` text of an error body, else the body's text, else the
    /// status's reason phrase: cleaned and clipped.
    fn error_text(&self, status: u16, body: &[u8]) -> String {
        let from_json = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .filter(|s| !s.trim().is_empty());
        let text = match from_json {
            Some(t) => t,
            None => {
                let is_json = serde_json::from_slice::<serde_json::Value>(body).is_ok();
                let s = String::from_utf8_lossy(body);
                if !is_json && !s.trim().is_empty() {
                    s.into_owned()
                } else {
                    ureq::http::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|c| c.canonical_reason())
                        .unwrap_or("no message")
                        .to_string()
                }
            }
        };
        self.clean(&text)
    }

    /// Server or transport text made fit for a one-line message: control
    /// and bidi characters blanked, the API key redacted, at most 300
    /// characters.
    fn clean(&self, s: &str) -> String {
        let blanked: String = s
            .chars()
            .map(|c| if is_unsafe_char(c) { ' ' } else { c })
            .collect();
        let redacted = if self.api_key.len() >= MIN_REDACTED_KEY {
            blanked.replace(&self.api_key, "<redacted>")
        } else {
            blanked
        };
        clip(redacted.trim(), MESSAGE_MAX_CHARS)
    }

    fn parse_object(&self, call: &Call, body: &[u8]) -> Result<serde_json::Value, ClientError> {
        let mut value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| self.bad_answer(call, &format!("malformed JSON: {e}")))?;
        if !value.is_object() {
            return Err(self.bad_answer(call, "expected a JSON object"));
        }
        // A service that echoes the key (in a job's error, a response)
        // must not get it into a done/failed file or onto a terminal.
        redact(&mut value, &self.api_key);
        Ok(value)
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        call: &Call,
        raw: &serde_json::Value,
    ) -> Result<T, ClientError> {
        T::deserialize(raw).map_err(|e| self.bad_answer(call, &e.to_string()))
    }

    /// The job id in an answer must be valid, and the one asked about.
    fn check_answer_id(
        &self,
        call: &Call,
        got: &str,
        expected: Option<&str>,
    ) -> Result<(), ClientError> {
        if !valid_job_id(got) {
            return Err(self.bad_answer(
                call,
                &format!("invalid job id {:?} in the answer", clip(got, 140)),
            ));
        }
        if let Some(want) = expected {
            if got != want {
                return Err(self.bad_answer(
                    call,
                    &format!("the answer is about job {got:?}, not {want:?}"),
                ));
            }
        }
        Ok(())
    }

    fn bad_answer(&self, call: &Call, message: &str) -> ClientError {
        ClientError::BadAnswer {
            request: call.request.clone(),
            message: self.clean(message),
        }
    }
}

/// Keys shorter than this (test keys like `k`) are not redacted: replacing
/// them would mangle ordinary server text.
const MIN_REDACTED_KEY: usize = 8;

/// Replaces the API key in every string of an answer.
fn redact(v: &mut serde_json::Value, key: &str) {
    match v {
        serde_json::Value::String(s) if key.len() >= MIN_REDACTED_KEY && s.contains(key) => {
            *s = s.replace(key, "<redacted>");
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| redact(i, key)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|i| redact(i, key)),
        _ => {}
    }
}

/// ureq asks its resolver before every request, even one that then reuses
/// a pooled connection, and its default resolver spawns a thread for every
/// lookup that has a timeout: a reap of 1000 jobs spawned 2000 threads. This
/// one answers an IP literal at once, and looks a host name up (through the
/// default resolver, with its timeout) once per client, that is once per run.
#[derive(Debug, Default)]
struct OnceResolver {
    looked_up: Mutex<Vec<(String, ResolvedSocketAddrs)>>,
}

impl Resolver for OnceResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host_port = match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => DefaultResolver::host_and_port(scheme, authority),
            _ => None,
        };
        let Some(host_port) = host_port else {
            return DefaultResolver::default().resolve(uri, config, timeout);
        };
        if let Ok(addr) = host_port.parse::<std::net::SocketAddr>() {
            let mut addrs = self.empty();
            addrs.push(addr);
            return Ok(addrs);
        }
        let known = |looked_up: &[(String, ResolvedSocketAddrs)]| {
            looked_up
                .iter()
                .find(|(hp, _)| *hp == host_port)
                .map(|(_, addrs)| addrs.clone())
        };
        if let Some(addrs) = known(&self.looked_up.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(addrs);
        }
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        let mut looked_up = self.looked_up.lock().unwrap_or_else(|p| p.into_inner());
        if known(&looked_up).is_none() {
            looked_up.push((host_port, addrs.clone()));
        }
        Ok(addrs)
    }
}

fn config_error(message: &str) -> ClientError {
    ClientError::Config {
        message: message.to_string(),
    }
}

fn check_job_id(id: &str) -> Result<(), ClientError> {
    if valid_job_id(id) {
        Ok(())
    } else {
        Err(ClientError::InvalidJobId { id: clip(id, 140) })
    }
}

/// `Some((normalised base, is plain http))`, or why not.
fn normalise_base_url(url: &str) -> Result<(String, bool), ClientError> {
    let shown = clip(&hide_userinfo(url), 200);
    let refuse = |why: &str| config_error(&format!("invalid API URL {shown:?}: {why}"));
    if url.is_empty() {
        return Err(config_error("the API URL is empty"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse("it contains spaces or control characters"));
    }
    if url.contains('#') {
        return Err(refuse("it has a fragment"));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| refuse(&format!("cannot parse it ({e})")))?;
    let scheme = uri
        .scheme_str()
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| refuse("expected https://host"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| refuse("expected https://host"))?;
    if authority.as_str().contains('@') {
        return Err(refuse("credentials in the URL are not supported"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(refuse("no host"));
    }
    if uri.query().is_some() {
        return Err(refuse("it has a query string"));
    }
    let plain_http = match scheme.as_str() {
        "https" => false,
        "http" if is_loopback_host(host) => true,
        "http" => {
            return Err(refuse(
                "plain http:// is allowed only for loopback hosts (127.0.0.0/8, ::1, localhost); use https://",
            ));
        }
        _ => return Err(refuse("expected https:// (or http:// for a loopback host)")),
    };
    let path = uri.path().trim_end_matches('/');
    Ok((
        format!("{scheme}://{}{path}", authority.as_str()),
        plain_http,
    ))
}

/// `url` with any `user:password@` replaced by `***@`, for messages.
fn hide_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// `localhost`, `127.0.0.0/8`, `[::1]`.
fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback());
    }
    host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

/// DNS budget of one attempt.
fn resolve_timeout(timeout: Duration) -> Duration {
    (timeout / 4).min(RESOLVE_TIMEOUT_CAP)
}

/// Connect (TCP + TLS) budget of one attempt. DNS + connect budgets stay
/// below the overall `timeout`, so an expiry before the request is sent is
/// always reported as `Timeout::Resolve`/`Timeout::Connect`, never as
/// `Timeout::Global` (which then always means "after the connection was up").
fn connect_timeout(timeout: Duration) -> Duration {
    (timeout / 2).min(CONNECT_TIMEOUT_CAP)
}

fn secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Errors that come from the request or the environment, not the network:
/// retrying cannot help.
fn is_local_error(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::BadUri(_)
            | ureq::Error::Http(_)
            | ureq::Error::InvalidProxyUrl
            | ureq::Error::RequireHttpsOnly(_)
    )
}

/// Whether a failed attempt may have reached the service.
///
/// Not delivered: DNS failure, refused or unreachable connection, connect
/// or DNS timeout, proxy CONNECT failure, TLS handshake failure (rustls
/// errors come as `io::ErrorKind::InvalidData`). Everything else (reset,
/// EOF, broken pipe, protocol error, a timeout after connecting, anything
/// unrecognised) may have been.
fn maybe_delivered(e: &ureq::Error) -> bool {
    use io::ErrorKind as K;
    match e {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::ConnectProxyFailed(_)
        | ureq::Error::Tls(_)
        | ureq::Error::TlsRequired
        | ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::InvalidProxyUrl
        | ureq::Error::RequireHttpsOnly(_) => false,
        ureq::Error::Timeout(t) => !matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect),
        ureq::Error::Io(io) => matches!(
            io.kind(),
            K::ConnectionReset
                | K::ConnectionAborted
                | K::BrokenPipe
                | K::UnexpectedEof
                | K::TimedOut
                | K::WriteZero
                | K::Interrupted
                | K::NotConnected
                | K::WouldBlock
                | K::Other
        ),
        _ => true,
    }
}

/// `Retry-After`: delta seconds, or an IMF-fixdate (`Sun, 06 Nov 1994
/// 08:49:37 GMT`) turned into the time left from `now` (zero if past).
/// Anything else: `None`.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only overflow can fail; a huge value is capped later.
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = parse_imf_fixdate(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// RFC 7231 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_imf_fixdate(s: &str) -> Option<SystemTime> {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    fn digits(s: &str, n: usize) -> Option<u32> {
        if s.len() == n && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    }

    let parts: Vec<&str> = s.split(' ').collect();
    let [day_name, day, month, year, time, zone] = parts.as_slice() else {
        return None;
    };
    let day_name = day_name.strip_suffix(',')?;
    if !DAYS.contains(&day_name) || *zone != "GMT" {
        return None;
    }
    let day = digits(day, 2)?;
    let month = MONTHS.iter().position(|m| m == month)? as u32 + 1;
    let year = digits(year, 4)?;
    let mut hms = time.split(':');
    let (h, m, sec) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() {
        return None;
    }
    let (h, m, sec) = (digits(h, 2)?, digits(m, 2)?, digits(sec, 2)?);
    if h > 23 || m > 59 || sec > 60 || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let t = days * 86_400 + i64::from(h * 3600 + m * 60 + sec);
    if t < 0 {
        return Some(UNIX_EPOCH);
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(t as u64))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Uniform in `[0, ceiling]`.
fn jitter(ceiling: Duration) -> Duration {
    let n = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    let r = next_random();
    let pick = match n.checked_add(1) {
        Some(span) => r % span,
        None => r,
    };
    Duration::from_nanos(pick)
}

/// splitmix64 over a per-thread state seeded from the clock, the thread id,
/// a process counter and std's randomly keyed hasher.
fn next_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|state| {
        let mut s = state.get();
        if s == 0 {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let mut h = RandomState::new().build_hasher();
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                .hash(&mut h);
            std::thread::current().id().hash(&mut h);
            COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
            s = h.finish() | 1;
        }
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read as _, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    const KEY: &str = "sekrit-key-0123456789";
    const IDEM: &str = "ccl-0123456789abcdef0123";

    // ---- a tiny HTTP/1.1 server answering canned replies -------------------

    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    enum Reply {
        Send(Vec<u8>),
        /// Drop the connection without answering.
        Close,
        Delay(Duration, Vec<u8>),
        /// A 200 with a body of this many bytes.
        Huge(usize),
    }

    fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        if !body.is_empty() {
            out.push_str("Content-Type: application/json\r\n");
        }
        for (n, v) in headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(body);
        Reply::Send(out.into_bytes())
    }

    fn json(status: u16, body: &str) -> Reply {
        reply(status, &[], body)
    }

    type Handler = dyn Fn(usize, &Seen) -> Reply + Send + Sync;

    struct Fake {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
        connections: Arc<AtomicUsize>,
    }

    impl Fake {
        fn start(handler: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Fake {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let connections = Arc::new(AtomicUsize::new(0));
            let handler: Arc<Handler> = Arc::new(handler);
            let (s, c) = (seen.clone(), connections.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    c.fetch_add(1, Ordering::SeqCst);
                    let (s, h) = (s.clone(), handler.clone());
                    std::thread::spawn(move || serve(stream, &*h, &s));
                }
            });
            Fake {
                addr,
                seen,
                connections,
            }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn requests(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn client(&self) -> Client {
            self.client_with(|_| {})
        }

        fn client_with(&self, tweak: impl FnOnce(&mut ClientConfig)) -> Client {
            let mut cfg = test_config(&self.url());
            tweak(&mut cfg);
            Client::new(cfg).unwrap()
        }
    }

    fn test_config(url: &str) -> ClientConfig {
        ClientConfig {
            base_url: url.to_string(),
            api_key: KEY.to_string(),
            timeout: Duration::from_secs(5),
            retries: 3,
            max_retry_wait: Duration::from_millis(20),
            backoff_base: Duration::from_millis(1),
        }
    }

    fn serve(stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<Seen>>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        while let Some(req) = read_request(&mut reader) {
            let n = {
                let mut s = seen.lock().unwrap();
                s.push(req.clone());
                s.len() - 1
            };
            let ok = match handler(n, &req) {
                Reply::Send(bytes) => stream.write_all(&bytes).is_ok(),
                Reply::Close => return,
                Reply::Delay(d, bytes) => {
                    std::thread::sleep(d);
                    stream.write_all(&bytes).is_ok()
                }
                Reply::Huge(len) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
                    );
                    if stream.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let chunk = vec![b' '; 64 * 1024];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if stream.write_all(&chunk[..n]).is_err() {
                            return;
                        }
                        left -= n;
                    }
                    true
                }
            };
            if !ok {
                return;
            }
        }
    }

    fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Seen> {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let mut words = line.split_whitespace();
        let method = words.next()?.to_string();
        let path = words.next()?.to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).ok()? == 0 {
                return None;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':')?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
        Some(Seen {
            method,
            path,
            headers,
            body,
        })
    }

    fn submit_request() -> SubmitRequest {
        SubmitRequest::new(
            "normal".into(),
            "Task: t1.md\n\nDo X.\n\nProvide a complete, self-contained answer.".into(),
            Some("gemini".into()),
            None,
            "proj".into(),
            "t1.md".into(),
        )
    }

    const STATUS_J1: &str = r#"{"job_id":"j-1","status":"running","error":null,"provider":"gemini","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:01Z","extra":{"x":1}}"#;

    // ---- pure functions ----------------------------------------------------

    #[test]
    fn header_blocks_up_to_16_kib_are_read_and_larger_ones_refused() {
        for (size, ok) in [(15_000usize, true), (17_000, false), (40_000, false)] {
            let big = "x".repeat(size);
            let fake = Fake::start(move |_, _| {
                reply(
                    200,
                    &[("X-Big", big.as_str())],
                    r#"{"job_id":"j-1","status":"queued","error":null,"provider":null}"#,
                )
            });
            let got = fake.client_with(|c| c.retries = 0).status("j-1");
            match got {
                Ok(st) => assert!(ok, "{size}: {st:?}"),
                Err(e) => assert!(
                    !ok && e.to_string().contains("response header is too big"),
                    "{size}: {e}"
                ),
            }
        }
    }

    #[test]
    fn client_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Client>();
        check::<ClientError>();
    }

    #[test]
    fn url_validation() {
        let ok = |u: &str| normalise_base_url(u).map(|(b, _)| b);
        assert_eq!(
            ok("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(ok("http://127.3.4.5/").unwrap(), "http://127.3.4.5");
        assert_eq!(ok("http://[::1]:8080").unwrap(), "http://[::1]:8080");
        assert_eq!(ok("http://localhost").unwrap(), "http://localhost");
        assert_eq!(ok("HTTP://LocalHost:9/").unwrap(), "http://LocalHost:9");
        assert_eq!(
            ok("https://secutools.example.org/").unwrap(),
            "https://secutools.example.org"
        );
        assert_eq!(
            ok("https://example.org:8443/prefix/").unwrap(),
            "https://example.org:8443/prefix"
        );
        assert!(normalise_base_url("http://localhost").unwrap().1);
        assert!(!normalise_base_url("https://localhost").unwrap().1);
        for bad in [
            "",
            "http://example.org",
            "http://128.0.0.1",
            "http://[::2]:80",
            "http://localhost.example.org",
            "http://0.0.0.0:80",
            "ftp://example.org",
            "example.org",
            "/api",
            "https://user:pw@example.org",
            "https://example.org/?x=1",
            "https://example.org/#frag",
            "https://exa mple.org",
            "https://example.org\n",
        ] {
            let e = normalise_base_url(bad).unwrap_err();
            assert!(matches!(e, ClientError::Config { .. }), "{bad}: {e}");
        }
        let e = normalise_base_url("http://example.org")
            .unwrap_err()
            .to_string();
        assert!(e.contains("loopback"), "{e}");
        for with_pw in [
            "https://u:pw@example.org",
            "http://u:pw@example.org/x",
            "https://u:pw@exa mple.org",
        ] {
            let e = normalise_base_url(with_pw).unwrap_err().to_string();
            assert!(!e.contains("pw"), "{e}");
            assert!(e.contains("***@"), "{e}");
        }
    }

    #[test]
    fn client_new_checks_key_and_timeout() {
        let mk = |key: &str, timeout: Duration| {
            Client::new(ClientConfig {
                base_url: "https://example.org".into(),
                api_key: key.into(),
                timeout,
                ..ClientConfig::default()
            })
        };
        assert!(mk("abc-DEF_123", Duration::from_secs(1)).is_ok());
        for key in ["", "two words", "tab\tkey", "line\nkey", "clé"] {
            let e = mk(key, Duration::from_secs(1)).unwrap_err();
            assert!(matches!(e, ClientError::Config { .. }));
            if !key.is_empty() {
                assert!(!e.to_string().contains(key));
            }
        }
        assert!(mk("k", Duration::ZERO).is_err());
        let debug = format!(
            "{:?} {:?}",
            mk("very-secret", Duration::from_secs(1)).unwrap(),
            test_config("https://x")
        );
        assert!(
            !debug.contains("very-secret") && !debug.contains(KEY),
            "{debug}"
        );
    }

    #[test]
    fn job_id_validation() {
        for ok in ["j-1", "a", "A.b_c-9", "...", "a..b", &"x".repeat(128)] {
            assert!(valid_job_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a b",
            "é",
            "a\n",
            "a%2f",
            &"x".repeat(129),
        ] {
            assert!(!valid_job_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn idempotency_key_validation() {
        for ok in [
            IDEM,
            "0123456789abcdef",
            "A_B-C_D-E_F-G_H-",
            &"k".repeat(128),
        ] {
            assert!(valid_idempotency_key(ok), "{ok}");
        }
        for bad in [
            "",
            "0123456789abcde",
            "0123456789abcde.",
            "0123456789abcdef ",
            "0123456789/abcdef",
            &"k".repeat(129),
        ] {
            assert!(!valid_idempotency_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn retry_after_parsing() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_700); // 1994-11-06 08:48:20
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(77))
        );
        // In the past: no wait.
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH)
        );
        assert_eq!(
            parse_imf_fixdate("Tue, 29 Feb 2000 23:59:59 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(951_868_799))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994  08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn status_parsing() {
        for (s, st, terminal) in [
            ("queued", Status::Queued, false),
            ("running", Status::Running, false),
            ("completed", Status::Completed, true),
            ("failed", Status::Failed, true),
            ("cancelled", Status::Cancelled, true),
            ("expired", Status::Expired, true),
        ] {
            let parsed = Status::parse(s);
            assert_eq!(parsed, st);
            assert_eq!(parsed.is_terminal(), terminal);
            assert_eq!(parsed.as_str(), s);
        }
        let u = Status::parse("Paused\u{1b}[31m");
        assert_eq!(u, Status::Unknown("Paused\u{1b}[31m".into()));
        assert!(!u.is_terminal());
        assert!(!u.to_string().contains('\u{1b}'));
        assert!(!Status::parse("COMPLETED").is_terminal());
    }

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        let client = Client::new(ClientConfig {
            base_url: "https://example.org".into(),
            api_key: KEY.into(),
            backoff_base: Duration::from_millis(200),
            max_retry_wait: Duration::from_secs(1),
            ..ClientConfig::default()
        })
        .unwrap();
        let mut seen_nonzero = false;
        for _ in 0..200 {
            let w0 = client.retry_wait(0, None);
            assert!(w0 <= Duration::from_millis(200));
            assert!(client.retry_wait(2, None) <= Duration::from_millis(800));
            assert!(client.retry_wait(40, None) <= Duration::from_secs(1));
            seen_nonzero |= w0 > Duration::ZERO;
        }
        assert!(seen_nonzero);
        let a: Vec<u64> = (0..8).map(|_| next_random()).collect();
        let mut b = a.clone();
        b.dedup();
        assert_eq!(a, b);
        assert_eq!(
            client.retry_wait(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(1)
        );
        assert_eq!(
            client.retry_wait(5, Some(Duration::from_millis(7))),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn transport_error_classification() {
        let io = |k| ureq::Error::Io(io::Error::new(k, "x"));
        use io::ErrorKind as K;
        for e in [
            io(K::ConnectionRefused),
            io(K::NetworkUnreachable),
            io(K::HostUnreachable),
            io(K::AddrNotAvailable),
            io(K::InvalidData), // rustls handshake failures
            ureq::Error::HostNotFound,
            ureq::Error::Timeout(ureq::Timeout::Connect),
            ureq::Error::Timeout(ureq::Timeout::Resolve),
            ureq::Error::ConnectionFailed,
            ureq::Error::Tls("x"),
        ] {
            assert!(!maybe_delivered(&e), "{e}");
        }
        for e in [
            io(K::ConnectionReset),
            io(K::UnexpectedEof),
            io(K::BrokenPipe),
            io(K::Other),
            ureq::Error::Timeout(ureq::Timeout::Global),
            ureq::Error::Timeout(ureq::Timeout::RecvResponse),
            ureq::Error::Timeout(ureq::Timeout::RecvBody),
        ] {
            assert!(maybe_delivered(&e), "{e}");
        }
    }

    /// A DNS failure comes from std as an `Uncategorized` io error (a kind
    /// that cannot be named on stable), or, if the resolver hangs, as
    /// `Timeout::Resolve`: either way nothing was sent.
    #[test]
    fn dns_failure_is_unavailable() {
        let client = Client::new(ClientConfig {
            timeout: Duration::from_secs(2),
            retries: 0,
            ..test_config("https://no-such-host.invalid")
        })
        .unwrap();
        let e = client.status("j-1").unwrap_err();
        assert!(
            matches!(e, ClientError::Unavailable { attempts: 1, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn phase_budgets_stay_below_the_global_timeout() {
        for t in [1, 10, 300, 1_000, 5_000, 30_000, 120_000] {
            let t = Duration::from_millis(t);
            assert!(resolve_timeout(t) + connect_timeout(t) < t);
            assert!(connect_timeout(t) <= Duration::from_secs(10));
        }
        assert_eq!(
            connect_timeout(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn submit_request_serialises_per_contract() {
        let v = serde_json::to_value(submit_request()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "analyze",
                "priority": "normal",
                "prompt": "Task: t1.md\n\nDo X.\n\nProvide a complete, self-contained answer.",
                "preferred_ai": "gemini",
                "source": format!("ccl-delegate/{}", env!("CARGO_PKG_VERSION")),
                "metadata": {"project": "proj", "task": "t1.md"}
            })
        );
        let mut r = submit_request();
        r.preferred_ai = None;
        r.complexity_hint = Some("hard".into());
        let v = serde_json::to_value(r).unwrap();
        assert!(v.get("preferred_ai").is_none());
        assert_eq!(v["complexity_hint"], "hard");
    }

    // ---- against the fake server -------------------------------------------

    #[test]
    fn submit_created() {
        let fake = Fake::start(|_, _| json(201, r#"{"job_id":"j-1","status":"queued","x":[1]}"#));
        let got = fake.client().submit(&submit_request(), IDEM).unwrap();
        assert_eq!(
            got,
            Submitted {
                job_id: "j-1".into(),
                replayed: false
            }
        );
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/api/v1/jobs")
        );
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {KEY}")));
        assert_eq!(r.header("idempotency-key"), Some(IDEM));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("user-agent"), Some(USER_AGENT));
        assert_eq!(r.header("accept"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body, serde_json::to_value(submit_request()).unwrap());
    }

    #[test]
    fn submit_accepted_and_replayed() {
        let fake = Fake::start(|n, _| {
            json(
                if n == 0 { 202 } else { 200 },
                r#"{"job_id":"j-1","status":"queued"}"#,
            )
        });
        let c = fake.client();
        assert!(!c.submit(&submit_request(), IDEM).unwrap().replayed);
        let again = c.submit(&submit_request(), IDEM).unwrap();
        assert!(again.replayed);
        assert_eq!(again.job_id, "j-1");
    }

    #[test]
    fn auth_is_never_retried_and_the_key_never_shown() {
        for status in [401, 403] {
            let fake =
                Fake::start(move |_, _| json(status, &format!(r#"{{"error":"bad key {KEY}"}}"#)));
            let e = fake.client().submit(&submit_request(), IDEM).unwrap_err();
            assert!(
                matches!(e, ClientError::Auth { status: s, .. } if s == status),
                "{e}"
            );
            assert!(e.nothing_created());
            assert_eq!(fake.requests().len(), 1);
            let text = e.to_string();
            assert!(!text.contains(KEY), "{text}");
            assert!(text.contains("bad key <redacted>"), "{text}");
            assert!(
                text.starts_with(&format!("POST {}/api/v1/jobs: ", fake.url())),
                "{text}"
            );
        }
    }

    #[test]
    fn other_4xx_is_rejected_without_retry() {
        for status in [400, 413, 422] {
            let fake = Fake::start(move |_, _| json(status, r#"{"error":"prompt too large"}"#));
            let e = fake.client().submit(&submit_request(), IDEM).unwrap_err();
            assert!(
                matches!(&e, ClientError::Rejected { status: s, message, .. }
                    if *s == status && message == "prompt too large"),
                "{e}"
            );
            assert_eq!(fake.requests().len(), 1);
        }
    }

    #[test]
    fn transient_errors_are_retried_with_the_same_key() {
        let fake = Fake::start(|n, _| match n {
            0 => json(503, r#"{"error":"busy"}"#),
            1 => reply(429, &[("Retry-After", "0")], ""),
            _ => json(201, r#"{"job_id":"j-9","status":"queued"}"#),
        });
        let got = fake.client().submit(&submit_request(), IDEM).unwrap();
        assert_eq!(got.job_id, "j-9");
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 3);
        assert!(
            reqs.iter()
                .all(|r| r.header("idempotency-key") == Some(IDEM))
        );
    }

    #[test]
    fn after_a_call_used_up_its_retries_calls_try_once_until_the_service_answers() {
        let fake = Fake::start(|n, _| match n {
            5 => json(200, r#"{"job_id":"j-1","status":"running"}"#),
            _ => json(503, r#"{"error":"mock overload"}"#),
        });
        let client = fake.client();
        let e = client.status("j-1").unwrap_err();
        assert!(
            matches!(e, ClientError::Unavailable { attempts: 4, .. }),
            "{e:?}"
        );
        let e = client.status("j-1").unwrap_err();
        assert!(
            matches!(e, ClientError::Unavailable { attempts: 1, .. }),
            "{e:?}"
        );
        assert_eq!(client.status("j-1").unwrap().status, Status::Running);
        let e = client.status("j-1").unwrap_err();
        assert!(
            matches!(e, ClientError::Unavailable { attempts: 4, .. }),
            "{e:?}"
        );
        assert_eq!(fake.requests().len(), 10);
    }

    #[test]
    fn unavailable_after_all_attempts_names_the_request() {
        let fake = Fake::start(|_, _| json(503, r#"{"error":"mock overload"}"#));
        let e = fake.client().status("j-1").unwrap_err();
        assert!(
            matches!(e, ClientError::Unavailable { attempts: 4, .. }),
            "{e:?}"
        );
        assert!(e.nothing_created());
        assert_eq!(
            e.to_string(),
            format!(
                "GET {}/api/v1/jobs/j-1: service unavailable after 4 attempts: 503 mock overload",
                fake.url()
            )
        );
        assert_eq!(fake.requests().len(), 4);

        let fake = Fake::start(|_, _| json(500, ""));
        let e = fake
            .client_with(|c| c.retries = 0)
            .status("j-1")
            .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("after 1 attempt: 500 Internal Server Error"),
            "{e}"
        );
    }

    #[test]
    fn connection_refused_is_unavailable() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = Client::new(test_config(&format!("http://127.0.0.1:{port}"))).unwrap();
        let e = client.submit(&submit_request(), IDEM).unwrap_err();
        assert!(
            matches!(&e, ClientError::Unavailable { attempts: 4, message, .. }
                if message == "connection refused"),
            "{e:?}"
        );
        assert!(e.nothing_created());
    }

    #[test]
    fn post_closed_without_answer_is_unknown() {
        let fake = Fake::start(|_, _| Reply::Close);
        let e = fake.client().submit(&submit_request(), IDEM).unwrap_err();
        assert!(
            matches!(e, ClientError::Unknown { attempts: 4, .. }),
            "{e:?}"
        );
        assert!(!e.nothing_created());
        assert!(
            e.to_string().contains("may have reached the service"),
            "{e}"
        );
        assert_eq!(fake.requests().len(), 4);
    }

    #[test]
    fn a_later_answer_settles_an_unknown_attempt_only_when_definite() {
        // Lost answer, then a replay: success.
        let fake = Fake::start(|n, _| match n {
            0 => Reply::Close,
            _ => json(200, r#"{"job_id":"j-2","status":"queued"}"#),
        });
        let got = fake.client().submit(&submit_request(), IDEM).unwrap();
        assert_eq!(got.job_id, "j-2");
        // Lost answer, then only 503s: the first may have created the job.
        let fake = Fake::start(|n, _| match n {
            0 => Reply::Close,
            _ => json(503, "{}"),
        });
        let e = fake.client().submit(&submit_request(), IDEM).unwrap_err();
        assert!(matches!(e, ClientError::Unknown { .. }), "{e:?}");
        assert!(e.to_string().ends_with("503 Service Unavailable"), "{e}");
        // Lost answer, then 400: the request is refused whatever happened.
        let fake = Fake::start(|n, _| match n {
            0 => Reply::Close,
            _ => json(400, r#"{"error":"bad priority"}"#),
        });
        let e = fake.client().submit(&submit_request(), IDEM).unwrap_err();
        assert!(
            matches!(e, ClientError::Rejected { status: 400, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn slow_server_times_out() {
        let fake =
            Fake::start(|_, _| Reply::Delay(Duration::from_millis(1500), json_bytes(STATUS_J1)));
        let client = fake.client_with(|c| {
            c.timeout = Duration::from_millis(300);
            c.retries = 1;
        });
        let start = Instant::now();
        let e = client.status("j-1").unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(e, ClientError::Unknown { attempts: 2, .. }),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("timed out after 300ms (global)"),
            "{e}"
        );
        assert!(took < Duration::from_millis(1200), "{took:?}");
        assert_eq!(fake.requests().len(), 2);
    }

    fn json_bytes(body: &str) -> Vec<u8> {
        match json(200, body) {
            Reply::Send(b) => b,
            _ => unreachable!(),
        }
    }

    #[test]
    fn body_over_the_cap_is_a_bad_answer() {
        let fake = Fake::start(|_, _| Reply::Huge(33 * 1024 * 1024));
        let e = fake
            .client_with(|c| c.timeout = Duration::from_secs(30))
            .status("j-1")
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::BadAnswer { message, .. }
                if message == "response body over 32 MiB"),
            "{e:?}"
        );
        assert_eq!(fake.requests().len(), 1);
        // Exactly at the cap is fine as far as size goes (then: not JSON
        // object, since it is all spaces).
        let fake = Fake::start(|_, _| Reply::Huge(32 * 1024 * 1024));
        let e = fake
            .client_with(|c| c.timeout = Duration::from_secs(30))
            .status("j-1")
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::BadAnswer { message, .. } if message.starts_with("malformed JSON")),
            "{e:?}"
        );
    }

    #[test]
    fn odd_error_provider_and_cost_fields_never_cost_the_answer() {
        let fake = Fake::start(|_, _| {
            json(
                200,
                r#"{"job_id":"j-1","status":"failed","error":{"code":7},"provider":5}"#,
            )
        });
        let st = fake.client().status("j-1").unwrap();
        assert_eq!(st.status, Status::Failed);
        assert_eq!(st.error.as_deref(), Some(r#"{"code":7}"#));
        assert_eq!(st.provider.as_deref(), Some("5"));
        let fake = Fake::start(|_, _| {
            json(
                200,
                r#"{"job_id":"j-1","response":"Hi","model":null,"tokens_in":1.5}"#,
            )
        });
        let r = fake.client().result("j-1").unwrap();
        assert_eq!(
            (r.response.as_str(), r.model.as_str(), r.cost_cad),
            ("Hi", "", 0.0)
        );
        assert_eq!(r.tokens_in, None);
    }

    #[test]
    fn malformed_answers_are_bad_answers() {
        for body in [
            "not json",
            "[1,2]",
            r#"{"status":"queued"}"#,
            r#"{"job_id":7,"status":"queued"}"#,
            r#"{"job_id":"j-1"}"#,
        ] {
            let body = body.to_string();
            let fake = Fake::start(move |_, _| json(200, &body));
            let e = fake.client().status("j-1").unwrap_err();
            assert!(matches!(e, ClientError::BadAnswer { .. }), "{e:?}");
            assert_eq!(fake.requests().len(), 1, "never retried");
        }
    }

    #[test]
    fn a_key_echoed_by_the_service_is_redacted_from_answers() {
        let body = format!(
            r#"{{"job_id":"j-1","status":"failed","error":"key {KEY} expired","provider":"gpu","x":[{{"y":"{KEY}"}}]}}"#
        );
        let fake = Fake::start(move |_, _| json(200, &body));
        let st = fake.client().status("j-1").unwrap();
        assert_eq!(st.error.as_deref(), Some("key <redacted> expired"));
        assert!(!st.raw.to_string().contains(KEY), "{}", st.raw);
    }

    #[test]
    fn job_ids_from_the_server_are_checked() {
        let fake = Fake::start(|_, _| json(201, r#"{"job_id":"../x","status":"queued"}"#));
        let e = fake.client().submit(&submit_request(), IDEM).unwrap_err();
        assert!(
            matches!(&e, ClientError::BadAnswer { message, .. } if message.contains("invalid job id \"../x\"")),
            "{e:?}"
        );
        assert!(!e.nothing_created());

        let fake = Fake::start(|_, _| json(200, r#"{"job_id":"..","status":"queued"}"#));
        assert!(matches!(
            fake.client().status("j-1"),
            Err(ClientError::BadAnswer { .. })
        ));
        let fake = Fake::start(|_, _| json(200, STATUS_J1));
        let e = fake.client().status("j-2").unwrap_err();
        assert!(
            e.to_string().contains("about job \"j-1\", not \"j-2\""),
            "{e}"
        );
    }

    #[test]
    fn invalid_input_never_reaches_the_network() {
        let fake = Fake::start(|_, _| json(200, STATUS_J1));
        let c = fake.client();
        for id in ["../x", "", "..", "a/b", "j 1"] {
            assert!(matches!(
                c.status(id),
                Err(ClientError::InvalidJobId { .. })
            ));
            assert!(matches!(
                c.result(id),
                Err(ClientError::InvalidJobId { .. })
            ));
            assert!(matches!(
                c.cancel(id),
                Err(ClientError::InvalidJobId { .. })
            ));
        }
        let e = c.submit(&submit_request(), "short").unwrap_err();
        assert!(matches!(e, ClientError::InvalidIdempotencyKey { .. }));
        let e = c.status("a\u{1b}[2J/..").unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e}");
        assert!(fake.requests().is_empty());
    }

    #[test]
    fn status_result_and_cancel() {
        let fake = Fake::start(|_, r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/api/v1/jobs/j-1") => json(200, STATUS_J1),
            ("GET", "/api/v1/jobs/j-2") => json(
                200,
                r#"{"job_id":"j-2","status":"paused","error":"odd","provider":null}"#,
            ),
            ("GET", "/api/v1/jobs/j-1/result") => json(
                200,
                r#"{"job_id":"j-1","provider":"gemini","model":"gemini-2.5-pro","response":"Hi\n","cost_cad":0.0123,"tokens_in":10,"new":true}"#,
            ),
            ("GET", "/api/v1/jobs/j-3/result") => json(
                200,
                r#"{"job_id":"j-3","provider":"gpu","model":"m","response":"","cost_cad":0}"#,
            ),
            ("GET", "/api/v1/jobs/j-2/result") => json(409, r#"{"error":"job not completed"}"#),
            ("POST", "/api/v1/jobs/j-1/cancel") => json(
                202,
                r#"{"job_id":"j-1","status":"cancelled","error":null,"provider":"gemini"}"#,
            ),
            ("POST", "/api/v1/jobs/j-2/cancel") => json(409, r#"{"error":"already terminal"}"#),
            _ => json(404, r#"{"error":"no such job"}"#),
        });
        let c = fake.client();

        let s = c.status("j-1").unwrap();
        assert_eq!(s.status, Status::Running);
        assert_eq!(s.provider.as_deref(), Some("gemini"));
        assert_eq!(s.error, None);
        assert_eq!(s.raw["extra"]["x"], 1);
        assert_eq!(
            s.raw,
            serde_json::from_str::<serde_json::Value>(STATUS_J1).unwrap()
        );

        let s = c.status("j-2").unwrap();
        assert_eq!(s.status, Status::Unknown("paused".into()));
        assert_eq!(s.error.as_deref(), Some("odd"));
        assert_eq!(s.provider, None);

        let r = c.result("j-1").unwrap();
        assert_eq!(
            (r.provider.as_str(), r.model.as_str(), r.response.as_str()),
            ("gemini", "gemini-2.5-pro", "Hi\n")
        );
        assert_eq!(
            (r.cost_cad, r.tokens_in, r.tokens_out),
            (0.0123, Some(10), None)
        );
        assert_eq!(r.raw["new"], true);
        let r = c.result("j-3").unwrap();
        assert_eq!(r.cost_cad, 0.0);

        let e = c.result("j-2").unwrap_err();
        assert!(
            matches!(&e, ClientError::Conflict { message, .. } if message == "job not completed"),
            "{e:?}"
        );

        let s = c.cancel("j-1").unwrap();
        assert_eq!(s.status, Status::Cancelled);
        assert!(s.status.is_terminal());
        assert!(matches!(c.cancel("j-2"), Err(ClientError::Conflict { .. })));

        let e = c.status("j-404").unwrap_err();
        assert!(matches!(e, ClientError::NotFound { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "GET {}/api/v1/jobs/j-404: not found (404): no such job",
                fake.url()
            )
        );

        let reqs = fake.requests();
        let cancel = reqs.iter().find(|r| r.method == "POST").unwrap();
        assert_eq!(cancel.header("content-length"), Some("0"));
        assert_eq!(cancel.header("idempotency-key"), None);
        assert!(
            reqs.iter()
                .all(|r| r.header("authorization") == Some(&*format!("Bearer {KEY}")))
        );
        // 404 and 409 are never retried.
        assert_eq!(reqs.len(), 8);
    }

    #[test]
    fn base_path_prefix_is_kept() {
        let fake = Fake::start(|_, _| json(200, STATUS_J1));
        let client = Client::new(test_config(&format!("{}/st/", fake.url()))).unwrap();
        client.status("j-1").unwrap();
        assert_eq!(fake.requests()[0].path, "/st/api/v1/jobs/j-1");
    }

    #[test]
    fn redirects_are_not_followed() {
        let fake =
            Fake::start(|_, _| reply(302, &[("Location", "http://127.0.0.1:1/elsewhere")], ""));
        let e = fake.client().status("j-1").unwrap_err();
        assert!(
            matches!(e, ClientError::Rejected { status: 302, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("not followed"), "{e}");
        assert_eq!(fake.requests().len(), 1);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let fake = Fake::start(|n, _| match n {
            0 => reply(503, &[("Retry-After", "3600")], ""),
            _ => json(200, STATUS_J1),
        });
        let start = Instant::now();
        fake.client().status("j-1").unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));

        let fake = Fake::start(|n, _| match n {
            0 => reply(429, &[("Retry-After", "1")], ""),
            _ => json(200, STATUS_J1),
        });
        let start = Instant::now();
        fake.client_with(|c| c.max_retry_wait = Duration::from_secs(5))
            .status("j-1")
            .unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(950),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn error_text_is_cleaned_and_clipped() {
        let long = format!("\u{1b}[31mred\u{202e}\n{}", "y".repeat(1000));
        let body = serde_json::json!({ "error": long }).to_string();
        let fake = Fake::start(move |_, _| json(400, &body));
        let e = fake.client().status("j-1").unwrap_err();
        let ClientError::Rejected { message, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(message.chars().count() <= 301, "{}", message.len());
        assert!(message.ends_with('…'));
        assert!(!message.chars().any(is_unsafe_char), "{message:?}");
        assert!(message.starts_with("[31mred"), "{message:?}");

        // A non-JSON error body shows its text.
        let fake = Fake::start(|_, _| reply(400, &[], "plain words"));
        let e = fake.client().status("j-1").unwrap_err();
        assert!(e.to_string().ends_with("(400): plain words"), "{e}");
    }

    #[test]
    fn one_agent_reuses_connections_across_threads() {
        let fake = Fake::start(|_, _| json(200, STATUS_J1));
        let client = fake.client();
        for _ in 0..20 {
            client.status("j-1").unwrap();
        }
        assert_eq!(fake.connections.load(Ordering::SeqCst), 1);

        let client = Arc::new(client);
        let handles: Vec<_> = (0..32)
            .map(|_| {
                let c = client.clone();
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        c.status("j-1").unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(fake.requests().len(), 20 + 32 * 5);
        assert!(fake.connections.load(Ordering::SeqCst) <= 1 + 32);
    }

    /// A listener whose accept queue is full drops SYNs: connecting hangs
    /// until the connect budget runs out, and that is a sure failure.
    #[cfg(target_os = "linux")]
    #[test]
    fn connect_timeout_is_unavailable() {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) on a socket we own; it only changes the backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        let mut full = false;
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(_) => {
                    full = true;
                    break;
                }
            }
        }
        if !full {
            eprintln!("accept queue never filled; skipping");
            return;
        }
        let client = Client::new(ClientConfig {
            timeout: Duration::from_millis(600),
            retries: 1,
            ..test_config(&format!("http://{addr}"))
        })
        .unwrap();
        let start = Instant::now();
        let e = client.submit(&submit_request(), IDEM).unwrap_err();
        assert!(
            matches!(&e, ClientError::Unavailable { attempts: 2, message, .. }
                if message == "connect timed out after 300ms"),
            "{e:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(fillers);
    }
}
