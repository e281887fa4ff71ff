//! The client's limits seen through the real binary against the real mock:
//! a task too large to send, and a large one sent with `100-continue`.

mod common;

use common::{Mock, Project};

fn task_of(body_bytes: usize) -> Vec<u8> {
    let mut t = b"---\npreferred_ai: gemini\n---\n".to_vec();
    t.extend(std::iter::repeat_n(b'x', body_bytes));
    t.push(b'\n');
    t
}

#[test]
fn submit_of_a_task_over_32_mib_sends_nothing_leaves_no_marker_and_exits_65() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task("big.md", &task_of(33 * 1024 * 1024));
    let out = p.run(Some(&mock), &["submit", task.to_str().unwrap()]);
    out.expect(65);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains("over the limit of 32 MiB"),
        "{}",
        out.stderr
    );
    // The task is untouched, and nothing marks it as delegated.
    assert_eq!(p.names(&p.inbox()), ["big.md"]);
    assert!(mock.jobs().is_empty(), "{:?}", mock.jobs());
}

#[test]
fn submit_of_a_large_task_is_delegated_whole() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let task = p.task("large.md", &task_of(3 * 1024 * 1024));
    let out = p.run(Some(&mock), &["submit", task.to_str().unwrap()]);
    out.expect(0);
    assert!(
        out.stdout.starts_with("delegated gemini "),
        "{}",
        out.stdout
    );
    let jobs = mock.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
}
