//! `fleet push`: this host's journal into the fleet's database now (what
//! every reap does at its end).

use crate::books::fleet::Fleet;
use crate::cli::FleetCommand;
use crate::config::Settings;
use crate::error::{Code, fail};

pub fn run(cmd: &FleetCommand, settings: &Settings) -> anyhow::Result<Code> {
    let FleetCommand::Push = cmd;
    let Some(cfg) = &settings.fleet else {
        return Err(fail(
            Code::Config,
            "no fleet: add `fleet: {url: ...}` to the config file to share the books (see the README's Fleet section)",
        ));
    };
    let Some(mut books) =
        crate::books::open_if_present(&settings.state_dir, settings.lock_timeout)?
    else {
        println!("nothing to push: this host has no books yet");
        return Ok(Code::Ok);
    };
    books.set_journal(true);
    let mut fleet = Fleet::connect(cfg, settings.lock_timeout, settings.max_age)?;
    let n = crate::books::sync::push(&mut books, &mut fleet, &settings.policy)?;
    println!(
        "pushed {n} new entr{} to {} as host {}",
        if n == 1 { "y" } else { "ies" },
        fleet.shown(),
        fleet.host()
    );
    Ok(Code::Ok)
}
