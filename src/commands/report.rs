//! `report`: jobs, failures, cost and turnaround per provider, project,
//! model or day, streamed from the ledger; then the budgets (policy.md
//! "Report").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::books::Row;
use crate::cli::ReportArgs;
use crate::config::Settings;
use crate::error::{Code, fail};
use crate::names::project_key;
use crate::policy::admit::CapState;
use crate::table::Align;
use crate::ui::Ui;

const DAY: Duration = Duration::from_secs(86_400);
const DEFAULT_SINCE: Duration = Duration::from_secs(30 * 86_400);

/// One row's sums.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    pub jobs: u64,
    pub done: u64,
    pub failed: u64,
    pub cost_cad: f64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Turnarounds of the done jobs, in seconds.
    pub turnaround: Vec<u64>,
}

impl Group {
    /// Sums saturate: a hostile service's token counts never wrap.
    fn add(&mut self, completed: bool, cost: f64, tin: u64, tout: u64, turnaround: Option<u64>) {
        self.jobs = self.jobs.saturating_add(1);
        if completed {
            self.done = self.done.saturating_add(1);
            self.turnaround.extend(turnaround);
        } else {
            self.failed = self.failed.saturating_add(1);
        }
        self.cost_cad += crate::books::sane_cost(cost);
        self.tokens_in = self.tokens_in.saturating_add(tin);
        self.tokens_out = self.tokens_out.saturating_add(tout);
    }

    fn merge(&mut self, o: &Group) {
        self.jobs = self.jobs.saturating_add(o.jobs);
        self.done = self.done.saturating_add(o.done);
        self.failed = self.failed.saturating_add(o.failed);
        self.cost_cad += o.cost_cad;
        self.tokens_in = self.tokens_in.saturating_add(o.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(o.tokens_out);
        self.turnaround.extend_from_slice(&o.turnaround);
    }

    /// The columns after the key, as numbers (None: empty).
    fn columns(&mut self) -> Columns {
        self.turnaround.sort_unstable();
        Columns {
            jobs: self.jobs,
            done: self.done,
            failed: self.failed,
            fail_pct: if self.jobs == 0 {
                0.0
            } else {
                round(self.failed as f64 * 100.0 / self.jobs as f64, 1)
            },
            cost_cad: round(self.cost_cad, 4),
            mean_cad: (self.done > 0).then(|| round(self.cost_cad / self.done as f64, 4)),
            p50: percentile(&self.turnaround, 50),
            p95: percentile(&self.turnaround, 95),
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
        }
    }
}

#[derive(Debug, PartialEq)]
struct Columns {
    jobs: u64,
    done: u64,
    failed: u64,
    fail_pct: f64,
    cost_cad: f64,
    mean_cad: Option<f64>,
    p50: Option<u64>,
    p95: Option<u64>,
    tokens_in: u64,
    tokens_out: u64,
}

const HEADER: [&str; 10] = [
    "jobs",
    "done",
    "failed",
    "fail_pct",
    "cost_cad",
    "mean_cad",
    "p50",
    "p95",
    "tokens_in",
    "tokens_out",
];

impl Columns {
    fn json(&self, key: Option<(&str, &str)>) -> Value {
        let mut m = serde_json::Map::new();
        if let Some((by, k)) = key {
            m.insert(by.into(), k.into());
        }
        let v = json!({
            "jobs": self.jobs, "done": self.done, "failed": self.failed,
            "fail_pct": self.fail_pct, "cost_cad": self.cost_cad, "mean_cad": self.mean_cad,
            "p50": self.p50, "p95": self.p95,
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
        });
        if let Value::Object(o) = v {
            m.extend(o);
        }
        Value::Object(m)
    }

    /// The cells: the table shows turnarounds as `1m 12s`, CSV as seconds.
    fn cells(&self, human: bool) -> [String; 10] {
        let dur = |s: Option<u64>| match s {
            None => String::new(),
            Some(s) if human => humantime::format_duration(Duration::from_secs(s)).to_string(),
            Some(s) => s.to_string(),
        };
        [
            self.jobs.to_string(),
            self.done.to_string(),
            self.failed.to_string(),
            format!("{:.1}", self.fail_pct),
            format!("{:.4}", self.cost_cad),
            self.mean_cad.map(|m| format!("{m:.4}")).unwrap_or_default(),
            dur(self.p50),
            dur(self.p95),
            self.tokens_in.to_string(),
            self.tokens_out.to_string(),
        ]
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// The nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: u64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p as usize * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// `WHEN`: a duration back from `now`, a UTC date (its start; its end when
/// `end_of_day`, so `--until 2026-11-24` includes that day), or an RFC 3339
/// time.
pub fn parse_when(s: &str, now: SystemTime, end_of_day: bool) -> Option<SystemTime> {
    let t = s.trim();
    // Back past 1970 is from the start: no entry is older.
    if let Ok(d) = humantime::parse_duration(t) {
        return Some(now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    if t.len() == 10 && t.as_bytes()[4] == b'-' && t.as_bytes()[7] == b'-' {
        if let Some(year) = t.get(..4).and_then(|y| y.parse::<u32>().ok())
            && year < 1970
        {
            // A real date (checked in a leap year of the clock's range).
            crate::timestamp::parse(&format!("1972{}T00:00:00Z", &t[4..]))?;
            return Some(SystemTime::UNIX_EPOCH);
        }
        let start = crate::timestamp::parse(&format!("{t}T00:00:00Z"))?;
        return Some(if end_of_day { start + DAY } else { start });
    }
    crate::timestamp::parse(t)
}

/// The window and filters, and the groups found.
pub struct Query {
    pub by: String,
    /// Canonical UTC strings: `since <= finished_at < until`.
    pub since: String,
    pub until: Option<String>,
    pub projects: BTreeSet<String>,
}

impl Query {
    /// The ledger's entries in the window, grouped: the fleet's when a
    /// fleet is configured, else this host's (all under `host`).
    pub fn run(
        &self,
        books: Option<&crate::books::Books>,
        fleet: Option<&mut crate::books::fleet::Fleet>,
        host: &str,
    ) -> anyhow::Result<BTreeMap<String, Group>> {
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        if let Some(f) = fleet {
            f.rows_between(&self.since, self.until.as_deref(), |h, r| {
                self.add(&mut groups, h, &r)
            })?;
            return Ok(groups);
        }
        let Some(books) = books else {
            return Ok(groups);
        };
        books.rows_between(&self.since, self.until.as_deref(), |r| {
            self.add(&mut groups, host, &r)
        })?;
        Ok(groups)
    }

    fn add(&self, groups: &mut BTreeMap<String, Group>, host: &str, r: &Row) {
        if !self.projects.is_empty() && !self.projects.contains(&r.project) {
            return;
        }
        let key: &str = match self.by.as_str() {
            "project" => &r.project,
            "model" => r.model.as_deref().unwrap_or("unknown"),
            "day" => r.finished_at.get(..10).unwrap_or(&r.finished_at),
            "host" => host,
            _ => &r.provider,
        };
        let g = match groups.get_mut(key) {
            Some(g) => g,
            None => groups.entry(key.to_string()).or_default(),
        };
        g.add(
            r.completed,
            r.cost_cad,
            r.tokens_in,
            r.tokens_out,
            r.turnaround.filter(|_| r.completed),
        );
    }
}

pub fn run(args: &ReportArgs, settings: &Settings, ui: Ui) -> anyhow::Result<Code> {
    let now = SystemTime::now();
    let (since, until) = window(args, now)?;
    let q = Query {
        by: args.by.clone(),
        since,
        until,
        projects: args.projects.iter().map(|p| project_key(p)).collect(),
    };
    let mut books = crate::books::open_if_present(&settings.state_dir, settings.lock_timeout)?;
    let mut fleet = match &settings.fleet {
        Some(cfg) => Some(crate::books::fleet::Fleet::connect(
            cfg,
            settings.lock_timeout,
            settings.max_age,
        )?),
        None => None,
    };
    let host = match &settings.fleet {
        Some(cfg) => cfg.host.clone(),
        None => crate::books::fleet::hostname(),
    };
    let mut groups = q.run(books.as_ref(), fleet.as_mut(), &host)?;
    let budget = match (fleet.as_mut(), books.as_mut()) {
        (Some(f), _) => f.budget(&settings.policy, now)?,
        (None, Some(b)) => b.budget(&settings.policy, now)?,
        (None, None) => crate::policy::admit::budget_states(
            &settings.policy,
            &Default::default(),
            &Default::default(),
        ),
    };
    let _ = ui;
    let mut total = Group::default();
    for g in groups.values() {
        total.merge(g);
    }
    let out = if args.json {
        as_json(&q.by, &mut groups, &mut total, &budget)?
    } else if args.csv {
        as_csv(&q.by, &mut groups, &mut total)
    } else {
        as_table(&q.by, &mut groups, &mut total, &budget)
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(Code::Ok)
}

/// `--since` (default: [`DEFAULT_SINCE`] back) and `--until`, as stored
/// times.
fn window(args: &ReportArgs, now: SystemTime) -> anyhow::Result<(String, Option<String>)> {
    let when = |flag: &str, v: &str, end: bool| {
        parse_when(v, now, end).ok_or_else(|| {
            fail(
                Code::Usage,
                format!(
                    "{flag} `{}`: expected a duration back from now (7d, 12h), a UTC date (2026-11-24) or an RFC 3339 time",
                    crate::text::clip(v, 60)
                ),
            )
        })
    };
    let since = match &args.since {
        Some(v) => when("--since", v, false)?,
        None => now - DEFAULT_SINCE,
    };
    let until = args
        .until
        .as_deref()
        .map(|v| when("--until", v, true))
        .transpose()?;
    Ok((
        crate::timestamp::format(since),
        until.map(crate::timestamp::format),
    ))
}

/// `--json`: the rows, the total and the budget.
fn as_json(
    by: &str,
    groups: &mut BTreeMap<String, Group>,
    total: &mut Group,
    budget: &[CapState],
) -> anyhow::Result<String> {
    let rows: Vec<Value> = groups
        .iter_mut()
        .map(|(k, g)| g.columns().json(Some((by, k))))
        .collect();
    let v = json!({
        "rows": rows,
        "total": total.columns().json(None),
        "budget": budget.iter().map(CapState::json).collect::<Vec<_>>(),
    });
    Ok(crate::text::json_pretty(&v)? + "\n")
}

/// `--csv`: a head, a line per group, the total; no budget.
fn as_csv(by: &str, groups: &mut BTreeMap<String, Group>, total: &mut Group) -> String {
    let mut out = String::new();
    csv_line(&mut out, std::iter::once(by).chain(HEADER));
    for (k, g) in groups.iter_mut() {
        let cells = g.columns().cells(false);
        csv_line(
            &mut out,
            std::iter::once(k.as_str()).chain(cells.iter().map(String::as_str)),
        );
    }
    let cells = total.columns().cells(false);
    csv_line(
        &mut out,
        std::iter::once("total").chain(cells.iter().map(String::as_str)),
    );
    out
}

/// The table for a person: a head, a line per group, the total, then the
/// budget's lines.
fn as_table(
    by: &str,
    groups: &mut BTreeMap<String, Group>,
    total: &mut Group,
    budget: &[CapState],
) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once(by.to_string())
            .chain(HEADER.iter().map(|h| h.to_string()))
            .collect(),
    ];
    for (k, g) in groups.iter_mut() {
        rows.push(
            std::iter::once(crate::text::clip(k, 120))
                .chain(g.columns().cells(true))
                .collect(),
        );
    }
    rows.push(
        std::iter::once("total".to_string())
            .chain(total.columns().cells(true))
            .collect(),
    );
    // The key column left-aligned, the numbers right-aligned.
    let mut align = vec![Align::Right; rows[0].len()];
    align[0] = Align::Left;
    let mut out = crate::table::render(&rows, &align);
    for b in budget {
        let _ = writeln!(out, "{}", b.line());
    }
    out
}

/// One CSV line: every cell through [`csv_field`], the key's as the
/// numbers', so no cell escapes the rules.
fn csv_line<'a>(out: &mut String, cells: impl Iterator<Item = &'a str>) {
    for (i, c) in cells.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_field(c));
    }
    out.push('\n');
}

/// One CSV cell (policy.md "Report"): control and bidi characters escaped
/// as in every other output ([`crate::text::line`]), a cell a spreadsheet
/// would run as a formula prefixed with `'`, then RFC 4180 quoting when
/// the cell holds a comma or a quote.
fn csv_field(s: &str) -> String {
    let mut cell = crate::text::line(s);
    if runs_as_formula(s) {
        cell.insert(0, '\'');
    }
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

/// Whether a spreadsheet would take the cell for a formula: it starts with
/// `=`, `+`, `-`, `@`, a tab or a carriage return, and is not a number
/// (`-1.5` is a number, `-1+2` and `-inf` are not).
fn runs_as_formula(s: &str) -> bool {
    s.starts_with(['=', '+', '-', '@', '\t', '\r']) && !s.parse::<f64>().is_ok_and(f64::is_finite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(percentile(&v, 50), Some(10));
        assert_eq!(percentile(&v, 95), Some(19));
        assert_eq!(percentile(&[7], 95), Some(7));
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[1, 2], 50), Some(1));
    }

    #[test]
    fn when_forms() {
        let now = crate::timestamp::parse("2026-11-24T12:00:00Z").unwrap();
        let f = |s, end| parse_when(s, now, end).map(crate::timestamp::format);
        assert_eq!(f("7d", false).as_deref(), Some("2026-11-17T12:00:00Z"));
        assert_eq!(f("12h", false).as_deref(), Some("2026-11-24T00:00:00Z"));
        assert_eq!(
            f("2026-11-20", false).as_deref(),
            Some("2026-11-20T00:00:00Z")
        );
        assert_eq!(
            f("2026-11-20", true).as_deref(),
            Some("2026-11-21T00:00:00Z")
        );
        assert_eq!(
            f("2026-11-20T10:00:00+01:00", true).as_deref(),
            Some("2026-11-20T09:00:00Z")
        );
        assert_eq!(f("last week", false), None);
        assert_eq!(f("2026-13-45", false), None);
        // Reaching before 1970, or up to 9999: clamped, never a panic.
        let epoch = Some("1970-01-01T00:00:00Z");
        assert_eq!(f("100y", false).as_deref(), epoch);
        assert_eq!(f("500000y", false).as_deref(), epoch);
        assert_eq!(f("1960-02-29", false).as_deref(), epoch);
        assert_eq!(f("1961-02-30", false), None);
        assert_eq!(
            f("9999-12-31", true).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
    }

    #[test]
    fn columns_of_a_group() {
        let mut g = Group::default();
        g.add(true, 0.1, 10, 5, Some(72));
        g.add(true, 0.2, 0, 0, Some(30));
        g.add(false, 0.0, 0, 0, None);
        let c = g.columns();
        assert_eq!(
            c.cells(true),
            [
                "3", "2", "1", "33.3", "0.3000", "0.1500", "30s", "1m 12s", "10", "5"
            ]
        );
        assert_eq!(c.cells(false)[6..8], ["30".to_string(), "72".to_string()]);
        let mut empty = Group::default();
        empty.add(false, 0.0, 0, 0, None);
        assert_eq!(
            empty.columns().cells(true),
            ["1", "0", "1", "100.0", "0.0000", "", "", "", "0", "0"]
        );
    }

    #[test]
    fn csv_quotes_escapes_and_disarms_formulas() {
        // (service string, CSV cell)
        let rows: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("", ""),
            ("a,b", "\"a,b\""),
            ("say \"x\"", "\"say \"\"x\"\"\""),
            ("a\x1b[31mb", "a\\x1b[31mb"),
            ("\u{202e}lmth.exe", "\\u{202e}lmth.exe"),
            ("two\nlines\r", "two\\nlines\\r"),
            (
                "=HYPERLINK(\"http://x\")",
                "\"'=HYPERLINK(\"\"http://x\"\")\"",
            ),
            ("=1+2", "'=1+2"),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
            ("\t=1", "'\\t=1"),
            ("\r=1", "'\\r=1"),
            ("=a,b", "\"'=a,b\""),
            ("-inf", "'-inf"),
            ("-NaN", "'-NaN"),
            // Numbers stay numbers.
            ("-1.5", "-1.5"),
            ("+7", "+7"),
            ("-0.0000", "-0.0000"),
            ("12.3400", "12.3400"),
            ("1e5", "1e5"),
            // Not at the start: no formula.
            ("a=1", "a=1"),
            (" =1", " =1"),
        ];
        for &(input, want) in rows {
            let got = csv_field(input);
            assert_eq!(got, want, "{input:?}");
            assert!(
                !got.chars().any(crate::text::is_unsafe_char),
                "{input:?}: {got:?}"
            );
            assert!(
                !got.starts_with(['=', '+', '-', '@', '\t', '\r'])
                    || got.parse::<f64>().is_ok_and(f64::is_finite),
                "{got:?}"
            );
        }
    }
}
