//! `ledger rebuild`: the ledger again from the done/ and failed/ records
//! (the source of truth), atomically.
//!
//! Locks, in the one order every command takes them (queue locks, then the
//! admission lock): the queue locks of the projects rebuilt are held from
//! before their records are read until the new ledger is in place, so no
//! reap can write a record (and append its entry) in between and have it
//! counted twice or not at all. Submits and reaps of those projects wait
//! meanwhile.

use anyhow::Context;
use std::collections::BTreeSet;

use crate::cli::LedgerRebuildArgs;
use crate::config::Settings;
use crate::error::{Code, fail};
use crate::inflight::project_key;
use crate::ledger::{self, Entry, rebuild, spend};
use crate::policy::admission::Admission;
use crate::queue::Queue;
use crate::ui::Ui;

pub fn rebuild(args: &LedgerRebuildArgs, settings: &Settings, ui: Ui) -> anyhow::Result<Code> {
    let mut projects = super::projects_for_person(&args.projects, settings)?;
    projects.sort_by_key(|p| project_key(p));
    projects.dedup_by_key(|p| project_key(p));
    let mut locks = Vec::new();
    for dir in &projects {
        let q = Queue::at(dir);
        if !q.root.is_dir() {
            return Err(fail(
                Code::NoInput,
                format!(
                    "{}: no .agent-queue here; check --project or `projects` in the config",
                    q.project.display()
                ),
            ));
        }
        locks.push(q.lock()?);
    }
    let mut fresh = Vec::new();
    let (mut done, mut failed) = (0, 0);
    for dir in &projects {
        let found = rebuild::from_records(dir)?;
        for s in &found.skipped {
            ui.warn(format!(
                "{}: not a record of ccl-delegate; skipped",
                crate::text::clip(s, 300)
            ));
        }
        done += found.done;
        failed += found.failed;
        fresh.extend(found.entries);
    }
    let rebuilt: BTreeSet<String> = projects.iter().map(|p| project_key(p)).collect();

    let adm = Admission::lock(&settings.state_dir, settings.lock_timeout)?;
    // Entries of projects not named here stay as they are.
    let mut warnings = Vec::new();
    // A ledger that cannot be read is not replaced: its entries of other
    // projects would be lost. (Torn or corrupt lines are only skipped.)
    let old = ledger::read_all(adm.state_dir(), &mut warnings).context(
        "the ledger cannot be read, so it is left as it is; move it aside to rebuild it from the records alone",
    )?;
    for w in &warnings {
        ui.warn(w);
    }
    let mut all: Vec<Entry> = old
        .into_iter()
        .filter(|e| !rebuilt.contains(&e.project))
        .collect();
    let kept = all.len();
    let entries = fresh.len();
    all.extend(fresh);
    all.sort_by(|a, b| a.finished_at.cmp(&b.finished_at));
    let mut bytes = Vec::with_capacity(all.len() * 300);
    for e in &all {
        bytes.extend_from_slice(&e.to_line());
    }
    let path = ledger::path(adm.state_dir());
    ledger::write_atomic(&path, &bytes)?;
    spend::refresh(&adm, &mut Vec::new())?;
    let steps = entries.saturating_sub(done + failed);
    let mut line = format!(
        "rebuilt {}: {entries} entries from {} project{} ({done} done, {failed} failed{})",
        path.display(),
        projects.len(),
        if projects.len() == 1 { "" } else { "s" },
        if steps > 0 {
            format!(", {steps} earlier jobs of failover chains")
        } else {
            String::new()
        },
    );
    if kept > 0 {
        line.push_str(&format!("; kept {kept} entries of other projects"));
    }
    drop(adm);
    drop(locks);
    println!("{line}");
    Ok(Code::Ok)
}
