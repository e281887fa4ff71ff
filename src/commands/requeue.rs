//! `requeue failed/<id>.md`: put the original task back in the inbox, byte
//! for byte, never over an existing inbox task.

use std::path::Path;

use crate::cli::RequeueArgs;
use crate::error::{Code, fail};
use crate::queue::{self, Queue};
use crate::record::Record;
use crate::ui::Ui;

pub fn run(args: &RequeueArgs, settings: &crate::config::Settings, ui: Ui) -> anyhow::Result<Code> {
    let path = &args.failed;
    let shown = path.display();
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let abs =
        std::fs::canonicalize(parent).map_err(|e| fail(Code::NoInput, format!("{shown}: {e}")))?;
    let in_failed = abs.file_name().is_some_and(|n| n == "failed")
        && abs
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == queue::QUEUE_DIR);
    if !in_failed {
        return Err(fail(
            Code::Usage,
            format!("{shown}: not in an .agent-queue/failed/ directory"),
        ));
    }
    let q = Queue::at(abs.parent().expect("checked above"));
    q.check_dirs()
        .map_err(|e| fail(Code::Usage, format!("{e:#}")))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let record_path = q.failed.join(&file_name);
    let lock = q.lock()?;
    let (bytes, mode) = queue::read_nofollow(&record_path, crate::fsread::Kind::Record)
        .map_err(|e| fail(Code::NoInput, format!("{shown}: {e}")))?
        .ok_or_else(|| fail(Code::NoInput, format!("{shown}: no such file")))?;
    let record = Record::parse(&bytes).ok_or_else(|| {
        fail(
            Code::DataErr,
            format!("{shown}: not a failed-task file written by ccl-delegate"),
        )
    })?;
    if record.task_missing {
        return Err(fail(
            Code::DataErr,
            format!("{shown}: holds no original task (it had vanished); nothing to requeue"),
        ));
    }
    let task = record.task_name(&bytes).unwrap_or_else(|| {
        let stem = file_name.trim_end_matches(".md");
        // `<id>.N.md` → `<id>.md`
        let stem = match stem.rsplit_once('.') {
            Some((s, n)) if n.parse::<u32>().is_ok() => s,
            _ => stem,
        };
        format!("{stem}.md")
    });
    // A marker left by a vanished task would claim the requeued one.
    let marker = q.marker_path(&task);
    if std::fs::symlink_metadata(&marker).is_ok() {
        return Err(fail(
            Code::Other,
            format!(
                "{shown}: {} is still there (a delegation in flight); reap it first, nothing was changed",
                marker.display()
            ),
        ));
    }
    let original = record.original(&bytes);
    let restored = q
        .requeue(&lock, &record_path, &task, original, mode)
        .map_err(|e| fail(Code::Other, format!("{shown}: {e:#}")))?;
    ui.info(format_args!("removed {shown}"));
    // The job happened and stays in the books; it no longer has a record
    // of its own, so `status` (which totals records) leaves it out.
    if let Some(job) = record.job_id.as_deref() {
        let noted = crate::books::open_if_present(&settings.state_dir, settings.lock_timeout)
            .and_then(|b| b.map_or(Ok(()), |mut b| b.unrecord(job)));
        if let Err(e) = noted {
            ui.warn(format_args!(
                "{e:#}; `status` may count job {job} as a record until the books are rebuilt"
            ));
        }
    }
    println!(
        "requeued {}",
        crate::text::line(&restored.display().to_string())
    );
    Ok(Code::Ok)
}
