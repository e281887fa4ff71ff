//! `result`: a completed job's response on stdout; exit 75 while it is not
//! ready, or wait for it with `--wait`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::cli::ResultArgs;
use crate::client::{ClientError, JobResult, JobStatus, Status};
use crate::config::Settings;
use crate::error::{Code, fail};
use crate::target;
use crate::text::clip;
use crate::ui::Ui;

pub fn run(args: &ResultArgs, settings: &Settings) -> anyhow::Result<Code> {
    let (job, wait) = args.job_and_wait().map_err(|e| fail(Code::Usage, e))?;
    let job = target::job_id(job)?;
    let client = settings.client()?;
    let start = Instant::now();
    let deadline = wait.map(|d| start + d);
    let progress = Progress {
        on: deadline.is_some() && std::io::stderr().is_terminal(),
        start,
    };
    let mut pause = Duration::from_millis(250);
    // A 409 that races the job's completion: ask once more, without waiting.
    let mut asked_again = false;
    loop {
        let st = match client.result(&job) {
            Ok(r) => {
                progress.clear();
                print_result(&r, args.json)?;
                return Ok(Code::Ok);
            }
            Err(ClientError::Conflict { .. }) => client
                .status(&job)
                .map_err(|e| anyhow::Error::new(e).context(format!("job {job}")))?,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("job {job}"))),
        };
        match st.status {
            Status::Failed | Status::Cancelled | Status::Expired => {
                progress.clear();
                return Err(ended_without_result(&job, &st));
            }
            Status::Completed if !asked_again => {
                asked_again = true;
                continue;
            }
            _ => {}
        }
        let now = Instant::now();
        match deadline {
            Some(d) if now < d => {
                progress.show(&job, st.status.as_str());
                std::thread::sleep(pause.min(d - now));
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            _ => {
                progress.clear();
                Ui::default().say(format_args!(
                    "job {job} is {}: no result yet; try again later",
                    st.status.as_str()
                ));
                return Ok(Code::TempFail);
            }
        }
    }
}

/// The response on stdout (ending in a line end), or with `--json` the
/// service's object.
fn print_result(r: &JobResult, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", crate::text::json_line(&r.raw)?)?;
    } else {
        out.write_all(r.response.as_bytes())?;
        if !r.response.ends_with('\n') {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// The error of a job that ended without a result (failed, cancelled,
/// expired), with the service's cause.
fn ended_without_result(job: &str, st: &JobStatus) -> anyhow::Error {
    let why = st
        .error
        .as_deref()
        .map(|e| format!(": {}", clip(e, 500)))
        .unwrap_or_default();
    fail(
        Code::Other,
        format!(
            "job {job} ended {}{why}; it has no result",
            clip(st.status.as_str(), 64)
        ),
    )
}

/// The `--wait` progress line, on a terminal only.
struct Progress {
    on: bool,
    start: Instant,
}

impl Progress {
    fn show(&self, job: &str, status: &str) {
        if self.on {
            eprint!(
                "\rwaiting for {job}: {} ({}s)",
                clip(status, 64),
                self.start.elapsed().as_secs()
            );
            let _ = std::io::stderr().flush();
        }
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
        }
    }
}
