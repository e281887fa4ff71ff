//! What a run says on stderr besides errors: warnings and, with `-v`, detail.

use crate::cli::Global;

#[derive(Clone, Copy, Debug, Default)]
pub struct Ui {
    pub verbose: u8,
    pub quiet: bool,
}

impl Ui {
    pub fn new(g: &Global) -> Ui {
        Ui {
            verbose: g.verbose,
            quiet: g.quiet,
        }
    }

    pub fn warn(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("ccl-delegate: warning: {msg}");
        }
    }

    pub fn info(&self, msg: impl std::fmt::Display) {
        if self.verbose > 0 {
            eprintln!("ccl-delegate: {msg}");
        }
    }
}
