//! `reap --metrics-file`: the counters the earlier daemon served over HTTP,
//! written after each run in the Prometheus text format that
//! node_exporter's textfile collector reads.
//!
//! There is no daemon to keep counters in memory, so the `_total` counters
//! are carried from the previous file: each run adds what it finished.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::policy::admit::CapState;
use crate::queue::{AtomicWriter, Queue};

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    /// Whether this run saw a job in flight under this key: only then is
    /// the gauge written, so no key carries a series that stays zero.
    tracked: bool,
    active: u64,
    completed: u64,
    failed: u64,
    cost_cad: f64,
}

/// What one run saw and did, per project and provider.
#[derive(Debug, Default)]
pub struct Tally {
    by: BTreeMap<(String, String), Counts>,
    projects: Vec<String>,
    /// Each configured cap at the end of the run (policy.md "Report").
    pub budget: Vec<CapState>,
    /// Failover steps taken, per (from, to) provider.
    failovers: BTreeMap<(String, String), u64>,
}

fn project_label(q: &Queue) -> String {
    q.project.display().to_string()
}

impl Tally {
    /// A failover step from one provider to the next.
    pub fn failover(&mut self, from: &str, to: &str) {
        *self
            .failovers
            .entry((from.to_string(), to.to_string()))
            .or_default() += 1;
    }

    pub fn project(&mut self, q: &Queue) {
        self.projects.push(project_label(q));
    }

    /// A job in flight, under the provider its task asked for (`auto`
    /// included: such a job has no other provider until it completes).
    pub fn active(&mut self, q: &Queue, requested: &str) {
        let c = self
            .by
            .entry((project_label(q), requested.to_string()))
            .or_default();
        c.tracked = true;
        c.active += 1;
    }

    /// A job finished: out of flight under the provider it was counted
    /// with, into the counters under the provider that ran it.
    pub fn finished(
        &mut self,
        q: &Queue,
        requested: &str,
        provider: &str,
        completed: bool,
        cost_cad: f64,
    ) {
        let project = project_label(q);
        if let Some(c) = self.by.get_mut(&(project.clone(), requested.to_string())) {
            c.active = c.active.saturating_sub(1);
        }
        let c = self.by.entry((project, provider.to_string())).or_default();
        if completed {
            c.completed += 1;
            c.cost_cad += cost_cad;
        } else {
            c.failed += 1;
        }
    }
}

const COUNTERS: [&str; 3] = [
    "ccl_delegate_completed_total",
    "ccl_delegate_failed_total",
    "ccl_delegate_cost_cad_total",
];

/// The samples of one run, with what the previous file carried.
type ByKey = BTreeMap<(String, String), Counts>;

/// Failover steps, per (from, to) provider.
type Failovers = BTreeMap<(String, String), u64>;

/// The file's temporary name begins so, beside it.
const TMP_PREFIX: &str = ".ccl-delegate-metrics-";

/// Writes the metrics file atomically (temporary file + rename) through
/// the queue's one writer; not fsynced: a file a crash loses is whole
/// again after the next run.
pub fn write(path: &Path, tally: &Tally, took: Duration, success: bool) -> anyhow::Result<()> {
    let previous = read_previous(path)?;
    let (mut by, mut failovers) = (tally.by.clone(), tally.failovers.clone());
    let mut last_success = carry(&previous, &mut by, &mut failovers);
    if success {
        last_success = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
    }
    let mut out = counter_families(&by);
    out.push_str(&budget_families(&tally.budget));
    out.push_str(&failover_family(&failovers));
    out.push_str(&run_gauges(took, success, last_success));
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let writer = AtomicWriter {
        dir,
        prefix: TMP_PREFIX,
        durable: false,
    };
    writer.write(path, out.as_bytes(), 0o644, true)?;
    Ok(())
}

/// The previous file's text, read through the checks every file read
/// gets: a FIFO or a device there is an error, never a read that hangs the
/// reap; the file is then left alone.
fn read_previous(path: &Path) -> anyhow::Result<String> {
    match crate::fsread::read(path, crate::fsread::Kind::Metrics) {
        Ok(c) => Ok(c
            .map(|c| String::from_utf8_lossy(&c.bytes).into_owned())
            .unwrap_or_default()),
        Err(e) => anyhow::bail!("cannot read it to carry its counters: {e}; remove or rename it"),
    }
}

/// Adds the previous file's counters to this run's; gives the last
/// success it said.
fn carry(previous: &str, by: &mut ByKey, failovers: &mut Failovers) -> f64 {
    let mut last_success = 0.0f64;
    for line in previous.lines() {
        if let Some((from, to, n)) = parse_failover(line) {
            *failovers.entry((from, to)).or_default() += n;
            continue;
        }
        if let Some(v) = line.strip_prefix("ccl_delegate_last_success_timestamp_seconds ") {
            last_success = v.trim().parse().unwrap_or(0.0);
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        let Some(i) = COUNTERS.iter().position(|c| *c == name) else {
            continue;
        };
        let c = by.entry(labels).or_default();
        match i {
            0 => c.completed += value as u64,
            1 => c.failed += value as u64,
            _ => c.cost_cad += value,
        }
    }
    last_success
}

/// The gauge for the keys with jobs in flight this run, the counters for
/// the keys that ever finished one.
fn counter_families(by: &ByKey) -> String {
    let mut out = String::new();
    type Pick = dyn Fn(&Counts) -> bool;
    // The keys this run saw jobs in flight for: a key whose last job
    // finished in the run says `0` once, then is no longer written.
    let tracked: &Pick = &|c| c.tracked;
    let counted: &Pick = &|c| c.completed + c.failed > 0;
    let mut family =
        |name: &str, kind: &str, help: &str, pick: &Pick, value: &dyn Fn(&Counts) -> String| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for ((project, provider), c) in by.iter().filter(|(_, c)| pick(c)) {
                out.push_str(&format!(
                    "{name}{{project=\"{}\",provider=\"{}\"}} {}\n",
                    escape(project),
                    escape(provider),
                    value(c)
                ));
            }
        };
    family(
        "ccl_delegate_active_jobs",
        "gauge",
        "Delegated tasks in flight after the last reap, by the provider the task asked for.",
        tracked,
        &|c| c.active.to_string(),
    );
    family(
        COUNTERS[0],
        "counter",
        "Tasks moved to done/ by reap.",
        counted,
        &|c| c.completed.to_string(),
    );
    family(
        COUNTERS[1],
        "counter",
        "Tasks moved to failed/ by reap.",
        counted,
        &|c| c.failed.to_string(),
    );
    family(
        COUNTERS[2],
        "counter",
        "Summed cost_cad of completed tasks.",
        counted,
        &|c| format!("{:.4}", c.cost_cad),
    );
    out
}

/// `ccl_delegate_failover_total`, by from and to; nothing before the
/// first step.
fn failover_family(failovers: &Failovers) -> String {
    let mut out = String::new();
    if !failovers.is_empty() {
        out.push_str(&format!(
            "# HELP {FAILOVER} Failover steps taken by reap, from the provider whose job ended to the next.\n# TYPE {FAILOVER} counter\n"
        ));
        for ((from, to), n) in failovers {
            out.push_str(&format!(
                "{FAILOVER}{{from=\"{}\",to=\"{}\"}} {n}\n",
                escape(from),
                escape(to)
            ));
        }
    }
    out
}

/// The gauges of the run itself: its wall time, whether it succeeded, and
/// when one last did.
fn run_gauges(took: Duration, success: bool, last_success: f64) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# HELP ccl_delegate_reap_duration_seconds Wall time of the last reap.\n# TYPE ccl_delegate_reap_duration_seconds gauge\nccl_delegate_reap_duration_seconds {:.6}\n",
        took.as_secs_f64()
    ));
    out.push_str(&format!(
        "# HELP ccl_delegate_reap_success Whether the last reap finished without an error: local, the service unreachable or failing, the key refused, or a queue lock held too long.\n# TYPE ccl_delegate_reap_success gauge\nccl_delegate_reap_success {}\n",
        u8::from(success)
    ));
    out.push_str(&format!(
        "# HELP ccl_delegate_last_success_timestamp_seconds When a reap last finished without an error.\n# TYPE ccl_delegate_last_success_timestamp_seconds gauge\nccl_delegate_last_success_timestamp_seconds {last_success:.3}\n"
    ));
    out
}

/// `ccl_delegate_budget_limit_cad` and `ccl_delegate_budget_spent_cad`, one
/// sample per cap (labels `window`, `provider`); nothing without a budget.
fn budget_families(caps: &[CapState]) -> String {
    let mut out = String::new();
    if caps.is_empty() {
        return out;
    }
    type Value = fn(&CapState) -> f64;
    let families: [(&str, &str, Value); 2] = [
        (
            "ccl_delegate_budget_limit_cad",
            "A configured spending cap, in CAD.",
            |c| c.cap.limit,
        ),
        (
            "ccl_delegate_budget_spent_cad",
            "CAD spent in the cap's window (UTC day or month) so far.",
            |c| c.spent,
        ),
    ];
    for (name, help, value) in families {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for c in caps {
            out.push_str(&format!(
                "{name}{{window=\"{}\",provider=\"{}\"}} {:.4}\n",
                c.cap.window.as_str(),
                c.cap.scope(),
                value(c)
            ));
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name{project="..",provider=".."} value` as this module writes it.
const FAILOVER: &str = "ccl_delegate_failover_total";

/// A `ccl_delegate_failover_total{from,to}` sample of the previous file.
fn parse_failover(line: &str) -> Option<(String, String, u64)> {
    let rest = line.strip_prefix(FAILOVER)?.strip_prefix("{from=\"")?;
    let (labels, value) = rest.rsplit_once("} ")?;
    let (from, to) = labels.split_once("\",to=\"")?;
    let to = to.strip_suffix('"')?;
    Some((unescape(from), unescape(to), value.trim().parse().ok()?))
}

fn parse_sample(line: &str) -> Option<(&str, (String, String), f64)> {
    let (name, rest) = line.split_once("{project=\"")?;
    let (labels, value) = rest.rsplit_once("} ")?;
    let (project, provider) = labels.split_once("\",provider=\"")?;
    let provider = provider.strip_suffix('"')?;
    Some((
        name,
        (unescape(project), unescape(provider)),
        value.trim().parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn failovers_carry_over_by_from_and_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let mut t = Tally::default();
        t.failover("gemini", "claude");
        t.failover("gemini", "claude");
        t.failover("claude", "gp\"u");
        write(&path, &t, Duration::from_millis(5), true).unwrap();
        write(&path, &t, Duration::from_millis(5), true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("ccl_delegate_failover_total{from=\"gemini\",to=\"claude\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("ccl_delegate_failover_total{from=\"claude\",to=\"gp\\\"u\"} 2\n"),
            "{text}"
        );
        let none = dir.path().join("n.prom");
        write(&none, &Tally::default(), Duration::from_millis(5), true).unwrap();
        assert!(!std::fs::read_to_string(&none).unwrap().contains("failover"));
    }

    #[test]
    fn counters_carry_over_from_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let q = Queue::at(Path::new("/p/we\"ird"));
        let mut t = Tally::default();
        t.active(&q, "gemini");
        t.finished(&q, "gemini", "gemini", true, 0.5);
        write(&path, &t, Duration::from_millis(5), true).unwrap();
        write(&path, &t, Duration::from_millis(5), true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(
                "ccl_delegate_completed_total{project=\"/p/we\\\"ird\",provider=\"gemini\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ccl_delegate_cost_cad_total{project=\"/p/we\\\"ird\",provider=\"gemini\"} 1.0000\n"
            ),
            "{text}"
        );
        assert!(text.contains("ccl_delegate_reap_success 1\n"));
    }

    #[test]
    fn each_cap_is_a_limit_and_a_spent_gauge() {
        use crate::policy::{Cap, Provider, Window};
        let caps = [
            CapState {
                cap: Cap {
                    window: Window::Daily,
                    provider: None,
                    limit: 20.0,
                },
                spent: 1.5,
                reserved: 0.3,
                in_flight: 2,
            },
            CapState {
                cap: Cap {
                    window: Window::Monthly,
                    provider: Some(Provider::Claude),
                    limit: 100.0,
                },
                spent: 0.25,
                reserved: 0.0,
                in_flight: 0,
            },
        ];
        let text = budget_families(&caps);
        for line in [
            "# TYPE ccl_delegate_budget_limit_cad gauge\n",
            "ccl_delegate_budget_limit_cad{window=\"daily\",provider=\"all\"} 20.0000\n",
            "ccl_delegate_budget_spent_cad{window=\"daily\",provider=\"all\"} 1.5000\n",
            "ccl_delegate_budget_limit_cad{window=\"monthly\",provider=\"claude\"} 100.0000\n",
            "ccl_delegate_budget_spent_cad{window=\"monthly\",provider=\"claude\"} 0.2500\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        assert_eq!(budget_families(&[]), "");
    }

    #[test]
    fn a_metrics_path_that_is_a_fifo_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = write(&path, &Tally::default(), Duration::ZERO, true).unwrap_err();
        assert!(format!("{e:#}").contains("m.prom"), "{e:#}");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn an_auto_job_is_in_flight_as_auto_and_done_under_its_provider() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let q = Queue::at(Path::new("/p"));
        let mut t = Tally::default();
        t.active(&q, "auto");
        t.active(&q, "auto");
        t.finished(&q, "auto", "claude", true, 0.25);
        write(&path, &t, Duration::from_millis(5), false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for (line, present) in [
            (
                "ccl_delegate_active_jobs{project=\"/p\",provider=\"auto\"} 1\n",
                true,
            ),
            (
                "ccl_delegate_completed_total{project=\"/p\",provider=\"claude\"} 1\n",
                true,
            ),
            (
                "ccl_delegate_completed_total{project=\"/p\",provider=\"auto\"}",
                false,
            ),
            (
                "ccl_delegate_active_jobs{project=\"/p\",provider=\"claude\"}",
                false,
            ),
            ("ccl_delegate_reap_success 0\n", true),
            ("ccl_delegate_last_success_timestamp_seconds 0.000\n", true),
        ] {
            assert_eq!(text.contains(line), present, "{line}\n{text}");
        }
    }
}
