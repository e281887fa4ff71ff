//! Sizes the design and the file system bound, through the real binary
//! against the real mock: a task too large to send, a large one sent whole,
//! marker names at and past the file system's limit, and a request over the
//! API's body limit, at submit and at a reap's retry.

mod common;

use common::*;

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

// A marker that cannot exist: exit 64, nothing written.

#[test]
fn submit_refuses_a_task_whose_marker_name_would_be_too_long() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    for len in [246usize, 250, 255] {
        let name = format!("{}.md", "a".repeat(len - 3));
        let task = p.task(&name, GEMINI);
        let out = p.run(Some(&mock), &["submit", s(&task)]);
        out.expect(64);
        assert_eq!(out.stdout, "", "{out:?}");
        assert!(out.stderr.contains("too long"), "{out:?}");
        assert_eq!(p.names(&p.inbox()), vec![name.clone()], "nothing written");
        std::fs::remove_file(&task).unwrap();
    }
    assert_eq!(mock.jobs_created(), 0);
}

#[test]
fn submit_accepts_the_longest_name_whose_marker_fits() {
    // 245 + `.delegated` = 255 bytes: the boundary is the file system's,
    // not one byte less.
    let mock = Mock::start(&[]);
    let p = Project::new();
    let name = format!("{}.md", "b".repeat(242));
    let task = p.task(&name, GEMINI);
    let out = p.run(Some(&mock), &["submit", s(&task)]);
    out.expect(0);
    assert!(p.marker(&name).is_some(), "{out:?}");
}

// A prompt over the API's body limit.

#[test]
fn submit_refuses_a_task_over_the_api_body_limit_before_sending() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let mut big = GEMINI.to_vec();
    big.resize(33 * 1024 * 1024, b'x');
    let task = p.task("big.md", &big);
    let out = p.run(Some(&mock), &["submit", s(&task)]);
    out.expect(65);
    assert!(out.stderr.contains("big.md"), "{out:?}");
    assert!(out.stderr.contains("MiB"), "{out:?}");
    assert_eq!(p.names(&p.inbox()), vec!["big.md".to_string()]);
    assert_eq!(mock.requests(), 0);
}

/// A pending submission that can never be sent (its request is over the
/// API's 32 MiB limit) is handed back to the dispatcher at once, like one
/// the service refused: not re-uploaded every minute for a day.
#[test]
fn reap_returns_a_pending_task_whose_request_is_over_the_limit() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let mut big = GEMINI.to_vec();
    big.extend(std::iter::repeat_n(b'x', 33 * 1024 * 1024));
    p.task("big.md", &big);
    p.write_marker(
        "big.md",
        &marker_json(true, None, "ccl-big-0123456789abcdef", &rfc3339_ago(600)),
    );
    let out = p.reap(&mock, &[]);
    assert!(out.stdout.contains("returned"), "{out:?}");
    assert_eq!(p.names(&p.inbox()), ["big.md"], "the task stays, unmarked");
    assert!(
        mock.jobs().is_empty(),
        "nothing was sent: {:?}",
        mock.jobs()
    );
    assert_eq!(std::fs::read(p.inbox().join("big.md")).unwrap(), big);
}
