//! The host's ledger: one JSON line per finished job (policy.md "The
//! ledger"), under the state directory.
//!
//! ```text
//! <state_dir>/
//!   ledger.jsonl      append-only, one entry per job that ended
//!   spend.json        the sums a check needs (spend.rs), rewritten atomically
//!   inflight.tsv      markers pending or submitted per project (inflight.rs)
//!   admission.lock    flock(2): every write of the three files above
//! ```
//!
//! An append is one write(2) of whole lines to a file opened O_APPEND, then
//! fsync, under the admission lock. A run killed mid-write leaves a torn
//! last line: readers skip it with a warning, and the next append first ends
//! it with a newline, so it can never glue onto a good entry.
//!
//! "A job counts once" rests on one invariant: an entry is appended only
//! after the job's record (done/ or failed/) is durable, and before the task
//! and marker are removed. So a reap that writes a new record can append
//! without looking ([`append`]): no earlier entry can exist for a job that
//! had no record. A reap that finds the record already there (a killed run's
//! trace: record + marker) must use [`record_once`], which appends only the
//! entries whose job id the ledger lacks.

pub mod rebuild;
pub mod spend;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::policy::admission::Admission;

pub const LEDGER_FILE: &str = "ledger.jsonl";

/// What a rebuild or a warning tells a person to run.
pub const REBUILD_HINT: &str =
    "run `ccl-delegate ledger rebuild` to rebuild it from done/ and failed/";

/// One job that ended. `job_id` is first so that a search for one id need
/// not parse the line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub job_id: Option<String>,
    /// The project directory, absolute.
    pub project: String,
    /// `<id>.md`.
    pub task: String,
    /// The service's answer where it gave one, else the requested one.
    pub provider: String,
    #[serde(default)]
    pub model: Option<String>,
    /// `completed`, or a failed record's reason (`failed`, `cancelled`,
    /// `expired`, `not found`, `timeout`, `corrupt marker`, ...).
    pub status: String,
    /// 0 when unknown.
    #[serde(default)]
    pub cost_cad: f64,
    #[serde(default)]
    pub tokens_in: Option<u64>,
    #[serde(default)]
    pub tokens_out: Option<u64>,
    #[serde(default)]
    pub delegated_at: String,
    /// RFC 3339, UTC (`Z`): the windows are UTC days and months.
    pub finished_at: String,
    /// An earlier job of a failover chain (no record of its own: its
    /// task's record names it in `attempts`). Counted by `report` and the
    /// budgets like any job; `status` totals records, so it skips these.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub step: bool,
}

impl Entry {
    /// The entry of an earlier job of a failover chain: under its own
    /// provider, cost 0 (an ended job reports none), dated as the caller
    /// knows best.
    pub fn of_attempt(
        a: &crate::marker::Attempt,
        project: &str,
        task: &str,
        delegated_at: &str,
        finished_at: &str,
    ) -> Entry {
        Entry {
            job_id: a.job_id.clone(),
            project: project.to_string(),
            task: task.to_string(),
            provider: a.provider.clone(),
            model: None,
            status: a.status.clone(),
            cost_cad: 0.0,
            tokens_in: None,
            tokens_out: None,
            delegated_at: delegated_at.to_string(),
            finished_at: finished_at.to_string(),
            step: true,
        }
    }

    pub fn is_completed(&self) -> bool {
        self.status == "completed"
    }

    /// One line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut e = self.clone();
        e.cost_cad = sane_cost(e.cost_cad);
        e.finished_at = utc(&e.finished_at).unwrap_or(e.finished_at);
        let mut v = serde_json::to_vec(&e).expect("an entry always serializes");
        v.push(b'\n');
        v
    }
}

/// A cost that is not a finite number in [0, 1 000 000) counts as unknown (0),
/// as for records.
pub fn sane_cost(c: f64) -> f64 {
    if c.is_finite() && (0.0..1_000_000.0).contains(&c) {
        c
    } else {
        0.0
    }
}

/// `finished_at` as `YYYY-MM-DDTHH:MM:SSZ`, so that days and months are its
/// first 10 and 7 bytes and times compare as strings.
pub fn utc(t: &str) -> Option<String> {
    // The fast path takes only exactly that shape, digit for digit: a
    // string from a record or a hostile ledger line may hold anything.
    const SHAPE: &[u8; 20] = b"dddd-dd-ddTdd:dd:ddZ";
    let b = t.as_bytes();
    if b.len() == 20
        && b.iter().zip(SHAPE).all(|(&c, &want)| {
            if want == b'd' {
                c.is_ascii_digit()
            } else {
                c == want
            }
        })
    {
        return Some(t.to_string());
    }
    crate::timestamp::parse(t).map(crate::timestamp::format)
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(LEDGER_FILE)
}

/// Appends entries whose records this run wrote (see the invariant above).
pub fn append(adm: &Admission, entries: &[Entry]) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let p = path(adm.state_dir());
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&p)
        .with_context(|| format!("cannot open the ledger {}; {REBUILD_HINT}", p.display()))?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        anyhow::bail!(
            "the ledger {} is not a regular file; {REBUILD_HINT}",
            p.display()
        );
    }
    let mut buf = Vec::with_capacity(entries.len() * 300 + 1);
    if meta.len() > 0 {
        let mut last = [0u8];
        f.read_exact_at(&mut last, meta.len() - 1)?;
        if last[0] != b'\n' {
            // A torn line from a killed run: end it, so this entry starts
            // on a line of its own.
            buf.push(b'\n');
        }
    }
    for e in entries {
        buf.extend_from_slice(&e.to_line());
    }
    f.write_all(&buf)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot append to the ledger {}", p.display()))?;
    // Warnings are the next reader's to say.
    spend::refresh(adm, &mut Vec::new())?;
    Ok(())
}

/// Appends the entries the ledger does not hold yet (one scan for the
/// whole batch): by job id, or for a record with no job (a submission never
/// confirmed, a corrupt marker, a chain a budget ended while deferred) by
/// its project, task and end time, which its record fixes once written.
/// Answers how many were appended.
pub fn record_once(adm: &Admission, entries: &[Entry]) -> anyhow::Result<usize> {
    let ids: Vec<&str> = entries.iter().filter_map(|e| e.job_id.as_deref()).collect();
    let present = present_ids(adm.state_dir(), &ids)?;
    let jobless: std::collections::HashSet<(&str, &str, &str)> = entries
        .iter()
        .filter(|e| e.job_id.is_none())
        .map(|e| (e.project.as_str(), e.task.as_str(), e.finished_at.as_str()))
        .collect();
    let mut seen_jobless = std::collections::HashSet::new();
    if !jobless.is_empty() {
        scan(&path(adm.state_dir()), 0, &mut Vec::new(), |line, _| {
            if let Ok(e) = serde_json::from_slice::<Entry>(line)
                && e.job_id.is_none()
                && jobless.contains(&(e.project.as_str(), e.task.as_str(), e.finished_at.as_str()))
            {
                seen_jobless.insert((e.project, e.task, e.finished_at));
            }
        })?;
    }
    let new: Vec<Entry> = entries
        .iter()
        .filter(|e| match e.job_id.as_deref() {
            Some(id) => !present.contains(id),
            None => {
                !seen_jobless.contains(&(e.project.clone(), e.task.clone(), e.finished_at.clone()))
            }
        })
        .cloned()
        .collect();
    append(adm, &new)?;
    Ok(new.len())
}

/// Which of `ids` the ledger holds.
pub fn present_ids(
    state_dir: &Path,
    ids: &[&str],
) -> anyhow::Result<std::collections::HashSet<String>> {
    let want: std::collections::HashSet<&str> = ids.iter().copied().collect();
    let mut found = std::collections::HashSet::new();
    if want.is_empty() {
        return Ok(found);
    }
    let mut warnings = Vec::new();
    scan(&path(state_dir), 0, &mut warnings, |line, _| {
        let id = match leading_job_id(line) {
            Some(id) => Some(id.to_string()),
            None => serde_json::from_slice::<Entry>(line)
                .ok()
                .and_then(|e| e.job_id),
        };
        if let Some(id) = id.filter(|id| want.contains(id.as_str())) {
            found.insert(id);
        }
    })?;
    Ok(found)
}

/// The job id of a whole line as this module writes it, without parsing
/// the line. A line torn by a crash (`{"job_id":"j-2","pro`, later ended
/// by the next append's newline) does not end with `}`: it names no job,
/// so the job is appended again rather than counted zero times.
fn leading_job_id(line: &[u8]) -> Option<&str> {
    if !line.trim_ascii_end().ends_with(b"}") {
        return None;
    }
    let rest = line.strip_prefix(b"{\"job_id\":\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[end] == b'"')
        .then(|| std::str::from_utf8(&rest[..end]).ok())
        .flatten()
}

/// Opens the ledger for reading: `None` when it does not exist. A ledger
/// that is not a regular file is an error naming the fix.
pub fn open(p: &Path) -> anyhow::Result<Option<File>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read the ledger {}: {e}; {REBUILD_HINT}",
                p.display()
            ));
        }
    };
    if !f.metadata()?.is_file() {
        anyhow::bail!(
            "the ledger {} is not a regular file; {REBUILD_HINT}",
            p.display()
        );
    }
    Ok(Some(f))
}

/// Streams the ledger's complete lines from byte `from`, calling `each`
/// with a line (without its newline) and the offset just past it. A torn
/// last line is left out, with a warning. Answers the offset past the last
/// complete line.
pub fn scan(
    p: &Path,
    from: u64,
    warnings: &mut Vec<String>,
    mut each: impl FnMut(&[u8], u64),
) -> anyhow::Result<u64> {
    let Some(mut f) = open(p)? else {
        return Ok(0);
    };
    f.seek(SeekFrom::Start(from))?;
    let mut r = BufReader::with_capacity(1 << 18, f);
    let mut line = Vec::with_capacity(512);
    let mut offset = from;
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read the ledger {}", p.display()))?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            warnings.push(format!(
                "the ledger {} ends in a torn line (a run was killed while writing it); skipped; {REBUILD_HINT}",
                p.display()
            ));
            break;
        }
        offset += n as u64;
        let body = &line[..line.len() - 1];
        if !body.is_empty() {
            each(body, offset);
        }
    }
    Ok(offset)
}

/// Parses one line; a line that is not an entry gives a warning naming
/// the offset.
pub fn parse_line(p: &Path, line: &[u8], end: u64, warnings: &mut Vec<String>) -> Option<Entry> {
    match serde_json::from_slice::<Entry>(line) {
        Ok(e) => Some(e),
        Err(e) => {
            warnings.push(format!(
                "the ledger {} has a corrupt line ending at byte {end} ({e}); skipped; {REBUILD_HINT}",
                p.display()
            ));
            None
        }
    }
}

/// Reads every entry (for tests and small ledgers).
pub fn read_all(state_dir: &Path, warnings: &mut Vec<String>) -> anyhow::Result<Vec<Entry>> {
    let p = path(state_dir);
    let mut out = Vec::new();
    let mut bad = Vec::new();
    scan(&p, 0, warnings, |line, end| {
        if let Some(e) = parse_line(&p, line, end, &mut bad) {
            out.push(e);
        }
    })?;
    warnings.extend(bad);
    Ok(out)
}

/// Writes a whole file atomically and durably: tmp in the same directory,
/// fsync, rename, fsync the directory.
pub(crate) fn write_atomic(target: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_whole(target, bytes, true)
}

/// Writes a file that can always be made again from durable ones
/// (spend.json from the ledger, inflight.tsv from the markers): atomic
/// for readers, but without the fsyncs that would double the cost of a
/// submit. After a power loss it may be old or empty: readers then count
/// again (spend) or wait for the next reap (in flight).
pub(crate) fn write_cache(target: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_whole(target, bytes, false)
}

fn write_whole(target: &Path, bytes: &[u8], durable: bool) -> anyhow::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let ctx = || format!("cannot write {}", target.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".ccl-delegate-tmp-")
        .tempfile_in(dir)
        .with_context(ctx)?;
    tmp.write_all(bytes).with_context(ctx)?;
    if durable {
        tmp.as_file().sync_all().with_context(ctx)?;
    }
    tmp.persist(target).map_err(|e| e.error).with_context(ctx)?;
    if durable {
        crate::queue::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(id: &str, provider: &str, status: &str, cost: f64, at: &str) -> Entry {
        Entry {
            job_id: Some(id.into()),
            project: "/p".into(),
            task: format!("{id}.md"),
            provider: provider.into(),
            model: Some("m".into()),
            status: status.into(),
            cost_cad: cost,
            tokens_in: Some(10),
            tokens_out: None,
            delegated_at: at.into(),
            finished_at: at.into(),
            step: false,
        }
    }

    fn lock(dir: &Path) -> Admission {
        Admission::lock(dir, std::time::Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_next_append_starts_a_fresh_line() {
        let d = tempfile::tempdir().unwrap();
        let adm = lock(d.path());
        append(
            &adm,
            &[entry(
                "j-1",
                "gpu",
                "completed",
                0.5,
                "2026-11-24T10:00:00Z",
            )],
        )
        .unwrap();
        let p = path(d.path());
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"job_id\":\"j-torn\",\"pro").unwrap();
        let mut w = Vec::new();
        assert_eq!(read_all(d.path(), &mut w).unwrap().len(), 1);
        assert!(w[0].contains("torn line"), "{w:?}");
        append(
            &adm,
            &[entry(
                "j-2",
                "gpu",
                "failed",
                0.0,
                "2026-11-24T10:00:00+01:00",
            )],
        )
        .unwrap();
        let mut w = Vec::new();
        let all = read_all(d.path(), &mut w).unwrap();
        let ids: Vec<_> = all.iter().map(|e| e.job_id.clone().unwrap()).collect();
        assert_eq!(ids, ["j-1", "j-2"]);
        assert_eq!(all[1].finished_at, "2026-11-24T09:00:00Z");
        // The torn line names no job: a job whose entry was torn is
        // appended again by record_once, never counted zero times.
        let present = present_ids(d.path(), &["j-1", "j-torn", "j-2"]).unwrap();
        assert!(present.contains("j-1") && present.contains("j-2"));
        assert!(!present.contains("j-torn"), "{present:?}");
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("corrupt line") && w[0].contains("ledger rebuild"),
            "{w:?}"
        );
    }

    #[test]
    fn record_once_appends_only_missing_job_ids() {
        let d = tempfile::tempdir().unwrap();
        let adm = lock(d.path());
        let a = entry("j-1", "gpu", "completed", 0.5, "2026-11-24T10:00:00Z");
        let b = entry("j-2", "gpu", "completed", 0.25, "2026-11-24T10:00:00Z");
        append(&adm, std::slice::from_ref(&a)).unwrap();
        assert_eq!(record_once(&adm, &[a.clone(), b.clone()]).unwrap(), 1);
        assert_eq!(record_once(&adm, &[a, b]).unwrap(), 0);
        assert_eq!(read_all(d.path(), &mut Vec::new()).unwrap().len(), 2);
        // A record with no job counts once too: by project, task and end.
        let mut none = entry("x", "gpu", "timeout", 0.0, "2026-11-24T11:00:00Z");
        none.job_id = None;
        let mut other = none.clone();
        other.task = "other.md".into();
        assert_eq!(record_once(&adm, std::slice::from_ref(&none)).unwrap(), 1);
        assert_eq!(record_once(&adm, &[none, other]).unwrap(), 1);
        assert_eq!(read_all(d.path(), &mut Vec::new()).unwrap().len(), 4);
    }

    #[test]
    fn a_ledger_that_is_not_a_regular_file_is_refused_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(path(d.path())).unwrap();
        let adm = lock(d.path());
        let e = append(
            &adm,
            &[entry("j", "gpu", "completed", 0.1, "2026-11-24T10:00:00Z")],
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("ledger rebuild"), "{e:#}");
        let e = read_all(d.path(), &mut Vec::new()).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
    }

    #[test]
    fn times_of_any_bytes_never_panic_and_only_real_ones_count() {
        for ok in ["2026-11-24T10:00:00Z", "2026-11-24T11:00:00+01:00"] {
            assert_eq!(utc(ok).as_deref(), Some("2026-11-24T10:00:00Z"), "{ok}");
        }
        // 20 bytes with the right punctuation, a multi-byte character where
        // a month digit should be: refused, never sliced.
        for bad in ["2026-1\u{e9}24T10:00:00Z", "2026-xx-24T10:00:00Z", "", "Z"] {
            assert_eq!(utc(bad), None, "{bad:?}");
        }
        let mut s = spend::Spend::default();
        let mut e = entry("j-1", "gpu", "completed", 1.0, "2026-11-24T10:00:00Z");
        e.finished_at = "2026-1\u{e9}24T10:00:00Z".into();
        s.fold(&e);
    }

    #[test]
    fn bad_costs_count_as_zero() {
        for (c, want) in [(0.5, 0.5), (-1.0, 0.0), (f64::NAN, 0.0), (2e6, 0.0)] {
            assert_eq!(sane_cost(c), want);
        }
    }
}
