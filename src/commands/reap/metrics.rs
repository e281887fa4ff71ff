//! `reap --metrics-file`: the counters the earlier daemon served over HTTP,
//! written after each run in the Prometheus text format that
//! node_exporter's textfile collector reads.
//!
//! There is no daemon to keep counters in memory: the `_total` counters
//! and the last success are the books' (every job the books hold, each
//! job of a failover chain included, and each failover step sent), so
//! they agree with `report` and survive a lost or removed metrics file.
//! The jobs in flight are what this run saw.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::books::Counters;
use crate::policy::admit::CapState;
use crate::queue::{AtomicWriter, Queue};

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    /// Whether this run saw a job in flight under this key: only then is
    /// the gauge written, so no key carries a series that stays zero.
    tracked: bool,
    active: u64,
}

/// What one run saw and did, per project and provider.
#[derive(Debug, Default)]
pub struct Tally {
    by: BTreeMap<(String, String), Counts>,
    projects: Vec<String>,
    /// Each configured cap at the end of the run (policy.md "Report").
    pub budget: Vec<CapState>,
}

fn project_label(q: &Queue) -> String {
    q.project.display().to_string()
}

/// A provider as the books count it, whatever its case in a marker.
fn provider_label(requested: &str) -> String {
    crate::books::counted_provider(requested, None).0
}

impl Tally {
    pub fn project(&mut self, q: &Queue) {
        self.projects.push(project_label(q));
    }

    /// A job in flight, under the provider its task asked for (`auto`
    /// included: such a job has no other provider until it completes).
    pub fn active(&mut self, q: &Queue, requested: &str) {
        let c = self
            .by
            .entry((project_label(q), provider_label(requested)))
            .or_default();
        c.tracked = true;
        c.active += 1;
    }

    /// A job finished: out of flight under the provider it was counted
    /// with (the books count it under the provider that ran it).
    pub fn finished(&mut self, q: &Queue, requested: &str) {
        if let Some(c) = self
            .by
            .get_mut(&(project_label(q), provider_label(requested)))
        {
            c.active = c.active.saturating_sub(1);
        }
    }
}

/// The file's temporary name begins so, beside it.
const TMP_PREFIX: &str = ".ccl-delegate-metrics-";

/// Writes the metrics file atomically (temporary file + rename) through
/// the queue's one writer; not fsynced: a file a crash loses is whole
/// again after the next run. `counters` is `None` when the books could
/// not be read: then the counters and the last success are left out (an
/// alert on `absent()` sees it), never written as zero.
pub fn write(
    path: &Path,
    tally: &Tally,
    counters: Option<&Counters>,
    took: Duration,
    success: bool,
) -> anyhow::Result<()> {
    // A FIFO or a device there would hang or be replaced: left alone.
    if let Ok(m) = std::fs::metadata(path)
        && !m.is_file()
    {
        anyhow::bail!(
            "{} is not a regular file; remove or rename it",
            path.display()
        );
    }
    let mut out = active_family(&tally.by);
    if let Some(c) = counters {
        out.push_str(&counter_families(c));
    }
    out.push_str(&budget_families(&tally.budget));
    if let Some(c) = counters {
        out.push_str(&failover_family(&c.failovers));
    }
    out.push_str(&run_gauges(took, success, counters.map(|c| c.last_success)));
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

/// Now, in Unix seconds (the last success's clock).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn family_head(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// The gauge for the keys this run saw jobs in flight for: a key whose
/// last job finished in the run says `0` once, then is no longer written.
fn active_family(by: &BTreeMap<(String, String), Counts>) -> String {
    let mut out = String::new();
    let name = "ccl_delegate_active_jobs";
    family_head(
        &mut out,
        name,
        "gauge",
        "Delegated tasks in flight after the last reap, by the provider the task asked for.",
    );
    for ((project, provider), c) in by.iter().filter(|(_, c)| c.tracked) {
        out.push_str(&format!(
            "{name}{{project=\"{}\",provider=\"{}\"}} {}\n",
            escape(project),
            escape(provider),
            c.active
        ));
    }
    out
}

/// The books' jobs per project and provider: completed, ended otherwise,
/// and their cost.
fn counter_families(c: &Counters) -> String {
    #[derive(Default)]
    struct Sums {
        completed: u64,
        failed: u64,
        cost_cad: f64,
    }
    let mut by: BTreeMap<(&str, &str), Sums> = BTreeMap::new();
    for t in &c.jobs {
        let s = by.entry((&t.project, &t.provider)).or_default();
        if t.completed {
            s.completed += t.jobs;
        } else {
            s.failed += t.jobs;
        }
        s.cost_cad += t.cost_cad;
    }
    type Value = fn(&Sums) -> String;
    let families: [(&str, &str, Value); 3] = [
        (
            "ccl_delegate_completed_total",
            "Jobs completed, by the provider that ran them.",
            |s| s.completed.to_string(),
        ),
        (
            "ccl_delegate_failed_total",
            "Jobs that ended without completing (failed, cancelled, expired, timed out), each earlier job of a failover chain included.",
            |s| s.failed.to_string(),
        ),
        (
            "ccl_delegate_cost_cad_total",
            "Summed cost_cad of the jobs.",
            |s| format!("{:.4}", s.cost_cad),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in families {
        family_head(&mut out, name, "counter", help);
        for ((project, provider), s) in &by {
            out.push_str(&format!(
                "{name}{{project=\"{}\",provider=\"{}\"}} {}\n",
                escape(project),
                escape(provider),
                value(s)
            ));
        }
    }
    out
}

/// `ccl_delegate_failover_total`, by from and to; nothing before the
/// first step.
fn failover_family(failovers: &[(String, String, u64)]) -> String {
    let mut out = String::new();
    if !failovers.is_empty() {
        out.push_str(&format!(
            "# HELP {FAILOVER} Failover steps taken by reap, from the provider whose job ended to the next.\n# TYPE {FAILOVER} counter\n"
        ));
        for (from, to, n) in failovers {
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
fn run_gauges(took: Duration, success: bool, last_success: Option<f64>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# HELP ccl_delegate_reap_duration_seconds Wall time of the last reap.\n# TYPE ccl_delegate_reap_duration_seconds gauge\nccl_delegate_reap_duration_seconds {:.6}\n",
        took.as_secs_f64()
    ));
    out.push_str(&format!(
        "# HELP ccl_delegate_reap_success Whether the last reap finished without an error: local, the service unreachable or failing, the key refused, or a queue lock held too long.\n# TYPE ccl_delegate_reap_success gauge\nccl_delegate_reap_success {}\n",
        u8::from(success)
    ));
    if let Some(at) = last_success {
        out.push_str(&format!(
            "# HELP ccl_delegate_last_success_timestamp_seconds When a reap last finished without an error.\n# TYPE ccl_delegate_last_success_timestamp_seconds gauge\nccl_delegate_last_success_timestamp_seconds {at:.3}\n"
        ));
    }
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

const FAILOVER: &str = "ccl_delegate_failover_total";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    use crate::books::JobTotal;

    fn job(project: &str, provider: &str, completed: bool, jobs: u64, cost: f64) -> JobTotal {
        JobTotal {
            project: project.into(),
            provider: provider.into(),
            completed,
            jobs,
            cost_cad: cost,
        }
    }

    #[test]
    fn counters_are_the_books_sums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let c = Counters {
            jobs: vec![
                job("/p/we\"ird", "gemini", true, 2, 1.0),
                job("/p/we\"ird", "gemini", false, 3, 0.0),
                job("/q", "claude", false, 1, 0.25),
            ],
            failovers: vec![
                ("gemini".into(), "claude".into(), 4),
                ("claude".into(), "gp\"u".into(), 2),
            ],
            last_success: 1_700_000_000.5,
        };
        write(
            &path,
            &Tally::default(),
            Some(&c),
            Duration::from_millis(5),
            false,
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in [
            "ccl_delegate_completed_total{project=\"/p/we\\\"ird\",provider=\"gemini\"} 2\n",
            "ccl_delegate_failed_total{project=\"/p/we\\\"ird\",provider=\"gemini\"} 3\n",
            "ccl_delegate_cost_cad_total{project=\"/p/we\\\"ird\",provider=\"gemini\"} 1.0000\n",
            "ccl_delegate_completed_total{project=\"/q\",provider=\"claude\"} 0\n",
            "ccl_delegate_failed_total{project=\"/q\",provider=\"claude\"} 1\n",
            "ccl_delegate_cost_cad_total{project=\"/q\",provider=\"claude\"} 0.2500\n",
            "ccl_delegate_failover_total{from=\"gemini\",to=\"claude\"} 4\n",
            "ccl_delegate_failover_total{from=\"claude\",to=\"gp\\\"u\"} 2\n",
            "ccl_delegate_reap_success 0\n",
            "ccl_delegate_last_success_timestamp_seconds 1700000000.500\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[test]
    fn without_the_books_no_counter_is_written_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        write(
            &path,
            &Tally::default(),
            None,
            Duration::from_millis(5),
            false,
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("ccl_delegate_reap_success 0\n"), "{text}");
        for absent in ["_total", "last_success"] {
            assert!(!text.contains(absent), "{absent}\n{text}");
        }
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
        let e = write(&path, &Tally::default(), None, Duration::ZERO, true).unwrap_err();
        assert!(format!("{e:#}").contains("m.prom"), "{e:#}");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn an_auto_job_is_in_flight_as_auto_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let q = Queue::at(Path::new("/p"));
        let mut t = Tally::default();
        t.active(&q, "auto");
        t.active(&q, "auto");
        t.active(&q, "gemini");
        t.finished(&q, "auto");
        t.finished(&q, "gemini");
        write(&path, &t, None, Duration::from_millis(5), true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for (line, present) in [
            (
                "ccl_delegate_active_jobs{project=\"/p\",provider=\"auto\"} 1\n",
                true,
            ),
            // The key whose last job finished says 0 once.
            (
                "ccl_delegate_active_jobs{project=\"/p\",provider=\"gemini\"} 0\n",
                true,
            ),
            (
                "ccl_delegate_active_jobs{project=\"/p\",provider=\"claude\"}",
                false,
            ),
            ("ccl_delegate_reap_success 1\n", true),
        ] {
            assert_eq!(text.contains(line), present, "{line}\n{text}");
        }
    }
}
