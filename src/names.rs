//! The names and ids everything checks: task file names, job ids and
//! idempotency keys (secutools-api.md "Errors and limits"). A leaf: it
//! uses nothing of this crate.

/// The directory of a project's queue.
pub const QUEUE_DIR: &str = ".agent-queue";

/// How a project is named in the books: its canonical path (symlinks
/// resolved), so that a project reached through a link, `~` or a relative
/// path is one key whoever counts it; its absolute path when it cannot be
/// resolved (gone). Its `.agent-queue` directory names it too.
pub fn project_key(dir: &std::path::Path) -> String {
    let project = if dir.file_name().is_some_and(|n| n == QUEUE_DIR) {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    std::fs::canonicalize(project)
        .or_else(|_| std::path::absolute(project))
        .unwrap_or_else(|_| project.to_path_buf())
        .display()
        .to_string()
}

/// `<id>.md`, not hidden, no path separators.
pub fn is_task_name(n: &str) -> bool {
    is_task_name_bytes(n.as_bytes())
}

/// [`is_task_name`], for a name of any bytes.
pub fn is_task_name_bytes(n: &[u8]) -> bool {
    n.len() > 3 && n.ends_with(b".md") && !n.starts_with(b".") && !n.contains(&b'/')
}

/// 1-128 characters of `[A-Za-z0-9._-]`, neither `.` nor `..`.
pub fn valid_job_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 16-128 characters of `[A-Za-z0-9_-]`.
pub fn valid_idempotency_key(k: &str) -> bool {
    (16..=128).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names() {
        for ok in ["a.md", "x y.md", "\u{e9}t\u{e9}.md", "a.b.md"] {
            assert!(is_task_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".md",
            ".a.md",
            "a.txt",
            "a/b.md",
            "a.md.delegated",
            "md",
        ] {
            assert!(!is_task_name(bad), "{bad:?}");
        }
        assert!(is_task_name_bytes(b"\xff.md"));
    }
}
