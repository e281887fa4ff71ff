//! `status`: what is in flight, and totals of done and failed tasks per
//! provider, all read from the files (no network).

use std::fs;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use serde::Serialize;

use crate::cli::StatusArgs;
use crate::config::Settings;
use crate::error::Code;
use crate::marker::{Marker, State};
use crate::queue::{self, Queue};
use crate::record::Record;
use crate::text::clip;
use crate::totals::{self, Source, Total, Totals};
use crate::ui::Ui;

#[derive(Serialize)]
struct InFlight {
    project: String,
    task: String,
    state: &'static str,
    provider: String,
    job_id: Option<String>,
    started_at: String,
    age_seconds: u64,
    /// `started_at` lies more than 5 minutes ahead of this host's clock
    /// (the next reap resets it to now); `age_seconds` is then 0. Present
    /// only when true, so the stable set of fields stays as it was.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    started_in_future: bool,
    poll_errors: u64,
    last_error: Option<String>,
    /// The job in flight of a failover chain and the most the chain can
    /// take (`2/3`); absent for a task without a chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<String>,
    /// A failover step a limit deferred: pending, never sent yet. Present
    /// only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deferred: bool,
}

/// `2/3` for a marker with a failover chain, else `None`.
fn attempt_of(m: &Marker) -> Option<String> {
    let (n, of) = m.attempt_of();
    (of > 1).then(|| format!("{n}/{of}"))
}

#[derive(Serialize)]
struct Report {
    in_flight: Vec<InFlight>,
    totals: Vec<Total>,
    /// One item per cap (policy.md "Report"), as `report --json` has it;
    /// left out without a budget, so the stable set of fields stays.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    budget: Vec<serde_json::Value>,
}

pub fn run(args: &StatusArgs, settings: &Settings, ui: Ui) -> anyhow::Result<Code> {
    let projects = super::projects_for_person(&args.projects, settings)?;
    super::require_queues(&projects, settings)?;
    let queues: Vec<Queue> = projects.iter().map(|d| Queue::at(d)).collect();
    let mut books = crate::books::open_if_present(&settings.state_dir, settings.lock_timeout)
        .unwrap_or_else(|e| {
            ui.warn(format_args!("{e:#}"));
            None
        });
    let (mut totals, from_records) = ledger_totals(books.as_ref(), &queues, ui);
    let mut in_flight = Vec::new();
    for dir in &projects {
        let q = Queue::at(dir);
        in_flight.extend(in_flight_of(&q));
        if from_records {
            totals_from_heads(&q, &mut totals);
        }
    }
    let budget = budget_of(settings, books.as_mut(), ui);
    in_flight.sort_by(|a, b| (&a.project, &a.task).cmp(&(&b.project, &b.task)));
    let report = Report {
        in_flight,
        totals: totals
            .into_values()
            .map(|mut t| {
                // Sums of decimal costs, shown as the files hold them.
                t.cost_cad = (t.cost_cad * 10_000.0).round() / 10_000.0;
                t
            })
            .collect(),
        budget: budget
            .iter()
            .map(crate::policy::admit::CapState::json)
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", crate::text::json_pretty(&report)?)?;
        return Ok(Code::Ok);
    }
    render_table(&mut out, &report, std::io::stdout().is_terminal())?;
    for cap in &budget {
        writeln!(out, "{}", cap.line())?;
    }
    Ok(Code::Ok)
}

/// The tasks of one project whose markers hold them back from the
/// dispatcher, unsorted.
fn in_flight_of(q: &Queue) -> Vec<InFlight> {
    let project = std::fs::canonicalize(&q.project)
        .unwrap_or_else(|_| q.project.clone())
        .display()
        .to_string();
    let Ok(tasks) = q.marked_tasks() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks {
        // An unreadable marker (a symlink) still holds its task back
        // from the dispatcher: show it, as reap will move it.
        let parsed = match q.read_marker(&task) {
            Ok(Some(bytes)) => Marker::parse(&bytes),
            Ok(None) => continue,
            Err(e) => Err(format!("cannot read it: {e}")),
        };
        // Names that are not UTF-8 are shown escaped.
        let name = queue::shown(Path::new(&task));
        found.push(InFlight::of(project.clone(), name, parsed));
    }
    found
}

impl InFlight {
    /// The line of one marker, or of one that is corrupt.
    fn of(project: String, task: String, parsed: Result<Marker, String>) -> InFlight {
        match parsed {
            Ok(m) => InFlight {
                attempt: attempt_of(&m),
                project,
                task,
                started_in_future: m.started_in_future(),
                state: if m.state == State::Pending {
                    "pending"
                } else {
                    "submitted"
                },
                age_seconds: crate::timestamp::age(m.started()).as_secs(),
                deferred: m.deferred && m.job_id.is_none(),
                provider: m.provider,
                job_id: m.job_id,
                started_at: m.started_at,
                poll_errors: m.poll_errors,
                last_error: m.last_error,
            },
            Err(why) => InFlight {
                project,
                task,
                started_in_future: false,
                state: "corrupt",
                provider: "unknown".into(),
                job_id: None,
                started_at: String::new(),
                age_seconds: 0,
                poll_errors: 0,
                last_error: Some(format!("corrupt marker: {why}")),
                attempt: None,
                deferred: false,
            },
        }
    }
}

/// One state per cap: the fleet's, else this host's books', else (no
/// books yet) nothing spent.
fn budget_of(
    settings: &Settings,
    books: Option<&mut crate::books::Books>,
    ui: Ui,
) -> Vec<crate::policy::admit::CapState> {
    let now = std::time::SystemTime::now();
    match (&settings.fleet, books) {
        (Some(cfg), _) => fleet_budget(settings, cfg, now, ui),
        (None, Some(b)) => b.budget(&settings.policy, now).unwrap_or_else(|e| {
            ui.warn(format_args!("{e:#}"));
            Vec::new()
        }),
        (None, None) => crate::policy::admit::budget_states(
            &settings.policy,
            &Default::default(),
            &Default::default(),
        ),
    }
}

/// The fleet's budget lines (fleet.md: the caps count the whole fleet), and
/// a warning naming each host whose reservations are past `max_age`.
fn fleet_budget(
    settings: &Settings,
    cfg: &crate::books::fleet::FleetConfig,
    now: std::time::SystemTime,
    ui: Ui,
) -> Vec<crate::policy::admit::CapState> {
    let got = crate::books::fleet::Fleet::connect(cfg, settings.lock_timeout, settings.max_age)
        .and_then(|mut f| {
            let caps = f.budget(&settings.policy, now)?;
            let stale = f.stale_hosts(now)?;
            anyhow::Ok((caps, stale))
        });
    match got {
        Ok((caps, stale)) => {
            for h in stale {
                ui.warn(format_args!(
                    "fleet host {h} holds reservations older than max_age: it stopped reaping; they no longer count"
                ));
            }
            caps
        }
        Err(e) => {
            ui.warn(format_args!("{e:#}; no budget lines"));
            Vec::new()
        }
    }
}

/// The totals from the ledger when it holds exactly these projects'
/// records; else empty, with `true` (read them from the records) and a
/// hint when the ledger could make the next `status` fast.
fn ledger_totals(books: Option<&crate::books::Books>, queues: &[Queue], ui: Ui) -> (Totals, bool) {
    let records: u64 = queues.iter().map(totals::count_records).sum();
    let found = totals::from_books(books, &totals::keys(queues));
    let source = match &found {
        Ok(Some((_, n))) => totals::choose(Some(*n), records),
        Ok(None) => totals::choose(None, records),
        Err(e) => Source::Unreadable(format!("{e:#}")),
    };
    let hint = crate::books::REBUILD_HINT;
    match source {
        Source::Ledger => return (found.ok().flatten().unwrap_or_default().0, false),
        Source::NoLedger if records == 0 => {}
        Source::NoLedger => ui.info(format_args!(
            "no ledger yet: totals read from every record; {hint}, and status reads them from it"
        )),
        Source::Differs { records, entries } => ui.warn(format_args!(
            "the ledger holds {entries} jobs of these projects, done/ and failed/ hold {records} records: totals read from the records; {hint}"
        )),
        Source::Unreadable(e) => ui.warn(format_args!("{e}; totals read from the records")),
    }
    (Totals::new(), true)
}

/// Adds the records of one project, reading each one's head.
fn totals_from_heads(q: &Queue, totals: &mut Totals) {
    for (dir, done) in [(&q.done, true), (&q.failed, false)] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if !queue::is_task_name(&name.to_string_lossy()) {
                continue;
            }
            let Some(r) = read_head(&e.path()) else {
                continue;
            };
            // Counted as the books count it: `Claude` is claude.
            let provider =
                crate::books::counted_provider(r.provider.as_deref().unwrap_or(""), None).0;
            totals::add(totals, provider, done, r.cost_cad.unwrap_or(0.0));
        }
    }
}

/// A record's frontmatter, reading only the start of the file when it is
/// enough.
fn read_head(path: &Path) -> Option<Record> {
    let (mut f, _) = crate::fsread::open(path, crate::fsread::Kind::Record).ok()??;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    buf.truncate(n);
    let mut head = Record::parse_head(&buf);
    if head.is_none() && n == 4096 {
        f.read_to_end(&mut buf).ok()?;
        head = Record::parse_head(&buf);
    }
    head
}

fn render_table(out: &mut impl Write, r: &Report, _tty: bool) -> std::io::Result<()> {
    if r.in_flight.is_empty() {
        writeln!(out, "Nothing in flight.")?;
    } else {
        let rows: Vec<[String; 6]> = r
            .in_flight
            .iter()
            .map(|t| {
                [
                    clip(&t.project, 40),
                    clip(&t.task, 40),
                    match &t.attempt {
                        Some(a) => format!("{} {a}", clip(&t.provider, 12)),
                        None => clip(&t.provider, 12),
                    },
                    // No job yet: the marker's state (`pending`, or
                    // `deferred` for a failover step a limit holds back).
                    t.job_id.clone().unwrap_or_else(|| {
                        if t.deferred { "deferred" } else { t.state }.to_string()
                    }),
                    if t.started_in_future {
                        "future".to_string()
                    } else {
                        humantime::format_duration(std::time::Duration::from_secs(t.age_seconds))
                            .to_string()
                    },
                    // The whole cause, escaped, never clipped: it is the
                    // last column, so its length moves no other.
                    t.last_error
                        .as_deref()
                        .map(crate::text::line)
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(
            out,
            &["PROJECT", "TASK", "PROVIDER", "JOB", "AGE", "LAST ERROR"],
            &rows,
        )?;
    }
    writeln!(out)?;
    if r.totals.is_empty() {
        writeln!(out, "No done or failed tasks yet.")?;
    } else {
        let rows: Vec<[String; 4]> = r
            .totals
            .iter()
            .map(|t| {
                [
                    clip(&t.provider, 20),
                    t.done.to_string(),
                    t.failed.to_string(),
                    format!("{:.4}", t.cost_cad),
                ]
            })
            .collect();
        table(out, &["PROVIDER", "DONE", "FAILED", "COST_CAD"], &rows)?;
    }
    Ok(())
}

/// The head, then the rows, every column left-aligned.
fn table<const N: usize>(
    out: &mut impl Write,
    head: &[&str; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut all: Vec<[&str; N]> = vec![*head];
    all.extend(rows.iter().map(|r| r.each_ref().map(String::as_str)));
    out.write_all(crate::table::render(&all, &[]).as_bytes())
}
