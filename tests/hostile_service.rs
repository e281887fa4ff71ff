//! Hostile answers from the service, through the real binary against the
//! real mock: strings built to add a frontmatter key, control and bidi
//! characters, and formulas, in records, `status`, `report` and errors.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::json;

/// Strings built to break out of a YAML value or a Markdown line.
fn evil_strings() -> Vec<String> {
    let mut v: Vec<String> = [
        "x\n---\ninjected: 1",
        "x\n...\ninjected: 1",
        "x\r\n---\r\ninjected: 1\r\n",
        "x\r---\rinjected: 1",
        "x\u{85}---\u{85}injected: 1",
        "x\u{2028}---\u{2029}injected: 1",
        "---",
        "...",
        "--- |",
        "injected: 1",
        "status: completed\ntask_bytes: 0",
        "a: b\n  c: d",
        "- x\n- y",
        "{injected: 1}",
        "[1, 2]",
        "&anchor x",
        "*alias",
        "!!python/object:os.system x",
        "? k\n: v",
        "'",
        "\"",
        "# comment",
        "%YAML 1.1",
        "@x",
        "`x`",
        "| literal\n  ---",
        "> folded",
        "\t\ttabs\t",
        "nul\0byte",
        "\u{1b}[2J\u{1b}]0;title\u{7}",
        "\u{feff}bom",
        "\u{202e}rtl",
        "   leading",
        "trailing   ",
        "",
        "null",
        "~",
        "true",
        "no",
        "123",
        "0x1F",
        ".nan",
        "2026-01-01",
        "<<: *a",
        "ünïcödé ✓ 日本",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("{}\n---\ninjected: 1", "--- ... ".repeat(2000)));
    v
}

/// The mock reports token counts, so the record carries them (policy.md).
const DONE_KEYS: [&str; 10] = [
    "status",
    "provider",
    "model",
    "cost_cad",
    "job_id",
    "delegated_at",
    "completed_at",
    "tokens_in",
    "tokens_out",
    "task_bytes",
];

const FAILED_KEYS: [&str; 7] = [
    "status",
    "provider",
    "failed_reason",
    "job_id",
    "delegated_at",
    "failed_at",
    "task_bytes",
];

#[test]
fn server_strings_cannot_add_a_frontmatter_key() {
    let evil = evil_strings();
    let mock = Mock::start(&["--statuses", "completed"]);
    let p = Project::new();
    let mut originals = BTreeMap::new();
    let mut jobs = Vec::new();
    for (i, s) in evil.iter().enumerate() {
        let task = format!("e{i}.md");
        let bytes = format!("---\nallow_delegation: true\n---\nEvil {i}.\n").into_bytes();
        p.task(&task, &bytes);
        originals.insert(format!("e{i}"), bytes);
        let key = format!("ccl-evil-{i}-0123456789");
        let job = mock.post_job(&key, &task);
        // Even ones fail with the string as the error; odd ones complete
        // with it as model, provider and response.
        if i % 2 == 0 {
            mock.set(json!({"job": job, "error": s}));
            mock.set(json!({"status_of": {job.clone(): "failed"}}));
        } else {
            mock.set(json!({"job": job, "model": s, "provider": s, "response": s}));
        }
        p.write_marker(
            &task,
            &marker_json(false, Some(&job), &key, &rfc3339_ago(60)),
        );
        jobs.push(job);
    }
    let out = p.reap(&mock, &[]);
    out.expect(0);
    assert!(
        !out.stdout.contains('\u{1b}') && !out.stderr.contains('\u{1b}'),
        "{out:?}"
    );
    assert_eq!(
        out.stdout.lines().count(),
        evil.len(),
        "one line per task: {out:?}"
    );
    check_invariant(&p, &originals, true).unwrap_or_else(|e| panic!("{e}"));
    for (i, s) in evil.iter().enumerate() {
        let (dir, keys) = if i % 2 == 0 {
            (p.failed(), &FAILED_KEYS[..])
        } else {
            (p.done(), &DONE_KEYS[..])
        };
        let bytes = std::fs::read(dir.join(format!("e{i}.md"))).unwrap();
        let rec = RecordFile::parse(&bytes).unwrap_or_else(|e| panic!("string {i} {s:?}: {e}"));
        assert_eq!(rec.keys, keys, "string {i} {s:?} changed the keys");
        assert_eq!(rec.job_id.as_deref(), Some(jobs[i].as_str()));
        assert_eq!(
            rec.original(&bytes),
            originals[&format!("e{i}")],
            "string {i}"
        );
        if i % 2 == 1 {
            assert_eq!(
                rec.map["model"].as_str(),
                Some(s.as_str()),
                "string {i}: the model is kept as data"
            );
            assert_eq!(rec.map["provider"].as_str(), Some(s.as_str()), "string {i}");
            let text = Record::read(&dir.join(format!("e{i}.md"))).text();
            assert!(
                text.contains(s.as_str()),
                "string {i}: the response is kept: {text:?}"
            );
        }
        // The crate reads its own file back the same way.
        let r = ccl_delegate::record::Record::parse(&bytes)
            .unwrap_or_else(|| panic!("string {i} {s:?}: unreadable by the crate"));
        assert_eq!(r.job_id.as_deref(), Some(jobs[i].as_str()), "string {i}");
        assert_eq!(
            r.original(&bytes),
            originals[&format!("e{i}")],
            "string {i}"
        );
    }
    // status reads every record.
    let st = p.run(
        Some(&mock),
        &["status", "--json", "--project", p.dir.to_str().unwrap()],
    );
    st.expect(0);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let text = v.to_string();
    assert!(
        text.contains(&format!("\"done\":{}", evil.len() / 2)) || text.contains("done"),
        "{text}"
    );
}

#[test]
fn server_strings_with_control_characters_are_escaped() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    p.task("a.md", b"---\nallow_delegation: true\n---\nA.\n");
    let job = p.submit_ok(&mock, "a.md");
    let evil = "x\u{1b}]0;pwned\u{7}\r\nforged line\u{1b}[2J\u{202e}";
    mock.set(json!({"status_of": {job.clone(): format!("running{evil}")}}));

    let out = p.run(Some(&mock), &["get", &job]);
    out.expect(0);
    assert_clean("get stdout", &out.stdout);
    assert_eq!(out.stdout.lines().count(), 1, "{:?}", out.stdout);
    assert!(
        out.stdout.contains("\\x1b]0;pwned\\x07"),
        "{:?}",
        out.stdout
    );

    let out = p.run(Some(&mock), &["result", &job]);
    out.expect(75);
    assert_clean("result stderr", &out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);

    mock.set(json!({"status_of": {job.clone(): "failed"}, "error": format!("boom{evil}")}));
    let out = p.run(Some(&mock), &["get", &job]);
    assert_clean("get stdout", &out.stdout);
    assert_eq!(out.stdout.lines().count(), 2, "{:?}", out.stdout);
    let out = p.run(Some(&mock), &["result", &job]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_clean("result stderr", &out.stderr);
    assert!(
        out.stderr.contains("boomx\\x1b]0;pwned"),
        "{:?}",
        out.stderr
    );
    let out = p.run(Some(&mock), &["cancel", &job]);
    assert_clean("cancel stdout", &out.stdout);
    assert_clean("cancel stderr", &out.stderr);
}

/// `--json` prints the service's object as it is, but never a raw control
/// or bidi character: DEL, the C1 controls (CSI among them), U+202E and the
/// line separators come out as `\uXXXX`, and the JSON reads back the same.
#[test]
fn json_of_get_result_and_cancel_escapes_what_the_service_sent() {
    let mock = Mock::start(&[]);
    let p = Project::new();
    p.task("a.md", b"---\nallow_delegation: true\n---\nA.\n");
    let job = p.submit_ok(&mock, "a.md");
    let evil = "x\u{7f}\u{9b}2J\u{202e}\u{2028}\u{2066}\u{1b}[31m";
    let reads_back = |what: &str, out: &Out, field: &str| {
        assert_clean(what, &out.stdout);
        assert_eq!(out.stdout.lines().count(), 1, "{what}: {:?}", out.stdout);
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", out.stdout));
        let got = v[field].as_str().unwrap_or_default();
        assert!(got.ends_with(evil), "{what}: {field} = {got:?}");
    };

    mock.set(json!({"status_of": {job.clone(): "failed"}, "error": format!("boom{evil}")}));
    let out = p.run(Some(&mock), &["get", "--json", &job]);
    out.expect(0);
    reads_back("get --json", &out, "error");

    mock.set(json!({"status_of": {job.clone(): "completed"}, "error": null}));
    mock.set(json!({"job": job, "response": format!("answer{evil}")}));
    let out = p.run(Some(&mock), &["result", "--json", &job]);
    out.expect(0);
    reads_back("result --json", &out, "response");

    mock.set(json!({"status_of": {job.clone(): "running"}, "error": format!("busy{evil}")}));
    let out = p.run(Some(&mock), &["cancel", "--json", &job]);
    assert_clean("cancel --json stderr", &out.stderr);
    if !out.stdout.is_empty() {
        assert_clean("cancel --json", &out.stdout);
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("cancel --json: {e}: {:?}", out.stdout));
    }
}

/// The first cell of a CSV line, as a spreadsheet reads it (quotes off).
fn first_csv_cell(line: &str) -> String {
    match line.strip_prefix('"') {
        Some(rest) => {
            let mut cell = String::new();
            let mut chars = rest.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        cell.push('"');
                        chars.next();
                    }
                    '"' => break,
                    c => cell.push(c),
                }
            }
            cell
        }
        None => line.split(',').next().unwrap_or("").to_string(),
    }
}

/// A ledger of an earlier version (`ledger.jsonl`), imported by the first
/// run, whose model, provider and project strings are a hostile service's
/// and a hostile directory's: `report` in CSV, table and JSON prints no
/// raw control or bidi character, and no CSV cell is a formula.
#[test]
fn report_escapes_service_strings_and_disarms_formulas_in_every_format() {
    let p = Project::new();
    let evil_project = "/srv/evil\u{1b}[2J\u{202e}gpj.exe";
    let rows: &[(&str, &str, &str)] = &[
        // (project, provider, model)
        (
            evil_project,
            "gpt\u{1b}[31m\u{202e}",
            "\u{1b}]0;pwned\u{7}\u{1b}[2Jred\u{202e}gpj.exe",
        ),
        ("/p", "claude", "=HYPERLINK(\"http://evil.example\",\"ok\")"),
        ("/p", "claude", "@SUM(1+1)*cmd|' /C calc'!A0"),
        ("/p", "gemini", "+1+1"),
        ("/p", "gemini", "-2+3"),
        ("/p", "gpu", "-5"),
        ("/p", "gpu", "\tx"),
        ("=cmd|' /C calc'!A0", "gpu", "\u{9b}2Jc1"),
    ];
    let lines: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, (project, provider, model))| {
            ledger_line(
                &format!("j-{i}"),
                project,
                provider,
                model,
                "completed",
                0.25,
                (10, 5),
                &rfc3339_ago(600),
                &rfc3339_ago(540),
            )
        })
        .collect();
    p.write_old_ledger(&lines);

    for by in ["model", "provider", "project"] {
        let csv = p.run(None, &["report", "--by", by, "--csv"]);
        csv.expect(0);
        assert_clean(&format!("report --by {by} --csv"), &csv.stdout);
        assert_clean(&format!("report --by {by} --csv (stderr)"), &csv.stderr);
        let keys: std::collections::BTreeSet<&str> = rows
            .iter()
            .map(|r| match by {
                "model" => r.2,
                "provider" => r.1,
                _ => r.0,
            })
            .collect();
        // The header, one line per key, the total.
        assert_eq!(csv.stdout.lines().count(), keys.len() + 2, "{}", csv.stdout);
        for line in csv.stdout.lines().skip(1) {
            let cell = first_csv_cell(line);
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
                    || cell.parse::<f64>().is_ok_and(f64::is_finite),
                "report --by {by} --csv: a formula cell {cell:?} in {line:?}"
            );
        }
        let table = p.run(None, &["report", "--by", by]);
        table.expect(0);
        assert_clean(&format!("report --by {by}"), &table.stdout);
        assert_clean(&format!("report --by {by} (stderr)"), &table.stderr);
        let j = p.run(None, &["report", "--by", by, "--json"]);
        j.expect(0);
        assert_clean(&format!("report --by {by} --json"), &j.stdout);
        let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
        assert_eq!(v["total"]["jobs"], rows.len());
    }

    let csv = p.run(None, &["report", "--by", "model", "--csv"]).stdout;
    let has = |start: &str| csv.lines().any(|l| l.starts_with(start));
    for start in [
        "\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"ok\"\")\",1,",
        "'@SUM(1+1)*cmd|' /C calc'!A0,1,",
        "'+1+1,1,",
        "'-2+3,1,",
        "-5,1,",
        // The books keep the tab escaped: no longer a tab at the start.
        "\\tx,1,",
        "\\x1b]0;pwned\\x07\\x1b[2Jred\\u{202e}gpj.exe,1,",
        "\\x9b2Jc1,1,",
    ] {
        assert!(has(start), "no CSV line starts with {start:?}:\n{csv}");
    }
    let csv = p.run(None, &["report", "--by", "project", "--csv"]).stdout;
    assert!(
        csv.lines().any(|l| l.starts_with("'=cmd|' /C calc'!A0,1,")),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("/srv/evil\\x1b[2J\\u{202e}gpj.exe,1,")),
        "{csv}"
    );
    // JSON keeps the project as it is, in escapes a terminal does not run.
    let v: serde_json::Value =
        serde_json::from_str(&p.run(None, &["report", "--by", "project", "--json"]).stdout)
            .unwrap();
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["project"] == evil_project),
        "{v}"
    );
}

/// A marker's error and a record's provider from a hostile service, in a
/// project whose directory name holds ESC and a bidi override: `status`
/// prints neither raw, in the table or in JSON, and JSON keeps them.
#[test]
fn status_escapes_marker_record_and_directory_strings_in_table_and_json() {
    let p = Project::new();
    let dir = p.tmp.path().join("evil\u{1b}[2J\u{202e}proj");
    std::fs::create_dir_all(dir.join(".agent-queue/inbox")).unwrap();
    std::fs::create_dir_all(dir.join(".agent-queue/done")).unwrap();
    std::fs::write(dir.join(".agent-queue/inbox/t1.md"), "Do it.\n").unwrap();
    let evil_error = "boom\u{1b}]0;pwned\u{7}\u{202e}\u{2066}txt";
    let mut marker: serde_json::Value =
        serde_json::from_str(&marker_json(false, Some("j-1"), "k-1", &rfc3339_ago(60))).unwrap();
    marker["last_error"] = json!(evil_error);
    marker["poll_errors"] = json!(1);
    std::fs::write(
        dir.join(".agent-queue/inbox/t1.md.delegated"),
        marker.to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join(".agent-queue/done/t0.md"),
        "---\nstatus: completed\nprovider: \"gpt\\e[31m\\u202e\\u0085\"\ncost_cad: 0.5\n---\nDone.\n",
    )
    .unwrap();
    let d = s(&dir);
    let table = p.run(None, &["status", "--project", d]);
    table.expect(0);
    assert_clean("status", &table.stdout);
    assert_clean("status (stderr)", &table.stderr);
    assert!(table.stdout.contains("\\x1b"), "{}", table.stdout);
    let j = p.run(None, &["status", "--project", d, "--json"]);
    j.expect(0);
    assert_clean("status --json", &j.stdout);
    assert_clean("status --json (stderr)", &j.stderr);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["in_flight"][0]["last_error"], evil_error, "{v}");
    assert!(
        v["in_flight"][0]["project"]
            .as_str()
            .unwrap()
            .ends_with("evil\u{1b}[2J\u{202e}proj"),
        "{v}"
    );
}
