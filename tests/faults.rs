//! Fault injection at each durable step (write, fsync, rename, directory
//! fsync, unlink), with a full disk (ENOSPC) and an I/O error (EIO): the run
//! reports the error, exits non-zero (or, for `submit`, exits 0 only when a
//! marker now exists), and the next run recovers with nothing lost.
//!
//! Needs the `failpoints` feature: `cargo test --features failpoints`.
#![cfg(feature = "failpoints")]

mod common;

use std::collections::BTreeMap;

use common::*;

const STEPS: [&str; 5] = ["write", "fsync", "rename", "dirsync", "unlink"];
const ERRNOS: [(&str, &str); 2] = [
    ("", "No space left on device"),
    (":eio", "Input/output error"),
];

fn failpoint(step: &str, n: u32, errno: &str) -> String {
    format!("{step}:{n}{errno}")
}

/// A queue with one marker of each kind the reap writes for: two completed
/// jobs, a failed job, a job unknown to the service, a corrupt marker, a
/// pending marker (re-sent), and a job whose poll fails (marker rewritten).
fn reap_setup(p: &Project, mock: &Mock, tag: &str) -> BTreeMap<String, Vec<u8>> {
    let mut originals = BTreeMap::new();
    let old = rfc3339_ago(3600);
    for (i, kind) in [
        "done", "done", "failed", "unknown", "corrupt", "pending", "pollerr",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("{kind}{i}");
        let task = format!("{id}.md");
        let bytes =
            format!("---\nallow_delegation: true\n---\nTask {id}\r\nno newline").into_bytes();
        p.task(&task, &bytes);
        originals.insert(id.clone(), bytes);
        let key = format!("ccl-fault-{tag}-{i}-0123456789");
        let marker = match *kind {
            "done" | "failed" | "pollerr" => {
                let job = mock.post_job(&key, &format!("{tag}/{task}"));
                if *kind == "failed" {
                    mock.set(serde_json::json!({"status_of": {job.clone(): "failed"}}));
                }
                if *kind == "pollerr" {
                    mock.faults(serde_json::json!({"next": ["503"], "path": format!("/{job}")}));
                }
                marker_json(false, Some(&job), &key, &old)
            }
            "unknown" => marker_json(false, Some(&format!("j-gone-{tag}")), &key, &old),
            "corrupt" => "{\"state\": \"submitted\", \"job_id\": ".to_string(),
            _ => marker_json(true, None, &key, &old),
        };
        p.write_marker(&task, &marker);
    }
    originals
}

/// The reap with its faults: every occurrence of every step, until the
/// failpoint lies past the run's last one.
#[test]
fn reap_fault_at_each_durable_step_is_reported_and_the_next_run_recovers() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let mut hit = BTreeMap::new();
    for step in STEPS {
        for (errno, text) in ERRNOS {
            for n in 1.. {
                let tag = format!("{step}{n}{}", errno.trim_start_matches(':'));
                let p = Project::new();
                let originals = reap_setup(&p, &mock, &tag);
                let dir = p.dir.to_str().unwrap();
                let out = Out::of(
                    p.cmd(Some(&mock))
                        .args(["reap", "--project", dir, "--submit-grace", "0s"])
                        .args(["--concurrency", "1", "--retries", "0"])
                        .env("CCL_DELEGATE_FAILPOINT", failpoint(step, n, errno)),
                );
                let context = format!("reap with failpoint {}: {out:?}", failpoint(step, n, errno));
                let faulted = out.stderr.contains(text);
                if faulted {
                    assert_eq!(out.code, 1, "{context}");
                    // The message names the file and the task it is about.
                    let line = out.stderr.lines().find(|l| l.contains(text)).unwrap();
                    assert!(line.starts_with("ccl-delegate: error: "), "{context}");
                    assert!(line.contains(".agent-queue"), "{context}");
                    *hit.entry((step, errno)).or_insert(0) += 1;
                } else {
                    assert_eq!(out.code, 0, "{context}");
                }
                check_invariant(&p, &originals, false)
                    .unwrap_or_else(|e| panic!("{context}\nafter the faulted run:\n{e}"));

                let out = p.reap_until_settled(&mock, &["--retries", "0"], 3);
                assert_eq!(out.code, 0, "{context}\nclean run: {out:?}");
                let found = check_invariant(&p, &originals, true)
                    .unwrap_or_else(|e| panic!("{context}\nafter the clean run:\n{e}"));
                assert_eq!(found.inbox, 0, "{context}\n{found:?}");
                assert_eq!((found.done, found.failed), (4, 3), "{context}\n{found:?}");
                if !faulted {
                    break;
                }
            }
        }
    }
    eprintln!("reap faults hit: {hit:?}");
    for step in STEPS {
        for (errno, _) in ERRNOS {
            assert!(
                hit.get(&(step, errno)).copied().unwrap_or(0) >= 3,
                "step {step}{errno} was hit fewer than 3 times: {hit:?}"
            );
        }
    }
}

/// A write of the books that fails (full disk, I/O error) is reported in
/// one line, never stops the tasks (their entries are kept beside the
/// queue), and the first run that can books them: every job counts once.
// policy.md "When the books cannot be read or written": `reap` never stops
// moving tasks for it; the entries it could not write are written by the
// first run that can, once; it exits 1 with one line.
#[test]
fn reap_fault_at_the_books_write_is_reported_and_counted_once_later() {
    let mock = Mock::start(&["--statuses", "completed"]);
    for (errno, text) in ERRNOS {
        let mut hits = 0;
        for n in 1.. {
            let tag = format!("ledger{n}{}", errno.trim_start_matches(':'));
            let p = Project::new();
            let originals = reap_setup(&p, &mock, &tag);
            let dir = p.dir.to_str().unwrap();
            let out = Out::of(
                p.cmd(Some(&mock))
                    .args(["reap", "--project", dir, "--submit-grace", "0s"])
                    .args(["--concurrency", "1", "--retries", "0"])
                    .env("CCL_DELEGATE_FAILPOINT", failpoint("ledger", n, errno)),
            );
            let context = format!("reap with failpoint ledger:{n}{errno}: {out:?}");
            let faulted = out.stderr.contains(text);
            let owed = p.queue().join(".ccl-delegate.owed");
            if faulted {
                hits += 1;
                assert_eq!(out.code, 1, "{context}");
                let said: Vec<&str> = out.stderr.lines().filter(|l| l.contains(text)).collect();
                assert_eq!(said.len(), 1, "{context}");
                assert!(said[0].starts_with("ccl-delegate: error: "), "{context}");
                assert!(said[0].contains("books"), "{context}");
            } else {
                assert_eq!(out.code, 0, "{context}");
            }
            // The entries the failed write left owed were booked once the
            // books could be written (here at the same run's end).
            assert!(p.names(&owed).is_empty(), "{context}: {:?}", p.names(&owed));
            let (entries, records) = ledger_and_record_ids(&p);
            assert_eq!(entries, records, "{context}");
            // The tasks moved all the same: only the re-sent submission and
            // the job whose poll failed stay in flight.
            let found = check_invariant(&p, &originals, false)
                .unwrap_or_else(|e| panic!("{context}\nafter the run:\n{e}"));
            assert_eq!(
                (found.inbox, found.done, found.failed),
                (2, 2, 3),
                "{context}\n{found:?}"
            );
            let out = p.reap_until_settled(&mock, &["--retries", "0"], 3);
            assert_eq!(out.code, 0, "{context}\nclean run: {out:?}");
            let found = check_invariant(&p, &originals, true)
                .unwrap_or_else(|e| panic!("{context}\nafter the clean run:\n{e}"));
            assert_eq!(found.inbox, 0, "{context}\n{found:?}");
            let (entries, records) = ledger_and_record_ids(&p);
            assert_eq!(entries, records, "{context}");
            assert!(
                p.names(&owed).is_empty(),
                "{context}: owed after the clean run"
            );
            if !faulted {
                break;
            }
        }
        assert!(hits >= 2, "ledger{errno} was hit {hits} times");
    }
}

/// What a submit left: `Some(state)` of its marker, if any.
fn marker_state(p: &Project, task: &str) -> Option<String> {
    let bytes = std::fs::read(p.inbox().join(format!("{task}.delegated"))).ok()?;
    let m: serde_json::Value = serde_json::from_slice(&bytes).expect("a marker is whole JSON");
    Some(m["state"].as_str().unwrap_or_default().to_string())
}

fn jobs_of(mock: &Mock, task: &str) -> usize {
    mock.jobs()
        .iter()
        .filter(|j| j["metadata"]["task"].as_str() == Some(task))
        .count()
}

/// `submit` with its faults, for a POST that succeeds and for one that is
/// refused (the marker is then removed). Exit 0 means exactly that a marker
/// exists; a non-zero exit leaves no marker and no job, so the dispatcher
/// may run the task itself. The next run finishes the delegation.
#[test]
fn submit_fault_at_each_durable_step_exits_0_only_with_a_marker() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let mut hit = BTreeMap::new();
    for refused in [false, true] {
        for step in STEPS {
            for (errno, text) in ERRNOS {
                for n in 1.. {
                    let fp = failpoint(step, n, errno);
                    let p = Project::new();
                    let id = format!(
                        "t-{}-{}",
                        if refused { "refused" } else { "ok" },
                        fp.replace(':', "-")
                    );
                    let task = format!("{id}.md");
                    let bytes = b"---\nallow_delegation: true\n---\nDo it.\n".to_vec();
                    let path = p.task(&task, &bytes);
                    let originals = BTreeMap::from([(id.clone(), bytes)]);
                    if refused {
                        mock.faults(serde_json::json!({"next": ["400"], "method": "POST"}));
                    }
                    let out = Out::of(
                        p.cmd(Some(&mock))
                            .args(["submit", path.to_str().unwrap(), "--retries", "0"])
                            .env("CCL_DELEGATE_FAILPOINT", &fp),
                    );
                    let context =
                        format!("submit (POST refused: {refused}) with failpoint {fp}: {out:?}");
                    let faulted = out.stderr.contains(text);
                    let state = marker_state(&p, &task);
                    let jobs = jobs_of(&mock, &task);
                    if out.code == 0 {
                        assert!(state.is_some(), "{context}: exit 0 without a marker");
                    } else {
                        assert!(
                            state.is_none(),
                            "{context}: exit {} with a marker {state:?}: the dispatcher would run the task and so would the service",
                            out.code
                        );
                        assert_eq!(jobs, 0, "{context}: exit {} but a job exists", out.code);
                    }
                    if faulted {
                        *hit.entry((refused, step, errno)).or_insert(0) += 1;
                        assert!(
                            out.stderr.contains(&task),
                            "{context}: the message names the task"
                        );
                    } else if !refused {
                        assert_eq!(out.code, 0, "{context}");
                        assert_eq!(state.as_deref(), Some("submitted"), "{context}");
                    } else {
                        assert_eq!(out.code, 65, "{context}");
                    }
                    assert!(jobs <= 1, "{context}: {jobs} jobs");
                    check_invariant(&p, &originals, true)
                        .unwrap_or_else(|e| panic!("{context}\n{e}"));

                    // A refusal the run never reached is used up here.
                    while mock.stats()["faults_pending"].as_u64() != Some(0) {
                        mock.admin("POST", "/api/v1/jobs", "{}");
                    }
                    // The next run: the dispatcher submits again when no
                    // marker is left, the reap finishes the rest.
                    if state.is_none() {
                        let again = p.run(Some(&mock), &["submit", path.to_str().unwrap()]);
                        assert_eq!(again.code, 0, "{context}\nsubmit again: {again:?}");
                    }
                    let settle = p.reap_until_settled(&mock, &[], 3);
                    assert_eq!(settle.code, 0, "{context}\nclean reap: {settle:?}");
                    let found = check_invariant(&p, &originals, true)
                        .unwrap_or_else(|e| panic!("{context}\nafter the clean reap:\n{e}"));
                    assert_eq!(found.done, 1, "{context}\n{found:?}");
                    assert_eq!(jobs_of(&mock, &task), 1, "{context}: one job in the end");
                    if !faulted {
                        break;
                    }
                }
            }
        }
    }
    eprintln!("submit faults hit: {hit:?}");
    for step in ["write", "fsync", "rename", "dirsync"] {
        assert!(
            hit.contains_key(&(false, step, "")),
            "{step} never hit: {hit:?}"
        );
    }
    assert!(
        hit.contains_key(&(true, "unlink", "")),
        "unlink never hit: {hit:?}"
    );
}

/// `requeue` with its faults: the failed record and the restored task are
/// never both lost, and a requeue run again after a fault finishes the job
/// (never refusing because its own earlier run restored the task).
#[test]
fn requeue_fault_at_each_durable_step_is_reported_and_a_second_requeue_finishes() {
    let mock = Mock::start(&["--statuses", "failed"]);
    let mut hit = BTreeMap::new();
    for step in STEPS {
        for (errno, text) in ERRNOS {
            for n in 1.. {
                let fp = failpoint(step, n, errno);
                let p = Project::new();
                let id = format!("rq-{}", fp.replace(':', "-"));
                let task = format!("{id}.md");
                let bytes = b"---\nallow_delegation: true\n---\nRequeue me.\n".to_vec();
                p.task(&task, &bytes);
                let key = format!("ccl-requeue-{}-0123456789", fp.replace(':', "-"));
                let job = mock.post_job(&key, &task);
                p.write_marker(
                    &task,
                    &marker_json(false, Some(&job), &key, &rfc3339_ago(60)),
                );
                p.reap(&mock, &[]).expect(0);
                let record = p.failed().join(&task);
                assert!(record.exists());
                let originals = BTreeMap::from([(id.clone(), bytes)]);

                let out = Out::of(
                    p.cmd(None)
                        .args(["requeue", record.to_str().unwrap()])
                        .env("CCL_DELEGATE_FAILPOINT", &fp),
                );
                let context = format!("requeue with failpoint {fp}: {out:?}");
                let faulted = out.stderr.contains(text);
                if faulted {
                    *hit.entry((step, errno)).or_insert(0) += 1;
                    assert_ne!(out.code, 0, "{context}");
                    assert!(out.stderr.contains(&task), "{context}: names the file");
                } else {
                    assert_eq!(out.code, 0, "{context}");
                }
                check_invariant(&p, &originals, false)
                    .unwrap_or_else(|e| panic!("{context}\nafter the faulted run:\n{e}"));
                if faulted && record.exists() {
                    let again = p.run(None, &["requeue", record.to_str().unwrap()]);
                    assert_eq!(again.code, 0, "{context}\nrequeue again: {again:?}");
                }
                let found = check_invariant(&p, &originals, true)
                    .unwrap_or_else(|e| panic!("{context}\nafter the second run:\n{e}"));
                assert_eq!((found.inbox, found.failed), (1, 0), "{context}\n{found:?}");
                assert!(!p.inbox().join(format!("{task}.delegated")).exists());
                if !faulted {
                    break;
                }
            }
        }
    }
    eprintln!("requeue faults hit: {hit:?}");
    for step in STEPS {
        assert!(hit.contains_key(&(step, "")), "{step} never hit: {hit:?}");
    }
}

/// A run stopped after writing done/ (or failed/) but before removing the
/// task and marker leaves the task in two places; the next run finishes the
/// removal from the record alone, even when the service is down, so that
/// "once any run finishes" the task is in exactly one place.
#[test]
fn the_next_run_finishes_an_interrupted_removal_without_the_service() {
    for (step, status) in [
        ("unlink:1", "completed"),
        ("unlink:2", "completed"),
        ("dirsync:2", "failed"),
    ] {
        let mock = Mock::start(&["--statuses", status]);
        let p = Project::new();
        let bytes = b"---\nallow_delegation: true\n---\nTwice?\n".to_vec();
        p.task("a.md", &bytes);
        let key = "ccl-interrupted-0123456789";
        let job = mock.post_job(key, "a.md");
        p.write_marker(
            "a.md",
            &marker_json(false, Some(&job), key, &rfc3339_ago(60)),
        );
        let originals = BTreeMap::from([("a".to_string(), bytes)]);
        let dir = p.dir.to_str().unwrap();
        let out = Out::of(
            p.cmd(Some(&mock))
                .args(["reap", "--project", dir])
                .env("CCL_DELEGATE_FAILPOINT", step),
        );
        assert_eq!(out.code, 1, "{step}: {out:?}");
        check_invariant(&p, &originals, false).unwrap_or_else(|e| panic!("{step}: {e}"));
        let url = mock.url.clone();
        drop(mock);

        let out = Out::of(
            p.cmd(None)
                .args(["reap", "--project", dir, "--retries", "0"])
                .env("SECUTOOLS_URL", &url)
                .env("SECUTOOLS_API_KEY", KEY),
        );
        assert_eq!(out.code, 0, "{step}: {out:?}");
        let found = check_invariant(&p, &originals, true)
            .unwrap_or_else(|e| panic!("{step}: after a run with the service down:\n{e}"));
        assert_eq!(found.done + found.failed, 1, "{step}: {found:?}");
        assert!(out.stdout.contains(&job), "{step}: says which job: {out:?}");
    }
}
