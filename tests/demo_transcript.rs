//! The README's first command, `bash tests/demo.sh`, prints what the README
//! shows: its transcript is compared line by line, with the job ids, times,
//! ports, paths and turnaround figures that change from run to run replaced
//! by placeholders, and the lines one `reap` prints taken in any order (its
//! jobs are polled at once).

use std::path::Path;
use std::process::Command;

/// Replaces what changes between runs with a placeholder, and runs of
/// blanks with one (the report's columns follow the widths).
fn normalize(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while !rest.is_empty() {
        let word_end = rest.find(' ').unwrap_or(rest.len());
        let (word, tail) = rest.split_at(word_end);
        out.push_str(&normalize_word(word));
        let blanks = tail.len() - tail.trim_start_matches(' ').len();
        if blanks > 0 {
            out.push(' ');
        }
        rest = &tail[blanks..];
    }
    out.trim_end().to_string()
}

fn normalize_word(word: &str) -> String {
    let mut w = word.to_string();
    // A path under the demo's temporary directory.
    if let Some(i) = w.find("/ccl-delegate-demo.") {
        let start = w[..i].rfind(['"', '(', ' ']).map_or(0, |j| j + 1);
        let after = &w[i + "/ccl-delegate-demo.".len()..];
        let end = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        let tail = after[end..].to_string();
        w = format!("{}<work>{tail}", &w[..start]);
    }
    // The mock's port.
    if let Some(i) = w.find("http://127.0.0.1:") {
        let after = &w[i + "http://127.0.0.1:".len()..];
        let end = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        w = format!("{}http://127.0.0.1:<port>{}", &w[..i], &after[end..]);
    }
    // Job ids.
    while let Some(i) = w.find("j-0") {
        let after = &w[i + 2..];
        let end = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        w = format!("{}<job>{}", &w[..i], &after[end..]);
    }
    // RFC 3339 times.
    if w.len() >= 20 && w.as_bytes().get(4) == Some(&b'-') && w.as_bytes().get(10) == Some(&b'T') {
        w = "<time>".to_string();
    }
    // Turnaround figures (`0s`, `1s`, `2m`).
    let digits = w.trim_end_matches(['s', 'm', 'h']);
    if !digits.is_empty() && digits.len() < w.len() && digits.bytes().all(|b| b.is_ascii_digit()) {
        w = "<dur>".to_string();
    }
    w
}

/// The lines to compare: normalized, the build line left out, and each
/// `reap`'s lines sorted.
fn comparable(text: &str, without_books: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut section = String::new();
    let mut reap_lines: Vec<String> = Vec::new();
    let mut in_books = false;
    for raw in text.lines() {
        if raw.starts_with("building ccl-delegate") {
            continue;
        }
        let line = normalize(raw);
        if line.starts_with("== ") {
            lines.append(&mut reap_lines);
            section = line.clone();
            in_books = line.starts_with("== the books");
        } else if in_books && without_books && !line.is_empty() {
            continue;
        } else if section.starts_with("== cron") && !line.is_empty() {
            reap_lines.push(line);
            reap_lines.sort();
            continue;
        }
        lines.append(&mut reap_lines);
        lines.push(line);
    }
    lines.append(&mut reap_lines);
    lines
}

/// The README's transcript: the block between `<!-- demo:begin -->` and
/// `<!-- demo:end -->`, without its fence.
fn readme_transcript() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme.find("<!-- demo:begin -->").expect("demo:begin");
    let end = readme.find("<!-- demo:end -->").expect("demo:end");
    let block = &readme[start..end];
    let open = block.find("```text\n").expect("a ```text fence") + "```text\n".len();
    let close = block.rfind("```").expect("a closing fence");
    block[open..close].to_string()
}

#[test]
fn the_demo_prints_the_readme_transcript() {
    let bin = Path::new(env!("CARGO_BIN_EXE_ccl-delegate"))
        .parent()
        .unwrap();
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/demo.sh"))
        .env("CCL_DEMO_BIN", bin)
        .env_remove("SECUTOOLS_URL")
        .env_remove("SECUTOOLS_API_KEY")
        .env_remove("CCL_DELEGATE_CONFIG")
        .output()
        .expect("bash runs the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the demo failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Without sqlite3 the demo says so instead of querying the books; the
    // README shows the query.
    let without_books = stdout.contains("(sqlite3 is not installed");
    let got = comparable(&stdout, without_books);
    let want = comparable(&readme_transcript(), without_books);
    if got != want {
        let first = got
            .iter()
            .zip(&want)
            .position(|(g, w)| g != w)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "the demo's output and the README's transcript part at line {}:\n  demo:   {:?}\n  README: {:?}\n\nthe demo printed:\n{stdout}",
            first + 1,
            got.get(first),
            want.get(first)
        );
    }
}

#[test]
fn normalize_replaces_what_changes_between_runs() {
    assert_eq!(
        normalize(
            "done /tmp/ccl-delegate-demo.W7lp53/p/.agent-queue/done/a.md (job j-000003, gpu, 0.0200 CAD)"
        ),
        "done <work>/p/.agent-queue/done/a.md (job <job>, gpu, 0.0200 CAD)"
    );
    assert_eq!(
        normalize("claude       2     2       0       0.0    0.5000    0.2500   0s   1s"),
        "claude 2 2 0 0.0 0.5000 0.2500 <dur> <dur>"
    );
    assert_eq!(
        normalize("delegated_at: 2026-12-05T08:58:49Z"),
        "delegated_at: <time>"
    );
    assert_eq!(
        normalize("secutools-mock at http://127.0.0.1:38613: gemini"),
        "secutools-mock at http://127.0.0.1:<port>: gemini"
    );
}
