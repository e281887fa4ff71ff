//! The mock's HTTP/1.1 layer: reading requests off a connection, writing
//! answers, and closing. It is hand-written on `std::net` with `httparse`
//! rather than built on a server crate because the mock exists to model
//! what such crates hide: a server crate answers every request it drops
//! (`tiny_http` answers 500), so it cannot model a connection closed with
//! no answer, a 413 sent before the body is read, or a half-read body; a
//! thread per connection keeps it simple and lets latency sleeps overlap.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted; more answers 413.
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 8 * 1024;
/// How long an idle keep-alive connection (or a stalled request) is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a write may stall before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
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

    pub fn keep_alive(&self) -> bool {
        if self.version >= 1 {
            !self.has_token("connection", "close")
        } else {
            self.has_token("connection", "keep-alive")
        }
    }
}

/// Why no request could be read.
#[derive(Debug, PartialEq)]
pub enum ReadError {
    /// The peer went away, timed out or broke off mid-request: close quietly.
    Closed,
    /// The request is malformed: answer this status and text, then close.
    Bad(u16, &'static str),
    /// The body is over [`MAX_BODY`]: answer 413 and close without reading
    /// the rest of it.
    TooLarge,
}

/// Buffered reader of requests from one connection.
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
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
                return Err(ReadError::TooLarge);
            }
            body.extend_from_slice(&self.take(size)?);
            if self.take(2)? != b"\r\n" {
                return Err(ReadError::Bad(400, "invalid chunk terminator"));
            }
        }
    }

    /// Reads the next request. `Ok(None)` is a clean end of the connection.
    /// `cont` receives `100 Continue` when the client asks for it.
    pub fn read_request<W: Write>(&mut self, cont: &mut W) -> Result<Option<Request>, ReadError> {
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
        // Refused on the headers alone, before a `100 Continue` and before
        // a byte of the body is read.
        if length > MAX_BODY {
            return Err(ReadError::TooLarge);
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
pub enum Body {
    Bytes(Vec<u8>),
    Padded {
        head: Vec<u8>,
        pad: u64,
        tail: Vec<u8>,
    },
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Response {
    pub fn raw(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Bytes(body.into()),
        }
    }

    pub fn json(status: u16, v: &Value) -> Response {
        Response::raw(status, v.to_string())
    }

    pub fn error(status: u16, text: &str) -> Response {
        Response::json(status, &json!({ "error": text }))
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
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
    pub fn body_bytes(&self) -> Vec<u8> {
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
    pub fn body_json(&self) -> Value {
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

pub fn write_response<W: Write>(out: &mut W, resp: &Response, keep_alive: bool) -> io::Result<()> {
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

/// What to do with a request.
#[derive(Debug)]
pub enum Outcome {
    Respond(Response),
    /// Close the connection without answering.
    Drop,
}

fn log_line(log: bool, req: Option<&Request>, what: &str) {
    if log {
        match req {
            Some(r) => eprintln!("secutools-mock: {} {} -> {what}", r.method, r.path),
            None => eprintln!("secutools-mock: (unparsed request) -> {what}"),
        }
    }
}

/// Serves one connection until it closes, answering each request with
/// `handle`; `log` writes a line per request to stderr.
pub fn serve_connection(stream: TcpStream, log: bool, handle: impl Fn(&Request) -> Outcome) {
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
            Err(ReadError::TooLarge) => {
                log_line(log, None, "413");
                // No linger: the unread body is left to the kernel, which
                // resets the connection if the client goes on sending, as a
                // server that refuses a body on its headers does.
                let answer = Response::error(413, "prompt too large");
                if write_response(&mut out, &answer, false).is_ok() {
                    let _ = out.shutdown(Shutdown::Write);
                }
                return;
            }
            Err(ReadError::Bad(code, text)) => {
                log_line(log, None, &code.to_string());
                if write_response(&mut out, &Response::error(code, text), false).is_ok() {
                    linger_close(&mut out);
                }
                return;
            }
        };
        let keep_alive = req.keep_alive();
        match handle(&req) {
            Outcome::Drop => {
                log_line(log, Some(&req), "dropped");
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            Outcome::Respond(resp) => {
                log_line(log, Some(&req), &resp.status.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

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
                ReadError::TooLarge,
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
