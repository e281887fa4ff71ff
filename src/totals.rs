//! `status`'s totals of done and failed tasks per provider: from the
//! ledger when it holds exactly the records of the projects shown (one
//! sequential read, however many records), else from each record's head.

use std::collections::{BTreeMap, HashSet};

use crate::queue::{self, Queue};

/// One provider's line.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Total {
    pub provider: String,
    pub done: u64,
    pub failed: u64,
    pub cost_cad: f64,
}

pub type Totals = BTreeMap<String, Total>;

/// Adds one record or entry.
pub fn add(totals: &mut Totals, provider: String, done: bool, cost_cad: f64) {
    let t = totals.entry(provider.clone()).or_insert_with(|| Total {
        provider,
        ..Total::default()
    });
    if done {
        t.done += 1;
        t.cost_cad += crate::books::sane_cost(cost_cad);
    } else {
        t.failed += 1;
    }
}

/// Where the totals came from, when not from the ledger.
#[derive(Debug, PartialEq)]
pub enum Source {
    Ledger,
    /// No ledger (yet): read from the records.
    NoLedger,
    /// The ledger's entries for these projects and their records differ in
    /// number (records deleted by hand, written before the ledger, or a
    /// ledger damaged): read from the records.
    Differs {
        records: u64,
        entries: u64,
    },
    /// The ledger could not be read.
    Unreadable(String),
}

/// Which source to use: the ledger only when its entries for the projects
/// are as many as their records, so the totals say what the records say.
pub fn choose(ledger: Option<u64>, records: u64) -> Source {
    match ledger {
        None => Source::NoLedger,
        Some(entries) if entries == records => Source::Ledger,
        Some(entries) => Source::Differs { records, entries },
    }
}

/// The totals of the books' entries for `projects` (project keys), and
/// how many there are; `None` when there are no books.
pub fn from_books(
    books: Option<&crate::books::Books>,
    projects: &HashSet<String>,
) -> anyhow::Result<Option<(Totals, u64)>> {
    let Some(books) = books else {
        return Ok(None);
    };
    let mut totals = Totals::new();
    let mut n = 0u64;
    // Status totals tasks, as the records do: the earlier jobs of a
    // failover chain and requeued jobs are the report's, not the records'.
    for crate::books::RecordTotal {
        project,
        provider,
        completed,
        cost_cad: cost,
        jobs: count,
    } in books.record_totals()?
    {
        if !projects.contains(&project) {
            continue;
        }
        n = n.saturating_add(count);
        let t = totals.entry(provider.clone()).or_insert_with(|| Total {
            provider,
            ..Total::default()
        });
        if completed {
            t.done = t.done.saturating_add(count);
            // A sum damaged by hand (negative, infinite) adds nothing.
            if cost.is_finite() && cost > 0.0 {
                t.cost_cad += cost;
            }
        } else {
            t.failed = t.failed.saturating_add(count);
        }
    }
    Ok(Some((totals, n)))
}

/// How many records a project's done/ and failed/ hold (names only, no
/// file read).
pub fn count_records(q: &Queue) -> u64 {
    [&q.done, &q.failed]
        .into_iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| queue::is_task_name(&e.file_name().to_string_lossy()))
        .count() as u64
}

/// The keys the ledger names these projects by.
pub fn keys(queues: &[Queue]) -> HashSet<String> {
    queues
        .iter()
        .map(|q| crate::names::project_key(&q.project))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_is_used_only_when_it_holds_as_many_jobs_as_the_records() {
        let table = [
            (None, 0, Source::NoLedger),
            (None, 5, Source::NoLedger),
            (Some(5), 5, Source::Ledger),
            (Some(0), 0, Source::Ledger),
            (
                Some(4),
                5,
                Source::Differs {
                    records: 5,
                    entries: 4,
                },
            ),
            (
                Some(6),
                5,
                Source::Differs {
                    records: 5,
                    entries: 6,
                },
            ),
        ];
        for (ledger, records, want) in table {
            assert_eq!(choose(ledger, records), want, "{ledger:?} {records}");
        }
    }

    #[test]
    fn add_counts_cost_only_for_done_and_drops_odd_costs() {
        let mut t = Totals::new();
        add(&mut t, "gpu".into(), true, 0.5);
        add(&mut t, "gpu".into(), false, 9.0);
        add(&mut t, "gpu".into(), true, f64::NAN);
        let g = &t["gpu"];
        assert_eq!((g.done, g.failed, g.cost_cad), (2, 1, 0.5));
    }
}
