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
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import secrets
import shutil
import socket
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


def interleaved_medians(a_argv, b_argv, runs, warmup, env=None):
    """Medians of two commands run alternately, so that drift in the
    machine's load hits both the same."""
    for _ in range(warmup):
        spawn_wait(a_argv, env)
        spawn_wait(b_argv, env)
    ta, tb = [], []
    for _ in range(runs):
        ta.append(spawn_checked(a_argv, env))
        tb.append(spawn_checked(b_argv, env))
    return statistics.median(ta), statistics.median(tb)


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


def marker_bytes(project, task_name, job_id, key, started_at, fallback=None):
    """A marker exactly as `ccl-delegate submit` leaves it once the job is
    known (src/marker.rs: serde_json's pretty printer, two-space indent,
    fields in declaration order, then a newline)."""
    m = {
        "version": 1,
        "state": "submitted",
        "project": project,
        "task_file": task_name,
        "job_id": job_id,
        "provider": "gemini",
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
    def __init__(self, figure, measured, divisor, ratio, target, ok):
        self.cells = [figure, measured, divisor, ratio, target, "yes" if ok else "NO"]


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


def fig_empty_projects(env, bins, work, projects, tasks_each, runs, lock):
    root = os.path.join(work, "many")
    task = task_bytes()
    for p in range(projects):
        inbox = make_project(os.path.join(root, f"project-{p:03d}"))
        for t in range(tasks_each):
            with open(os.path.join(inbox, f"task-{t:02d}.md"), "wb") as f:
                f.write(task)
    cfg = os.path.join(work, "many.yaml")
    with open(cfg, "w") as f:
        f.write(f"projects:\n  - {root}/*\nlock_file: {lock}\n")
    env = dict(env, CCL_DELEGATE_CONFIG=cfg)
    true_med, reap_med = interleaved_medians(["/bin/true"], [bins["ccl"], "reap"], runs,
                                             warmup=10, env=env)
    return Row(f"reap over {projects} projects, no markers (median of {runs})", ms(reap_med),
               f"(/bin/true {ms(true_med)})", "-", "< 5 ms", reap_med < 0.005)


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


def fig_submit(env, bins, work, mock, runs):
    project = os.path.join(work, "submit")
    inbox = make_project(project)
    task = task_bytes()
    names = [f"task-{i:04d}.md" for i in range(runs + 10)]
    for n in names:
        with open(os.path.join(inbox, n), "wb") as f:
            f.write(task)
    walls = []
    for i, n in enumerate(names):
        wall = spawn_checked([bins["ccl"], "submit", os.path.join(inbox, n)], env)
        if i >= 10:  # the first few warm the caches
            walls.append(wall)
    submit = statistics.median(walls)

    root = os.path.join(project, ".agent-queue")
    marker = marker_bytes(os.path.realpath(project), "x.md", "j-000001",
                          "ccl-" + "0" * 32, "2026-01-01T00:00:00Z")
    body = job_body("submit", "x.md", task.decode())
    for _ in range(10):
        durable_write(root, inbox, marker)
        loopback_round_trip(mock, body)
    dw = statistics.median(durable_write(root, inbox, marker) for _ in range(runs))
    rt = statistics.median(loopback_round_trip(mock, body) for _ in range(runs))
    floor = dw + rt
    r = submit / floor
    return Row(f"submit, 2 KB task (median of {runs})", ms(submit),
               f"durable write {ms(dw)} + round trip {ms(rt)}", f"{r:.2f}x", "<= 2x", r <= 2.0)


# ---------------------------------------------------------------------------
# Spending (policy.md "Performance")
# ---------------------------------------------------------------------------

SPEND_PROVIDERS = ["gpu", "gemini", "claude"]


def spending_state(work, entries, projects):
    """A state directory with a ledger of `entries` jobs over `projects`
    (one line each, as reap writes them, over the last 45 days) and an
    in-flight index of 25 markers per project and provider (10 000 across
    100 projects)."""
    import random
    from datetime import datetime, timedelta, timezone
    state = os.path.join(work, "spend-state")
    os.makedirs(state, exist_ok=True)
    rng = random.Random(1)
    now = datetime.now(timezone.utc)
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(os.path.join(state, "ledger.jsonl"), "w") as f:
        for i in range(entries):
            finished = now - timedelta(seconds=(entries - i) * 45 * 86400 // entries)
            prov = SPEND_PROVIDERS[i % 3]
            done = i % 10 != 0
            f.write(json.dumps({
                "job_id": f"j-{i:08d}", "project": projects[i % len(projects)],
                "task": f"task-{i // len(projects):05d}.md", "provider": prov, "model": "m",
                "status": "completed" if done else "failed",
                "cost_cad": round(rng.uniform(0.001, 0.02), 4) if done else 0,
                "tokens_in": 100, "tokens_out": 50,
                "delegated_at": iso(finished - timedelta(seconds=60)),
                "finished_at": iso(finished),
            }, separators=(",", ":")) + "\n")
    with open(os.path.join(state, "inflight.tsv"), "w") as f:
        for p in projects:
            for prov in SPEND_PROVIDERS + ["auto"]:
                f.write(f"25\t{json.dumps(prov)}\t{json.dumps(p)}\n")
    return state


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


def fig_submit_policy(env, bins, work, mock, state, projects, runs):
    """The same submit with and without budgets and limits, alternately."""
    plain, policy = spending_configs(work, state, projects)
    inbox = make_project(os.path.join(work, "submit-policy"))
    task = task_bytes()
    n = runs + 10
    for i in range(2 * n):
        with open(os.path.join(inbox, f"task-{i:04d}.md"), "wb") as f:
            f.write(task)
    a, b = [], []
    for i in range(n):
        for cfg, walls, j in ((plain, a, 2 * i), (policy, b, 2 * i + 1)):
            e = dict(env, CCL_DELEGATE_CONFIG=cfg)
            wall = spawn_checked([bins["ccl"], "submit", os.path.join(inbox, f"task-{j:04d}.md")], e)
            if i >= 10:  # the first few warm the caches (and bring spend.json up to date)
                walls.append(wall)
    plain_med, policy_med = statistics.median(a), statistics.median(b)
    r = policy_med / plain_med
    return Row(f"submit with budgets and limits, 100 000-entry ledger, 10 000 in flight "
               f"across 100 projects (median of {runs})", ms(policy_med),
               f"plain submit {ms(plain_med)}", f"{r:.2f}x", "<= 1.1x", r <= 1.1)


def fig_report(env, bins, work, state, projects, runs):
    _, policy = spending_configs(work, state, projects)
    e = dict(env, CCL_DELEGATE_CONFIG=policy)
    walls = [spawn_checked([bins["ccl"], "report"], e) for _ in range(runs)]
    med = statistics.median(walls)
    return Row(f"report over 100 000 ledger entries, with budgets (median of {runs})", ms(med),
               "-", "-", "< 1 s", med < 1.0)


def write_records(projects, per_project):
    """`per_project` records in each project's done/ (9 in 10) and failed/,
    named and numbered as the ledger of spending_state names them."""
    for pi, p in enumerate(projects):
        q = os.path.join(p, ".agent-queue")
        os.makedirs(os.path.join(q, "inbox"), exist_ok=True)
        for d in ("done", "failed"):
            os.makedirs(os.path.join(q, d), exist_ok=True)
        for k in range(per_project):
            i = k * len(projects) + pi
            done = i % 10 != 0
            head = (f"---\nstatus: {'completed' if done else 'failed'}\n"
                    f"provider: {SPEND_PROVIDERS[i % 3]}\nmodel: m\ncost_cad: 0.0100\n"
                    f"job_id: j-{i:08d}\ndelegated_at: 2026-01-01T00:00:00Z\n"
                    + ("completed_at" if done else "failed_at") + ": 2026-01-01T00:01:00Z\n"
                    + ("" if done else "failed_reason: failed\n")
                    + "task_bytes: 10\n---\n# Result\nok\n")
            name = os.path.join(q, "done" if done else "failed", f"task-{k:05d}.md")
            with open(name, "w") as f:
                f.write(head)


def fig_status(env, bins, work, state, projects, runs):
    plain, _ = spending_configs(work, state, projects)
    e = dict(env, CCL_DELEGATE_CONFIG=plain)
    walls = [spawn_checked([bins["ccl"], "status"], e) for _ in range(runs)]
    med = statistics.median(walls)
    # The same without the ledger: every record's head is read.
    hidden = os.path.join(state, "ledger.jsonl")
    os.rename(hidden, hidden + ".away")
    try:
        heads = statistics.median(spawn_checked([bins["ccl"], "status"], e) for _ in range(3))
    finally:
        os.rename(hidden + ".away", hidden)
    return Row(f"status with 100 000 records in done/ and failed/ of 100 projects, from "
               f"the ledger (median of {runs})", ms(med),
               f"(reading every head: {ms(heads)})", "-", "< 0.5 s", med < 0.5)


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
                    help="measure only the spending rows (submit with budgets, report, status)")
    ap.add_argument("--only-failover", action="store_true",
                    help="time only the reaps (completed jobs, then failing over)")
    args = ap.parse_args()

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
    mocks = []
    try:
        def progress(what):
            print(f"bench: {what}...", file=sys.stderr, flush=True)

        fast = Mock(args.bin_dir, "--statuses", "running")
        mocks.append(fast)
        fast_env = dict(base_env, SECUTOOLS_URL=fast.url, SECUTOOLS_API_KEY=KEY)
        only = args.only_spending or args.only_failover
        if not only:
            progress("decide")
            rows.append(fig_decide(base_env, bins, work, args.decide_runs))

            progress("reap over 100 projects without markers")
            rows.append(fig_empty_projects(base_env, bins, work, 100, 20, 100, lock))

            slow = Mock(args.bin_dir, "--latency", "20ms", "--statuses", "completed")
            mocks.append(slow)
            env = dict(base_env, SECUTOOLS_URL=slow.url, SECUTOOLS_API_KEY=KEY)
            progress("reap of 1000 completed jobs")
            reap_wall, row = fig_reap(env, bins, work, slow, 1000, 32, 20, args.reap_repeats, lock)
            rows.append(row)
            if not args.skip_baseline:
                progress("the bash+curl+jq baseline reaper (about two minutes)")
                rows.append(fig_baseline(env, work, slow, 1000, reap_wall))

        if not args.only_spending:
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
            rows.append(fig_submit(fast_env, bins, work, fast, 200))

        if not args.only_failover:
            progress("spending: a 100 000-entry ledger and 100 000 records")
            sp_projects = [os.path.join(work, "spend", f"p{i:03d}") for i in range(100)]
            state = spending_state(work, 100_000, sp_projects)
            write_records(sp_projects, 1000)
            progress("submit with budgets and limits vs plain")
            rows.append(fig_submit_policy(fast_env, bins, work, fast, state, sp_projects, 200))
            progress("report over the ledger")
            rows.append(fig_report(base_env, bins, work, state, sp_projects, 7))
            progress("status over the records")
            rows.append(fig_status(base_env, bins, work, state, sp_projects, 7))
    finally:
        for m in mocks:
            m.close()
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    print(f"ccl-delegate benchmark, {os.cpu_count()} CPUs, load average {load_before} before "
          f"and {os.getloadavg()[0]:.2f} after, work dir "
          f"{'in ' + os.path.dirname(work) if not args.work_dir else args.work_dir}")
    print_table(rows)


if __name__ == "__main__":
    main()
