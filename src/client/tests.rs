//! The client against a tiny fake HTTP/1.1 server: what each call sends,
//! and how each kind of answer, fault and timeout comes back.

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

/// A small submission, for the tests here and in `wire.rs`.
pub(super) fn submit_request() -> SubmitRequest {
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
    let fake = Fake::start(|_, _| Reply::Delay(Duration::from_millis(1500), json_bytes(STATUS_J1)));
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
    let fake = Fake::start(|_, _| reply(302, &[("Location", "http://127.0.0.1:1/elsewhere")], ""));
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

// ---- client-side gaps ------------------------------------------------------

#[test]
fn a_404_on_the_result_is_not_found_on_that_endpoint() {
    let fake = Fake::start(|_, r| match r.path.as_str() {
        "/api/v1/jobs/j-1" => json(200, STATUS_J1),
        _ => reply(404, &[], "gone"),
    });
    let c = fake.client();
    let e = c.result("j-1").unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::NotFound {
                endpoint: Endpoint::Result,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().ends_with("/result: not found (404): gone"),
        "{e}"
    );
    let e = c.status("j-2").unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::NotFound {
                endpoint: Endpoint::Status,
                ..
            }
        ),
        "{e:?}"
    );
    let e = c.cancel("j-2").unwrap_err();
    assert!(matches!(
        e,
        ClientError::NotFound {
            endpoint: Endpoint::Cancel,
            ..
        }
    ));
    // Never retried.
    assert_eq!(fake.requests().len(), 3);
}

#[test]
fn a_result_with_an_odd_cost_or_token_count_is_kept_with_a_note() {
    for (cost, note) in [
        (r#""0.5""#, Some(r#"cost_cad "0.5""#)),
        (r#""NaN""#, Some(r#"cost_cad "NaN""#)),
        ("1e400", Some(r#"cost_cad "1e400""#)),
        ("-1e400", Some(r#"cost_cad "-1e400""#)),
        ("1e308", Some("cost_cad 1e+308")),
        ("-0.01", Some("cost_cad -0.01")),
        ("2000000", Some("cost_cad 2000000")),
        ("null", Some("no cost_cad")),
        ("0.0123", None),
    ] {
        let body = format!(
            r#"{{"job_id":"j-1","provider":"gpu","model":"m","response":"Hi","cost_cad":{cost},"tokens_in":1e400,"tokens_out":-3}}"#
        );
        let fake = Fake::start(move |_, _| json(200, &body));
        let r = fake
            .client()
            .result("j-1")
            .unwrap_or_else(|e| panic!("{cost}: {e}"));
        assert_eq!(r.response, "Hi");
        assert_eq!((r.tokens_in, r.tokens_out), (None, None), "{cost}");
        match note {
            Some(n) => {
                assert_eq!(r.cost_cad, 0.0, "{cost}");
                let got = r.cost_note.as_deref().unwrap_or_default();
                assert!(got.starts_with(n), "{cost}: {got}");
            }
            None => {
                assert_eq!((r.cost_cad, r.cost_note), (0.0123, None));
            }
        }
        assert_eq!(fake.requests().len(), 1, "{cost}: never retried");
    }
    let fake = Fake::start(|_, _| {
        json(
            200,
            r#"{"job_id":"j-1","provider":"gpu","model":"m","response":"Hi","cost_cad":0.5,"tokens_in":10,"tokens_out":20}"#,
        )
    });
    let r = fake.client().result("j-1").unwrap();
    assert_eq!((r.tokens_in, r.tokens_out), (Some(10), Some(20)));
}

#[test]
fn an_oversized_submission_is_never_sent() {
    let fake = Fake::start(|_, _| json(201, r#"{"job_id":"j-1","status":"queued"}"#));
    let mut req = submit_request();
    req.prompt = "x".repeat(MAX_REQUEST_BODY_BYTES as usize);
    let e = fake.client().submit(&req, IDEM).unwrap_err();
    assert!(matches!(e, ClientError::TooLarge { .. }), "{e:?}");
    assert!(e.nothing_created());
    assert_eq!(fake.connections.load(Ordering::SeqCst), 0);
}

/// A server with a body limit: it reads the request's head, answers 413
/// and closes without reading the body. Gives the heads it saw.
fn refusing_server(
    wait_before_answer: Duration,
    answer: &'static str,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            std::thread::sleep(wait_before_answer);
            let _ = stream.write_all(answer.as_bytes());
            // Dropped with the body unread: the kernel resets the connection.
        }
    });
    (addr, heads)
}

const ANSWER_413: &str = "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: 30\r\nConnection: close\r\n\r\n{\"error\":\"prompt too large!\"}\n";

#[test]
fn a_413_answered_before_the_body_is_read_is_a_refusal() {
    let (addr, heads) = refusing_server(Duration::ZERO, ANSWER_413);
    let client = Client::new(test_config(&format!("http://{addr}"))).unwrap();
    let mut req = submit_request();
    req.prompt = "x".repeat(8 * 1024 * 1024);
    let e = client.submit(&req, IDEM).unwrap_err();
    assert!(
        matches!(&e, ClientError::Rejected { status: 413, message, .. }
            if message == "prompt too large!"),
        "{e:?}"
    );
    assert!(e.nothing_created());
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 1, "never retried");
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("expect: 100-continue"),
        "{}",
        heads[0]
    );
    assert!(
        heads[0].to_ascii_lowercase().contains("content-length: "),
        "{}",
        heads[0]
    );
}

#[test]
fn a_small_submission_does_not_wait_for_100_continue() {
    let fake = Fake::start(|_, _| json(201, r#"{"job_id":"j-1","status":"queued"}"#));
    let start = Instant::now();
    fake.client().submit(&submit_request(), IDEM).unwrap();
    assert!(start.elapsed() < Duration::from_millis(900));
    let reqs = fake.requests();
    assert_eq!(reqs[0].header("expect"), None);
    assert_eq!(reqs[0].header("transfer-encoding"), None);
    assert_eq!(
        reqs[0].header("content-length"),
        Some(reqs[0].body.len().to_string().as_str())
    );
}

#[test]
fn a_connection_closed_before_the_body_was_sent_whole_delivered_nothing() {
    // No answer to `Expect`: the client gives up waiting after a second and
    // uploads; the server has closed without reading, so the upload breaks
    // with most of the body never sent.
    let (addr, heads) = refusing_server(Duration::from_millis(1200), "");
    let client = Client::new(ClientConfig {
        retries: 1,
        ..test_config(&format!("http://{addr}"))
    })
    .unwrap();
    let mut req = submit_request();
    req.prompt = "x".repeat(16 * 1024 * 1024);
    let e = client.submit(&req, IDEM).unwrap_err();
    assert!(
        matches!(e, ClientError::Unavailable { attempts: 2, .. }),
        "{e:?}"
    );
    assert!(e.nothing_created());
    assert_eq!(heads.lock().unwrap().len(), 2);
}
