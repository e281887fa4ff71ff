//! The command line, in one place: the binary parses it, and the tests that
//! generate `completions/` and `man/` render it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::Code;

/// The exit codes a command can give, each with the command's own reasons
/// for it ("" when the code's meaning, [`Code::meaning`], says all). Each
/// command's table stands beside its arguments; the man pages' EXIT STATUS
/// and the README's command table are made from them. Every command gives
/// 64 for arguments clap refuses and 1 for anything else.
pub type ExitCodes = &'static [(Code, &'static str)];

/// `--help`'s last line: every exit code and its name.
fn exit_codes_help() -> String {
    let codes: Vec<String> = Code::ALL
        .iter()
        .map(|c| format!("{} {}", c.as_u8(), c.name()))
        .collect();
    format!("Exit codes: {}.", codes.join(", "))
}

/// The exit codes of the subcommand called `name` (as clap names it).
pub fn exit_codes(name: &str) -> Option<ExitCodes> {
    Some(match name {
        "init" => InitArgs::EXIT_CODES,
        "decide" => DecideArgs::EXIT_CODES,
        "submit" => SubmitArgs::EXIT_CODES,
        "reap" => ReapArgs::EXIT_CODES,
        "get" => GetArgs::EXIT_CODES,
        "result" => ResultArgs::EXIT_CODES,
        "status" => StatusArgs::EXIT_CODES,
        "cancel" => CancelArgs::EXIT_CODES,
        "requeue" => RequeueArgs::EXIT_CODES,
        "doctor" => DoctorArgs::EXIT_CODES,
        "report" => ReportArgs::EXIT_CODES,
        "ledger" => LedgerCommand::EXIT_CODES,
        "fleet" => FleetCommand::EXIT_CODES,
        _ => return None,
    })
}

/// Delegate agent-queue tasks to the secutools AI platform.
///
/// A task in <project>/.agent-queue/inbox/ opts in through its YAML
/// frontmatter; `submit` hands it to secutools and leaves a marker so the
/// dispatcher skips it, `reap` (from cron) brings finished jobs back into
/// done/ or failed/.
#[derive(Debug, Parser)]
#[command(name = "ccl-delegate", version, propagate_version = true)]
#[command(after_help = exit_codes_help())]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "CCL_DELEGATE_CONFIG",
        hide_env_values = true
    )]
    pub config: Option<PathBuf>,
    /// Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)
    #[arg(long, global = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// Timeout of one HTTP request, e.g. 30s (beats http_timeout)
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub http_timeout: Option<Duration>,
    /// Extra attempts after a transient HTTP failure (beats retries)
    #[arg(long, global = true, value_name = "N")]
    pub retries: Option<u32>,
    /// Say more on stderr (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Say only errors on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a project's queue: DIR/.agent-queue/{inbox,done,failed}
    Init(InitArgs),
    /// Print where a task would run (pure: no network, no writes)
    Decide(DecideArgs),
    /// Hand an inbox task to secutools and mark it delegated
    Submit(SubmitArgs),
    /// Bring finished jobs back into done/ and failed/ (run from cron)
    Reap(ReapArgs),
    /// Show a job's status
    Get(GetArgs),
    /// Print a completed job's response
    Result(ResultArgs),
    /// Show delegated tasks in flight and totals of done and failed tasks
    Status(StatusArgs),
    /// Ask the service to cancel a job
    Cancel(CancelArgs),
    /// Put a failed task back into the inbox
    Requeue(RequeueArgs),
    /// Check the configuration, the key, the service and the queues
    Doctor(DoctorArgs),
    /// Jobs, failures, cost and turnaround from the ledger, and the budgets
    Report(ReportArgs),
    /// Maintain the host's ledger of finished jobs
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Share this host's books with the fleet's database (config `fleet`)
    #[command(subcommand)]
    Fleet(FleetCommand),
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Push this host's journal to the fleet's database now (what reap
    /// does at its end)
    Push,
}

impl FleetCommand {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, ""),
        (Code::Other, ""),
        (Code::Usage, ""),
        (Code::TempFail, "the fleet's database unreachable"),
        (
            Code::Config,
            "no `fleet` in the config, a bad config file, a newer schema",
        ),
    ];
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The project directory [default: the current directory]
    #[arg(value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub dir: Option<PathBuf>,
}

impl InitArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, ""),
        (Code::Other, "a directory could not be created"),
        (
            Code::Usage,
            "DIR missing or not a directory; `.agent-queue` or one of its directories is a symlink or a file",
        ),
    ];
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The task file, or - for stdin
    #[arg(
        value_name = "TASK",
        required_unless_present = "set",
        conflicts_with = "set"
    )]
    pub task: Option<PathBuf>,
    /// Route these frontmatter keys instead of a file (KEY=VALUE, repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Add a line naming the rule that decided, and one naming the task's fallback chain
    #[arg(long)]
    pub explain: bool,
    /// Print {"provider","delegate","rule","fallback"} as JSON
    #[arg(long, conflicts_with = "explain")]
    pub json: bool,
}

impl DecideArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, ""),
        (Code::Other, "stdout could not be written"),
        (Code::Usage, "a bad `--set`"),
        (
            Code::NoInput,
            "no such task file, or stdin could not be read",
        ),
    ];
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The task: <project>/.agent-queue/inbox/<id>.md
    #[arg(value_name = "TASK")]
    pub task: PathBuf,
    /// Priority sent to secutools (beats the task's `priority`)
    #[arg(long, value_name = "P", value_parser = ["low", "normal", "high"])]
    pub priority: Option<String>,
}

impl SubmitArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (
            Code::Ok,
            "delegated, or pending: the dispatcher skips the task",
        ),
        (Code::Other, "a marker could not be written or removed"),
        (
            Code::Local,
            "the task routes to claude-code, or a budget refused it (`local budget`)",
        ),
        (
            Code::Usage,
            "not an inbox task, or a name too long for its marker",
        ),
        (Code::DataErr, "the service refused the task: 4xx"),
        (Code::NoInput, "the task vanished while read"),
        (Code::Unavailable, "no job was created"),
        (
            Code::TempFail,
            "deferred by a limit on jobs in flight, a price not known yet, books unavailable or the fleet's database unreachable; a queue lock held past `lock_timeout`; the marker removed by another process meanwhile",
        ),
        (Code::NoPerm, ""),
        (Code::Config, ""),
    ];
}

#[derive(Debug, Args)]
pub struct ReapArgs {
    /// A project directory to reap (repeatable) [default: the config's projects]
    #[arg(long = "project", value_name = "DIR")]
    pub projects: Vec<PathBuf>,
    /// The run lock [default: $XDG_STATE_HOME/ccl-delegate/reap.lock]
    #[arg(long, value_name = "FILE")]
    pub lock_file: Option<PathBuf>,
    /// Jobs polled at once [default: 8]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: Option<u32>,
    /// Give up on a job older than this, e.g. 24h (beats max_age)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_age: Option<Duration>,
    /// Re-send a pending submission older than this, e.g. 2m (beats submit_grace)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub submit_grace: Option<Duration>,
    /// Write Prometheus textfile metrics here after the run (beats metrics_file)
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Begin every line on stdout and stderr with the time (RFC 3339, UTC),
    /// for a log file a person reads later
    #[arg(long)]
    pub timestamps: bool,
}

impl ReapArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (
            Code::Ok,
            "also when another reap runs, and when polls failed that the next run retries",
        ),
        (Code::Other, "a file could not be changed"),
        (Code::Usage, ""),
        (Code::NoInput, "a project named by hand has no queue"),
        (
            Code::TempFail,
            "a project was skipped: its queue lock was held past `lock_timeout`; the fleet's database unreachable",
        ),
        (Code::NoPerm, "401/403; markers kept"),
        (
            Code::Config,
            "no URL or key, no projects, a bad config file",
        ),
    ];
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// A job id, or a delegated task's path
    #[arg(value_name = "JOB_ID|TASK")]
    pub job: String,
    /// Print the service's status object as JSON
    #[arg(long)]
    pub json: bool,
}

impl GetArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, ""),
        (Code::Other, ""),
        (Code::Usage, "neither a job id nor an inbox task"),
        (
            Code::DataErr,
            "a corrupt marker; the service refused the request",
        ),
        (Code::NoInput, "unknown job; a task with no marker"),
        (Code::Unavailable, ""),
        (
            Code::TempFail,
            "the submission is still pending; the service reports a conflict",
        ),
        (Code::NoPerm, ""),
        (Code::Config, ""),
    ];
}

#[derive(Debug, Args)]
pub struct ResultArgs {
    /// A job id, or a delegated task's path
    #[arg(value_name = "JOB_ID|TASK")]
    pub job: Option<String>,
    /// Wait until the job finishes (at most DURATION, default 10m)
    #[arg(long, value_name = "DURATION", num_args = 0..=1)]
    pub wait: Option<Option<String>>,
    /// Print the service's result object as JSON
    #[arg(long)]
    pub json: bool,
}

impl ResultArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, ""),
        (Code::Other, "the job ended without a result"),
        (Code::Usage, ""),
        (Code::DataErr, ""),
        (Code::NoInput, ""),
        (Code::Unavailable, ""),
        (
            Code::TempFail,
            "not ready yet; the submission is still pending",
        ),
        (Code::NoPerm, ""),
        (Code::Config, ""),
    ];
}

impl ResultArgs {
    /// The job argument and how long to wait. `--wait` takes an optional
    /// value, so in `result --wait JOB` clap hands the job to `--wait`: a
    /// value that is not a duration is the job.
    pub fn job_and_wait(&self) -> Result<(&str, Option<Duration>), String> {
        const DEFAULT_WAIT: Duration = Duration::from_secs(600);
        match (&self.job, &self.wait) {
            (Some(job), None) => Ok((job, None)),
            (Some(job), Some(None)) => Ok((job, Some(DEFAULT_WAIT))),
            (Some(job), Some(Some(d))) => Ok((job, Some(parse_duration(d)?))),
            (None, Some(Some(v))) if parse_duration(v).is_err() => Ok((v, Some(DEFAULT_WAIT))),
            (None, _) => {
                Err("missing JOB_ID|TASK: e.g. ccl-delegate result j-123 --wait 5m".into())
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this project (repeatable) [default: the config's projects]
    #[arg(long = "project", value_name = "DIR")]
    pub projects: Vec<PathBuf>,
    /// Print JSON for scripts
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, ""),
        (Code::Other, ""),
        (Code::Usage, ""),
        (Code::NoInput, "a project named by hand has no queue"),
        (Code::Config, "no projects, or a bad config"),
    ];
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// A job id, or a delegated task's path
    #[arg(value_name = "JOB_ID|TASK")]
    pub job: String,
    /// Print the service's answer as JSON
    #[arg(long)]
    pub json: bool,
}

impl CancelArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, "also when the job had already ended"),
        (Code::Other, ""),
        (Code::Usage, ""),
        (Code::DataErr, ""),
        (Code::NoInput, ""),
        (Code::Unavailable, ""),
        (Code::TempFail, "the submission is still pending"),
        (Code::NoPerm, ""),
        (Code::Config, ""),
    ];
}

#[derive(Debug, Args)]
pub struct RequeueArgs {
    /// The failed task: <project>/.agent-queue/failed/<id>.md
    #[arg(value_name = "FAILED_FILE")]
    pub failed: PathBuf,
}

impl RequeueArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, ""),
        (Code::Other, "an inbox task of that name exists"),
        (Code::Usage, "not in a failed/ directory"),
        (Code::DataErr, "not a record, or it holds no task"),
        (Code::NoInput, "no such file"),
        (Code::TempFail, "the queue lock held past `lock_timeout`"),
        (Code::Config, "a bad config file"),
    ];
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Only this project (repeatable) [default: the config's projects]
    #[arg(long = "project", value_name = "DIR")]
    pub projects: Vec<PathBuf>,
    /// Skip the checks that need the network
    #[arg(long)]
    pub offline: bool,
}

impl DoctorArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, ""),
        (Code::Other, "a check failed"),
        (Code::Usage, ""),
        (Code::Config, "the config file cannot be read"),
    ];
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Only jobs of this project (repeatable) [default: all in the ledger]
    #[arg(long = "project", value_name = "DIR")]
    pub projects: Vec<PathBuf>,
    /// From: a duration back from now (7d, 12h), a UTC date or an RFC 3339 time [default: 30d]
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Until (a date means the end of that day) [default: now]
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// What a row is: one provider, project, model, UTC day, or fleet host
    #[arg(long, value_name = "KEY", default_value = "provider",
          value_parser = ["provider", "project", "model", "day", "host"])]
    pub by: String,
    /// Print JSON for scripts
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV: a header line, the rows, the total last
    #[arg(long)]
    pub csv: bool,
}

impl ReportArgs {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, ""),
        (Code::Other, "the ledger could not be read"),
        (Code::Usage, "a bad `--since`/`--until`/`--by`"),
        (
            Code::TempFail,
            "the books held past `lock_timeout`; the fleet's database unreachable",
        ),
        (Code::Config, "a bad config; books of a newer schema"),
    ];
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Rebuild the ledger from the done/ and failed/ records
    Rebuild(LedgerRebuildArgs),
}

impl LedgerCommand {
    pub const EXIT_CODES: ExitCodes = &[
        (Code::Ok, ""),
        (Code::Other, "a file could not be written"),
        (Code::Usage, ""),
        (Code::NoInput, "a directory without a queue"),
        (
            Code::TempFail,
            "the books or a queue lock held past `lock_timeout`; the fleet's database unreachable",
        ),
        (
            Code::Config,
            "no projects, a bad config file, books of a newer schema",
        ),
    ];
}

#[derive(Debug, Args)]
pub struct LedgerRebuildArgs {
    /// Only this project's entries (repeatable) [default: the config's projects]
    #[arg(long = "project", value_name = "DIR")]
    pub projects: Vec<PathBuf>,
}

/// A humantime duration such as `30s`, `2m`, `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 30s or 24h: {e}"))?;
    // Every duration is added to or taken from a time: one beyond any
    // clock's range is refused rather than overflowing one.
    if d > MAX_DURATION {
        return Err(format!("`{s}` is longer than 100 years"));
    }
    Ok(d)
}

/// The longest duration any flag or config key takes.
pub const MAX_DURATION: Duration = Duration::from_secs(36_525 * 86_400);

/// The clap command, for the generators of completions and man pages.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
