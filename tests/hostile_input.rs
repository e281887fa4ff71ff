//! Hostile bytes on disk, through the real binary: task files of every
//! malformed-frontmatter shape, keys that look like routing keys, markers
//! that point outside the queue or are too large, symlinks in every place,
//! files that are not files, YAML built to be slow, names with control
//! characters or not UTF-8, and the bits a record keeps.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

// ---------------------------------------------------------------------------
// Task files
// ---------------------------------------------------------------------------

/// Task files of every malformed-frontmatter shape: BOMs, openers and
/// closers that almost are, line ends (LF, CRLF, lone CR, mixed), YAML that
/// is a scalar, a list, invalid, duplicated, aliased, deep, tagged, bytes
/// that are not UTF-8, NULs, huge lines; plus seeded mutations of them.
fn corpus() -> Vec<Vec<u8>> {
    let boms: [&[u8]; 3] = [b"", b"\xEF\xBB\xBF", b"\xEF\xBB\xBF\xEF\xBB\xBF"];
    let openers: [&[u8]; 9] = [
        b"---", b"--- \t", b"----", b"--- x", b"", b" ---", b"+++", b"...", b"---\r",
    ];
    let ends: [&[u8]; 4] = [b"\n", b"\r\n", b"\r", b"\n\r"];
    let blocks: [&[u8]; 24] = [
        b"",
        b"allow_delegation: true",
        b"allow_delegation: true\npreferred_ai: gemini",
        b"a: 1\na: 2",
        b"allow_delegation: true\nallow_delegation: false",
        b"- allow_delegation: true",
        b"just a scalar",
        b"[",
        b"{allow_delegation: [}",
        b"a: &x [*x, *x]",
        b"a: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d]",
        b"allow_delegation: !!binary aGVsbG8=",
        b"? [complex, key]\n: value",
        b"\tallow_delegation: true",
        b"preferred_ai: |\n  ---\n  gpu",
        b"%YAML 1.2\n---\nallow_delegation: true",
        b"# only a comment",
        b"~",
        b"allow_delegation: yes\npreferred_ai: ' GPU '",
        b"allow_delegation: true\x00",
        b"allow_delegation: \xff\xfe",
        b"preferred_ai: \xED\xA0\x80",
        b"allow_delegation: true\npriority: urgent\ncomplexity_hint: [1, 2]",
        b"<<: {allow_delegation: true}",
    ];
    let closers: [&[u8]; 6] = [b"---", b"...", b"--- \t", b"", b"----", b" ..."];
    let bodies: [&[u8]; 4] = [
        b"",
        b"Body.",
        b"---\nallow_delegation: true\n---\nagain\n",
        b"\xC0\xAF overlong\x00",
    ];
    let mut out = Vec::new();
    let mut n = 0usize;
    // A pseudo-random walk through the product, every value of every axis
    // used many times.
    for (i, block) in blocks.iter().enumerate() {
        for j in 0..12 {
            n += 1;
            let bom = boms[(i + j) % boms.len()];
            let opener = openers[(i * 7 + j) % openers.len()];
            let end = ends[(i + j * 3) % ends.len()];
            let closer = closers[(i * 5 + j * 2) % closers.len()];
            let body = bodies[(i + j * 5 + n) % bodies.len()];
            let mut f = Vec::new();
            f.extend_from_slice(bom);
            f.extend_from_slice(opener);
            f.extend_from_slice(end);
            for line in block.split(|&b| b == b'\n') {
                f.extend_from_slice(line);
                f.extend_from_slice(end);
            }
            if !closer.is_empty() {
                f.extend_from_slice(closer);
                if j % 4 != 3 {
                    f.extend_from_slice(end);
                }
            }
            f.extend_from_slice(body);
            out.push(f);
        }
    }
    // Well-formed delegating shapes, so that submit builds their prompts.
    for bom in &boms[..2] {
        for end in [&b"\n"[..], b"\r\n"] {
            for closer in [&b"---"[..], b"...", b"--- \t"] {
                for body in bodies {
                    let mut f = bom.to_vec();
                    for line in [
                        &b"---"[..],
                        b"allow_delegation: true",
                        b"complexity_hint: \"x: y\"",
                        closer,
                    ] {
                        f.extend_from_slice(line);
                        f.extend_from_slice(end);
                    }
                    f.extend_from_slice(body);
                    out.push(f);
                }
            }
        }
    }
    // Edge files.
    let mut deep = b"---\n".to_vec();
    for d in 0..300 {
        deep.extend_from_slice(format!("{}k{d}:\n", " ".repeat(d)).as_bytes());
    }
    deep.extend_from_slice(b"---\n");
    let huge_line = [
        b"---\nallow_delegation: true\ncomplexity_hint: ".to_vec(),
        vec![b'x'; 300_000],
        b"\n---\nbody".to_vec(),
    ]
    .concat();
    let brackets = [b"---\na: ".to_vec(), vec![b'['; 5000], b"\n---\n".to_vec()].concat();
    for edge in [
        Vec::new(),
        b"---".to_vec(),
        b"---\n".to_vec(),
        b"---\n---".to_vec(),
        b"---\r\n---\r\n".to_vec(),
        b"\n---\nallow_delegation: true\n---\n".to_vec(),
        b"\xEF\xBB".to_vec(),
        b"\xEF\xBB\xBF".to_vec(),
        vec![0u8; 100],
        vec![0xffu8; 100],
        b"---\nallow_delegation: true\n---\n\xff".to_vec(),
        deep,
        huge_line,
        brackets,
    ] {
        out.push(edge);
    }
    // Seeded mutations: flip, insert and delete bytes of corpus files.
    let mut rng = Rng(0x5EED_CAFE);
    let base = out.len();
    for _ in 0..120 {
        let mut f = out[rng.below(base as u64) as usize].clone();
        for _ in 0..1 + rng.below(4) {
            let at = if f.is_empty() {
                0
            } else {
                rng.below(f.len() as u64 + 1) as usize
            };
            const BYTES: &[u8] = b"-.\n\r \t:#'\"[]{}&*!|>\xff\xef\xbb\xbf\x00a";
            let b = BYTES[rng.below(BYTES.len() as u64) as usize];
            match rng.below(3) {
                0 if at < f.len() => f[at] = b,
                1 if at < f.len() => {
                    f.remove(at);
                }
                _ => f.insert(at, b),
            }
        }
        out.push(f);
    }
    out
}

const PROVIDERS: [&str; 5] = ["claude-code", "gpu", "gemini", "claude", "auto"];

/// `decide` on every corpus file: never panics, prints a provider, and
/// explains an unusable frontmatter by a warning naming the file. The
/// splitter's contract (head + body = input) holds for each, and `decide`
/// agrees with the library.
#[test]
fn decide_on_the_hostile_corpus_never_panics_and_names_the_file() {
    let files = corpus();
    eprintln!("hostile corpus: {} files", files.len());
    assert!(files.len() >= 400);
    let p = Project::new();
    let dir = p.tmp.path().join("corpus");
    std::fs::create_dir(&dir).unwrap();
    let chunks: Vec<Vec<(usize, &Vec<u8>)>> = {
        let all: Vec<_> = files.iter().enumerate().collect();
        all.chunks(files.len().div_ceil(4))
            .map(<[_]>::to_vec)
            .collect()
    };
    std::thread::scope(|s| {
        for chunk in &chunks {
            let (p, dir) = (&p, &dir);
            s.spawn(move || {
                for (i, bytes) in chunk {
                    let split = ccl_delegate::frontmatter::split(bytes);
                    assert_eq!(
                        [split.head, split.body].concat(),
                        **bytes,
                        "file {i}: split loses bytes"
                    );
                    let path = dir.join(format!("c{i}.md"));
                    std::fs::write(&path, bytes).unwrap();
                    let out = p.run(None, &["decide", "--json", path.to_str().unwrap()]);
                    assert_eq!(
                        out.code,
                        0,
                        "file {i} {:?}: {out:?}",
                        String::from_utf8_lossy(bytes)
                    );
                    assert!(!out.stderr.contains("panicked"), "file {i}: {out:?}");
                    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
                    let provider = v["provider"].as_str().unwrap();
                    assert!(PROVIDERS.contains(&provider), "file {i}: {v}");
                    match split.meta {
                        Err(_) => {
                            assert_eq!(
                                provider, "claude-code",
                                "file {i}: invalid frontmatter delegates"
                            );
                            let line = out.stderr.lines().next().unwrap_or_default();
                            assert!(
                                line.contains(path.to_str().unwrap()),
                                "file {i}: warning {out:?}"
                            );
                            assert!(
                                line.contains("routing the task locally"),
                                "file {i}: {out:?}"
                            );
                        }
                        // Valid frontmatter: silent, but for a key that
                        // looks like a routing key, or a second byte order
                        // mark hiding a frontmatter.
                        Ok(_) => assert!(
                            out.stderr
                                .lines()
                                .all(|l| l.contains("looks like the routing key")
                                    || l.contains("two byte order marks")),
                            "file {i}: {out:?}"
                        ),
                    }
                    // stdin gives the same answer.
                    let again = p.run_with_stdin(None, &["decide", "--json", "-"], bytes);
                    assert_eq!(again.stdout, out.stdout, "file {i}");
                }
            });
        }
    });
}

/// Every corpus file as an inbox task: `submit` never panics (0 or 10),
/// and after a reap each comes back byte for byte as the last `task_bytes`
/// bytes of its done/ file.
#[test]
fn the_hostile_corpus_goes_through_submit_and_reap_byte_for_byte() {
    let files = corpus();
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let mut originals = BTreeMap::new();
    for (i, bytes) in files.iter().enumerate() {
        p.task(&format!("c{i}.md"), bytes);
        originals.insert(format!("c{i}"), bytes.clone());
    }
    let ids: Vec<&String> = originals.keys().collect();
    let locals: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(ids.len().div_ceil(4))
            .map(|chunk| {
                let (p, mock) = (&p, &mock);
                s.spawn(move || {
                    let mut locals = Vec::new();
                    for id in chunk {
                        let path = p.inbox().join(format!("{id}.md"));
                        let out = p.run(Some(mock), &["submit", path.to_str().unwrap()]);
                        assert!(out.code == 0 || out.code == 10, "{id}: {out:?}");
                        assert!(!out.stderr.contains("panicked"), "{id}: {out:?}");
                        if out.code == 10 {
                            assert!(out.stdout.starts_with("local "), "{id}: {out:?}");
                            locals.push(id.to_string());
                        } else {
                            assert!(out.stdout.starts_with("delegated "), "{id}: {out:?}");
                        }
                    }
                    locals
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    // The tasks routed locally are delegated by hand (a marker as submit
    // would write it), so that every shape goes through the reap too.
    for (n, id) in locals.iter().enumerate() {
        let key = format!("ccl-corpus-local-{n}-0123456789");
        let job = mock.post_job(&key, &format!("{id}.md"));
        p.write_marker(
            &format!("{id}.md"),
            &marker_json(false, Some(&job), &key, &rfc3339_ago(10)),
        );
    }
    eprintln!(
        "corpus: {} delegated by submit, {} routed locally",
        files.len() - locals.len(),
        locals.len()
    );
    let out = p.reap_until_settled(&mock, &[], 3);
    out.expect(0);
    let found = check_invariant(&p, &originals, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.done, files.len(), "{found:?}");
    // The prompts submit built follow the contract.
    let mut built = 0;
    for j in mock.jobs() {
        if j["idempotency_key"]
            .as_str()
            .unwrap()
            .starts_with("ccl-corpus-local-")
        {
            continue;
        }
        built += 1;
        let prompt = j["prompt"].as_str().unwrap();
        let task = j["metadata"]["task"].as_str().unwrap();
        assert!(
            prompt.starts_with(&format!("Task: {task}\n\n")),
            "{prompt:?}"
        );
        assert!(
            prompt.ends_with("\n\nProvide a complete, self-contained answer."),
            "{prompt:?}"
        );
    }
    assert!(
        built >= 36,
        "only {built} corpus files were delegated by submit"
    );
}

#[test]
fn a_misspelt_routing_key_is_named_by_decide_and_submit() {
    let p = Project::new();
    let typo = p.task("typo.md", b"---\nallow_delegaton: true\n---\nDo it.\n");
    let case = p.task("case.md", b"---\nAllow_Delegation: true\n---\nDo it.\n");
    let other = p.task("other.md", b"---\ntitle: x\ntags: [a]\n---\nDo it.\n");

    let out = p.run(None, &["decide", s(&typo)]);
    out.expect(0);
    assert_eq!(out.stdout, "claude-code\n");
    assert!(
        out.stderr.contains(s(&typo))
            && out.stderr.contains("`allow_delegaton`")
            && out.stderr.contains("`allow_delegation`"),
        "{}",
        out.stderr
    );

    let out = p.run(None, &["decide", s(&case)]);
    assert!(
        out.stderr.contains("`Allow_Delegation`") && out.stderr.contains("`allow_delegation`"),
        "{}",
        out.stderr
    );

    // Submit says the same, and its stdout stays `local <rule>`.
    let mock = Mock::start(&[]);
    let out = p.run(Some(&mock), &["submit", s(&typo)]);
    out.expect(10);
    assert_eq!(out.stdout, "local 7\n");
    assert!(
        out.stderr.contains(s(&typo)) && out.stderr.contains("`allow_delegation`"),
        "{}",
        out.stderr
    );

    // Keys that resemble no routing key stay silent.
    let out = p.run(None, &["decide", s(&other)]);
    out.expect(0);
    assert_eq!(out.stderr, "");
}

#[test]
fn a_setuid_task_yields_a_done_file_without_the_bit() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let task = p.task("a.md", b"---\nallow_delegation: true\n---\nA.\n");
    std::fs::set_permissions(&task, std::fs::Permissions::from_mode(0o4750)).unwrap();
    assert_eq!(
        mode(&task) & 0o4000,
        0o4000,
        "the test needs the setuid bit"
    );
    p.submit_ok(&mock, "a.md");
    p.reap(&mock, &[]).expect(0);
    assert_eq!(p.names(&p.done()), ["a.md"]);
    assert_eq!(mode(&p.done().join("a.md")), 0o750);
}

// ---------------------------------------------------------------------------
// Markers
// ---------------------------------------------------------------------------

const SECRET: &str = "VICTIM-CONTENT-never-read";

fn victim(p: &Project) -> std::path::PathBuf {
    let v = p.tmp.path().join("victim.md");
    std::fs::write(&v, format!("---\nallow_delegation: true\n---\n{SECRET}\n")).unwrap();
    v
}

/// Nothing under the temp dir outside `proj/.agent-queue` changed, the
/// victim is whole, and its text reached no file and no request.
#[track_caller]
fn victim_untouched(p: &Project, mock: &Mock, v: &Path) {
    assert_eq!(
        std::fs::read_to_string(v).unwrap(),
        format!("---\nallow_delegation: true\n---\n{SECRET}\n")
    );
    for (path, bytes) in tree(p.tmp.path()) {
        if path.starts_with(p.queue()) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(SECRET),
                "{} holds the victim's text",
                path.display()
            );
        }
    }
    let stats = mock.stats().to_string();
    assert!(!stats.contains(SECRET), "the victim was sent");
}

#[test]
fn marker_paths_outside_the_queue_are_never_read_or_deleted() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let v = victim(&p);
    let abs = v.to_str().unwrap();
    let old = rfc3339_ago(3600);
    let mut originals = BTreeMap::new();
    let cases: Vec<(&str, bool, serde_json::Value)> = vec![
        (
            "rel",
            true,
            json!({"task_file": "../../victim.md", "project": "../.."}),
        ),
        ("abs", true, json!({"task_file": abs, "project": "/"})),
        (
            "gone",
            false,
            json!({"task_file": abs, "project": p.tmp.path()}),
        ),
        (
            "pending",
            true,
            json!({"task_file": "../../victim.md", "state": "pending", "job_id": null}),
        ),
        (
            "pendgone",
            false,
            json!({"task_file": abs, "state": "pending", "job_id": null}),
        ),
        ("dots", true, json!({"task_file": "..", "project": "."})),
    ];
    for (i, (name, with_task, fields)) in cases.iter().enumerate() {
        let task = format!("{name}.md");
        if *with_task {
            let bytes =
                format!("---\nallow_delegation: true\n---\nThe real task {name}.\n").into_bytes();
            p.task(&task, &bytes);
            originals.insert(name.to_string(), bytes);
        }
        let key = format!("ccl-outside-{i}-0123456789");
        // `pending` was never received: its re-send shows what is sent.
        let job = if *name == "pending" {
            String::new()
        } else {
            mock.post_job(&key, &task)
        };
        let mut m: serde_json::Value =
            serde_json::from_str(&marker_json(false, Some(&job), &key, &old)).unwrap();
        for (k, val) in fields.as_object().unwrap() {
            m[k] = val.clone();
        }
        p.write_marker(&task, &m.to_string());
    }
    // The Go format holds absolute paths.
    let go = json!({"project": p.tmp.path(), "task_file": abs, "job_id": mock.post_job("ccl-outside-go-0123456789", "go.md"),
        "provider": "gpu", "started_at": "2026-01-01T00:00:00Z"});
    p.task("go.md", b"The Go task.\n");
    originals.insert("go".into(), b"The Go task.\n".to_vec());
    p.write_marker("go.md", &go.to_string());
    // One of them failed: the failed path must not follow its marker either.
    let abs_job = p.marker("abs.md").unwrap()["job_id"].clone();
    mock.set(json!({"status_of": {abs_job.as_str().unwrap(): "failed"}}));
    let outside = |p: &Project| {
        let mut t = tree(p.tmp.path());
        // The project and the home (the run lock lives there) are the tool's.
        t.retain(|path, _| !path.starts_with(&p.dir) && !path.starts_with(&p.home));
        t
    };
    let before = outside(&p);

    let status = p.run(
        Some(&mock),
        &["status", "--project", p.dir.to_str().unwrap()],
    );
    status.expect(0);
    let get = p.run(
        Some(&mock),
        &["get", p.inbox().join("abs.md").to_str().unwrap()],
    );
    get.expect(0);
    let out = p.reap_until_settled(&mock, &[], 3);
    out.expect(0);
    victim_untouched(&p, &mock, &v);
    assert_eq!(outside(&p), before, "nothing outside the project changed");
    assert!(p.failed().join("abs.md").exists(), "{out:?}");
    // The pending task was re-sent from its own file, not the one named.
    let resent = mock
        .jobs()
        .into_iter()
        .find(|j| j["metadata"]["task"] == "pending.md")
        .expect("pending.md re-sent");
    let prompt = resent["prompt"].as_str().unwrap();
    assert!(prompt.contains("The real task pending."), "{prompt}");
    // The tasks without an inbox file were reaped as missing, not as the victim.
    for name in ["gone", "pendgone"] {
        let rec = [p.done(), p.failed()]
            .iter()
            .map(|d| d.join(format!("{name}.md")))
            .find(|f| f.exists())
            .unwrap_or_else(|| panic!("{name} not reaped: {out:?}"));
        let r = RecordFile::parse(&std::fs::read(&rec).unwrap()).unwrap();
        assert!(r.task_missing && r.task_bytes == 0, "{name}: {:?}", r.map);
        std::fs::remove_file(rec).unwrap();
    }
    check_invariant(&p, &originals, true).unwrap_or_else(|e| panic!("{e}"));
}

/// A marker too large to be one can never be read: it is a corrupt marker
/// (failed/, the task kept whole), not an error on every cron run.
#[test]
fn an_oversized_marker_is_a_corrupt_marker() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    p.task("fat.md", GEMINI);
    p.write_marker("fat.md", &" ".repeat(100 * 1024));
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert!(out.stdout.contains("corrupt marker"), "{out:?}");
    assert!(p.names(&p.inbox()).is_empty());
    let rec = Record::read(&p.failed().join("fat.md"));
    assert_eq!(rec.str("failed_reason"), Some("corrupt marker"));
    assert_eq!(rec.original(), GEMINI);
}

// ---------------------------------------------------------------------------
// Symlinks and files that are not files
// ---------------------------------------------------------------------------

#[test]
fn a_symlinked_task_is_never_read_sent_or_moved() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let v = victim(&p);
    std::os::unix::fs::symlink(&v, p.inbox().join("link.md")).unwrap();
    let before = tree(p.tmp.path());
    let out = p.run(
        Some(&mock),
        &["submit", p.inbox().join("link.md").to_str().unwrap()],
    );
    out.expect(64);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains("link.md") && out.stderr.contains("symbolic link"),
        "{out:?}"
    );
    assert_eq!(tree(p.tmp.path()), before, "submit wrote nothing");
    assert_eq!(mock.requests(), 0, "submit sent nothing");

    // Delegated before it became a link (or marked by hand): the reap
    // leaves the link and the file it points to.
    let job = mock.post_job("ccl-link-0123456789abc", "link.md");
    p.write_marker(
        "link.md",
        &marker_json(
            false,
            Some(&job),
            "ccl-link-0123456789abc",
            &rfc3339_ago(60),
        ),
    );
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert!(
        out.stderr.contains("link.md") && out.stderr.contains("symbolic link"),
        "{out:?}"
    );
    assert!(
        std::fs::symlink_metadata(p.inbox().join("link.md"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The job's answer is still recorded, without the link's target.
    let r = Record::read(&p.done().join("link.md"));
    assert_eq!(r.str("job_id"), Some(job.as_str()));
    victim_untouched(&p, &mock, &v);
}

/// Moved to failed/ as a corrupt marker, its target never read.
#[test]
fn a_symlinked_marker_is_never_followed() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let bytes = fm("preferred_ai: gemini");
    p.task("a.md", &bytes);
    let target = p.tmp.path().join("elsewhere.json");
    let target_bytes = br#"{"job_id":"j-secret","started_at":"2026-01-01T00:00:00Z"}"#;
    std::fs::write(&target, target_bytes).unwrap();
    std::os::unix::fs::symlink(&target, p.marker_path("a.md")).unwrap();

    // status shows it (the dispatcher skips the task meanwhile).
    let out = p.run(None, &["status", "--json", "--project", s(&p.dir)]);
    out.expect(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["in_flight"][0]["task"], "a.md", "{v}");
    assert_eq!(v["in_flight"][0]["state"], "corrupt", "{v}");
    let why = v["in_flight"][0]["last_error"].as_str().unwrap();
    assert!(why.contains("symbolic link"), "{why}");
    // submit sees a marker there: the task stays skipped, nothing is sent.
    let out = p.run(Some(&mock), &["submit", s(&p.inbox().join("a.md"))]);
    out.expect(0);
    assert_eq!(out.stdout, "pending unknown\n");
    assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);

    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(
        out.stdout,
        format!(
            "failed {} (job none: corrupt marker)\n",
            p.failed().join("a.md").display()
        )
    );
    let r = Record::read(&p.failed().join("a.md"));
    assert_eq!(r.str("failed_reason"), Some("corrupt marker"));
    assert_eq!(r.original(), bytes);
    assert!(r.text().contains("symbolic link"), "{}", r.text());
    assert!(!r.text().contains("j-secret"), "the link is never followed");
    assert_eq!(
        p.names(&p.inbox()),
        Vec::<String>::new(),
        "the link is removed"
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        target_bytes,
        "its target is untouched"
    );
    assert_eq!(mock.requests(), 0);
}

#[test]
fn a_symlinked_inbox_or_queue_is_never_followed() {
    let mock = Mock::start(&["--statuses", "completed"]);
    for linked in ["inbox", ".agent-queue"] {
        let p = Project::new();
        // The real queue lives elsewhere; the project reaches it by a link.
        let elsewhere = p.tmp.path().join("elsewhere");
        let real_inbox = if linked == "inbox" {
            std::fs::create_dir_all(&elsewhere).unwrap();
            std::fs::remove_dir(p.inbox()).unwrap();
            std::os::unix::fs::symlink(&elsewhere, p.inbox()).unwrap();
            elsewhere.clone()
        } else {
            std::fs::create_dir_all(elsewhere.join("inbox")).unwrap();
            std::fs::remove_dir_all(p.queue()).unwrap();
            std::os::unix::fs::symlink(&elsewhere, p.queue()).unwrap();
            elsewhere.join("inbox")
        };
        std::fs::write(
            real_inbox.join("a.md"),
            b"---\nallow_delegation: true\n---\nA.\n",
        )
        .unwrap();
        let job = mock.post_job(
            &format!("ccl-linked-{}-0123456789", linked.trim_start_matches('.')),
            "a.md",
        );
        std::fs::write(
            real_inbox.join("a.md.delegated"),
            marker_json(
                false,
                Some(&job),
                "ccl-linked-x-0123456789",
                &rfc3339_ago(60),
            ),
        )
        .unwrap();
        let before = tree(&elsewhere);
        let out = p.run(
            Some(&mock),
            &["submit", p.inbox().join("a.md").to_str().unwrap()],
        );
        assert_eq!(out.code, 64, "{linked}: {out:?}");
        let out = p.reap(&mock, &[]);
        assert_eq!(out.code, 1, "{linked}: {out:?}");
        assert!(out.stderr.contains("symbolic link"), "{linked}: {out:?}");
        assert_eq!(
            tree(&elsewhere),
            before,
            "{linked}: the linked queue changed"
        );
        assert_eq!(mock.job(&job)["polls"], 0, "{linked}");
    }
}

/// done/ or failed/ as a symlink: nothing is written or read through it,
/// not even a record that would let the reap think the task is finished.
#[test]
fn a_symlinked_done_or_failed_dir_is_never_followed() {
    for (dir, status) in [("done", "completed"), ("failed", "failed")] {
        let mock = Mock::start(&["--statuses", status]);
        let p = Project::new();
        let bytes = b"---\nallow_delegation: true\n---\nA.\n".to_vec();
        p.task("a.md", &bytes);
        let key = "ccl-linked-done-0123456789";
        let job = mock.post_job(key, "a.md");
        p.write_marker(
            "a.md",
            &marker_json(false, Some(&job), key, &rfc3339_ago(60)),
        );
        // Elsewhere holds a record of this very job and task, as a killed
        // run would have left in done/: reading it would end the task.
        let elsewhere = p.tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let record = [
            format!("---\nstatus: {}\nprovider: gemini\nmodel: m\ncost_cad: 0.1\njob_id: {job}\n", if dir == "done" { "completed" } else { "failed" }),
            format!("delegated_at: x\ncompleted_at: y\ntask_bytes: {}\n---\n# Result\nR\n---\n## Original task (a.md)\n", bytes.len()),
        ]
        .concat();
        let mut rec_bytes = record.into_bytes();
        rec_bytes.extend_from_slice(&bytes);
        std::fs::write(elsewhere.join("a.md"), &rec_bytes).unwrap();
        std::os::unix::fs::symlink(&elsewhere, p.queue().join(dir)).unwrap();
        let before = tree(&elsewhere);

        let out = p.reap(&mock, &[]);
        assert_eq!(out.code, 1, "{dir}: {out:?}");
        assert!(
            out.stderr.contains("symbolic link") && out.stderr.contains("a.md"),
            "{dir}: {out:?}"
        );
        assert_eq!(tree(&elsewhere), before, "{dir}: written through the link");
        assert_eq!(
            std::fs::read(p.inbox().join("a.md")).unwrap(),
            bytes,
            "{dir}: task gone"
        );
        assert!(
            p.inbox().join("a.md.delegated").exists(),
            "{dir}: marker gone"
        );
        assert_eq!(
            p.names(&p.queue())
                .iter()
                .filter(|n| n.starts_with(TMP_PREFIX))
                .count(),
            0
        );
    }
}

#[test]
fn status_skips_a_fifo_in_done_and_failed() {
    let p = Project::new();
    for dir in [p.done(), p.failed()] {
        std::fs::create_dir_all(&dir).unwrap();
        mkfifo(&dir.join("x.md"));
    }
    let (out, _) = run_within(
        p.cmd(None).args(["status", "--project", s(&p.dir)]),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("No done or failed tasks yet."),
        "{out:?}"
    );
}

#[test]
fn a_crafted_done_file_does_not_slow_status() {
    let p = Project::new();
    std::fs::create_dir_all(p.done()).unwrap();
    let mut crafted = String::from("---\nstatus: completed\nprovider: gpu\nx: ");
    crafted.push_str(&"[".repeat(40_000));
    crafted.push_str("\n---\nbody\n");
    std::fs::write(p.done().join("a.md"), crafted).unwrap();
    let (out, took) = run_within(
        p.cmd(None).args(["status", "--project", s(&p.dir)]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(took < Duration::from_millis(1500), "status took {took:?}");
}

// ---------------------------------------------------------------------------
// Names: control characters, not UTF-8
// ---------------------------------------------------------------------------

#[test]
fn task_names_with_control_characters_are_escaped_in_warnings_and_errors() {
    let p = Project::new();
    let name = "evil\u{1b}]0;pwned\u{7}\r.md";
    let task = p.task(name, b"---\npreferred_ai: gpu\n");
    let out = p.run(None, &["decide", s(&task)]);
    out.expect(0);
    assert_clean("decide stderr", &out.stderr);
    assert!(
        out.stderr.contains("evil\\x1b]0;pwned\\x07\\r.md"),
        "{:?}",
        out.stderr
    );
    // An error about the name goes through the same escaper.
    let missing = p.inbox().join("gone\u{1b}[2J.md");
    let out = p.run(None, &["decide", s(&missing)]);
    out.expect(66);
    assert_clean("decide error", &out.stderr);
    assert!(out.stderr.contains("gone\\x1b[2J.md"), "{:?}", out.stderr);
}

/// The error lines of `reap` and the stdout line of `submit` carry names
/// and marker text through the same escaper: a task nobody can read, named
/// with escapes, and a marker whose provider holds a line break.
#[test]
fn reap_errors_and_submit_lines_escape_names_and_marker_text() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    let name = "locked\u{1b}[2J\n.md";
    // A directory where the task should be: reap cannot read it and says
    // so (an error, printed even with -q).
    std::fs::create_dir(p.inbox().join(name)).unwrap();
    p.write_marker(
        name,
        &marker_json(true, None, "ccl-lock-0123456789abcdef", &rfc3339_ago(600)),
    );
    let out = p.reap(&mock, &["-q"]);
    assert!(
        out.stderr.contains("locked\\x1b[2J\\n.md"),
        "{:?}",
        out.stderr
    );
    assert_clean("reap stderr", &out.stderr);
    assert_clean("reap stdout", &out.stdout);

    let other = p.task("two.md", b"---\npreferred_ai: gpu\n---\nx\n");
    let marker = marker_json(
        false,
        Some("j-1"),
        "ccl-two-0123456789abcdef",
        &rfc3339_ago(1),
    )
    .replace("\"gemini\"", "\"gem\\nini\\u001b[2J\"");
    p.write_marker("two.md", &marker);
    let out = p.run(Some(&mock), &["submit", s(&other)]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 1, "{:?}", out.stdout);
    assert_clean("submit stdout", &out.stdout);
    assert!(
        out.stdout.starts_with("delegated gem\\nini\\x1b[2J j-1"),
        "{:?}",
        out.stdout
    );
}

// Names that are not UTF-8.

#[test]
fn reap_and_status_see_a_marker_whose_name_is_not_utf8() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let name = OsStr::from_bytes(b"caf\xe9.md");
    std::fs::write(p.inbox().join(name), GEMINI).unwrap();
    let key = "ccl-latin1-0123456789";
    let job = mock.post_job(key, "cafe.md");
    std::fs::write(
        p.inbox().join(OsStr::from_bytes(b"caf\xe9.md.delegated")),
        marker_json(false, Some(&job), key, &rfc3339_ago(60)),
    )
    .unwrap();

    let st = p.run(None, &["status", "--project", s(&p.dir)]);
    st.expect(0);
    assert!(st.stdout.contains("caf\\xe9.md"), "{st:?}");

    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert!(out.stdout.contains("caf\\xe9.md"), "{out:?}");
    assert!(p.names(&p.inbox()).is_empty(), "{:?}", p.names(&p.inbox()));
    let r = Record::read(&p.done().join(name));
    assert_eq!(r.str("job_id"), Some(job.as_str()));
    assert_eq!(r.original(), GEMINI);
}

// Hostile bytes in names and server strings.

#[test]
fn reap_prints_one_clean_line_per_finished_task_whatever_the_bytes() {
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let hostile = "e\x1b[31mvil\r\x07\x1b]0;title\x07\nz.md";
    let job = p.delegated(&mock, hostile, &rfc3339_ago(60));
    let other = p.delegated(&mock, "ok\x1b[2J.md", &rfc3339_ago(60));
    mock.set(json!({"status_of": {job.clone(): "failed"}}));
    mock.set(json!({"job": job, "error": "bad\x1b]8;;http://x\x07link\r\nline2\x07"}));
    mock.set(json!({"job": other, "provider": "gem\x1b[31mini\r\n"}));
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
    no_raw_controls(&out);
    assert!(p.failed().join(hostile).exists());
    assert!(p.done().join("ok\x1b[2J.md").exists());
}
