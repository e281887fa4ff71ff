//! What a run says on stderr besides errors: warnings and, with `-v`, detail.

use crate::cli::Global;
use crate::frontmatter::{Meta, Problem};
use crate::text::line;

#[derive(Clone, Copy, Debug, Default)]
pub struct Ui {
    pub verbose: u8,
    pub quiet: bool,
    /// Every line begins with the time (`reap --timestamps`).
    pub stamp: bool,
}

impl Ui {
    pub fn new(g: &Global) -> Ui {
        Ui {
            verbose: g.verbose,
            quiet: g.quiet,
            stamp: false,
        }
    }

    /// What begins a line: the time when asked for, else nothing.
    pub fn stamp(&self) -> String {
        if self.stamp {
            format!("{} ", crate::timestamp::now())
        } else {
            String::new()
        }
    }

    /// A warning line; file names and server text in it are escaped
    /// ([`crate::text::line`]), so it stays one line whatever they hold.
    pub fn warn(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!(
                "{}ccl-delegate: warning: {}",
                self.stamp(),
                line(&msg.to_string())
            );
        }
    }

    /// An error line, said even with `-q` (cron mails it), escaped like
    /// [`Ui::warn`].
    pub fn error(&self, msg: impl std::fmt::Display) {
        eprintln!(
            "{}ccl-delegate: error: {}",
            self.stamp(),
            line(&msg.to_string())
        );
    }

    /// A routine line for a person (not a warning), silenced by `-q`,
    /// escaped like [`Ui::warn`].
    pub fn note(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{}ccl-delegate: {}", self.stamp(), line(&msg.to_string()));
        }
    }

    /// A `-v` detail line, escaped like [`Ui::warn`].
    pub fn info(&self, msg: impl std::fmt::Display) {
        if self.verbose > 0 {
            eprintln!("{}ccl-delegate: {}", self.stamp(), line(&msg.to_string()));
        }
    }

    /// A line on stderr that is neither a warning nor `-v` detail (e.g.
    /// "not ready yet"), escaped like [`Ui::warn`].
    pub fn say(&self, msg: impl std::fmt::Display) {
        eprintln!("{}ccl-delegate: {}", self.stamp(), line(&msg.to_string()));
    }

    /// A line a contract words in full (no prefix), said even with `-q`,
    /// escaped like [`Ui::warn`].
    pub fn plain(&self, msg: impl std::fmt::Display) {
        eprintln!("{}{}", self.stamp(), line(&msg.to_string()));
    }

    /// The routing keys of a task, saying on stderr what is wrong with its
    /// frontmatter (`shown` names the file): a problem routes the task as
    /// if it had no keys; a key that looks like a routing key is named.
    /// `decide` and `submit` share it, so they warn alike.
    pub fn task_meta(&self, shown: &str, meta: Result<Meta, Problem>) -> Meta {
        let meta = meta.unwrap_or_else(|problem| {
            self.warn(format_args!(
                "{shown}: {problem}; routing the task locally (claude-code)"
            ));
            Meta {
                unreadable: true,
                ..Meta::default()
            }
        });
        for near in &meta.near_misses {
            self.warn(format_args!("{shown}: {near}"));
        }
        meta
    }
}
