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
//!   attempt settled it with a `2xx` or `4xx` answer. A submission whose
//!   body was not yet wholly taken when its attempt failed was not
//!   delivered; one over 32 MiB is never sent ([`ClientError::TooLarge`]).
//!
//! Its parts: `wire` (the JSON both ways, id rules, lenient fields),
//! `error` (the error type and the "maybe delivered" rule), `url`,
//! `retry` (`Retry-After` and backoff), `resolver` (a ureq workaround).

mod error;
mod resolver;
mod retry;
#[cfg(test)]
mod tests;
mod url;
mod wire;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::text::{clip, is_unsafe_char};

pub use error::{ClientError, ConfigField, Endpoint, code_of_cause};
pub use wire::{
    JobResult, JobStatus, MAX_COST_CAD, MAX_REQUEST_BODY_BYTES, Status, SubmitMetadata,
    SubmitRequest, Submitted, check_body_size, valid_idempotency_key, valid_job_id,
};

use error::{attempt_maybe_delivered, config_error, is_local_error};
use resolver::OnceResolver;
use url::normalise_base_url;

/// Whether a base URL is one the client takes (https, or http to a
/// loopback address): the check `Client::new` makes, for `doctor`.
pub fn check_base_url(url: &str) -> Result<(), ClientError> {
    normalise_base_url(url).map(|_| ())
}

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

/// A submission body from this size on is sent with `Expect:
/// 100-continue` (curl's threshold): a server that refuses it says so
/// before the upload, and the refusal is read instead of a broken pipe.
const EXPECT_CONTINUE_FROM_BYTES: usize = 1024 * 1024;

/// Buffers of each connection. ureq's defaults (128 KiB each, zero-filled)
/// cost 8 MiB of resident memory for a reap polling on 32 connections. The
/// input buffer must hold a whole response header block, which is capped
/// below it so that a larger one is a clear error; bodies stream through.
const INPUT_BUFFER_BYTES: usize = 32 * 1024;
const OUTPUT_BUFFER_BYTES: usize = 16 * 1024;
const MAX_RESPONSE_HEADER_BYTES: usize = 16 * 1024;

const JOBS_PATH: &str = "/api/v1/jobs";

/// `http_timeout` when neither flag nor file sets it.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// `retries` when neither flag nor file sets it.
pub const DEFAULT_RETRIES: u32 = 3;

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
            timeout: DEFAULT_HTTP_TIMEOUT,
            retries: DEFAULT_RETRIES,
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
    endpoint: Endpoint,
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

/// What one attempt leaves the call with: its end, or another try.
enum Step {
    Done(Result<(u16, Vec<u8>), ClientError>),
    Retry {
        after: Option<Duration>,
        why: String,
        maybe_delivered: bool,
    },
}

impl Client {
    /// Checks the URL (https, or http for loopback only), the key and the
    /// timeout, and builds the agent.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let (base, plain_http) = normalise_base_url(&cfg.base_url)?;
        if cfg.api_key.is_empty() {
            return Err(config_error(ConfigField::Key, "the API key is empty"));
        }
        if !cfg.api_key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(config_error(
                ConfigField::Key,
                "the API key contains spaces, control or non-ASCII characters",
            ));
        }
        if cfg.timeout.is_zero() {
            return Err(config_error(
                ConfigField::Timeout,
                "the HTTP timeout must be more than zero",
            ));
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
        let body = serde_json::to_vec(req).map_err(|e| {
            config_error(
                ConfigField::Request,
                &format!("cannot encode the request: {e}"),
            )
        })?;
        wire::body_size_rule(body.len() as u64)?;
        let call = self.call(
            Endpoint::Submit,
            Method::Post,
            JOBS_PATH,
            Some(&body),
            Some(idempotency_key),
        );
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
        let call = self.call(
            Endpoint::Status,
            Method::Get,
            &format!("{JOBS_PATH}/{job_id}"),
            None,
            None,
        );
        let (_, body) = self.execute(&call)?;
        self.job_status(&call, job_id, &body)
    }

    /// `GET /api/v1/jobs/{job_id}/result`. `409` (not completed) is
    /// [`ClientError::Conflict`]; `404` is [`ClientError::NotFound`] with
    /// `endpoint: Endpoint::Result`. A missing or odd `cost_cad` is `0.0`
    /// with [`JobResult::cost_note`] set; odd token counts are dropped.
    pub fn result(&self, job_id: &str) -> Result<JobResult, ClientError> {
        check_job_id(job_id)?;
        let path = format!("{JOBS_PATH}/{job_id}/result");
        let call = self.call(Endpoint::Result, Method::Get, &path, None, None);
        let (_, body) = self.execute(&call)?;
        let raw = self.parse_object(&call, &body)?;
        // A response may be up to 32 MiB, on every polling thread: hold it
        // as few times as possible.
        drop(body);

        // The response is what the user paid for: a result that lacks (or
        // nulls) only provider or model, or whose cost or token counts are
        // odd, is still taken, rather than refused until the job times out.
        #[derive(Deserialize)]
        struct Wire {
            job_id: String,
            #[serde(default)]
            provider: Option<String>,
            #[serde(default)]
            model: Option<String>,
            response: String,
        }
        let w: Wire = self.decode(&call, &raw)?;
        self.check_answer_id(&call, &w.job_id, Some(job_id))?;
        let (cost_cad, cost_note) = wire::cost_of(raw.get("cost_cad"));
        Ok(JobResult {
            job_id: w.job_id,
            provider: w.provider.unwrap_or_default(),
            model: w.model.unwrap_or_default(),
            response: w.response,
            cost_cad,
            cost_note,
            tokens_in: wire::count_of(raw.get("tokens_in")),
            tokens_out: wire::count_of(raw.get("tokens_out")),
            raw,
        })
    }

    /// `POST /api/v1/jobs/{job_id}/cancel`. `409` (already terminal) is
    /// [`ClientError::Conflict`].
    pub fn cancel(&self, job_id: &str) -> Result<JobStatus, ClientError> {
        check_job_id(job_id)?;
        let path = format!("{JOBS_PATH}/{job_id}/cancel");
        let call = self.call(Endpoint::Cancel, Method::Post, &path, None, None);
        let (_, body) = self.execute(&call)?;
        self.job_status(&call, job_id, &body)
    }

    fn call<'a>(
        &self,
        endpoint: Endpoint,
        method: Method,
        path: &str,
        body: Option<&'a [u8]>,
        idempotency_key: Option<&'a str>,
    ) -> Call<'a> {
        let url = format!("{}{}", self.base, path);
        Call {
            endpoint,
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
            let retry_after = match self.judge(call, self.attempt(call)) {
                Step::Done(result) => return result,
                Step::Retry {
                    after,
                    why,
                    maybe_delivered: delivered,
                } => {
                    maybe_delivered |= delivered;
                    last = why;
                    after
                }
            };
            if attempt + 1 < attempts {
                std::thread::sleep(retry::retry_wait(
                    attempt,
                    retry_after,
                    self.backoff_base,
                    self.max_retry_wait,
                ));
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

    /// Whether one attempt ends the call or asks for another.
    fn judge(&self, call: &Call, attempt: Attempt) -> Step {
        match attempt {
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
                    return Step::Done(Ok((status, body)));
                }
                let message = self.error_text(status, &body);
                if matches!(status, 429 | 500..=599) {
                    return Step::Retry {
                        after: retry_after,
                        why: format!("{status} {message}"),
                        maybe_delivered: false,
                    };
                }
                Step::Done(Err(self.refusal(call, status, message, location)))
            }
            Attempt::TooLarge => Step::Done(Err(ClientError::BadAnswer {
                request: call.request.clone(),
                message: "response body over 32 MiB".to_string(),
            })),
            Attempt::Transport {
                error,
                maybe_delivered,
            } => {
                if is_local_error(&error) {
                    return Step::Done(Err(config_error(
                        ConfigField::Request,
                        &format!("{}: {}", call.request, self.clean(&error.to_string())),
                    )));
                }
                Step::Retry {
                    after: None,
                    why: self.describe_transport(&error),
                    maybe_delivered,
                }
            }
        }
    }

    /// The error of an answer that is neither 2xx nor retried.
    fn refusal(
        &self,
        call: &Call,
        status: u16,
        message: String,
        location: Option<String>,
    ) -> ClientError {
        let request = call.request.clone();
        match status {
            401 | 403 => ClientError::Auth {
                request,
                status,
                message,
            },
            404 => ClientError::NotFound {
                request,
                message,
                endpoint: call.endpoint,
            },
            409 => ClientError::Conflict { request, message },
            300..=399 => {
                let to = location
                    .map(|l| format!(" to {:?}", self.clean(&l)))
                    .unwrap_or_default();
                ClientError::Rejected {
                    request,
                    status,
                    message: format!("redirect{to} not followed: check the API URL"),
                }
            }
            _ => ClientError::Rejected {
                request,
                status,
                message,
            },
        }
    }

    /// One request, its answer read whole.
    fn attempt(&self, call: &Call) -> Attempt {
        // What ureq has taken of the body: a failure before it took it all
        // cannot have delivered the request.
        let mut body = Progress {
            data: call.body.unwrap_or_default(),
            taken: 0,
        };
        match self.send(call, &mut body) {
            Ok(response) => read_answer(response),
            Err(error) => Attempt::Transport {
                maybe_delivered: attempt_maybe_delivered(&error, body.whole()),
                error,
            },
        }
    }

    /// Sends the request; `body` counts what ureq takes of the body.
    fn send(
        &self,
        call: &Call,
        body: &mut Progress<'_>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        match call.method {
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
                    Some(data) => {
                        if data.len() >= EXPECT_CONTINUE_FROM_BYTES {
                            b = b.header("Expect", "100-continue");
                        }
                        // An explicit length keeps ureq from chunking a
                        // reader's body.
                        b.content_type("application/json")
                            .header("Content-Length", data.len())
                            .send(ureq::SendBody::from_reader(body))
                    }
                    None => b.send_empty(),
                }
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
        let mut value = wire::parse_object(body).map_err(|e| self.bad_answer(call, &e))?;
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
        if let Some(want) = expected
            && got != want
        {
            return Err(self.bad_answer(
                call,
                &format!("the answer is about job {got:?}, not {want:?}"),
            ));
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

/// Reads an answer whole: a 2xx body up to [`MAX_BODY_BYTES`], an error
/// body up to [`MAX_ERROR_BODY_BYTES`].
fn read_answer(mut response: ureq::http::Response<ureq::Body>) -> Attempt {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after =
        header("retry-after").and_then(|v| retry::parse_retry_after(&v, SystemTime::now()));
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

fn check_job_id(id: &str) -> Result<(), ClientError> {
    if valid_job_id(id) {
        Ok(())
    } else {
        Err(ClientError::InvalidJobId { id: clip(id, 140) })
    }
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
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A request body handed to ureq as a reader, counting what it took.
struct Progress<'a> {
    data: &'a [u8],
    taken: usize,
}

impl Progress<'_> {
    fn whole(&self) -> bool {
        self.taken == self.data.len()
    }
}

impl io::Read for Progress<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.data[self.taken..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.taken += n;
        Ok(n)
    }
}
