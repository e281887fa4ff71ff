#!/usr/bin/env python3
"""`report` over the books on its own (policy.md "Performance": under 1 s
over 1 000 000 ledger entries), with budgets configured and 10 000 jobs in
flight across 100 projects.

The books are seeded as tests/bench/bench.py seeds them: an earlier
version's ledger.jsonl, imported by the first run that opens the books
(timed and printed), then the reservations of 10 000 markers written beside
their tasks.

    cargo build --release --bins
    python3 tests/bench/spending.py [--entries N] [--runs N]

Prints the import's time, then the median wall time of `report`,
`report --by project --json` and `report --by day --csv`. Not a test:
cargo test never runs it. The whole table: bash tests/bench/run.sh.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import bench


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(bench.REPO, "target")
    bins = {"ccl": os.path.join(target, "release", "ccl-delegate")}
    if not os.access(bins["ccl"], os.X_OK):
        sys.exit(f"bench: {bins['ccl']} missing: run cargo build --release --bins")
    with tempfile.TemporaryDirectory(prefix="ccl-delegate-spending.") as work:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work,
               "LANG": "C.UTF-8"}
        configured, keys = bench.spend_projects(work)
        state = os.path.join(work, "spend-state")
        os.makedirs(state)
        t_end = int(time.time()) - 60
        bench.write_old_ledger(os.path.join(state, "ledger.jsonl"), a.entries, keys, t_end)
        plain, policy = bench.spending_configs(work, state, configured)
        os.sync()
        imported = bench.fig_import(env, bins, state, plain, a.entries)
        print(f"{imported.cells[0]}: {imported.cells[1]}")
        n = bench.seed_in_flight(configured, state, 100)
        print(f"{a.entries} entries; {n} jobs in flight across {len(configured)} projects")
        e = dict(env, CCL_DELEGATE_CONFIG=policy)
        for args in (["report"], ["report", "--by", "project", "--json"],
                     ["report", "--by", "day", "--csv"]):
            med = statistics.median(bench.spawn_checked([bins["ccl"], *args], e)
                                    for _ in range(a.runs))
            print(f"{' '.join(args):32s} median {med * 1000:7.1f} ms  (target < 1000 ms)")


if __name__ == "__main__":
    main()
