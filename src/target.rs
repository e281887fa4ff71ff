//! `JOB_ID|TASK` arguments: a job id, or a task path resolved through its
//! marker.

use std::path::Path;

use crate::error::{Code, fail};
use crate::marker::{Marker, State};
use crate::names::valid_job_id;
use crate::queue::Queue;

/// The job id an argument names.
pub fn job_id(arg: &str) -> anyhow::Result<String> {
    let looks_like_path = arg.contains('/') || arg.ends_with(".md");
    if !looks_like_path {
        if valid_job_id(arg) {
            return Ok(arg.to_string());
        }
        return Err(fail(
            Code::Usage,
            format!(
                "{:?} is neither a job id (1-128 of A-Z a-z 0-9 . _ -) nor a task path",
                crate::text::clip(arg, 80)
            ),
        ));
    }
    let (queue, task) = Queue::of_task(Path::new(arg))?;
    let bytes = queue
        .read_marker(&task)
        .map_err(|e| fail(Code::NoInput, format!("{arg}: cannot read its marker: {e}")))?
        .ok_or_else(|| {
            fail(
                Code::NoInput,
                format!("{arg}: not delegated (no {task}.delegated marker beside it)"),
            )
        })?;
    let m = Marker::parse(&bytes).map_err(|why| {
        fail(
            Code::DataErr,
            format!("{arg}: corrupt marker ({why}); the next reap moves it to failed/"),
        )
    })?;
    match (m.state, m.job_id) {
        (State::Submitted, Some(j)) => Ok(j),
        _ => Err(fail(
            Code::TempFail,
            format!("{arg}: submission pending, no job id yet; the next reap re-sends it"),
        )),
    }
}
