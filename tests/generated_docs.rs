//! `completions/` and `man/` are generated from the same clap definition the
//! binary parses. This test regenerates them in memory and fails on any
//! difference; `UPDATE_GENERATED=1 cargo test --test generated_docs`
//! rewrites them.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for (shell, name) in [
        (Shell::Bash, "ccl-delegate.bash"),
        (Shell::Zsh, "_ccl-delegate"),
        (Shell::Fish, "ccl-delegate.fish"),
    ] {
        let mut cmd = ccl_delegate::cli::command();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, "ccl-delegate", &mut buf);
        files.push((Path::new("completions").join(name), buf));
    }
    let cmd = ccl_delegate::cli::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf).unwrap();
    files.push((PathBuf::from("man/ccl-delegate.1"), buf));
    // Built, so that each subcommand carries the global options too.
    let mut built = cmd.clone();
    built.build();
    for sub in built.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("ccl-delegate-{}", sub.get_name());
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        let usage: &'static str =
            Box::leak(format!("ccl-delegate {}", sub.get_name()).into_boxed_str());
        let sub = sub
            .clone()
            .name(leaked)
            .bin_name(usage)
            .version(env!("CARGO_PKG_VERSION"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub).render(&mut buf).unwrap();
        files.push((Path::new("man").join(format!("{name}.1")), buf));
    }
    files
}

#[test]
fn completions_and_man_pages_match_the_cli_definition() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("UPDATE_GENERATED").is_some();
    let mut stale = Vec::new();
    for (rel, want) in generated() {
        let path = root.join(&rel);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&want[..]) {
            stale.push(rel.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "generated files differ from the CLI definition: {stale:?}\nregenerate with: UPDATE_GENERATED=1 cargo test --test generated_docs"
    );
}
