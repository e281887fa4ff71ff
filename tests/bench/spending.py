#!/usr/bin/env python3
"""`report` over a 100 000-entry ledger (policy.md "Performance": under
1 s), with budgets configured and 10 000 markers in flight across 100
projects in the in-flight index.

    cargo build --release --bins
    python3 tests/bench/spending.py [--entries N] [--runs N]

Prints the median wall time of `report`, `report --by project --json` and
`report --by day --csv`. Not a test: cargo test never runs it.
The admission read cost of a submit is measured by
    cargo test --release --lib admission_cost -- --ignored --nocapture
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "ccl-delegate")
PROVIDERS = ["gpu", "gemini", "claude"]
MODELS = {"gpu": "llama-3-70b", "gemini": "gemini-2.5-pro", "claude": "claude-sonnet"}
STATUSES = ["completed"] * 9 + ["failed", "expired", "timeout"]


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_ledger(path, entries, projects):
    rng = random.Random(1)
    now = datetime.now(timezone.utc)
    with open(path, "w") as f:
        for i in range(entries):
            # spread over the last 45 days, oldest first
            finished = now - timedelta(seconds=(entries - i) * 45 * 86400 // entries)
            delegated = finished - timedelta(seconds=rng.randint(5, 900))
            prov = PROVIDERS[i % 3]
            status = rng.choice(STATUSES)
            f.write(json.dumps({
                "job_id": f"j-{i:08d}",
                "project": projects[i % len(projects)],
                "task": f"task-{i}.md",
                "provider": prov,
                "model": MODELS[prov],
                "status": status,
                "cost_cad": round(rng.uniform(0.001, 0.2), 4) if status == "completed" else 0,
                "tokens_in": rng.randint(100, 5000),
                "tokens_out": rng.randint(50, 3000),
                "delegated_at": iso(delegated),
                "finished_at": iso(finished),
            }, separators=(",", ":")) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    if not os.access(BIN, os.X_OK):
        sys.exit(f"bench: {BIN} missing: run cargo build --release --bins")
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "state")
        os.makedirs(state)
        projects = [os.path.join(tmp, f"p{i:03d}") for i in range(100)]
        write_ledger(os.path.join(state, "ledger.jsonl"), a.entries, projects)
        with open(os.path.join(state, "inflight.tsv"), "w") as f:
            for p in projects:
                for prov in PROVIDERS + ["auto"]:
                    f.write(f"25\t{json.dumps(prov)}\t{json.dumps(p)}\n")
        cfg = os.path.join(tmp, "config.yaml")
        with open(cfg, "w") as f:
            f.write(f"state_dir: {state}\nprojects: {json.dumps(projects)}\n"
                    "budget:\n  daily_cad: 500\n  monthly_cad: 9000\n"
                    "  providers:\n    claude: {daily_cad: 100}\n"
                    "max_in_flight:\n  all: 20000\n  claude: 5000\n")
        size = os.path.getsize(os.path.join(state, "ledger.jsonl"))
        print(f"ledger: {a.entries} entries, {size / 1e6:.1f} MB; 10000 markers in flight across 100 projects")
        env = dict(os.environ, CCL_DELEGATE_CONFIG=cfg)
        for args in (["report"], ["report", "--by", "project", "--json"], ["report", "--by", "day", "--csv"]):
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                subprocess.run([BIN] + args, env=env, check=True, stdout=subprocess.DEVNULL)
                times.append(time.perf_counter() - t)
            print(f"{' '.join(args):32s} median {statistics.median(times) * 1000:7.1f} ms  (target < 1000 ms)")


if __name__ == "__main__":
    main()
