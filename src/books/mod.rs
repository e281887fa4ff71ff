//! The books: the ledger of jobs that ended and the reservations of jobs in
//! flight, in one transactional store (policy.md "The ledger").
//!
//! ```text
//! <state_dir>/
//!   books.sqlite        the store (SQLite, WAL mode): tables `ledger`,
//!   books.sqlite-wal    `reservation`, and the two sums their triggers
//!   books.sqlite-shm    keep (`spend_day`, `in_flight`)
//! ```
//!
//! Every change that must happen together is one transaction: an admission
//! reads what is spent and reserved, decides and inserts its reservation;
//! a job's ledger entry goes in with the deletion of its reservation, so a
//! job counts as reserved until it counts as spent, never both and never
//! neither. An entry is unique by its job id (by project, task and end for
//! one without): a repeated insert counts nothing twice, whoever makes it.
//! Sums a check needs are kept by triggers in the same transactions, so
//! reading them never grows with the ledger and can never drift from it.
//!
//! The records in done/ and failed/ stay the truth: `ledger rebuild`
//! makes the ledger again from them.

pub mod conninfo;
mod entry;
pub mod fleet;
mod queries;
mod schema;
mod store;
pub mod sync;

pub use entry::{Entry, counted_provider, entries_from_record, entry_from_record, sane_cost, utc};
pub use store::{
    Books, Counters, JobTotal, Rebuilt, RecordTotal, Reservation, Row, Unpushed, move_aside,
    open_if_present,
};

/// The store's file name under the state directory.
pub const BOOKS_FILE: &str = "books.sqlite";

/// What a warning tells a person to run.
pub const REBUILD_HINT: &str = "run `ccl-delegate ledger rebuild` to make the books again from done/ and failed/ (it moves damaged books aside)";

pub fn path(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join(BOOKS_FILE)
}
