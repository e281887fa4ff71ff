//! `secutools-mock`: a stand-in for the secutools job service that serves the
//! whole contract of `shared/design/secutools-api.md` on a loopback port, so
//! that the tests, the benchmarks, the README's first command and users without
//! a secutools account can drive `ccl-delegate` end to end. Its behaviour is set
//! by flags (latency, the status sequence a job walks through, a share of
//! failing jobs, random faults) and by the admin endpoints under `/_mock/`
//! (one-shot faults, overrides of ids, statuses and bodies, for every job or
//! for one, stats, reset). It is hand-rolled on `std::net` with `httparse`
//! rather than built on `tiny_http` because the mock must be able to drop a
//! connection after reading a request without answering it at all, which
//! `tiny_http` cannot do (a dropped `Request` answers 500); a thread per
//! connection keeps it simple and lets latency sleeps run in parallel without
//! holding the state lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted; more answers 413.
const MAX_BODY: usize = 32 * 1024 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 8 * 1024;
/// How long an idle keep-alive connection (or a stalled request) is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a write may stall before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// The statuses after which a job no longer changes.
const TERMINAL: [&str; 4] = ["completed", "failed", "cancelled", "expired"];
/// Error text of a job that fails (unless overridden).
const DEFAULT_JOB_ERROR: &str = "model crashed (mock)";

#[derive(Parser, Debug)]
#[command(
    name = "secutools-mock",
    version,
    about = "Mock secutools job service for ccl-delegate (loopback only, for tests and trials)"
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

    /// Share (0..1) of jobs that end in `failed` instead of `completed`.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_rate: f64,

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

/// Settings fixed at start.
#[derive(Debug, Clone)]
struct Config {
    api_key: Option<String>,
    statuses: Vec<String>,
    fail_rate: f64,
    seed: u64,
    latency: Duration,
    error_rate: f64,
    throttle_rate: f64,
    drop_rate: f64,
    retry_after: u64,
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
            api_key,
            statuses: args.statuses.0.clone(),
            fail_rate: args.fail_rate,
            seed: args.seed,
            latency: args.latency,
            error_rate: args.error_rate,
            throttle_rate: args.throttle_rate,
            drop_rate: args.drop_rate,
            retry_after: args.retry_after,
            log: args.log,
        })
    }
}

/// A tiny xorshift64 generator, seeded through splitmix64 so that small seeds
/// still give well-spread sequences.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How a fault answer carries `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RetryAfter {
    None,
    Seconds,
    Date,
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq)]
enum Fault {
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
fn parse_fault(spec: &str) -> Result<Fault, String> {
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

/// An idempotency key is 16-128 characters of `[A-Za-z0-9_-]`.
fn valid_idempotency_key(key: &str) -> bool {
    (16..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The status a job shows after `polls` status polls: `queued` before the
/// first one, then the configured sequence one step per poll, the last entry
/// sticking. A failing job shows `failed` wherever the sequence says
/// `completed`.
fn walk_status(statuses: &[String], polls: u64, fails: bool) -> String {
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

fn is_terminal(status: &str) -> bool {
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

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, usize, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, usize::try_from(m).unwrap_or(1), d)
}

/// IMF-fixdate, as used in `Retry-After`: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let wd = usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[wd],
        d,
        MONTHS[(m + 11) % 12],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Decodes `%XX` escapes; anything malformed is kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// HTTP reading and writing
// ---------------------------------------------------------------------------

/// A parsed request.
#[derive(Debug, Clone, Default)]
struct Request {
    method: String,
    /// The path without the query string.
    path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, header: &str, token: &str) -> bool {
        self.header_all(header)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.version >= 1 {
            !self.has_token("connection", "close")
        } else {
            self.has_token("connection", "keep-alive")
        }
    }
}

/// Why no request could be read.
#[derive(Debug, PartialEq)]
enum ReadError {
    /// The peer went away, timed out or broke off mid-request: close quietly.
    Closed,
    /// The request is malformed: answer this status and text, then close.
    Bad(u16, &'static str),
}

/// Buffered reader of requests from one connection.
struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> Reader<R> {
    fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; 0 means end of stream.
    fn fill(&mut self) -> Result<usize, ReadError> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.inner.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ReadError::Closed),
            }
        }
    }

    /// Takes exactly `n` bytes.
    fn take(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(ReadError::Closed);
            }
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    /// Takes one CRLF-terminated line, without the CRLF.
    fn line(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut from = 0;
        loop {
            if let Some(i) = self.buf[from..].windows(2).position(|w| w == b"\r\n") {
                let line = self.take(from + i + 2)?;
                return Ok(line[..line.len() - 2].to_vec());
            }
            if self.buf.len() > MAX_LINE {
                return Err(ReadError::Bad(400, "chunk line too long"));
            }
            from = self.buf.len().saturating_sub(1);
            if self.fill()? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    fn chunked_body(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.line()?;
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|s| usize::from_str_radix(s, 16).ok())
                .ok_or(ReadError::Bad(400, "invalid chunk size"))?;
            if size == 0 {
                // Trailer section, ended by an empty line.
                loop {
                    if self.line()?.is_empty() {
                        return Ok(body);
                    }
                }
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(ReadError::Bad(413, "request body too large"));
            }
            body.extend_from_slice(&self.take(size)?);
            if self.take(2)? != b"\r\n" {
                return Err(ReadError::Bad(400, "invalid chunk terminator"));
            }
        }
    }

    /// Reads the next request. `Ok(None)` is a clean end of the connection.
    /// `cont` receives `100 Continue` when the client asks for it.
    fn read_request<W: Write>(&mut self, cont: &mut W) -> Result<Option<Request>, ReadError> {
        let mut req = loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Request::new(&mut headers);
                match parsed.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let target = parsed.path.unwrap_or("");
                        let path = target.split(['?', '#']).next().unwrap_or("").to_string();
                        let req = Request {
                            method: parsed.method.unwrap_or("").to_string(),
                            path,
                            version: parsed.version.unwrap_or(1),
                            headers: parsed
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_string(),
                                        String::from_utf8_lossy(h.value).trim().to_string(),
                                    )
                                })
                                .collect(),
                            body: Vec::new(),
                        };
                        self.buf.drain(..n);
                        break req;
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(ReadError::Bad(431, "too many headers"));
                    }
                    Err(_) => return Err(ReadError::Bad(400, "malformed request")),
                }
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Bad(431, "request head too large"));
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Closed)
                };
            }
        };

        let chunked = match req.header("transfer-encoding") {
            None => false,
            Some(_) if req.header("content-length").is_some() => {
                return Err(ReadError::Bad(
                    400,
                    "both Transfer-Encoding and Content-Length",
                ));
            }
            Some(te) if te.eq_ignore_ascii_case("chunked") => true,
            Some(_) => return Err(ReadError::Bad(501, "unsupported Transfer-Encoding")),
        };
        let mut length: Option<usize> = None;
        for v in req.header_all("content-length") {
            let n = v
                .parse::<usize>()
                .ok()
                .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(ReadError::Bad(400, "invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ReadError::Bad(400, "conflicting Content-Length"));
            }
            length = Some(n);
        }
        let length = length.unwrap_or(0);
        if length > MAX_BODY {
            return Err(ReadError::Bad(413, "request body too large"));
        }
        if (chunked || length > 0) && req.has_token("expect", "100-continue") {
            cont.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|()| cont.flush())
                .map_err(|_| ReadError::Closed)?;
        }
        req.body = if chunked {
            self.chunked_body()?
        } else {
            self.take(length)?
        };
        Ok(Some(req))
    }
}

/// A response body; `Padded` streams `pad` bytes of `x` between `head` and
/// `tail` without building them in memory.
#[derive(Debug)]
enum Body {
    Bytes(Vec<u8>),
    Padded {
        head: Vec<u8>,
        pad: u64,
        tail: Vec<u8>,
    },
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

impl Response {
    fn raw(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Bytes(body.into()),
        }
    }

    fn json(status: u16, v: &Value) -> Response {
        Response::raw(status, v.to_string())
    }

    fn error(status: u16, text: &str) -> Response {
        Response::json(status, &json!({ "error": text }))
    }

    fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }

    fn body_len(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::Padded { head, pad, tail } => head.len() as u64 + pad + tail.len() as u64,
        }
    }

    /// The body as bytes (padding expanded); for tests.
    #[cfg(test)]
    fn body_bytes(&self) -> Vec<u8> {
        match &self.body {
            Body::Bytes(b) => b.clone(),
            Body::Padded { head, pad, tail } => {
                let mut v = head.clone();
                v.resize(head.len() + usize::try_from(*pad).unwrap_or(0), b'x');
                v.extend_from_slice(tail);
                v
            }
        }
    }

    #[cfg(test)]
    fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body_bytes()).unwrap_or(Value::Null)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn write_response<W: Write>(out: &mut W, resp: &Response, keep_alive: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.body_len()
    );
    for (name, value) in &resp.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    match &resp.body {
        Body::Bytes(b) => {
            bytes.extend_from_slice(b);
            out.write_all(&bytes)?;
        }
        Body::Padded { head, pad, tail } => {
            bytes.extend_from_slice(head);
            out.write_all(&bytes)?;
            let block = [b'x'; 64 * 1024];
            let mut left = *pad;
            while left > 0 {
                let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
                out.write_all(&block[..n])?;
                left -= n as u64;
            }
            out.write_all(tail)?;
        }
    }
    out.flush()
}

/// Closes after an answer: stops writing, then reads off what the client may
/// still send for a short while so that the answer is not lost to a reset.
fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 16 * 1024];
    let mut total = 0usize;
    while total < 4 * 1024 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

// ---------------------------------------------------------------------------
// Service state
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Job {
    id: String,
    key: String,
    kind: String,
    priority: String,
    preferred_ai: Option<String>,
    prompt: String,
    complexity_hint: Option<String>,
    source: Option<String>,
    metadata: Value,
    polls: u64,
    fails: bool,
    /// A status set by cancel or by an override; wins over the walk.
    forced: Option<String>,
    created_at: SystemTime,
    updated_at: SystemTime,
    last_status: String,
}

impl Job {
    fn status(&self, statuses: &[String]) -> String {
        match &self.forced {
            Some(s) => s.clone(),
            None => walk_status(statuses, self.polls, self.fails),
        }
    }

    /// Notes the status shown now, moving `updated_at` when it changed.
    fn observe(&mut self, status: &str, now: SystemTime) {
        if self.last_status != status {
            self.last_status = status.to_string();
            self.updated_at = now;
        }
    }
}

/// What a POST /api/v1/jobs body asks for.
#[derive(Debug, Clone, PartialEq)]
struct JobSpec {
    kind: String,
    priority: String,
    prompt: String,
    preferred_ai: Option<String>,
    complexity_hint: Option<String>,
    source: Option<String>,
    metadata: Value,
}

fn optional_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field '{field}' must be a string when present")),
    }
}

fn parse_job_body(body: &[u8]) -> Result<JobSpec, String> {
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
struct Overrides {
    next_job_id: Option<String>,
    response: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    error: Option<String>,
    result_raw: Option<String>,
    status_raw: Option<String>,
    result_pad_bytes: u64,
    /// status_of entries for jobs not created yet, applied at creation.
    pending_status: HashMap<String, String>,
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

#[derive(Debug)]
struct State {
    jobs: Vec<Job>,
    index: HashMap<String, usize>,
    by_key: HashMap<String, usize>,
    posts_by_key: BTreeMap<String, u64>,
    requests: u64,
    jobs_created: u64,
    faults_served: u64,
    counter: u64,
    faults: VecDeque<QueuedFault>,
    ov: Overrides,
    /// Overrides scoped to one job (`"job": ID` in the override body); they
    /// win over `ov` for that job.
    per_job: HashMap<String, Overrides>,
    fault_rng: XorShift,
    fail_rng: XorShift,
}

impl State {
    fn new(seed: u64) -> State {
        State {
            jobs: Vec::new(),
            index: HashMap::new(),
            by_key: HashMap::new(),
            posts_by_key: BTreeMap::new(),
            requests: 0,
            jobs_created: 0,
            faults_served: 0,
            counter: 0,
            faults: VecDeque::new(),
            ov: Overrides::default(),
            per_job: HashMap::new(),
            fault_rng: XorShift::new(seed),
            fail_rng: XorShift::new(seed ^ 0x5EC0_7001),
        }
    }

    /// The fault for this request: the first matching queued one, else a
    /// random one by the configured rates, else none.
    fn take_fault(&mut self, method: &str, path: &str, cfg: &Config) -> Option<Fault> {
        if let Some(i) = self.faults.iter().position(|f| f.matches(method, path)) {
            return self.faults.remove(i).map(|f| f.fault);
        }
        if cfg.error_rate + cfg.throttle_rate + cfg.drop_rate <= 0.0 {
            return None;
        }
        let r = self.fault_rng.next_f64();
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
}

/// What to do with a request.
#[derive(Debug)]
enum Outcome {
    Respond(Response),
    /// Close the connection without answering.
    Drop,
}

struct Server {
    cfg: Config,
    state: Mutex<State>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsRequest {
    next: Vec<String>,
    path: Option<String>,
    method: Option<String>,
}

fn method_not_allowed(allow: &str) -> Response {
    Response::error(405, "method not allowed").with_header("Allow", allow.to_string())
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
            resp.with_header("Retry-After", http_date(at))
        }
    }
}

impl Server {
    fn new(cfg: Config) -> Server {
        let state = Mutex::new(State::new(cfg.seed));
        Server { cfg, state }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self, req: &Request) -> Outcome {
        let path = req.path.as_str();
        if path == "/_mock" || path.starts_with("/_mock/") {
            Outcome::Respond(self.handle_admin(req))
        } else if path == "/api" || path.starts_with("/api/") {
            self.handle_api(req)
        } else {
            Outcome::Respond(Response::error(404, "not found"))
        }
    }

    fn handle_api(&self, req: &Request) -> Outcome {
        // Sleep before taking the lock so that concurrent requests overlap.
        if !self.cfg.latency.is_zero() {
            thread::sleep(self.cfg.latency);
        }
        let fault = {
            let mut st = self.lock();
            st.requests += 1;
            if req.method == "POST"
                && req.path == "/api/v1/jobs"
                && let Some(key) = req.header("idempotency-key")
            {
                *st.posts_by_key.entry(key.to_string()).or_default() += 1;
            }
            let fault = st.take_fault(&req.method, &req.path, &self.cfg);
            if fault.is_some() {
                st.faults_served += 1;
            }
            fault
        };
        match fault {
            Some(Fault::Drop) => return Outcome::Drop,
            Some(Fault::Status { code, retry }) => {
                return Outcome::Respond(fault_response(code, retry, self.cfg.retry_after));
            }
            Some(Fault::Slow(d)) => thread::sleep(d),
            None => {}
        }
        if let Err(resp) = self.check_auth(req) {
            return Outcome::Respond(resp);
        }
        Outcome::Respond(self.route_api(req))
    }

    fn check_auth(&self, req: &Request) -> Result<(), Response> {
        let token = req.header("authorization").and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .filter(|t| !t.is_empty())
        });
        match (&self.cfg.api_key, token) {
            (Some(key), t) if t != Some(key.as_str()) => {
                Err(Response::error(401, "invalid API key"))
            }
            (None, None) => Err(Response::error(401, "missing API key")),
            _ => Ok(()),
        }
    }

    fn route_api(&self, req: &Request) -> Response {
        let path = req.path.as_str();
        let method = req.method.as_str();
        if path == "/api/v1/jobs" {
            return if method == "POST" {
                self.create_job(req)
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
        let id = percent_decode(raw_id);
        if id.is_empty() {
            return Response::error(404, "not found");
        }
        match (action, method) {
            (Action::Status, "GET") => self.get_status(&id),
            (Action::Result, "GET") => self.get_result(&id),
            (Action::Cancel, "POST") => self.cancel(&id),
            (Action::Cancel, _) => method_not_allowed("POST"),
            _ => method_not_allowed("GET"),
        }
    }

    fn create_job(&self, req: &Request) -> Response {
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
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(&i) = st.by_key.get(key) {
            let job = &st.jobs[i];
            let status = job.status(&self.cfg.statuses);
            return Response::json(200, &json!({ "job_id": job.id, "status": status }));
        }
        st.counter += 1;
        st.jobs_created += 1;
        let id = st
            .ov
            .next_job_id
            .take()
            .unwrap_or_else(|| format!("j-{:06}", st.counter));
        let fails = self.cfg.fail_rate > 0.0 && st.fail_rng.next_f64() < self.cfg.fail_rate;
        let now = SystemTime::now();
        let forced = st.ov.pending_status.remove(&id);
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
        let i = st.jobs.len();
        st.jobs.push(job);
        st.index.insert(id.clone(), i);
        st.by_key.insert(key.to_string(), i);
        Response::json(201, &json!({ "job_id": id, "status": "queued" }))
    }

    fn get_status(&self, id: &str) -> Response {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(&i) = st.index.get(id) else {
            return Response::error(404, "job not found");
        };
        let job = &mut st.jobs[i];
        job.polls += 1;
        let status = job.status(&self.cfg.statuses);
        job.observe(&status, SystemTime::now());
        if let Some(raw) = st.ov_of(id, |o| o.status_raw.clone()) {
            return Response::raw(200, raw);
        }
        Response::json(200, &st.status_object(&st.jobs[i], &status))
    }

    fn get_result(&self, id: &str) -> Response {
        let st = self.lock();
        let Some(&i) = st.index.get(id) else {
            return Response::error(404, "job not found");
        };
        let job = &st.jobs[i];
        let status = job.status(&self.cfg.statuses);
        if status != "completed" {
            return Response::error(409, &format!("job is not completed (status: {status})"));
        }
        st.result_response(job)
    }

    fn cancel(&self, id: &str) -> Response {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(&i) = st.index.get(id) else {
            return Response::error(404, "job not found");
        };
        let job = &mut st.jobs[i];
        let status = job.status(&self.cfg.statuses);
        if is_terminal(&status) {
            return Response::error(409, &format!("job is already {status}"));
        }
        job.forced = Some("cancelled".to_string());
        job.observe("cancelled", SystemTime::now());
        Response::json(200, &st.status_object(&st.jobs[i], "cancelled"))
    }

    fn handle_admin(&self, req: &Request) -> Response {
        let method = req.method.as_str();
        match req.path.as_str() {
            "/_mock/stats" if method == "GET" => self.stats(),
            "/_mock/stats" => method_not_allowed("GET"),
            "/_mock/faults" if method == "POST" => self.add_faults(&req.body),
            "/_mock/override" if method == "POST" => self.set_overrides(&req.body),
            "/_mock/reset" if method == "POST" => {
                *self.lock() = State::new(self.cfg.seed);
                Response::json(200, &json!({ "ok": true }))
            }
            "/_mock/faults" | "/_mock/override" | "/_mock/reset" => method_not_allowed("POST"),
            _ => Response::error(404, "not found"),
        }
    }

    fn stats(&self) -> Response {
        let st = self.lock();
        let jobs: Vec<Value> = st
            .jobs
            .iter()
            .map(|j| {
                json!({
                    "job_id": j.id,
                    "status": j.status(&self.cfg.statuses),
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
                "requests": st.requests,
                "faults_served": st.faults_served,
                "faults_pending": st.faults.len(),
                "posts_by_key": st.posts_by_key,
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
        let mut st = self.lock();
        for fault in parsed {
            st.faults.push_back(QueuedFault {
                fault,
                path: req.path.clone().filter(|p| !p.is_empty()),
                method: req.method.clone().filter(|m| !m.is_empty()),
            });
        }
        Response::json(200, &json!({ "queued": st.faults.len() }))
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
                "status_of" => val
                    .as_object()
                    .is_some_and(|m| m.values().all(|s| s.is_string() || s.is_null())),
                _ => return Response::error(400, &format!("unknown override field '{k}'")),
            };
            if !ok {
                return Response::error(400, &format!("invalid value for override '{k}'"));
            }
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = SystemTime::now();
        for (k, val) in obj {
            let text = val.as_str().map(str::to_string);
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
                "status_of" => {
                    for (id, s) in val.as_object().into_iter().flatten() {
                        let s = s.as_str().map(str::to_string);
                        if let Some(&i) = st.index.get(id) {
                            let job = &mut st.jobs[i];
                            job.forced = s;
                            let status = job.status(&self.cfg.statuses);
                            job.observe(&status, now);
                        } else if let Some(s) = s {
                            st.ov.pending_status.insert(id.clone(), s);
                        } else {
                            st.ov.pending_status.remove(id);
                        }
                    }
                }
                _ => {}
            }
        }
        Response::json(200, &json!({ "ok": true }))
    }
}

// ---------------------------------------------------------------------------
// Connections and main
// ---------------------------------------------------------------------------

fn log_line(server: &Server, req: Option<&Request>, what: &str) {
    if server.cfg.log {
        match req {
            Some(r) => eprintln!("secutools-mock: {} {} -> {what}", r.method, r.path),
            None => eprintln!("secutools-mock: (unparsed request) -> {what}"),
        }
    }
}

fn serve_connection(server: &Server, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = Reader::new(read_half);
    let mut out = stream;
    loop {
        let req = match reader.read_request(&mut out) {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Closed) => return,
            Err(ReadError::Bad(code, text)) => {
                log_line(server, None, &code.to_string());
                if write_response(&mut out, &Response::error(code, text), false).is_ok() {
                    linger_close(&mut out);
                }
                return;
            }
        };
        let keep_alive = req.keep_alive();
        match server.handle(&req) {
            Outcome::Drop => {
                log_line(server, Some(&req), "dropped");
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            Outcome::Respond(resp) => {
                log_line(server, Some(&req), &resp.status.to_string());
                if write_response(&mut out, &resp, keep_alive).is_err() {
                    return;
                }
                if !keep_alive {
                    linger_close(&mut out);
                    return;
                }
            }
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
    let server = Arc::new(Server::new(cfg));
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let server = Arc::clone(&server);
                let spawned = thread::Builder::new()
                    .name("secutools-mock-conn".into())
                    .spawn(move || serve_connection(&server, stream));
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

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            api_key: None,
            statuses: vec!["queued".into(), "running".into(), "completed".into()],
            fail_rate: 0.0,
            seed: 1,
            latency: Duration::ZERO,
            error_rate: 0.0,
            throttle_rate: 0.0,
            drop_rate: 0.0,
            retry_after: 1,
            log: false,
        }
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

    fn parse_all(input: &[u8]) -> (Vec<Request>, Result<(), ReadError>, Vec<u8>) {
        let mut reader = Reader::new(input);
        let mut cont = Vec::new();
        let mut out = Vec::new();
        loop {
            match reader.read_request(&mut cont) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => return (out, Ok(()), cont),
                Err(e) => return (out, Err(e), cont),
            }
        }
    }

    #[test]
    fn fault_specs() {
        assert_eq!(parse_fault("drop"), Ok(Fault::Drop));
        assert_eq!(
            parse_fault("503"),
            Ok(Fault::Status {
                code: 503,
                retry: RetryAfter::None
            })
        );
        assert_eq!(
            parse_fault("429"),
            Ok(Fault::Status {
                code: 429,
                retry: RetryAfter::Seconds
            })
        );
        assert_eq!(
            parse_fault("429-date"),
            Ok(Fault::Status {
                code: 429,
                retry: RetryAfter::Date
            })
        );
        assert_eq!(
            parse_fault("503-retry"),
            Ok(Fault::Status {
                code: 503,
                retry: RetryAfter::Seconds
            })
        );
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
        assert_eq!(c.latency, Duration::from_millis(20));
        assert_eq!(c.statuses, vec!["completed".to_string()]);
        assert_eq!(c.api_key.as_deref(), Some("envkey"));
        assert_eq!(c.retry_after, 3);
        let d = Args::try_parse_from(["secutools-mock"]).expect("defaults");
        assert_eq!(d.host, "127.0.0.1");
        assert_eq!(d.latency, Duration::ZERO);
        assert_eq!(
            Config::from_args(&d, Some(String::new())).unwrap().api_key,
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
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(http_date(t), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("j-000001"), "j-000001");
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("%2e%2E"), "..");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn reader_parses_pipelined_requests() {
        let input = b"GET /api/v1/jobs/j-1?x=1 HTTP/1.1\r\nHost: a\r\n\r\n\
POST /api/v1/jobs HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let (reqs, end, _) = parse_all(input);
        assert_eq!(end, Ok(()));
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].path, "/api/v1/jobs/j-1");
        assert!(reqs[0].keep_alive());
        assert_eq!(reqs[1].body, b"hello");
        assert!(!reqs[1].keep_alive());
    }

    #[test]
    fn reader_chunked_and_continue() {
        let input =
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n\
5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
        let (reqs, end, cont) = parse_all(input);
        assert_eq!(end, Ok(()));
        assert_eq!(reqs[0].body, b"hello world");
        assert_eq!(cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn reader_refuses_garbage() {
        let cases: [(&[u8], ReadError); 7] = [
            (
                b"\x00\x01garbage\r\n\r\n",
                ReadError::Bad(400, "malformed request"),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                ReadError::Bad(400, "invalid Content-Length"),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                ReadError::Bad(400, "conflicting Content-Length"),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                ReadError::Bad(413, "request body too large"),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                ReadError::Bad(400, "invalid chunk size"),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                ReadError::Bad(501, "unsupported Transfer-Encoding"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
                ReadError::Closed,
            ),
        ];
        for (input, want) in cases {
            let (_, end, _) = parse_all(input);
            assert_eq!(end, Err(want), "{}", String::from_utf8_lossy(input));
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_all(&many).1,
            Err(ReadError::Bad(431, "too many headers"))
        );
        let huge = vec![b'a'; MAX_HEAD + 10];
        assert!(matches!(parse_all(&huge).1, Err(ReadError::Bad(_, _))));
    }

    #[test]
    fn http_1_0_keep_alive() {
        let (reqs, _, _) =
            parse_all(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(!reqs[0].keep_alive());
        assert!(reqs[1].keep_alive());
    }

    #[test]
    fn job_body_validation() {
        let ok = parse_job_body(BODY.as_bytes()).expect("valid");
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
        c.api_key = Some("sekrit".into());
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
        c.fail_rate = 0.5;
        c.statuses = vec!["completed".into()];
        let outcomes = |seed: u64| {
            let mut c = c.clone();
            c.seed = seed;
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
        let server = Server::new(Config {
            fail_rate: 1.0,
            ..c.clone()
        });
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
        c.error_rate = 1.0;
        let server = Server::new(c);
        assert_eq!(create(&server, KEY).status, 503);
        let mut c = cfg();
        c.drop_rate = 1.0;
        let server = Server::new(c);
        let post = req("POST", "/api/v1/jobs", &[("Idempotency-Key", KEY)], BODY);
        assert!(matches!(server.handle(&post), Outcome::Drop));
        let mut c = cfg();
        c.throttle_rate = 1.0;
        c.retry_after = 7;
        let server = Server::new(c);
        let r = create(&server, KEY);
        assert_eq!(r.status, 429);
        assert!(r.headers.contains(&("Retry-After", "7".to_string())));
        let stats = respond(&server, &req("GET", "/_mock/stats", &[], "")).body_json();
        assert_eq!(stats["jobs_created"], 0);
        // The same seed gives the same fault sequence.
        let sequence = |seed: u64| {
            let mut c = cfg();
            c.error_rate = 0.5;
            c.seed = seed;
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
        c.statuses = vec!["completed".into()];
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
        c.statuses = vec!["completed".into()];
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

    #[test]
    fn padded_body_is_written_in_full() {
        let resp = Response {
            status: 200,
            headers: Vec::new(),
            body: Body::Padded {
                head: b"[\"".to_vec(),
                pad: 200_000,
                tail: b"\"]".to_vec(),
            },
        };
        let mut out = Vec::new();
        write_response(&mut out, &resp, true).expect("written");
        let text = String::from_utf8(out).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.contains("Content-Length: 200004"));
        assert_eq!(body.len(), 200_004);
        assert!(!head.contains("Connection: close"));
    }
}
