//! `completions/` and `man/` are generated from the same clap definition the
//! binary parses. This test regenerates them in memory and fails on any
//! difference; `UPDATE_GENERATED=1 cargo test --test generated_docs`
//! rewrites them. The exit codes come from the code: each code's meaning
//! from `error::Code::meaning`, each command's codes and reasons from its
//! table in `cli.rs`; the man pages' EXIT STATUS, the README's command table
//! (its exit column) and its "Exit codes" section are made from them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ccl_delegate::cli::{ExitCodes, exit_codes};
use ccl_delegate::error::Code;
use clap_complete::Shell;

const BIN: &str = "ccl-delegate";

/// Commands that read no configuration, so need no URL or key.
const NO_CONFIG: &[&str] = &["init", "decide"];

/// clap_complete's bash generator (4.6.x, still in the version Cargo.lock
/// pins) names the state of each subcommand two ways for a binary with a
/// hyphen: the loop over the words sets `cmd=ccl__delegate__subcmd__reap`
/// while the `case` arms are labelled `ccl__subcmd__delegate__subcmd__reap`,
/// so no arm matches and nothing past the subcommand ever completes.
/// Upstream: https://github.com/clap-rs/clap/issues/6421 (and #6529; fix
/// proposed in https://github.com/clap-rs/clap/pull/6428, not released).
/// The arms are renamed to the loop's spelling; with a fixed generator this
/// replaces nothing.
fn fix_bash_state_names(script: &str) -> String {
    let wrong = BIN.replace('-', "__subcmd__");
    let right = BIN.replace('-', "__");
    script.replace(&wrong, &right)
}

/// Roff text from the README's words: `code` marks dropped.
fn roff_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('-', "\\-").replace('`', "")
}

/// A man page section from plain paragraphs; `("TAG", "text")` items make
/// a `.TP` list.
fn roff_section(title: &str, intro: &[&str], items: &[(String, String)]) -> String {
    let mut out = format!(".SH \"{title}\"\n");
    for (i, p) in intro.iter().enumerate() {
        if i > 0 {
            out.push_str(".PP\n");
        }
        out.push_str(&roff_escape(p));
        out.push('\n');
    }
    for (tag, text) in items {
        out.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            roff_escape(tag),
            roff_escape(text)
        ));
    }
    out
}

/// The text of a code in a command's EXIT STATUS: its meaning, or its name
/// and the command's own reasons.
fn code_text(code: Code, why: &str) -> String {
    if why.is_empty() {
        code.meaning().to_string()
    } else {
        format!("{}: {why}", code.name())
    }
}

fn exit_status(codes: &[(Code, String)]) -> String {
    let items: Vec<(String, String)> = codes
        .iter()
        .map(|(c, text)| (c.as_u8().to_string(), text.clone()))
        .collect();
    roff_section("EXIT STATUS", &[], &items)
}

fn command_exit_status(codes: ExitCodes) -> String {
    let items: Vec<(Code, String)> = codes
        .iter()
        .map(|(c, why)| (*c, code_text(*c, why)))
        .collect();
    exit_status(&items)
}

fn environment() -> String {
    roff_section(
        "ENVIRONMENT",
        &[
            "Flags beat the environment, which beats the config file, which beats the defaults.",
        ],
        &[
            (
                "SECUTOOLS_URL".into(),
                "Base URL of the secutools job service (or api_url in the config file, or --api-url). http:// is accepted only for loopback hosts.".into(),
            ),
            (
                "SECUTOOLS_API_KEY".into(),
                "The API key (or api_key_file in the config file). It is never accepted on the command line and never printed.".into(),
            ),
            (
                "CCL_DELEGATE_CONFIG".into(),
                "The config file, when --config is not given.".into(),
            ),
            (
                "XDG_CONFIG_HOME, XDG_STATE_HOME".into(),
                "Where the config file and the reap run lock are looked for (~/.config and ~/.local/state when unset).".into(),
            ),
        ],
    )
}

fn files_section() -> String {
    roff_section(
        "FILES",
        &[],
        &[
            (
                "$XDG_CONFIG_HOME/ccl-delegate/config.yaml".into(),
                "The config file: api_url, api_key_file, projects (~ and globs expanded), max_age, submit_grace, http_timeout, retries, concurrency, lock_file, metrics_file. Unknown keys are refused (exit 78).".into(),
            ),
            (
                "api_key_file".into(),
                "Holds the key (surrounding blanks ignored). It must not be readable by group or others: chmod 600 FILE.".into(),
            ),
            (
                "<project>/.agent-queue/".into(),
                "The queue: inbox/<id>.md (tasks), inbox/<id>.md.delegated (markers), done/ and failed/ (records holding the original task), .ccl-delegate.lock. ccl-delegate init makes it.".into(),
            ),
            (
                "$XDG_STATE_HOME/ccl-delegate/reap.lock".into(),
                "The reap run lock (flock(2)); never delete it.".into(),
            ),
        ],
    )
}

fn see_also(pages: &[String]) -> String {
    let refs: Vec<String> = pages
        .iter()
        .map(|p| format!("\\fB{}\\fR(1)", roff_escape(p)))
        .collect();
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", "))
}

/// Renders `cmd` and adds `extra` sections before VERSION.
fn man_page(cmd: clap::Command, extra: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let at = text
        .find(".SH VERSION")
        .expect("clap_mangen renders a VERSION section");
    let mut out = String::with_capacity(text.len() + extra.len());
    out.push_str(&text[..at]);
    out.push_str(extra);
    out.push_str(&text[at..]);
    out.into_bytes()
}

fn codes_of(name: &str) -> ExitCodes {
    exit_codes(name).unwrap_or_else(|| panic!("no exit codes for `{name}` in cli::exit_codes"))
}

fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for (shell, name) in [
        (Shell::Bash, "ccl-delegate.bash"),
        (Shell::Zsh, "_ccl-delegate"),
        (Shell::Fish, "ccl-delegate.fish"),
    ] {
        let mut cmd = ccl_delegate::cli::command();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, BIN, &mut buf);
        if shell == Shell::Bash {
            buf = fix_bash_state_names(&String::from_utf8(buf).unwrap()).into_bytes();
        }
        files.push((Path::new("completions").join(name), buf));
    }
    // Man pages: no `help` subcommand page exists, so the top page does not
    // list one (`-h` is documented as an option).
    let cmd = ccl_delegate::cli::command().disable_help_subcommand(true);
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| format!("{BIN}-{}", s.get_name()))
        .collect();
    let all_codes: Vec<(Code, String)> = Code::ALL
        .iter()
        .map(|c| (*c, c.meaning().to_string()))
        .collect();
    let top = cmd.clone().after_help(None::<&str>);
    let extra = format!(
        "{}{}{}{}",
        environment(),
        files_section(),
        exit_status(&all_codes),
        see_also(&subs)
    );
    files.push((PathBuf::from("man/ccl-delegate.1"), man_page(top, &extra)));
    // Built, so that each subcommand carries the global options too.
    let mut built = cmd.clone();
    built.build();
    for sub in built.get_subcommands() {
        let name = format!("{BIN}-{}", sub.get_name());
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        let usage: &'static str = Box::leak(format!("{BIN} {}", sub.get_name()).into_boxed_str());
        let sub_cmd = sub
            .clone()
            .name(leaked)
            .bin_name(usage)
            .version(env!("CARGO_PKG_VERSION"));
        let config = if NO_CONFIG.contains(&sub.get_name()) {
            roff_section(
                "ENVIRONMENT",
                &["Reads no config file and no environment: it needs no URL and no key."],
                &[],
            )
        } else {
            format!("{}{}", environment(), files_section())
        };
        let extra = format!(
            "{config}{}{}",
            command_exit_status(codes_of(sub.get_name())),
            see_also(&[BIN.to_string()])
        );
        files.push((
            Path::new("man").join(format!("{name}.1")),
            man_page(sub_cmd, &extra),
        ));
        // A command with commands of its own (`ledger rebuild`): a page
        // each, so that the SUBCOMMANDS list refers to pages that exist.
        for subsub in sub.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("{BIN}-{}-{}", sub.get_name(), subsub.get_name());
            let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
            let usage: &'static str = Box::leak(
                format!("{BIN} {} {}", sub.get_name(), subsub.get_name()).into_boxed_str(),
            );
            let page = subsub
                .clone()
                .name(leaked)
                .bin_name(usage)
                .version(env!("CARGO_PKG_VERSION"));
            files.push((
                Path::new("man").join(format!("{name}.1")),
                man_page(page, &extra),
            ));
        }
    }
    files
}

/// The exit cell of a command in the README's table: `0, 1 (why), 64`.
fn readme_exit_cell(codes: ExitCodes) -> String {
    let items: Vec<String> = codes
        .iter()
        .map(|(c, why)| match *why {
            "" => c.as_u8().to_string(),
            why => format!("{} ({why})", c.as_u8()),
        })
        .collect();
    items.join(", ")
}

/// The command a row of the README's command table is about, if any.
fn readme_row_command(line: &str) -> Option<&str> {
    let first = line.strip_prefix("| `")?;
    let name = first.split([' ', '`']).next()?;
    exit_codes(name).map(|_| name)
}

/// The README with its exit codes made from the code: the exit column of
/// the command table, and the table under "## Exit codes". Panics when a
/// command has no row.
fn readme_regenerated(readme: &str) -> String {
    let mut out = String::with_capacity(readme.len());
    let mut seen = BTreeSet::new();
    let mut in_codes = false;
    let mut codes_written = false;
    for line in readme.lines() {
        if line.starts_with("## ") {
            in_codes = line == "## Exit codes";
        }
        if in_codes && line.starts_with('|') {
            if !codes_written {
                out.push_str("| code | meaning |\n|---|---|\n");
                for c in Code::ALL {
                    out.push_str(&format!("| {} | {} |\n", c.as_u8(), c.meaning()));
                }
                codes_written = true;
            }
            continue;
        }
        match readme_row_command(line) {
            Some(name) => {
                let body = line.strip_suffix(" |").expect("a table row ends with ` |`");
                let at = body.rfind(" | ").expect("a row of three cells");
                out.push_str(&format!(
                    "{} | {} |",
                    &body[..at],
                    readme_exit_cell(codes_of(name))
                ));
                seen.insert(name.to_string());
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    assert!(codes_written, "README has no table under `## Exit codes`");
    let cmd = ccl_delegate::cli::command();
    let all: BTreeSet<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    assert_eq!(seen, all, "README's command table must have every command");
    out
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

#[test]
fn every_command_has_its_exit_codes_listed() {
    let cmd = ccl_delegate::cli::command();
    for sub in cmd.get_subcommands() {
        let codes = codes_of(sub.get_name());
        // Every command gives these three; each code once, in order.
        for must in [Code::Ok, Code::Other, Code::Usage] {
            assert!(codes.iter().any(|(c, _)| *c == must), "{}", sub.get_name());
        }
        assert!(
            codes.windows(2).all(|w| w[0].0.as_u8() < w[1].0.as_u8()),
            "{}",
            sub.get_name()
        );
    }
}

/// The leading code of each comma-separated item of a README table cell:
/// `0, 1 (a file, or two), 77` gives {0, 1, 77}.
fn codes_in_cell(cell: &str) -> BTreeSet<u8> {
    let mut depth = 0;
    let mut items = vec![String::new()];
    for ch in cell.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(String::new());
                continue;
            }
            _ => {}
        }
        if depth == 0 && ch != ')' {
            items.last_mut().unwrap().push(ch);
        }
    }
    items.iter().filter_map(|i| i.trim().parse().ok()).collect()
}

#[test]
fn readme_exit_codes_are_made_from_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let want = readme_regenerated(&readme);
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    assert!(
        readme == want,
        "README's exit codes differ from error::Code and cli's tables\nregenerate with: UPDATE_GENERATED=1 cargo test --test generated_docs"
    );
    // Read back as a person reads them: each row lists its command's codes.
    for line in readme.lines() {
        if let Some(name) = readme_row_command(line) {
            let cell = line.trim_end_matches(" |").rsplit(" | ").next().unwrap();
            let listed: BTreeSet<u8> = codes_of(name).iter().map(|(c, _)| c.as_u8()).collect();
            assert_eq!(
                codes_in_cell(cell),
                listed,
                "README's exit codes for `{name}`"
            );
        }
    }
}

#[test]
fn man_pages_refer_only_to_pages_that_exist() {
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let pages: BTreeSet<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for page in &pages {
        let text = std::fs::read_to_string(man.join(page)).unwrap();
        // Every `name(1)`, bold or not, whose name is ours.
        for (i, _) in text.match_indices("(1)") {
            let head = &text[..i];
            let start = head
                .rfind(|c: char| c.is_whitespace() || c == ',')
                .map_or(0, |s| s + 1);
            let name = head[start..]
                .replace("\\fB", "")
                .replace("\\fR", "")
                .replace("\\-", "-");
            if name.starts_with(BIN) {
                assert!(
                    pages.contains(&format!("{name}.1")),
                    "{page} refers to {name}(1), which is not in man/"
                );
            }
        }
    }
}

#[test]
fn codes_in_cell_reads_leading_numbers_only() {
    let got = codes_in_cell(" 0, 1 (a file, or 2 of them), 77 (401/403; markers kept), 78 ");
    assert_eq!(got, [0, 1, 77, 78].into_iter().collect());
}
