//! Between a host's books (its journal) and the fleet's database: the push
//! of what the database lacks, and the summary of this host's caps that
//! `doctor` compares across hosts.

use super::Books;
use super::fleet::Fleet;
use crate::policy::Policy;

/// Entries sent per transaction of a push.
const BATCH: i64 = 2000;

/// Pushes every entry and released key the database lacks, in batches of
/// one transaction each, each marked here once committed there (a push
/// repeated after a kill counts nothing twice: entries are unique).
/// Answers how many entries were new to the database.
pub fn push(books: &mut Books, fleet: &mut Fleet, policy: &Policy) -> anyhow::Result<u64> {
    let caps = caps_summary(policy);
    let mut total = 0;
    loop {
        let super::Unpushed { entries, keys } = books.unpushed(BATCH)?;
        if entries.is_empty() && keys.is_empty() {
            return Ok(total);
        }
        let ids: Vec<i64> = entries.iter().map(|(i, _)| *i).collect();
        let entries: Vec<_> = entries.into_iter().map(|(_, e)| e).collect();
        total += fleet.push(&entries, &keys, &caps)?;
        books.mark_pushed(&ids, &keys)?;
    }
}

/// This host's caps and limits in one canonical line, e.g. `daily all
/// 20; daily claude 5; max_in_flight all 50`: hosts should agree.
pub fn caps_summary(policy: &Policy) -> String {
    let mut parts: Vec<String> = policy
        .caps()
        .iter()
        .map(|c| format!("{} {} {}", c.window.as_str(), c.scope(), c.limit))
        .collect();
    for (k, v) in &policy.max_in_flight {
        parts.push(format!(
            "max_in_flight {} {}",
            format!("{k:?}").to_lowercase(),
            v.0
        ));
    }
    parts.join("; ")
}
