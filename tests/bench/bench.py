#!/usr/bin/env python3
"""The performance figures of ccl-delegate, measured as ratios in one run.

Run it through tests/bench/run.sh, which builds the release binaries first.
This file starts secutools-mock, builds the queues, times each figure and
prints one table. It is a benchmark, not a test: nothing here is asserted by
`cargo test`.

Timing is done here rather than with hyperfine so that every figure (and its
floor) is measured the same way: a child is started with posix_spawn (what a
shell's fork+exec costs, without Python's subprocess bookkeeping) and waited
for with waitpid; peak RSS comes from GNU time (see peak_rss_kib).

The books (`<state_dir>/books.sqlite`, src/books/) are seeded the way a host
gets them: an earlier version's ledger.jsonl, imported once by the first run
that opens the books (that import is timed and printed), then the jobs in
flight as rows of `reservation` inserted with Python's sqlite3 (the
schema's triggers keep the sums), each matching a marker written beside its
task, so that a reap's reconcile would find the books and the markers
agreeing. The submit floor is a tiny program (tests/bench/floor.rs, built
with rustc) doing only a submit's unavoidable system calls.

The fleet's rows (fleet.md "Performance") run against a PostgreSQL server
started here as tests/pg/mod.rs starts one (initdb, pg_ctl on a free
loopback port; fsync left on), each host a HOME of its own with its config;
the fleet ledger is seeded with one INSERT ... SELECT generate_series, and
the floor of a fleet submit is tests/bench/pg_floor.rs (a `harness = false`
test target built with cargo): one connection and one admission transaction
made with the crate the tool uses. Without PostgreSQL those rows are
skipped, on one line. The floor of what budgets add to a submit is
tests/bench/books_floor.rs, built the same way: one new process making one
admission transaction of the books with rusqlite.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
KEY = "bench-key-0123456789"

# The 2 KB task of the decide and submit figures: frontmatter that routes to
# gemini, and a body long enough to make the file 2048 bytes.
TASK_HEAD = (
    "---\n"
    "allow_delegation: true\n"
    "preferred_ai: gemini\n"
    "priority: normal\n"
    "complexity_hint: a few paragraphs\n"
    "---\n"
    "# Summarise the queue design\n\n"
)
TASK_LINE = "Explain each state transition of the Maildir-style queue and why it is crash-safe.\n"


def task_bytes(size=2048):
    text = TASK_HEAD
    while len(text) < size:
        text += TASK_LINE
    return text[:size - 1].encode() + b"\n"


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

DEVNULL_FD = os.open(os.devnull, os.O_RDWR)


def spawn_wait(argv, env=None, stdout_fd=None):
    """Runs argv; returns (wall seconds, exit status)."""
    out = DEVNULL_FD if stdout_fd is None else stdout_fd
    actions = [
        (os.POSIX_SPAWN_DUP2, DEVNULL_FD, 0),
        (os.POSIX_SPAWN_DUP2, out, 1),
    ]
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env if env is not None else os.environ,
                         file_actions=actions)
    _, status = os.waitpid(pid, 0)
    wall = time.perf_counter() - t0
    return wall, os.waitstatus_to_exitcode(status)


def spawn_checked(argv, env=None, stdout_fd=None, ok=(0,)):
    wall, code = spawn_wait(argv, env, stdout_fd)
    if code not in ok:
        sys.exit(f"bench: {' '.join(argv)} exited {code}")
    return wall


def peak_rss_kib(argv, env):
    """Runs argv; returns (wall seconds, peak RSS in KiB).

    Not wait4's ru_maxrss: a child started from this (large) Python process
    inherits its high-water mark at exec. GNU time forks from a small
    process; without it, the child's VmHWM is sampled until it exits (the
    mark only grows, so the last sample is the peak but for the final ms)."""
    gnu_time = "/usr/bin/time"
    if os.access(gnu_time, os.X_OK):
        with tempfile.NamedTemporaryFile("r", suffix=".rss") as f:
            wall, code = spawn_wait([gnu_time, "-f", "%M", "-o", f.name, *argv], env)
            text = f.read().strip()
        if code == 0 and text.isdigit():
            return wall, int(text)
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[
        (os.POSIX_SPAWN_DUP2, DEVNULL_FD, 0), (os.POSIX_SPAWN_DUP2, DEVNULL_FD, 1)])
    hwm = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        try:
            with open(f"/proc/{pid}/status") as st:
                for line in st:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.001)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench: {' '.join(argv)} failed")
    return wall, hwm


def interleaved(cmds, runs, warmup):
    """Medians of commands (argv, env) run in turn, so that drift in the
    machine's load hits each the same."""
    for _ in range(warmup):
        for argv, env in cmds:
            spawn_wait(argv, env)
    walls = [[] for _ in cmds]
    for _ in range(runs):
        for (argv, env), w in zip(cmds, walls):
            w.append(spawn_checked(argv, env))
    return [statistics.median(w) for w in walls]


def interleaved_medians(a_argv, b_argv, runs, warmup, env=None):
    """Medians of two commands run alternately."""
    return tuple(interleaved([(a_argv, env), (b_argv, env)], runs, warmup))


class Mock:
    """A secutools-mock on a free loopback port, stopped on close()."""

    def __init__(self, bin_dir, *args):
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "secutools-mock"), "--port", "0", "--api-key", KEY, *args],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("listening on http://"):
            sys.exit(f"bench: unexpected first line from secutools-mock: {line!r}")
        self.url = line[len("listening on "):]
        host, port = self.url[len("http://"):].rsplit(":", 1)
        self.host, self.port = host, int(port)

    def close(self):
        self.proc.terminate()
        self.proc.wait()


# ---------------------------------------------------------------------------
# Queues
# ---------------------------------------------------------------------------

def job_body(project_name, task_name, body_text):
    return json.dumps({
        "type": "analyze",
        "priority": "normal",
        "prompt": f"Task: {task_name}\n\n{body_text}\n\nProvide a complete, self-contained answer.",
        "preferred_ai": "gemini",
        "complexity_hint": "a few paragraphs",
        "source": "ccl-delegate/bench",
        "metadata": {"project": project_name, "task": task_name},
    }).encode()


def marker_bytes(project, task_name, job_id, key, started_at, fallback=None,
                 provider="gemini"):
    """A marker exactly as `ccl-delegate submit` leaves it once the job is
    known (src/marker.rs: serde_json's pretty printer, two-space indent,
    fields in declaration order, then a newline)."""
    m = {
        "version": 1,
        "state": "submitted",
        "project": project,
        "task_file": task_name,
        "job_id": job_id,
        "provider": provider,
        "priority": "normal",
        "idempotency_key": key,
        "started_at": started_at,
        "poll_errors": 0,
        "last_error": None,
    }
    if fallback:
        m["fallback"] = fallback
    return (json.dumps(m, indent=2, ensure_ascii=False) + "\n").encode()


def make_project(path):
    inbox = os.path.join(path, ".agent-queue", "inbox")
    os.makedirs(inbox, exist_ok=True)
    return inbox


def delegate_tasks(mock, project, count, threads=32, fallback=None):
    """`count` tasks in `project`'s inbox, each with a job on the mock and
    the marker `submit` would have written. This is what `count` runs of
    `ccl-delegate submit` leave behind, made in a second instead of minutes
    (the submit figure times submit itself)."""
    inbox = make_project(project)
    project = os.path.realpath(project)
    name = os.path.basename(project)
    task = task_bytes()
    body_text = task.decode().split("---\n", 2)[2].strip("\r\n")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    local = threading.local()

    def one(i):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(mock.host, mock.port, timeout=30)
        task_name = f"task-{i:05d}.md"
        key = "ccl-" + secrets.token_hex(16)
        conn.request("POST", "/api/v1/jobs", body=job_body(name, task_name, body_text),
                     headers={"Authorization": f"Bearer {KEY}", "Idempotency-Key": key,
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        if resp.status not in (200, 201, 202):
            raise RuntimeError(f"POST answered {resp.status}: {answer}")
        with open(os.path.join(inbox, task_name), "wb") as f:
            f.write(task)
        with open(os.path.join(inbox, task_name + ".delegated"), "wb") as f:
            f.write(marker_bytes(project, task_name, answer["job_id"], key, started_at,
                                 fallback))

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    os.sync()


def count_files(d, suffix=""):
    try:
        return sum(1 for n in os.listdir(d) if n.endswith(suffix))
    except FileNotFoundError:
        return 0


def check_reaped(project, count):
    q = os.path.join(project, ".agent-queue")
    left = count_files(os.path.join(q, "inbox"))
    done = count_files(os.path.join(q, "done"), ".md")
    if left or done != count:
        sys.exit(f"bench: after the reap of {project}: {left} files left in inbox/, "
                 f"{done} in done/ (expected 0 and {count})")


# ---------------------------------------------------------------------------
# Floors
# ---------------------------------------------------------------------------

def durable_write(root, target_dir, data):
    """What one durable file write costs: a temporary file written and
    fsynced, renamed into place, the directory fsynced."""
    tmp = os.path.join(root, ".bench-tmp-" + secrets.token_hex(4))
    target = os.path.join(target_dir, "bench-" + secrets.token_hex(4))
    t0 = time.perf_counter()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, target)
    dfd = os.open(target_dir, os.O_RDONLY | os.O_CLOEXEC)
    os.fsync(dfd)
    os.close(dfd)
    took = time.perf_counter() - t0
    os.unlink(target)
    return took


def loopback_round_trip(mock, body):
    """One POST /api/v1/jobs on a fresh loopback connection, answer read:
    what submit's network part cannot go below."""
    key = "ccl-" + secrets.token_hex(16)
    req = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: {mock.host}:{mock.port}\r\n"
           f"Authorization: Bearer {KEY}\r\nIdempotency-Key: {key}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
           "Connection: close\r\n\r\n").encode() + body
    t0 = time.perf_counter()
    s = socket.create_connection((mock.host, mock.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(req)
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    took = time.perf_counter() - t0
    s.close()
    if not got.startswith(b"HTTP/1.1 201"):
        sys.exit(f"bench: the round-trip probe got {got[:80]!r}")
    return took


# ---------------------------------------------------------------------------
# The figures
# ---------------------------------------------------------------------------

class Row:
    """One line of the table; `ok` None for a figure with no target."""

    def __init__(self, figure, measured, divisor, ratio, target, ok):
        met = "-" if ok is None else "yes" if ok else "NO"
        self.cells = [figure, measured, divisor, ratio, target, met]


def ms(s):
    return f"{s * 1000:.2f} ms" if s < 0.1 else f"{s:.3f} s"


def fig_decide(env, bins, work, runs):
    task = os.path.join(work, "decide-task.md")
    with open(task, "wb") as f:
        f.write(task_bytes())
    true_med, dec_med = interleaved_medians(
        ["/bin/true"], [bins["ccl"], "decide", task], runs, warmup=max(20, runs // 10), env=env)
    r = dec_med / true_med
    return Row(f"decide, 2 KB task (median of {runs})", ms(dec_med),
               f"/bin/true {ms(true_med)}", f"{r:.2f}x", "<= 2.1x", r <= 2.1)


def fig_reap(env, bins, work, mock, count, concurrency, latency_ms, repeats, lock):
    walls = []
    for i in range(repeats):
        project = os.path.join(work, f"reap-{i}")
        delegate_tasks(mock, project, count)
        out = os.path.join(work, f"reap-{i}.out")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        wall = spawn_checked([bins["ccl"], "reap", "--project", project, "--concurrency",
                              str(concurrency), "--lock-file", lock], env, stdout_fd=fd)
        os.close(fd)
        check_reaped(project, count)
        walls.append(wall)
    wall = statistics.median(walls)
    ideal = count * latency_ms / 1000 * 2 / concurrency
    r = wall / ideal
    return wall, Row(f"reap {count} completed jobs, {latency_ms} ms latency, "
                     f"--concurrency {concurrency} (median of {repeats})",
                     ms(wall), f"ideal {ms(ideal)}", f"{r:.3f}x", "<= 1.11x", r <= 1.11)


def check_failed_over(project, count, provider):
    """Every task still in the inbox, its marker submitted to `provider`."""
    inbox = os.path.join(project, ".agent-queue", "inbox")
    moved = 0
    for n in os.listdir(inbox):
        if n.endswith(".delegated"):
            with open(os.path.join(inbox, n), "rb") as f:
                m = json.loads(f.read())
            if m.get("state") == "submitted" and m.get("provider") == provider \
                    and len(m.get("attempts", [])) == 1:
                moved += 1
    if moved != count:
        sys.exit(f"bench: after the failover reap of {project}: {moved} of {count} "
                 f"markers moved on to {provider}")


def fig_failover(env, bins, work, mock, count, concurrency, latency_ms, repeats, lock):
    """Every job failed: each marker takes one failover step (a status GET,
    then a POST for the next provider)."""
    walls = []
    for i in range(repeats):
        project = os.path.join(work, f"failover-{i}")
        delegate_tasks(mock, project, count, fallback=["claude"])
        out = os.path.join(work, f"failover-{i}.out")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        wall = spawn_checked([bins["ccl"], "reap", "--project", project, "--concurrency",
                              str(concurrency), "--lock-file", lock], env, stdout_fd=fd)
        os.close(fd)
        check_failed_over(project, count, "claude")
        walls.append(wall)
    wall = statistics.median(walls)
    ideal = count * latency_ms / 1000 * 2 / concurrency
    r = wall / ideal
    return Row(f"reap {count} failed jobs failing over, {latency_ms} ms latency, "
               f"--concurrency {concurrency} (median of {repeats})",
               ms(wall), f"ideal {ms(ideal)}", f"{r:.3f}x", "<= 1.3x", r <= 1.3)


def fig_baseline(env, work, mock, count, reap_wall):
    project = os.path.join(work, "baseline")
    delegate_tasks(mock, project, count)
    wall = spawn_checked(["/bin/bash", os.path.join(HERE, "baseline-reaper.sh"), project], env)
    check_reaped(project, count)
    r = wall / reap_wall
    return Row(f"the same reap vs bash+curl+jq baseline (serial)", ms(reap_wall),
               f"baseline {ms(wall)}", f"{r:.1f}x faster", ">= 20x faster", r >= 20)


def make_idle_projects(work, projects, tasks_each):
    """`projects` projects under one glob, each with `tasks_each` tasks in
    its inbox and no marker: what a cron reap mostly finds."""
    root = os.path.join(work, "many")
    task = task_bytes()
    for p in range(projects):
        inbox = make_project(os.path.join(root, f"project-{p:03d}"))
        for t in range(tasks_each):
            with open(os.path.join(inbox, f"task-{t:02d}.md"), "wb") as f:
                f.write(task)
    return root


def fig_idle(env, bins, work, root, projects, books_state, entries, runs, lock):
    """The same reap over idle projects, without books (a state directory
    with nothing in it) and with books present and nothing in flight (the
    state directory of the spending rows, its reservations released),
    alternately with /bin/true."""
    bare = os.path.join(work, "idle-state")
    os.makedirs(bare, exist_ok=True)
    cmds = [(["/bin/true"], env)]
    for name, state in (("bare", bare), ("books", books_state)):
        cfg = os.path.join(work, f"idle-{name}.yaml")
        with open(cfg, "w") as f:
            f.write(f"state_dir: {state}\nprojects:\n  - {root}/*\nlock_file: {lock}\n")
        cmds.append(([bins["ccl"], "reap"], dict(env, CCL_DELEGATE_CONFIG=cfg)))
    true_med, bare_med, books_med = interleaved(cmds, runs, warmup=10)
    if os.listdir(bare):
        sys.exit(f"bench: the reap without books left {os.listdir(bare)} in {bare}")
    left = books_query(books_state, "SELECT count(*) FROM reservation")[0][0]
    if left:
        sys.exit(f"bench: the books gained {left} reservations from idle reaps")
    return [
        Row(f"reap over {projects} projects, no markers, no books (median of {runs})",
            ms(bare_med), f"(/bin/true {ms(true_med)})", "-", "< 5 ms", bare_med < 0.005),
        Row(f"the same reap, books of {entries:,} entries present, nothing in flight "
            f"(median of {runs})", ms(books_med), f"(no books {ms(bare_med)})",
            f"{books_med / bare_med:.2f}x", "< 5 ms", books_med < 0.005),
    ]


def fig_rss(env, bins, work, mock, count, concurrency, lock):
    project = os.path.join(work, "rss")
    delegate_tasks(mock, project, count)
    wall, rss_kib = peak_rss_kib([bins["ccl"], "reap", "--project", project, "--concurrency",
                                  str(concurrency), "--lock-file", lock], env)
    left = count_files(os.path.join(project, ".agent-queue", "inbox"), ".delegated")
    if left != count:
        sys.exit(f"bench: the RSS reap changed markers ({left} of {count} left)")
    mib = rss_kib / 1024
    return Row(f"peak RSS, reap over {count} markers of running jobs "
               f"(--concurrency {concurrency}, {ms(wall)})",
               f"{mib:.1f} MiB", "-", "-", "< 20 MB", rss_kib * 1024 < 20_000_000)


def build_floor(work):
    """Compiles tests/bench/floor.rs with rustc, linked as ccl-delegate is
    (GCC's unwinder inside, as src/build.rs does, so no libgcc_s to load at
    start). Returns (path, how linked), or (None, why) without rustc."""
    rustc = os.environ.get("RUSTC") or shutil.which("rustc")
    if not rustc:
        return None, "no rustc"
    out = os.path.join(work, "submit-floor")
    argv = [rustc, "--edition", "2024", "-C", "opt-level=3", "-C", "panic=abort",
            "-C", "codegen-units=1", "-C", "strip=symbols", "-o", out,
            os.path.join(HERE, "floor.rs")]
    for extra, how in ((["-l", "static:+whole-archive=gcc_eh"], "unwinder linked in"),
                       ([], "libgcc_s loaded")):
        r = subprocess.run(argv + extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode == 0:
            return out, how
        err = r.stderr.decode(errors="replace").strip().splitlines()
    return None, f"rustc failed: {err[-1] if err else '?'}"


def fig_submit(env, bins, work, mock, runs):
    """Plain submit (no budgets, no limits: the books are not opened)
    against its floor: process start + the marker written durably + one
    POST + the marker rewritten with the job id durably, run as one small
    program (floor.rs) alternately with submit; then the same parts timed
    apart in this process, to show where the floor goes."""
    project = os.path.join(work, "submit")
    inbox = make_project(project)
    root = os.path.join(project, ".agent-queue")
    task = task_bytes()
    n = runs + 10
    for i in range(n):
        with open(os.path.join(inbox, f"task-{i:04d}.md"), "wb") as f:
            f.write(task)
    task_file = os.path.join(work, "floor-task.md")
    with open(task_file, "wb") as f:
        f.write(task)
    floor_bin, how = build_floor(work)
    addr = f"{mock.host}:{mock.port}"
    subs, floors = [], []
    for i in range(n):
        wall = spawn_checked([bins["ccl"], "submit", os.path.join(inbox, f"task-{i:04d}.md")],
                             env)
        if floor_bin:
            fwall = spawn_checked([floor_bin, root, inbox, f"floor-{i:04d}.md.delegated", addr,
                                   KEY, "ccl-" + secrets.token_hex(16), task_file], env)
        if i >= 10:  # the first few warm the caches
            subs.append(wall)
            if floor_bin:
                floors.append(fwall)
    made = count_files(inbox, ".md.delegated")
    if made != (2 * n if floor_bin else n):
        sys.exit(f"bench: submit and its floor left {made} markers, expected "
                 f"{2 * n if floor_bin else n}")
    submit = statistics.median(subs)

    # The parts, timed apart: a process start, one durable write (twice in
    # a submit), one POST on a fresh connection.
    marker = marker_bytes(os.path.realpath(project), "x.md", "j-000001",
                          "ccl-" + "0" * 32, "2026-01-01T00:00:00Z")
    body = job_body("submit", "x.md", task.decode())
    for _ in range(10):
        durable_write(root, inbox, marker)
        loopback_round_trip(mock, body)
    start = statistics.median(spawn_checked(["/bin/true"], env) for _ in range(runs))
    dw = statistics.median(durable_write(root, inbox, marker) for _ in range(runs))
    rt = statistics.median(loopback_round_trip(mock, body) for _ in range(runs))
    parts = start + 2 * dw + rt
    floor = statistics.median(floors) if floor_bin else parts
    r = submit / floor
    what = (f"floor program {ms(floor)}" if floor_bin
            else f"floor {ms(floor)}, its parts summed ({how})")
    return [
        Row(f"submit, 2 KB task, no budgets (median of {runs})", ms(submit), what,
            f"{r:.2f}x", "<= 2x", r <= 2.0),
        Row(f"  its floor: start, marker written durably, POST, marker rewritten durably "
            f"({'one program, ' + how if floor_bin else 'parts timed apart'})",
            ms(floor), f"parts: /bin/true {ms(start)} + 2 x write {ms(dw)} + POST {ms(rt)} "
            f"= {ms(parts)}", "-", "-", None),
    ]


# ---------------------------------------------------------------------------
# The books (policy.md "Performance")
# ---------------------------------------------------------------------------

BOOKS = "books.sqlite"
SPEND_PROVIDERS = ["gpu", "gemini", "claude"]
FLIGHT_PROVIDERS = ["gpu", "gemini", "claude", "auto"]
# The ledger names KEYS projects: the first CONFIGURED are configured, with
# their records in done/ and failed/ (one per entry of theirs, so that
# `status` reads its totals from the ledger) and the markers in flight; the
# others are a host's history, projects no longer configured.
KEYS = 1000
CONFIGURED = 100
# Entries end over the last 29 days: all inside `report`'s default 30.
SPAN = 29 * 86400


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def entry_of(i, n, t_end):
    """Entry i of n: (provider, failed, cost, delegated_at, finished_at);
    project KEYS[i % KEYS], task task-<i // KEYS>.md, job j-<i>."""
    failed = (i // 7) % 10 == 0
    cost = 0.0 if failed else 0.001 + (i * 7919 % 191) / 10000
    finished = t_end - (n - i) * SPAN // n
    return SPEND_PROVIDERS[i % 3], failed, cost, iso(finished - 60 - i % 600), iso(finished)


def spend_projects(work):
    """The configured projects (directories), and the keys of every project
    the ledger names (canonical absolute paths, as the books keep them)."""
    configured = [os.path.join(work, "spend", f"p{j:03d}") for j in range(CONFIGURED)]
    for p in configured:
        make_project(p)
    gone = os.path.join(os.path.realpath(work), "gone")
    keys = [os.path.realpath(p) for p in configured] + \
        [os.path.join(gone, f"p{j:03d}") for j in range(CONFIGURED, KEYS)]
    return configured, keys


def write_old_ledger(path, n, keys, t_end):
    """A ledger.jsonl of n entries, oldest first, one line each as reap
    wrote them before the books: what the first run imports."""
    quoted = [json.dumps(k) for k in keys]
    with open(path, "w", buffering=1 << 20) as f:
        for i in range(n):
            prov, failed, cost, delegated, finished = entry_of(i, n, t_end)
            status = "failed" if failed else "completed"
            f.write(f'{{"job_id":"j-{i:08d}","project":{quoted[i % KEYS]},'
                    f'"task":"task-{i // KEYS:05d}.md","provider":"{prov}","model":"m",'
                    f'"status":"{status}","cost_cad":{cost:.4f},"tokens_in":100,'
                    f'"tokens_out":50,"delegated_at":"{delegated}","finished_at":"{finished}"}}\n')


def write_records(configured, n, t_end):
    """The record in done/ or failed/ of each entry of the configured
    projects; answers how many."""
    count = 0
    for j, p in enumerate(configured):
        q = os.path.join(p, ".agent-queue")
        for d in ("done", "failed"):
            os.makedirs(os.path.join(q, d), exist_ok=True)
        for i in range(j, n, KEYS):
            prov, failed, cost, delegated, finished = entry_of(i, n, t_end)
            head = (f"---\nstatus: {'failed' if failed else 'completed'}\n"
                    f"provider: {prov}\nmodel: m\ncost_cad: {cost:.4f}\n"
                    f"job_id: j-{i:08d}\ndelegated_at: {delegated}\n"
                    + ("failed_at" if failed else "completed_at") + f": {finished}\n"
                    + ("failed_reason: failed\n" if failed else "")
                    + "task_bytes: 10\n---\n# Result\nok\n")
            name = os.path.join(q, "failed" if failed else "done", f"task-{i // KEYS:05d}.md")
            with open(name, "w") as f:
                f.write(head)
            count += 1
    return count


def spending_configs(work, state, projects):
    plain = os.path.join(work, "plain.yaml")
    with open(plain, "w") as f:
        f.write(f"state_dir: {state}\nprojects: {json.dumps(projects)}\n")
    policy = os.path.join(work, "policy.yaml")
    with open(policy, "w") as f:
        f.write(f"state_dir: {state}\nprojects: {json.dumps(projects)}\n"
                "budget:\n  daily_cad: 100000\n  monthly_cad: 1000000\n"
                "  providers:\n    claude: {daily_cad: 100000}\n"
                "max_in_flight:\n  all: 1000000\n  gemini: 1000000\n")
    return plain, policy


def books_query(state, sql, args=()):
    """One read of the books, the connection closed before it returns."""
    db = sqlite3.connect(os.path.join(state, BOOKS), timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def fig_import(env, bins, state, plain, n):
    """The first run after the upgrade opens the books: it creates them and
    imports ledger.jsonl (then renamed ledger.jsonl.imported). Timed once:
    `report --since 1s`, which opens the books and reports nothing."""
    old = os.path.join(state, "ledger.jsonl")
    size = os.path.getsize(old)
    if os.path.exists(os.path.join(state, BOOKS)):
        sys.exit(f"bench: {state} already has books")
    wall = spawn_checked([bins["ccl"], "report", "--since", "1s"],
                         dict(env, CCL_DELEGATE_CONFIG=plain))
    if os.path.exists(old) or not os.path.exists(old + ".imported"):
        sys.exit("bench: the first run did not import ledger.jsonl")
    got = books_query(state, "SELECT count(*) FROM ledger")[0][0]
    if got != n:
        sys.exit(f"bench: the import booked {got} entries of {n}")
    os.sync()
    books = sum(os.path.getsize(os.path.join(state, f)) for f in os.listdir(state)
                if f.startswith(BOOKS))
    return Row(f"first run after the upgrade: a {n:,}-entry ledger.jsonl ({size / 1e6:.0f} MB) "
               f"imported into the books ({books / 1e6:.0f} MB), once per host",
               ms(wall), "-", "-", "-", None)


def seed_in_flight(configured, state, per_project):
    """`per_project` markers of submitted jobs in each configured project's
    inbox, beside their tasks (a quarter each of gpu, gemini, claude, auto),
    and the reservation of each, inserted in one transaction (the triggers
    keep in_flight): the books and the markers agree, as a reap's
    reconcile would leave them."""
    task = task_bytes()
    started = iso(time.time() - 300)
    rows = []
    for j, p in enumerate(configured):
        inbox = os.path.join(p, ".agent-queue", "inbox")
        project = os.path.realpath(p)
        for t in range(per_project):
            name = f"run-{t:03d}.md"
            prov = FLIGHT_PROVIDERS[t % len(FLIGHT_PROVIDERS)]
            key = "ccl-" + secrets.token_hex(16)
            job = f"r-{j:03d}-{t:03d}"
            with open(os.path.join(inbox, name), "wb") as f:
                f.write(task)
            with open(os.path.join(inbox, name + ".delegated"), "wb") as f:
                f.write(marker_bytes(project, name, job, key, started, provider=prov))
            rows.append((key, project, name, prov, job, started))
    db = sqlite3.connect(os.path.join(state, BOOKS), isolation_level=None, timeout=30)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO reservation (key, project, task, provider, job_id, "
                       "started_at) VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        counts = dict(db.execute("SELECT provider, n FROM in_flight"))
    finally:
        db.close()
    want = {p: per_project * len(configured) // len(FLIGHT_PROVIDERS) for p in FLIGHT_PROVIDERS}
    if counts != want:
        sys.exit(f"bench: in_flight after seeding is {counts}, expected {want}")
    os.sync()
    return len(rows)


def release_in_flight(configured, state, others):
    """Every job in flight ends without a trace: the seeded markers and their
    tasks removed, the `others` projects (those submits went to) removed,
    every reservation deleted (the triggers bring in_flight to 0)."""
    for p in configured:
        inbox = os.path.join(p, ".agent-queue", "inbox")
        for name in os.listdir(inbox):
            if name.startswith("run-"):
                os.unlink(os.path.join(inbox, name))
    for p in others:
        shutil.rmtree(p)
    db = sqlite3.connect(os.path.join(state, BOOKS), isolation_level=None, timeout=30)
    try:
        db.execute("DELETE FROM reservation")
        left = db.execute("SELECT total(n) FROM in_flight").fetchone()[0]
    finally:
        db.close()
    if left:
        sys.exit(f"bench: {left} jobs still counted in flight after the release")


def fig_submit_policy(env, bins, work, state, plain, policy, entries, in_flight, runs):
    """The same submit with and without budgets and limits, and the floor
    of what budgets add (tests/bench/books_floor.rs: one new process making
    one admission transaction of the books, timed inside), in turn, so that
    the machine's load hits each the same; tasks in a project of their
    own."""
    project = os.path.join(work, "submit-policy")
    inbox = make_project(project)
    task = task_bytes()
    n = runs + 10
    for i in range(2 * n):
        with open(os.path.join(inbox, f"task-{i:04d}.md"), "wb") as f:
            f.write(task)
    floor_bin = build_test_target("books_floor")
    floor_out = os.path.join(work, "books-floor.out")
    ffd = os.open(floor_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    floor_project = os.path.join(work, "books-floor")
    floor_env = dict(env, CCL_BOOKS_FLOOR_STORE=os.path.join(state, BOOKS),
                     CCL_BOOKS_FLOOR_PROJECT=floor_project)
    a, b = [], []
    for i in range(n):
        for cfg, walls, j in ((plain, a, 2 * i), (policy, b, 2 * i + 1)):
            e = dict(env, CCL_DELEGATE_CONFIG=cfg)
            wall = spawn_checked([bins["ccl"], "submit", os.path.join(inbox, f"task-{j:04d}.md")], e)
            if i >= 10:  # the first few warm the caches
                walls.append(wall)
        spawn_checked([floor_bin], floor_env, stdout_fd=ffd)
    os.close(ffd)
    with open(floor_out) as f:
        floors = [int(line) / 1e6 for line in f if line.strip()]
    if len(floors) != n:
        sys.exit(f"bench: the books' floor program printed {len(floors)} lines of {n}")
    floors = floors[10:]
    made = count_files(inbox, ".md.delegated")
    reserved = books_query(state, "SELECT count(*) FROM reservation WHERE project = ?",
                           (os.path.realpath(project),))[0][0]
    if made != 2 * n or reserved != n:
        sys.exit(f"bench: the submits left {made} markers and {reserved} reservations "
                 f"(expected {2 * n} and {n})")
    # The floor's reservations go: they were never jobs.
    db = sqlite3.connect(os.path.join(state, BOOKS), isolation_level=None, timeout=30)
    try:
        db.execute("DELETE FROM reservation WHERE project = ?", (floor_project,))
    finally:
        db.close()
    plain_med, policy_med, fl = (statistics.median(x) for x in (a, b, floors))
    r = policy_med / plain_med
    return project, [
        Row(f"submit with budgets and limits, {entries:,}-entry ledger, {in_flight:,} in flight "
            f"across {CONFIGURED} projects (median of {runs})", ms(policy_med),
            f"plain submit {ms(plain_med)}", f"{r:.2f}x", "<= 1.15x", r <= 1.15),
        Row("  its floor: one admission transaction of the books in a new process, rusqlite "
            "(tests/bench/books_floor.rs, timed inside)", ms(fl),
            f"plain submit {ms(plain_med)} + floor {ms(fl)}",
            f"{(plain_med + fl) / plain_med:.2f}x", "-", None),
        Row("  what budgets add to a submit, over that floor", ms(policy_med - plain_med),
            f"floor {ms(fl)}", f"{(policy_med - plain_med) / fl:.2f}x floor", "-", None),
    ]


def fig_report(env, bins, policy, entries, runs):
    e = dict(env, CCL_DELEGATE_CONFIG=policy)
    out = subprocess.run([bins["ccl"], "report", "--json"], env=e, check=True,
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL).stdout
    jobs = json.loads(out)["total"]["jobs"]
    if jobs != entries:
        sys.exit(f"bench: report counted {jobs} jobs of the {entries} in its window")
    walls = [spawn_checked([bins["ccl"], "report"], e) for _ in range(runs)]
    med = statistics.median(walls)
    return Row(f"report over {entries:,} ledger entries, with budgets (median of {runs})",
               ms(med), "-", "-", "< 1 s", med < 1.0)


def fig_status(env, bins, work, plain, configured, records, runs):
    """status over the records, its totals from the ledger (checked: no
    warning, every record counted); then with no books, reading every
    record's head, for comparison."""
    e = dict(env, CCL_DELEGATE_CONFIG=plain)
    r = subprocess.run([bins["ccl"], "status", "--json"], env=e, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if r.returncode != 0 or r.stderr.strip():
        sys.exit(f"bench: status exited {r.returncode}: {r.stderr.decode(errors='replace')}")
    got = sum(t["done"] + t["failed"] for t in json.loads(r.stdout)["totals"])
    if got != records:
        sys.exit(f"bench: status totals {got} records, expected {records}")
    walls = [spawn_checked([bins["ccl"], "status"], e) for _ in range(runs)]
    med = statistics.median(walls)
    bare = os.path.join(work, "status-state")
    os.makedirs(bare, exist_ok=True)
    cfg = os.path.join(work, "status-bare.yaml")
    with open(cfg, "w") as f:
        f.write(f"state_dir: {bare}\nprojects: {json.dumps(configured)}\n")
    e = dict(env, CCL_DELEGATE_CONFIG=cfg)
    heads = statistics.median(spawn_checked([bins["ccl"], "-q", "status"], e) for _ in range(3))
    return Row(f"status with {records:,} records in done/ and failed/ of {CONFIGURED} "
               f"projects, totals from the books (median of {runs})", ms(med),
               f"(no books, every head read: {ms(heads)})", "-", "< 0.5 s", med < 0.5)


# ---------------------------------------------------------------------------
# The fleet (fleet.md "Performance"): the books in PostgreSQL
# ---------------------------------------------------------------------------

PG_USER = "ccl"
PG_PASSWORD = "bench-Pg-Secr3t"


def pg_bin_dir():
    """The newest /usr/lib/postgresql/<v>/bin holding initdb (Debian's
    layout), else the directory of an initdb on PATH; None without."""
    found = []
    root = "/usr/lib/postgresql"
    if os.path.isdir(root):
        for v in os.listdir(root):
            b = os.path.join(root, v, "bin")
            if os.access(os.path.join(b, "initdb"), os.X_OK):
                key = tuple(int(x) if x.isdigit() else 0 for x in v.split("."))
                found.append((key, b))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class Postgres:
    """A throwaway PostgreSQL server, as tests/pg/mod.rs makes one: initdb
    with a password for user `ccl` (scram-sha-256), pg_ctl start on a free
    loopback port and a unix socket in its own directory. Durable as a
    production server is (fsync and synchronous_commit left on: the
    figures include the commits' flushes). As root, initdb and pg_ctl run
    as `postgres` under runuser (initdb refuses root). stop() is
    idempotent; close() also removes the directory."""

    def __init__(self, bin_dir, parent):
        self.bin = bin_dir
        self.as_postgres = os.geteuid() == 0
        try:
            self.dir = tempfile.mkdtemp(prefix="ccl-delegate-bench-pg.", dir=parent)
        except OSError:
            self.dir = tempfile.mkdtemp(prefix="ccl-delegate-bench-pg.")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "log")
        self.pwfile = os.path.join(self.dir, "pw")
        self.running = False
        with open(self.pwfile, "w") as f:
            f.write(PG_PASSWORD)
        os.chmod(self.pwfile, 0o600)
        if self.as_postgres:
            os.chmod(self.dir, 0o700)
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.pwfile, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgres://{PG_USER}@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def _tool(self, name, *args, check=True):
        argv = [os.path.join(self.bin, name), *args]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, cwd=self.dir)
        if check and r.returncode != 0:
            log = ""
            if os.path.exists(self.log):
                with open(self.log, errors="replace") as f:
                    log = f.read()[-2000:]
            raise RuntimeError(f"{name} {' '.join(args)} exited {r.returncode}: "
                               f"{r.stdout.decode(errors='replace')}{log}")
        return r

    def start(self):
        self._tool("initdb", "-D", self.data, "-U", PG_USER, "--auth=scram-sha-256",
                   f"--pwfile={self.pwfile}")
        # max_connections: 200 clients at once in the burst, each a backend.
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c max_connections=250")
        self._tool("pg_ctl", "-D", self.data, "-o", opts, "-w", "-t", "60", "-l", self.log,
                   "start")
        self.running = True

    def stop(self):
        if self.running:
            self._tool("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False)
            self.running = False

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql):
        r = subprocess.run(
            [os.path.join(self.bin, "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", "postgres",
             "-c", sql],
            env=dict(os.environ, PGPASSWORD=PG_PASSWORD), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            sys.exit(f"bench: psql {sql[:80]!r}: {r.stderr.decode(errors='replace')}")
        return r.stdout.decode().strip()

    def count(self, sql):
        return int(self.psql(sql))


def fleet_host(work, base_env, pg, name, extra="", state_dir=None):
    """A host of the fleet: its own HOME, a password file (0600) and a
    config at the XDG place with `fleet: {url, password_file, host}`, as
    tests/fleet.rs writes them. `pg` None: a host without fleet. Answers
    (env, state directory, config path)."""
    home = os.path.join(work, "hosts", name)
    cfg_dir = os.path.join(home, ".config", "ccl-delegate")
    os.makedirs(cfg_dir, exist_ok=True)
    state = state_dir or os.path.join(home, ".local", "state", "ccl-delegate")
    text = ""
    if pg is not None:
        pw = os.path.join(cfg_dir, "pg-password")
        with open(pw, "w") as f:
            f.write(PG_PASSWORD + "\n")
        os.chmod(pw, 0o600)
        text += f"fleet:\n  url: {pg.url}\n  password_file: {pw}\n  host: {name}\n"
    if state_dir:
        text += f"state_dir: {state_dir}\n"
    text += "lock_timeout: 30s\n" + extra
    cfg = os.path.join(cfg_dir, "config.yaml")
    with open(cfg, "w") as f:
        f.write(text)
    env = dict(base_env, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
               XDG_STATE_HOME=os.path.join(home, ".local", "state"))
    return env, state, cfg


FLEET_BUDGET = "budget:\n  daily_cad: 100000\n  monthly_cad: 1000000\n"
FLEET_HOSTS = 10


def build_test_target(name):
    """Builds tests/bench/<name>.rs (a `harness = false` test target) with
    cargo; answers the executable's path."""
    cargo = os.environ.get("CARGO") or shutil.which("cargo")
    if not cargo:
        sys.exit(f"bench: cargo is needed to build tests/bench/{name}.rs")
    r = subprocess.run([cargo, "test", "--release", "--test", name, "--no-run",
                        "--message-format=json", "--quiet"], cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        sys.exit(f"bench: cargo test --release --test {name} --no-run failed:\n"
                 f"{r.stderr.decode(errors='replace')[-3000:]}")
    for line in r.stdout.decode().splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg.get("target", {}).get("name") == name:
            return msg["executable"]
    sys.exit(f"bench: cargo did not name the {name} executable")


def seed_fleet_ledger(pg, n, t_end):
    """n entries from FLEET_HOSTS hosts, ending over the last 29 days (the
    same spread of providers, failures and costs as the books' rows), in
    one INSERT ... SELECT generate_series: the ledger's triggers keep
    spend_day as a push does. Then VACUUM ANALYZE and a CHECKPOINT, as a
    database that has been running would be. Answers the seconds taken."""
    sql = f"""
INSERT INTO ccl_delegate.ledger (host, job_id, project, task, provider, model, status,
    cost_cad, tokens_in, tokens_out, delegated_at, finished_at, turnaround, step)
SELECT 'host-' || lpad((i % {FLEET_HOSTS})::text, 2, '0'),
       'f-' || lpad(i::text, 8, '0'),
       '/srv/host-' || lpad((i % {FLEET_HOSTS})::text, 2, '0') || '/p'
           || lpad((i / {FLEET_HOSTS} % 100)::text, 3, '0'),
       'task-' || lpad((i / 1000)::text, 5, '0') || '.md',
       (ARRAY['gpu', 'gemini', 'claude'])[i % 3 + 1],
       'm',
       CASE WHEN failed THEN 'failed' ELSE 'completed' END,
       CASE WHEN failed THEN 0 ELSE 0.001 + (i * 7919 % 191) / 10000.0 END,
       100, 50,
       to_char(to_timestamp(fin - 60 - i % 600) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
       to_char(to_timestamp(fin) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
       CASE WHEN failed THEN NULL ELSE 60 + i % 600 END,
       false
FROM (SELECT i, (i / 7) % 10 = 0 AS failed, {t_end} - ({n} - i) * {SPAN} / {n} AS fin
      FROM generate_series(0::bigint, {n - 1}) AS i) AS s"""
    t0 = time.perf_counter()
    pg.psql(sql)
    took = time.perf_counter() - t0
    pg.psql("VACUUM ANALYZE ccl_delegate.ledger")
    pg.psql("VACUUM ANALYZE ccl_delegate.spend_day")
    pg.psql("CHECKPOINT")
    got = pg.count("SELECT count(*) FROM ccl_delegate.ledger")
    hosts = pg.count("SELECT count(DISTINCT host) FROM ccl_delegate.ledger")
    if got != n or hosts != FLEET_HOSTS:
        sys.exit(f"bench: the fleet ledger holds {got} entries of {hosts} hosts "
                 f"(expected {n} of {FLEET_HOSTS})")
    return took


def fig_fleet_report(env, bins, n, runs):
    out = subprocess.run([bins["ccl"], "report", "--json"], env=env, check=True,
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL).stdout
    jobs = json.loads(out)["total"]["jobs"]
    if jobs != n:
        sys.exit(f"bench: the fleet's report counted {jobs} jobs of the {n} in its window")
    walls = [spawn_checked([bins["ccl"], "report"], env) for _ in range(runs)]
    med = statistics.median(walls)
    return Row(f"fleet: report over a fleet ledger of {n:,} entries from {FLEET_HOSTS} hosts, "
               f"with a budget (median of {runs})", ms(med), "-", "-", "< 1 s", med < 1.0)


def fig_fleet_submit(env_plain, env_fleet, pg, floor_bin, bins, work, runs, entries):
    """Plain submit, submit with fleet and a budget, and the floor program
    (one connection and one admission transaction, timed inside it), in
    turn, so that the machine's load hits each the same. Answers the rows,
    the fleet submit's median and the floor's three-round-trip transaction alone."""
    project = os.path.join(work, "fleet-submit")
    inbox = make_project(project)
    task = task_bytes()
    n = runs + 10
    for i in range(2 * n):
        with open(os.path.join(inbox, f"task-{i:04d}.md"), "wb") as f:
            f.write(task)
    floor_out = os.path.join(work, "pg-floor.out")
    ffd = os.open(floor_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    floor_env = dict(env_fleet, CCL_PG_FLOOR_URL=pg.url, CCL_PG_FLOOR_RUNS="1",
                     CCL_PG_FLOOR_TIMEOUT_MS="30000",
                     CCL_PG_FLOOR_PASSWORD_FILE=os.path.join(
                         env_fleet["XDG_CONFIG_HOME"], "ccl-delegate", "pg-password"))
    plain, fleet = [], []
    for i in range(n):
        a = spawn_checked([bins["ccl"], "submit", os.path.join(inbox, f"task-{2 * i:04d}.md")],
                          env_plain)
        b = spawn_checked([bins["ccl"], "submit",
                           os.path.join(inbox, f"task-{2 * i + 1:04d}.md")], env_fleet)
        spawn_checked([floor_bin], floor_env, stdout_fd=ffd)
        if i >= 10:  # the first few warm the caches (and make the local books)
            plain.append(a)
            fleet.append(b)
    os.close(ffd)
    with open(floor_out) as f:
        lines = [tuple(int(x) / 1e6 for x in line.split()) for line in f if line.strip()]
    if len(lines) != n:
        sys.exit(f"bench: the floor program printed {len(lines)} lines of {n}")
    floors = [t[0] for t in lines[10:]]
    txs = [t[1] for t in lines[10:]]
    floors3 = [t[2] for t in lines[10:]]
    txs3 = [t[3] for t in lines[10:]]
    made = count_files(inbox, ".md.delegated")
    reserved = pg.count("SELECT count(*) FROM ccl_delegate.reservation "
                        f"WHERE project = '{os.path.realpath(project)}'")
    left = pg.count("SELECT count(*) FROM ccl_delegate.reservation WHERE host = 'floor'")
    if made != 2 * n or reserved != n or left:
        sys.exit(f"bench: the submits left {made} markers and {reserved} fleet reservations, "
                 f"the floor {left} (expected {2 * n}, {n} and 0)")
    p, f_, fl, tx, fl3, tx3 = (statistics.median(x)
                               for x in (plain, fleet, floors, txs, floors3, txs3))
    r = (f_ - p) / fl
    return f_, tx3, [
        Row(f"fleet: submit with fleet and a budget, {entries:,}-entry fleet ledger, its own "
            f"reservations accumulating (median of {runs})", ms(f_),
            f"plain submit {ms(p)} + floor {ms(fl)}",
            f"{r:.2f}x floor", "<= 1.2x floor", r <= 1.2),
        Row("  its floor: one connection and one admission transaction, rust-postgres "
            "(tests/bench/pg_floor.rs, one process a run, timed inside)", ms(fl),
            f"(its transaction alone {ms(tx)})", "-", "-", None),
        Row("  the same with the floor's transaction made as the tool makes it, in three round "
            "trips (lock; reads and insert in one statement; commit)", ms(f_),
            f"plain submit {ms(p)} + floor {ms(fl3)} (transaction {ms(tx3)})",
            f"{(f_ - p) / fl3:.2f}x floor", "-", None),
    ]


def fig_fleet_reap(env_fleet, env_plain, pg, host, bins, work, mock, count, concurrency,
                   latency_ms, repeats):
    """A reap of `count` completed jobs with fleet (its entries pushed, its
    reservations reconciled), and the same without fleet, in turn."""
    fleet_walls, plain_walls = [], []
    for i in range(repeats):
        for name, env, walls in (("fleet", env_fleet, fleet_walls),
                                 ("plain", env_plain, plain_walls)):
            project = os.path.join(work, f"fleet-reap-{name}-{i}")
            delegate_tasks(mock, project, count)
            out = os.path.join(work, f"fleet-reap-{name}-{i}.out")
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            walls.append(spawn_checked([bins["ccl"], "reap", "--project", project,
                                        "--concurrency", str(concurrency)], env,
                                       stdout_fd=fd))
            os.close(fd)
            check_reaped(project, count)
        pushed = pg.count(f"SELECT count(*) FROM ccl_delegate.ledger WHERE host = '{host}'")
        held = pg.count(f"SELECT count(*) FROM ccl_delegate.reservation WHERE host = '{host}'")
        if pushed != count * (i + 1) or held:
            sys.exit(f"bench: after {i + 1} fleet reaps the fleet ledger holds {pushed} entries "
                     f"of {host} and {held} reservations (expected {count * (i + 1)} and 0)")
    fw, pw = statistics.median(fleet_walls), statistics.median(plain_walls)
    # fleet.md's ideal counts one request per job, but a completed job
    # takes two (GET the status, then GET the result: secutools-api.md),
    # as the reap row of the books counts them: the target is judged
    # against the two-request ideal, and the design's is printed beside it.
    design = count * latency_ms / 1000 / concurrency
    ideal = 2 * design
    r = fw / ideal
    return [
        Row(f"fleet: reap {count} completed jobs with fleet, {latency_ms} ms latency, "
            f"--concurrency {concurrency} (median of {repeats})", ms(fw),
            f"ideal {ms(ideal)} ({count} x 2 requests x {latency_ms} ms / {concurrency})",
            f"{r:.3f}x", "<= 1.15x", r <= 1.15),
        Row("  the same against fleet.md's ideal, which counts one request per job (a completed "
            "job takes two, status and result: no reap can come near it)", ms(fw),
            f"ideal {ms(design)} ({count} x {latency_ms} ms / {concurrency})",
            f"{fw / design:.3f}x", "(1.15x)", None),
        Row("  the same reap without fleet, in turn with it", ms(pw), f"ideal {ms(ideal)}",
            f"{pw / ideal:.3f}x", "-", None),
    ]


def fig_fleet_burst(base_env, pg, bins, work, mock, hosts, per_host, limit, alone, tx_alone):
    """`hosts` hosts each start `per_host` submits at once against
    `max_in_flight: all: limit`, none in flight: exactly `limit` delegate,
    the others are deferred (exit 75). Each submit runs with -v, whose line
    says how long its admission transaction took. Answers the rows."""
    task = task_bytes()
    envs, argvs = [], []
    pg.psql("DELETE FROM ccl_delegate.reservation")  # the earlier rows' jobs in flight
    for h in range(hosts):
        name = f"burst-{h}"
        env, _, _ = fleet_host(work, base_env, pg, name, f"max_in_flight:\n  all: {limit}\n")
        env = dict(env, SECUTOOLS_URL=mock.url, SECUTOOLS_API_KEY=KEY)
        # A host that has run before: its local books exist, its binary is
        # in the page cache. Its warm-up reservation is deleted below.
        warm = make_project(os.path.join(work, "burst-warm", name))
        with open(os.path.join(warm, "warm.md"), "wb") as f:
            f.write(task)
        spawn_checked([bins["ccl"], "submit", os.path.join(warm, "warm.md")], env)
        inbox = make_project(os.path.join(work, "burst", name))
        for i in range(per_host):
            path = os.path.join(inbox, f"task-{i:02d}.md")
            with open(path, "wb") as f:
                f.write(task)
            argvs.append([bins["ccl"], "-v", "submit", path])
            envs.append(env)
    pg.psql("DELETE FROM ccl_delegate.reservation")
    created_before = mock_stats(mock)["jobs_created"]
    outs = os.path.join(work, "burst-out")
    os.makedirs(outs)
    os.sync()
    pids = []
    t0 = time.perf_counter()
    for k, (argv, env) in enumerate(zip(argvs, envs)):
        actions = [
            (os.POSIX_SPAWN_DUP2, DEVNULL_FD, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.path.join(outs, f"{k}.out"),
             os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_OPEN, 2, os.path.join(outs, f"{k}.err"),
             os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        ]
        pids.append(os.posix_spawn(argv[0], argv, env, file_actions=actions))
    spawned = time.perf_counter() - t0
    codes = {}
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        codes[pid] = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    admissions, sent, deferred, bad = [], 0, 0, []
    for k, pid in enumerate(pids):
        with open(os.path.join(outs, f"{k}.out")) as f:
            out = f.read()
        with open(os.path.join(outs, f"{k}.err")) as f:
            err = f.read()
        for line in err.splitlines():
            m = line.split("admission by the fleet database took ", 1)
            if len(m) == 2:
                admissions.append(float(m[1].split()[0]) / 1000)
        code = codes[pid]
        if code == 0 and out.startswith("delegated "):
            sent += 1
        elif code == 75 and out.startswith(f"deferred gemini: {limit} in flight"):
            deferred += 1
        else:
            bad.append((code, out.strip(), err.strip()[-300:]))
    total = hosts * per_host
    created = mock_stats(mock)["jobs_created"] - created_before
    reserved = pg.count("SELECT count(*) FROM ccl_delegate.reservation")
    if bad or sent != limit or created != limit or reserved != limit:
        sys.exit(f"bench: the burst delegated {sent} (the mock made {created} jobs, the fleet "
                 f"holds {reserved} reservations), deferred {deferred}, expected {limit} and "
                 f"{total - limit}; unexpected: {bad[:3]}")
    if len(admissions) != total:
        sys.exit(f"bench: {len(admissions)} of the {total} submits said how long their "
                 f"admission took (-v)")
    admissions.sort()
    p50 = statistics.median(admissions)
    p99 = admissions[-(-99 * total // 100) - 1]  # nearest rank
    return [
        Row(f"fleet: {hosts} hosts x {per_host} simultaneous submits against max_in_flight "
            f"all: {limit} ({sent} delegated, {deferred} deferred; all started within "
            f"{ms(spawned)})", ms(wall), f"{total} x fleet submit alone {ms(total * alone)}",
            f"{wall / (total * alone):.2f}x", "-", None),
        Row(f"  its admission transactions under that contention, p50 (of {total}, from -v; "
            f"the {deferred} deferred keep nothing)",
            ms(p50), f"floor's 3-trip transaction alone {ms(tx_alone)}", f"{p50 / tx_alone:.1f}x",
            "-", None),
        Row("  the same, p99", ms(p99),
            f"floor's 3-trip transaction alone {ms(tx_alone)}", f"{p99 / tx_alone:.1f}x", "-", None),
    ]


def mock_stats(mock):
    conn = http.client.HTTPConnection(mock.host, mock.port, timeout=30)
    try:
        conn.request("GET", "/_mock/stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def fig_fleet_idle(env, state, bins, work, root, projects, runs):
    """The idle cron reap of a fleet host whose journal is all pushed and
    which holds no reservation, over idle projects, with the database
    stopped: it must not connect (a run that tried would exit 75). In turn
    with /bin/true and with the same reap, the same books, fleet removed
    from the config."""
    with open(os.path.join(env["XDG_CONFIG_HOME"], "ccl-delegate", "config.yaml")) as f:
        own = f.read()
    cmds = [(["/bin/true"], env)]
    for name, text in (("fleet", own), ("local", "".join(
            line for line in own.splitlines(keepends=True)
            if not line.startswith(("fleet:", "  url:", "  password_file:", "  host:"))))):
        cfg = os.path.join(work, f"idle-{name}.yaml")
        with open(cfg, "w") as f:
            f.write(text + f"state_dir: {state}\nprojects:\n  - {root}/*\n")
        cmds.append(([bins["ccl"], "reap"], dict(env, CCL_DELEGATE_CONFIG=cfg)))
    wal = os.path.join(state, BOOKS + "-wal")
    wal_mb = os.path.getsize(wal) / 1e6 if os.path.exists(wal) else 0.0
    true_med, idle_med, local_med = interleaved(cmds, runs, warmup=10)
    r = subprocess.run(cmds[1][0], env=cmds[1][1], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if r.returncode != 0 or r.stderr.strip():
        sys.exit(f"bench: the idle fleet reap exited {r.returncode}: "
                 f"{r.stderr.decode(errors='replace')}")
    return [
        Row(f"fleet: reap over {projects} projects, no markers, fleet configured and its "
            f"database stopped, the host's books all pushed (median of {runs})",
            ms(idle_med), f"(/bin/true {ms(true_med)})", "-", "< 5 ms", idle_med < 0.005),
        Row(f"  the same reap and books ({wal_mb:.1f} MB of WAL), fleet removed from the config",
            ms(local_med), "-", "-", "-", None),
    ]


def fleet_rows(args, base_env, bins, work, progress):
    """The rows of fleet.md "Performance", against a PostgreSQL server
    started here; (rows, None), or ([], why) when PostgreSQL is missing."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        return [], ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no "
                    "initdb on PATH; apt-get install postgresql)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return [], "running as root, and runuser (util-linux) is missing to run initdb"
    progress("the fleet: building tests/bench/pg_floor.rs")
    floor_bin = build_test_target("pg_floor")
    rows, mocks = [], []
    # Beside the work directory (on its disk): the server runs as postgres
    # when this runs as root, and the work directory is root's alone.
    pg = Postgres(bin_dir, os.path.dirname(os.path.realpath(work)))
    try:
        progress(f"the fleet: PostgreSQL ({bin_dir}) on 127.0.0.1:{pg.port}, fsync on")
        pg.start()
        fast = Mock(args.bin_dir, "--statuses", "running")
        mocks.append(fast)
        api = {"SECUTOOLS_URL": fast.url, "SECUTOOLS_API_KEY": KEY}
        env_submit, _, _ = fleet_host(work, base_env, pg, "h-submit", FLEET_BUDGET)
        env_submit.update(api)
        env_plain, _, _ = fleet_host(work, base_env, None, "plain")
        env_plain.update(api)
        # The schema, made by the tool's first connection.
        subprocess.run([bins["ccl"], "report", "--since", "1s"], env=env_submit, check=True,
                       stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        n = args.entries
        progress(f"the fleet: seeding its ledger with {n:,} entries of {FLEET_HOSTS} hosts")
        took = seed_fleet_ledger(pg, n, int(time.time()) - 60)
        rows.append(Row(f"fleet: its ledger seeded, {n:,} entries of {FLEET_HOSTS} hosts in one "
                        "INSERT ... SELECT (the triggers keep spend_day)", f"{took:.1f} s",
                        "-", "-", "-", None))
        progress("the fleet: report")
        rows.append(fig_fleet_report(env_submit, bins, n, 7))
        progress("the fleet: submit with fleet and a budget, plain submit, the floor")
        alone, tx_alone, more = fig_fleet_submit(env_plain, env_submit, pg, floor_bin, bins,
                                                 work, 200, n)
        rows.extend(more)
        slow = Mock(args.bin_dir, "--latency", "20ms", "--statuses", "completed")
        mocks.append(slow)
        api = {"SECUTOOLS_URL": slow.url, "SECUTOOLS_API_KEY": KEY}
        env_reap, state_reap, _ = fleet_host(work, base_env, pg, "h-reap", FLEET_BUDGET)
        env_reap.update(api)
        env_reap_plain, _, _ = fleet_host(work, base_env, None, "reap-plain")
        env_reap_plain.update(api)
        progress("the fleet: reap of 1000 completed jobs, with and without fleet")
        rows.extend(fig_fleet_reap(env_reap, env_reap_plain, pg, "h-reap", bins, work, slow,
                                   1000, 32, 20, args.reap_repeats))
        progress("the fleet: 8 hosts x 25 submits at once")
        rows.extend(fig_fleet_burst(base_env, pg, bins, work, fast, 8, 25, 100, alone,
                                    tx_alone))
        idle_root = make_idle_projects(os.path.join(work, "fleet-idle"), 100, 20)
        pg.stop()
        progress("the fleet: idle reap with the database stopped")
        rows.extend(fig_fleet_idle(env_reap, state_reap, bins, work, idle_root, 100, 100))
    finally:
        for m in mocks:
            m.close()
        pg.close()
    return rows, None


def print_table(rows):
    head = ["figure", "measured", "divided by", "ratio", "target", "met"]
    table = [head] + [r.cells for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r.cells))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target"), "release"))
    ap.add_argument("--work-dir", help="where the queues go (default: a new temporary "
                    "directory, removed afterwards); use a directory on the disk your "
                    "queues live on, since fsync costs differ between file systems")
    ap.add_argument("--decide-runs", type=int, default=300)
    ap.add_argument("--reap-repeats", type=int, default=3)
    ap.add_argument("--skip-baseline", action="store_true",
                    help="skip the bash+curl+jq peer (it takes about two minutes)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--only-spending", action="store_true",
                    help="measure only the rows of the books (their import, submit with "
                    "budgets, report, status, reap over idle projects with and without books)")
    ap.add_argument("--entries", type=int, default=1_000_000,
                    help="ledger entries of the books' rows and of the fleet's (default "
                    "1 000 000; a tenth of the books' are records of the configured projects)")
    ap.add_argument("--only-failover", action="store_true",
                    help="time only the reaps (completed jobs, then failing over)")
    ap.add_argument("--only-fleet", action="store_true",
                    help="measure only the rows of the fleet (fleet.md), against a PostgreSQL "
                    "server started for the run (initdb, pg_ctl; fsync on)")
    ap.add_argument("--skip-fleet", action="store_true",
                    help="skip the rows of the fleet")
    args = ap.parse_args()
    # A kill ends the run through the finally clauses: the mocks and the
    # PostgreSQL server stopped, the work directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))

    bins = {"ccl": os.path.join(args.bin_dir, "ccl-delegate")}
    for b in ("ccl-delegate", "secutools-mock"):
        if not os.access(os.path.join(args.bin_dir, b), os.X_OK):
            sys.exit(f"bench: {args.bin_dir}/{b} is missing: run cargo build --release")
    work = args.work_dir or tempfile.mkdtemp(prefix="ccl-delegate-bench.")
    os.makedirs(work, exist_ok=True)
    home = os.path.join(work, "home")
    os.makedirs(home, exist_ok=True)
    lock = os.path.join(work, "reap.lock")
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "XDG_CONFIG_HOME": os.path.join(home, ".config"),
        "XDG_STATE_HOME": os.path.join(home, ".local", "state"),
        "LANG": "C.UTF-8",
    }

    load_before = f"{os.getloadavg()[0]:.2f}"
    rows = []
    fleet_skipped = None
    mocks = []
    try:
        def progress(what):
            print(f"bench: {what}...", file=sys.stderr, flush=True)

        fast = Mock(args.bin_dir, "--statuses", "running")
        mocks.append(fast)
        fast_env = dict(base_env, SECUTOOLS_URL=fast.url, SECUTOOLS_API_KEY=KEY)
        only = args.only_spending or args.only_failover or args.only_fleet
        if not only:
            progress("decide")
            rows.append(fig_decide(base_env, bins, work, args.decide_runs))

            slow = Mock(args.bin_dir, "--latency", "20ms", "--statuses", "completed")
            mocks.append(slow)
            env = dict(base_env, SECUTOOLS_URL=slow.url, SECUTOOLS_API_KEY=KEY)
            progress("reap of 1000 completed jobs")
            reap_wall, row = fig_reap(env, bins, work, slow, 1000, 32, 20, args.reap_repeats, lock)
            rows.append(row)
            if not args.skip_baseline:
                progress("the bash+curl+jq baseline reaper (about two minutes)")
                rows.append(fig_baseline(env, work, slow, 1000, reap_wall))

        if not (args.only_spending or args.only_fleet):
            failing = Mock(args.bin_dir, "--latency", "20ms", "--statuses", "completed",
                           "--provider-outcome", "gemini=failed")
            mocks.append(failing)
            env = dict(base_env, SECUTOOLS_URL=failing.url, SECUTOOLS_API_KEY=KEY)
            progress("reap of 1000 failed jobs failing over")
            rows.append(fig_failover(env, bins, work, failing, 1000, 32, 20, args.reap_repeats,
                                     lock))

        if not only:
            progress("peak RSS of a reap over 10 000 markers")
            rows.append(fig_rss(fast_env, bins, work, fast, 10_000, 32, lock))
            progress("submit")
            rows.extend(fig_submit(fast_env, bins, work, fast, 200))

        if not (args.only_failover or args.only_fleet):
            n = args.entries
            progress(f"the books: a {n:,}-entry ledger.jsonl of an earlier version, "
                     f"its records, idle projects")
            configured, keys = spend_projects(work)
            state = os.path.join(work, "spend-state")
            os.makedirs(state)
            t_end = int(time.time()) - 60
            write_old_ledger(os.path.join(state, "ledger.jsonl"), n, keys, t_end)
            records = write_records(configured, n, t_end)
            idle_root = make_idle_projects(work, 100, 20)
            plain, policy = spending_configs(work, state, configured)
            os.sync()
            progress("its import by the first run")
            rows.append(fig_import(base_env, bins, state, plain, n))
            in_flight = seed_in_flight(configured, state, 100)
            progress("submit with budgets and limits vs plain")
            project, policy_rows = fig_submit_policy(fast_env, bins, work, state, plain, policy,
                                                     n, in_flight, 200)
            rows.extend(policy_rows)
            progress("report over the ledger")
            rows.append(fig_report(base_env, bins, policy, n, 7))
            release_in_flight(configured, state, [project])
            progress("status over the records")
            rows.append(fig_status(base_env, bins, work, plain, configured, records, 7))
            progress("reap over 100 idle projects, without and with books")
            rows.extend(fig_idle(base_env, bins, work, idle_root, 100, state, n, 100, lock))

        if not (only and not args.only_fleet) and not args.skip_fleet:
            fleet, fleet_skipped = fleet_rows(args, base_env, bins, work, progress)
            rows.extend(fleet)
    finally:
        for m in mocks:
            m.close()
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    print(f"ccl-delegate benchmark, {os.cpu_count()} CPUs, load average {load_before} before "
          f"and {os.getloadavg()[0]:.2f} after, work dir "
          f"{'in ' + os.path.dirname(work) if not args.work_dir else args.work_dir}")
    print_table(rows)
    if fleet_skipped:
        print(f"the fleet rows did not run: {fleet_skipped}")


if __name__ == "__main__":
    main()
