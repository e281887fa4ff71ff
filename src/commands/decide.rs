//! `decide`: where would this task run? Pure: no network, no writes.

use std::io::{Read, Write};

use crate::cli::DecideArgs;
use crate::error::{Code, fail};
use crate::frontmatter::{self, Meta};
use crate::fsread::{self, Kind};
use crate::route;
use crate::ui::Ui;

/// How the task is named in warnings.
fn shown_of(args: &DecideArgs) -> String {
    match args.task.as_deref() {
        _ if !args.set.is_empty() => "--set".into(),
        Some(p) if p.as_os_str() == "-" => "<stdin>".into(),
        Some(p) => crate::queue::shown(p),
        None => "--set".into(),
    }
}

pub fn run(args: &DecideArgs, ui: Ui) -> anyhow::Result<Code> {
    let meta = if !args.set.is_empty() {
        let mut pairs = Vec::with_capacity(args.set.len());
        for s in &args.set {
            let (k, v) = s.split_once('=').ok_or_else(|| {
                fail(
                    Code::Usage,
                    format!("--set {s}: expected KEY=VALUE, e.g. --set allow_delegation=true"),
                )
            })?;
            pairs.push((k.trim().to_string(), v.to_string()));
        }
        let meta =
            Meta::from_pairs(&pairs).map_err(|p| fail(Code::Usage, format!("--set: {p}")))?;
        ui.task_meta("--set", Ok(meta))
    } else {
        let path = args
            .task
            .as_deref()
            .expect("clap requires TASK without --set");
        let (shown, bytes) = if path.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| fail(Code::NoInput, format!("cannot read stdin: {e}")))?;
            ("<stdin>".to_string(), buf)
        } else {
            let shown = path.display().to_string();
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                // A symlinked task is never read; it runs locally.
                ui.warn(format_args!(
                    "{shown}: is a symbolic link, never read; routing the task locally (claude-code)"
                ));
                (shown, Vec::new())
            } else {
                let bytes = fsread::read(path, Kind::Task)
                    .map_err(|e| fail(Code::NoInput, format!("{e}")))?
                    .ok_or_else(|| fail(Code::NoInput, format!("{shown}: no such file")))?
                    .bytes;
                (shown, bytes)
            }
        };
        let meta = ui.task_meta(&shown, frontmatter::split(&bytes).meta);
        if !meta.unreadable && frontmatter::second_bom(&bytes) {
            ui.warn(format_args!(
                "{shown}: starts with two byte order marks; the second hides any frontmatter, so the task routes as if it had none"
            ));
        }
        meta
    };
    let d = route::route(&meta);
    let chain = route::fallback(&meta);
    for w in &chain.warnings {
        ui.warn(format_args!("{}: {w}", shown_of(args)));
    }
    let names: Vec<&str> = chain.chain.iter().map(|p| p.as_str()).collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        #[derive(serde::Serialize)]
        struct Json {
            provider: &'static str,
            delegate: bool,
            rule: u8,
            /// The task's own chain (a config default is not read here).
            fallback: Vec<&'static str>,
        }
        let v = Json {
            provider: d.provider.as_str(),
            delegate: d.provider.delegates(),
            rule: d.rule,
            fallback: names,
        };
        writeln!(out, "{}", serde_json::to_string(&v)?)?;
    } else {
        writeln!(out, "{}", d.provider.as_str())?;
        if args.explain {
            writeln!(out, "{}", d.explain_for(&meta))?;
            if d.provider.delegates() && chain.given {
                writeln!(out, "fallback: {}", route::Fallback::words(&chain.chain))?;
            }
        }
    }
    Ok(Code::Ok)
}
