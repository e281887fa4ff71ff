//! Why a call failed, and whether a failed attempt may have reached the
//! service (the "maybe delivered" rule that decides if a submission's
//! pending marker may go).

use std::fmt;
use std::io;

use crate::error::{Code, HasCode};

/// Which call of the API an error came from, so that a caller holding only
/// the error (a 404 on `GET .../result` versus one on the status) can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/v1/jobs`.
    Submit,
    /// `GET /api/v1/jobs/{id}`.
    Status,
    /// `GET /api/v1/jobs/{id}/result`.
    Result,
    /// `POST /api/v1/jobs/{id}/cancel`.
    Cancel,
}

/// Which setting a [`ClientError::Config`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigField {
    /// The API URL: empty, unparsable, not https, ...
    Url,
    /// The API key: empty, or with characters a header cannot carry.
    Key,
    /// The HTTP timeout.
    Timeout,
    /// A request the HTTP library refused to build (a local fault).
    Request,
}

/// Why a call failed. `request` is `METHOD URL` (never with the key).
#[derive(Debug)]
pub enum ClientError {
    /// `404`: the service does not know the job (or the path). `endpoint`
    /// tells which call was answered so.
    NotFound {
        request: String,
        message: String,
        endpoint: Endpoint,
    },
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
    /// A submission whose JSON body would be over
    /// [`MAX_REQUEST_BODY_BYTES`](super::MAX_REQUEST_BODY_BYTES): refused
    /// before anything is sent.
    TooLarge { bytes: u64, limit: u64 },
    /// Bad URL, key or timeout given to [`Client::new`](super::Client::new),
    /// or a request the HTTP library cannot build.
    Config { field: ConfigField, message: String },
}

impl ClientError {
    /// For an error from [`Client::submit`](super::Client::submit): true when it proves the service
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
            | ClientError::TooLarge { .. }
            | ClientError::Config { .. } => true,
            ClientError::Conflict { .. }
            | ClientError::Unknown { .. }
            | ClientError::BadAnswer { .. } => false,
        }
    }
}

impl ClientError {
    /// The exit code of a failed call to the service.
    pub fn code(&self) -> Code {
        match self {
            ClientError::NotFound { .. } => Code::NoInput,
            ClientError::Conflict { .. } => Code::TempFail,
            ClientError::InvalidJobId { .. } | ClientError::InvalidIdempotencyKey { .. } => {
                Code::DataErr
            }
            ClientError::Auth { .. } => Code::NoPerm,
            ClientError::Rejected { .. } | ClientError::TooLarge { .. } => Code::DataErr,
            ClientError::Unavailable { .. }
            | ClientError::Unknown { .. }
            | ClientError::BadAnswer { .. } => Code::Unavailable,
            ClientError::Config { .. } => Code::Config,
        }
    }
}

impl HasCode for ClientError {
    fn code(&self) -> Code {
        ClientError::code(self)
    }
}

/// A cause's exit code when it is a client error, for
/// [`crate::error::code_in`].
pub fn code_of_cause(cause: &(dyn std::error::Error + 'static)) -> Option<Code> {
    cause.downcast_ref::<ClientError>().map(ClientError::code)
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "attempt" } else { "attempts" }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotFound {
                request, message, ..
            } => {
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
            ClientError::TooLarge { bytes, limit } => write!(
                f,
                "the request would be {} bytes, over the limit of {} MiB: shorten the task",
                bytes,
                limit / (1024 * 1024)
            ),
            ClientError::Config { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for ClientError {}

pub(super) fn config_error(field: ConfigField, message: &str) -> ClientError {
    ClientError::Config {
        field,
        message: message.to_string(),
    }
}

/// Errors that come from the request or the environment, not the network:
/// retrying cannot help.
pub(super) fn is_local_error(e: &ureq::Error) -> bool {
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
pub(super) fn maybe_delivered(e: &ureq::Error) -> bool {
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

/// Whether a failed attempt may have created a job: the error says the
/// request may have reached the service, and the request was whole. A body
/// that ureq had not yet taken in full when the attempt failed never left
/// this process: the service got at most a truncated request (its
/// `Content-Length` unmet), which no HTTP server acts on.
pub(super) fn attempt_maybe_delivered(e: &ureq::Error, body_taken_whole: bool) -> bool {
    body_taken_whole && maybe_delivered(e)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_failure_before_the_body_was_taken_whole_delivered_nothing() {
        let reset = || ureq::Error::Io(io::Error::new(io::ErrorKind::ConnectionReset, "x"));
        let pipe = || ureq::Error::Io(io::Error::new(io::ErrorKind::BrokenPipe, "x"));
        let refused = || ureq::Error::Io(io::Error::new(io::ErrorKind::ConnectionRefused, "x"));
        let global = || ureq::Error::Timeout(ureq::Timeout::Global);
        for (e, whole, want) in [
            (pipe(), false, false),
            (reset(), false, false),
            (global(), false, false),
            (pipe(), true, true),
            (reset(), true, true),
            (global(), true, true),
            (refused(), true, false),
            (refused(), false, false),
        ] {
            assert_eq!(
                attempt_maybe_delivered(&e, whole),
                want,
                "{e} whole={whole}"
            );
        }
    }

    #[test]
    fn only_a_definite_refusal_proves_nothing_was_created() {
        let r = || "POST http://x/api/v1/jobs".to_string();
        let m = || "m".to_string();
        for (e, want) in [
            (
                ClientError::NotFound {
                    request: r(),
                    message: m(),
                    endpoint: Endpoint::Submit,
                },
                true,
            ),
            (
                ClientError::Conflict {
                    request: r(),
                    message: m(),
                },
                false,
            ),
            (
                ClientError::Auth {
                    request: r(),
                    status: 401,
                    message: m(),
                },
                true,
            ),
            (
                ClientError::Rejected {
                    request: r(),
                    status: 413,
                    message: m(),
                },
                true,
            ),
            (
                ClientError::Unavailable {
                    request: r(),
                    attempts: 4,
                    message: m(),
                },
                true,
            ),
            (
                ClientError::Unknown {
                    request: r(),
                    attempts: 4,
                    message: m(),
                },
                false,
            ),
            (
                ClientError::BadAnswer {
                    request: r(),
                    message: m(),
                },
                false,
            ),
            (ClientError::TooLarge { bytes: 1, limit: 0 }, true),
            (config_error(ConfigField::Url, "u"), true),
        ] {
            assert_eq!(e.nothing_created(), want, "{e:?}");
        }
    }

    use super::ClientError as E;

    #[test]
    fn each_client_error_has_the_design_exit_code() {
        let r = || "GET http://127.0.0.1:1/api/v1/jobs/j".to_string();
        let m = || "m".to_string();
        for (e, code) in [
            (
                E::NotFound {
                    request: r(),
                    message: m(),
                    endpoint: Endpoint::Status,
                },
                66,
            ),
            (
                E::Conflict {
                    request: r(),
                    message: m(),
                },
                75,
            ),
            (
                E::Auth {
                    request: r(),
                    status: 403,
                    message: m(),
                },
                77,
            ),
            (
                E::Rejected {
                    request: r(),
                    status: 400,
                    message: m(),
                },
                65,
            ),
            (
                E::TooLarge {
                    bytes: 40 << 20,
                    limit: 32 << 20,
                },
                65,
            ),
            (
                E::Unavailable {
                    request: r(),
                    attempts: 4,
                    message: m(),
                },
                69,
            ),
            (
                E::Unknown {
                    request: r(),
                    attempts: 4,
                    message: m(),
                },
                69,
            ),
            (
                E::BadAnswer {
                    request: r(),
                    message: m(),
                },
                69,
            ),
            (E::InvalidJobId { id: "..".into() }, 65),
            (E::InvalidIdempotencyKey { key: "k".into() }, 65),
            (
                E::Config {
                    field: ConfigField::Url,
                    message: m(),
                },
                78,
            ),
            (
                E::Config {
                    field: ConfigField::Key,
                    message: m(),
                },
                78,
            ),
        ] {
            assert_eq!(e.code().as_u8(), code, "{e:?}");
            // Wrapped in context, the code is the same.
            let wrapped = anyhow::Error::new(e).context("while doing x");
            assert_eq!(crate::error::code_in(&wrapped, code_of_cause).as_u8(), code);
        }
    }
}
