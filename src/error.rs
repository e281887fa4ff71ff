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
