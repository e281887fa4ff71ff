//! The reads an admission needs, in SQL both stores run as written (the
//! SQLite books and the fleet's PostgreSQL database share the table names
//! and these queries), and how their rows become [`Spending`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::policy::{Counts, Provider, Spending};

/// How many completed costs the estimate averages (policy.md).
pub const RECENT: i64 = 50;

/// Spent per provider over the day sums from `$1` to `$2` (days, inclusive).
pub const SPENT: &str = "SELECT provider, coalesce(sum(cost_cad), 0) FROM spend_day
     WHERE day >= $1 AND day <= $2 GROUP BY provider";

/// The mean of a provider's last completed costs, and how many there were.
pub const MEAN_OF: &str = "SELECT avg(cost_cad), count(*) FROM (SELECT cost_cad FROM ledger
     WHERE status = 'completed' AND provider = $1 ORDER BY id DESC LIMIT $2) AS recent";

/// The same over all providers.
pub const MEAN_ALL: &str = "SELECT avg(cost_cad), count(*) FROM (SELECT cost_cad FROM ledger
     WHERE status = 'completed' ORDER BY id DESC LIMIT $1) AS recent";

/// One job in flight of a provider: the one the price rule names.
pub const PROBE: &str = "SELECT coalesce(job_id, task) FROM reservation WHERE provider = $1
     ORDER BY job_id IS NULL, started_at LIMIT 1";

/// What a store answers to the three reads.
pub trait Reader {
    /// Rows of [`SPENT`].
    fn spent(&mut self, from_day: &str, to_day: &str) -> anyhow::Result<Vec<(String, f64)>>;
    /// The row of [`MEAN_OF`] (`Some(provider)`) or [`MEAN_ALL`].
    fn mean(&mut self, provider: Option<&str>) -> anyhow::Result<(Option<f64>, i64)>;
    /// The row of [`PROBE`].
    fn probe(&mut self, provider: &str) -> anyhow::Result<Option<String>>;
}

/// The windows [`spending`] sums, as the days [`SPENT`] takes (inclusive):
/// today, and this month.
pub fn windows(now: SystemTime) -> [(String, String); 2] {
    let today = crate::timestamp::format(now);
    let (day, month) = (&today[..10], &today[..7]);
    [
        (day.to_string(), day.to_string()),
        (format!("{month}-01"), format!("{month}-31")),
    ]
}

/// Rows of [`SPENT`] for one window (`from_day`, `to_day`).
pub type Window = ((String, String), Vec<(String, f64)>);

/// The row of [`MEAN_OF`] (`Some(provider)`) or [`MEAN_ALL`] (`None`).
pub type Mean = (Option<String>, (Option<f64>, i64));

/// Reads fetched ahead, all at once (the fleet's admission reads them in
/// one statement): answers [`Reader`] from them, and asks `rest` for
/// anything not fetched.
pub struct Fetched<R> {
    pub spent: Vec<Window>,
    pub means: Vec<Mean>,
    pub rest: R,
}

impl<R: Reader> Reader for Fetched<R> {
    fn spent(&mut self, from_day: &str, to_day: &str) -> anyhow::Result<Vec<(String, f64)>> {
        match self
            .spent
            .iter()
            .find(|((f, t), _)| f == from_day && t == to_day)
        {
            Some((_, rows)) => Ok(rows.clone()),
            None => self.rest.spent(from_day, to_day),
        }
    }

    fn mean(&mut self, provider: Option<&str>) -> anyhow::Result<(Option<f64>, i64)> {
        match self.means.iter().find(|(p, _)| p.as_deref() == provider) {
            Some((_, m)) => Ok(*m),
            None => self.rest.mean(provider),
        }
    }

    fn probe(&mut self, provider: &str) -> anyhow::Result<Option<String>> {
        self.rest.probe(provider)
    }
}

/// An amount read from the books, as their transactions write it: finite
/// and not negative. Any other was written by other hands: admission fails
/// closed on it (rather than read it as a credit or as nothing spent), and
/// `ledger rebuild` makes the sums again.
fn stored(what: &str, provider: &str, v: f64) -> anyhow::Result<f64> {
    if v.is_finite() && v >= 0.0 {
        return Ok(v);
    }
    anyhow::bail!(
        "the books are damaged: {what} of {} is {v}; run `ccl-delegate ledger rebuild`",
        crate::text::clip(provider, 40)
    )
}

/// What the ledger says for admission: spent today and this month (by the
/// day sums, so an entry dated ahead counts in its own day and never hides
/// today's), the mean of the last completed costs, and a job in flight of
/// each provider whose price is not known.
pub fn spending(r: &mut impl Reader, counts: &Counts, now: SystemTime) -> anyhow::Result<Spending> {
    let [(day_lo, day_hi), (month_lo, month_hi)] = windows(now);
    let mut s = Spending::default();
    let mut sums = |lo: &str, hi: &str| -> anyhow::Result<BTreeMap<String, f64>> {
        let mut out = BTreeMap::new();
        let mut all = 0.0;
        for (p, c) in r.spent(lo, hi)? {
            let c = stored("spent", &p, c)?;
            all += c;
            out.insert(p, c);
        }
        out.insert("all".to_string(), all);
        Ok(out)
    };
    s.daily = sums(&day_lo, &day_hi)?;
    s.monthly = sums(&month_lo, &month_hi)?;
    for p in Provider::ALL.iter().filter(|p| **p != Provider::Auto) {
        if let (Some(m), n) = r.mean(Some(p.as_str()))?
            && n > 0
        {
            s.means.insert(
                p.as_str().to_string(),
                stored("the mean cost", p.as_str(), m)?,
            );
        }
    }
    if let (Some(m), n) = r.mean(None)?
        && n > 0
    {
        s.means
            .insert("all".to_string(), stored("the mean cost", "all", m)?);
    }
    for p in counts.keys() {
        let scope = match Provider::parse(p) {
            Some(Provider::Auto) | None => "all",
            Some(k) => k.as_str(),
        };
        if s.means.contains_key(scope) {
            continue;
        }
        if let Some(j) = r.probe(p)? {
            s.probes.insert(p.clone(), j);
        }
    }
    Ok(s)
}
