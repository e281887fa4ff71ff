//! One file per subcommand; `run` dispatches.

mod cancel;
mod decide;
mod doctor;
mod fleet;
mod get;
mod init;
mod ledger;
mod reap;
mod report;
mod requeue;
mod result;
mod status;
mod submit;

use std::path::{Path, PathBuf};

use crate::cli::{Cli, Command};
use crate::config::Settings;
use crate::error::Code;
use crate::ui::Ui;

pub fn run(cli: &Cli) -> anyhow::Result<Code> {
    let ui = Ui::new(&cli.global);
    // These two read no config: `decide` is pure and must start as fast as
    // /bin/true; `init` runs before any config or key exists.
    match &cli.command {
        Command::Decide(args) => return decide::run(args, ui),
        Command::Init(args) => return init::run(args),
        _ => {}
    }
    let settings = Settings::load(&cli.global)?;
    match &cli.command {
        Command::Decide(_) | Command::Init(_) => unreachable!("handled above"),
        Command::Submit(a) => submit::run(a, &settings, ui),
        Command::Reap(a) => reap::run(a, &settings, ui),
        Command::Get(a) => get::run(a, &settings),
        Command::Result(a) => result::run(a, &settings),
        Command::Status(a) => status::run(a, &settings, ui),
        Command::Cancel(a) => cancel::run(a, &settings),
        Command::Requeue(a) => requeue::run(a, &settings, ui),
        Command::Doctor(a) => doctor::run(a, &settings),
        Command::Report(a) => report::run(a, &settings, ui),
        Command::Ledger(crate::cli::LedgerCommand::Rebuild(a)) => ledger::rebuild(a, &settings, ui),
        Command::Fleet(c) => fleet::run(c, &settings),
    }
}

/// The projects a person means (status, doctor, ledger rebuild): flags, else the config, else the current
/// directory when it holds a queue.
pub(crate) fn projects_for_person(
    flags: &[PathBuf],
    settings: &Settings,
) -> anyhow::Result<Vec<PathBuf>> {
    if !flags.is_empty() {
        return Ok(flags.to_vec());
    }
    if !settings.projects.is_empty() {
        return Ok(settings.projects.clone());
    }
    if Path::new(crate::queue::QUEUE_DIR).is_dir() {
        return Ok(vec![PathBuf::from(".")]);
    }
    Err(crate::error::fail(
        Code::Config,
        "no projects: pass --project DIR, list `projects` in the config file, or run this in a project directory",
    ))
}

/// Every project named by hand (a flag, or a config entry that is no
/// glob) must hold a queue: one that does not is a typo that would show
/// nothing forever. Exit 66, the path, and the command that makes one.
pub(crate) fn require_queues(projects: &[PathBuf], settings: &Settings) -> anyhow::Result<()> {
    for dir in projects {
        if settings.globbed.contains(dir) {
            continue;
        }
        let q = crate::queue::Queue::at(dir);
        if std::fs::symlink_metadata(&q.inbox).is_err() {
            return Err(crate::error::fail(
                Code::NoInput,
                format!(
                    "project {}: no queue ({} is missing); create it with: ccl-delegate init {}",
                    crate::queue::shown(dir),
                    crate::queue::shown(&q.inbox),
                    crate::queue::shown(dir)
                ),
            ));
        }
    }
    Ok(())
}
