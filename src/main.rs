//! Parse the command line, run the subcommand, turn the outcome into the
//! design's exit code.
// Functions stay short (clippy.toml: 80 lines), outside tests.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::process::ExitCode;

use ccl_delegate::{cli::Cli, client, commands, error};
use clap::Parser;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`ccl-delegate status | head`) like
    // other Unix tools, instead of panicking on the write.
    // SAFETY: setting a signal disposition to its default is always sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                error::Code::Usage.as_u8()
            } else {
                0
            });
        }
    };
    match commands::run(&cli) {
        Ok(code) => ExitCode::from(code.as_u8()),
        Err(e) => {
            // One line, whatever a file name or the server put in it.
            eprintln!(
                "ccl-delegate: error: {}",
                ccl_delegate::text::line(&format!("{e:#}"))
            );
            ExitCode::from(error::code_in(&e, client::code_of_cause).as_u8())
        }
    }
}
