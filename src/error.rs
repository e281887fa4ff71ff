//! The exit codes of the design and the one error type that carries them.
//!
//! Commands use `anyhow` for context; an error that deserves a specific exit
//! code is created with [`fail`], or is of a lower layer's type that knows
//! its own code ([`HasCode`]: the client's errors), and `main` finds the
//! code by walking the error chain, in one place: the code comes from the
//! error's type, never from its text. This module knows no other module.

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
    /// Every code, in the order the docs list them.
    pub const ALL: [Code; 10] = [
        Code::Ok,
        Code::Local,
        Code::Usage,
        Code::DataErr,
        Code::NoInput,
        Code::Unavailable,
        Code::TempFail,
        Code::NoPerm,
        Code::Config,
        Code::Other,
    ];

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code's name in a few words, before a command's own reasons.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Other => "anything else",
            Code::Local => "run it locally",
            Code::Usage => "usage",
            Code::DataErr => "bad data",
            Code::NoInput => "no such input",
            Code::Unavailable => "service unavailable",
            Code::TempFail => "try again later",
            Code::NoPerm => "refused by the service",
            Code::Config => "configuration",
        }
    }

    /// What the code means, whichever command gives it: the README's
    /// "Exit codes" table and the man pages are made from these.
    pub fn meaning(self) -> &'static str {
        match self {
            Code::Ok => "ok; also `reap` finding the run lock held (cron stays quiet)",
            Code::Local => {
                "`submit`: the task routes to claude-code, or a budget refused it (`local budget`); run it locally"
            }
            Code::Usage => {
                "usage: bad arguments, a task path that is not a regular file in `.agent-queue/inbox/`, an `init` DIR that is not a directory"
            }
            Code::DataErr => {
                "bad data: the service refused the request (4xx), a corrupt marker or record"
            }
            Code::NoInput => {
                "no such input: a missing task or file, a project without a queue, a job the service does not know"
            }
            Code::Unavailable => {
                "service unavailable (connection refused, 5xx or 429 after retries)"
            }
            Code::TempFail => {
                "try again later: `result` not ready, a submission still pending, a queue lock or the books held past `lock_timeout`, the fleet's database unreachable, `submit` deferred by a limit on jobs in flight, by a price not known yet or by books that cannot be used (leave the task for the next pass)"
            }
            Code::NoPerm => "refused by the service: 401/403 (the key)",
            Code::Config => {
                "configuration: missing URL or key, bad config file, unsafe key file, no projects, books of a newer schema"
            }
            Code::Other => {
                "anything else (e.g. a file that could not be written, a job that ended without a result, a failed `doctor` check)"
            }
        }
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

/// An error type of another layer that knows the exit code it ends a run
/// with (the client's `ClientError`).
pub trait HasCode {
    fn code(&self) -> Code;
}

/// The exit code an error ends the run with: the first cause in its chain
/// that has one (a [`Coded`], or a cause `other` knows: `main` passes the
/// client's), else 1.
pub fn code_in(
    err: &anyhow::Error,
    other: impl Fn(&(dyn std::error::Error + 'static)) -> Option<Code>,
) -> Code {
    err.chain()
        .find_map(|cause| match cause.downcast_ref::<Coded>() {
            Some(c) => Some(c.code),
            None => other(cause),
        })
        .unwrap_or(Code::Other)
}

/// The code of the first error made with [`fail`] in the chain, else 1.
/// Commands ask it of errors of their own layers; `main` asks [`code_in`],
/// which knows the client's errors too.
pub fn code_of(err: &anyhow::Error) -> Code {
    code_in(err, |_| None)
}

/// The exit code of a job creation the service refused for sure: 69, 77,
/// or 65 for any other 4xx (a 404 on the POST is a wrong URL, not a job).
pub fn submit_code(e: &impl HasCode) -> Code {
    match e.code() {
        Code::NoInput => Code::DataErr,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_coded_error_in_the_chain_gives_the_code() {
        let wrapped = fail(Code::Config, "no API URL").context("while doing x");
        assert_eq!(code_of(&wrapped), Code::Config);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), Code::Other);
        let found = code_in(&anyhow::anyhow!("plain"), |_| Some(Code::NoPerm));
        assert_eq!(found, Code::NoPerm);
    }
}
