//! The exit codes of the design and the one error type that carries them.
//!
//! Commands use `anyhow` for context; an error that deserves a specific exit
//! code is created with [`fail`] (or converted from a client error), and
//! `main` finds the code by walking the error chain, in one place: the code
//! comes from the error's type, never from its text.

use std::fmt;

/// Exit codes, as listed under "Exit codes" in the design.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    Other = 1,
    Local = 10,
    Usage = 64,
    DataErr = 65,
    NoInput = 66,
    Unavailable = 69,
    TempFail = 75,
    NoPerm = 77,
    Config = 78,
}

impl Code {
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// An error with the exit code it must end the run with.
#[derive(Debug)]
pub struct Coded {
    pub code: Code,
    pub message: String,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// An `anyhow::Error` that ends the run with `code`.
pub fn fail(code: Code, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        code,
        message: message.into(),
    })
}

/// The exit code an error ends the run with: the first coded error in its
/// chain, else a client error's code, else 1.
pub fn code_of(err: &anyhow::Error) -> Code {
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.code;
        }
        if let Some(c) = cause.downcast_ref::<crate::client::ClientError>() {
            return client_code(c);
        }
    }
    Code::Other
}

/// The exit code of a job creation the service refused for sure: 69, 77,
/// or 65 for any other 4xx (a 404 on the POST is a wrong URL, not a job).
pub fn submit_code(e: &crate::client::ClientError) -> Code {
    match client_code(e) {
        Code::NoInput => Code::DataErr,
        c => c,
    }
}

/// The exit code of a failed call to the service.
pub fn client_code(e: &crate::client::ClientError) -> Code {
    use crate::client::ClientError as E;
    match e {
        E::NotFound { .. } => Code::NoInput,
        E::Conflict { .. } => Code::TempFail,
        E::InvalidJobId { .. } | E::InvalidIdempotencyKey { .. } => Code::DataErr,
        E::Auth { .. } => Code::NoPerm,
        E::Rejected { .. } | E::TooLarge { .. } => Code::DataErr,
        E::Unavailable { .. } | E::Unknown { .. } | E::BadAnswer { .. } => Code::Unavailable,
        E::Config { .. } => Code::Config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ClientError as E, ConfigField, Endpoint};

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
            assert_eq!(client_code(&e).as_u8(), code, "{e:?}");
            // Wrapped in context, the code is the same.
            let wrapped = anyhow::Error::new(e).context("while doing x");
            assert_eq!(code_of(&wrapped).as_u8(), code);
        }
        assert_eq!(code_of(&fail(Code::Config, "no API URL")), Code::Config);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), Code::Other);
    }
}
