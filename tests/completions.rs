//! The shipped completion scripts, loaded into real bash, zsh and fish, offer
//! each subcommand's own options once the subcommand is typed. A shell that
//! is not installed is skipped with a note (CI installs all three).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn completions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("completions")
}

fn have(shell: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {shell}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("note: {shell} is not installed; its completion test is skipped");
    }
    found
}

/// Runs `script` under `timeout` (a shell waiting on a terminal must not
/// hang the suite) and gives stdout's lines.
fn lines(program: &str, args: &[&str]) -> BTreeSet<String> {
    let out = Command::new("timeout")
        .arg("60")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const REAP_OWN: &[&str] = &[
    "--project",
    "--lock-file",
    "--concurrency",
    "--max-age",
    "--submit-grace",
    "--metrics-file",
];

/// What `ccl-delegate reap --<TAB>` offers must hold reap's own options and
/// the global ones, and nothing of another subcommand.
fn check_reap(offered: &BTreeSet<String>, shell: &str) {
    for want in REAP_OWN.iter().chain(&["--config", "--api-url"]) {
        assert!(
            offered.contains(*want),
            "{shell}: `ccl-delegate reap --<TAB>` does not offer {want}; offered: {offered:?}"
        );
    }
    assert!(
        !offered.contains("--priority"),
        "{shell}: reap offered submit's --priority: {offered:?}"
    );
}

/// Completes the words of `line` (the last one being completed) with the
/// bash function the script registers, as readline would call it.
fn bash_complete(line: &str) -> BTreeSet<String> {
    let script = completions().join("ccl-delegate.bash");
    let program = r#"source "$1"
read -r -a COMP_WORDS <<< "$2"
case "$2" in *' ') COMP_WORDS+=("") ;; esac
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="$2"; COMP_POINT=${#COMP_LINE}
fn=$(complete -p ccl-delegate | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
prev=${COMP_WORDS[COMP_CWORD-1]}
"$fn" ccl-delegate "${COMP_WORDS[COMP_CWORD]}" "$prev"
printf '%s\n' "${COMPREPLY[@]}""#;
    lines(
        "bash",
        &[
            "--norc",
            "-c",
            program,
            "bash",
            script.to_str().unwrap(),
            line,
        ],
    )
}

#[test]
fn bash_completes_the_options_of_a_subcommand() {
    if !have("bash") {
        return;
    }
    check_reap(&bash_complete("ccl-delegate reap --"), "bash");
    assert_eq!(
        bash_complete("ccl-delegate submit --pr"),
        set(&["--priority"])
    );
    assert_eq!(bash_complete("ccl-delegate in"), set(&["init"]));
}

/// Types `line` and a TAB into an interactive zsh (through zpty) that has
/// loaded the script with compinit, and prints every match handed to
/// compadd.
const ZSH_CAPTURE: &str = r#"
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1=''; fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z 'compadd () { local -a m; builtin compadd -A m "$@"; print -r -l -- "C""APTURED:"${^m}; builtin compadd "$@"; }'
zpty -w z 'zstyle ":completion:*" menu no'
zpty -w z "$2"$'\t'
zpty -w z $'\C-u''print -r -- "__E""ND__"'
out=""
while zpty -r z line; do
  out+="$line"
  [[ $line == *__END__* ]] && break
done
zpty -d z
print -r -- "$out" | tr -d '\r' | grep -o 'CAPTURED:[A-Za-z0-9_=-]*' | sed 's/^CAPTURED://' | sort -u
"#;

fn zsh_complete(line: &str) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("capture.zsh");
    std::fs::write(&capture, ZSH_CAPTURE).unwrap();
    lines(
        "zsh",
        &[
            "-f",
            capture.to_str().unwrap(),
            completions().to_str().unwrap(),
            line,
        ],
    )
}

#[test]
fn zsh_completes_the_options_of_a_subcommand() {
    if !have("zsh") {
        return;
    }
    check_reap(&zsh_complete("ccl-delegate reap --"), "zsh");
    assert_eq!(
        zsh_complete("ccl-delegate submit --pr"),
        set(&["--priority"])
    );
}

fn fish_complete(line: &str) -> BTreeSet<String> {
    let script = completions().join("ccl-delegate.fish");
    let program = format!(
        "source {}; complete -C {}",
        script.to_str().unwrap(),
        shell_quote(line)
    );
    lines("fish", &["--no-config", "-c", &program])
        .into_iter()
        // `--option\tdescription`
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[test]
fn fish_completes_the_options_of_a_subcommand() {
    if !have("fish") {
        return;
    }
    check_reap(&fish_complete("ccl-delegate reap --"), "fish");
    assert_eq!(
        fish_complete("ccl-delegate submit --pr"),
        set(&["--priority"])
    );
}
