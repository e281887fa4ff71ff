#!/usr/bin/env bash
# The performance figures of ccl-delegate in one run: builds the release
# binaries, then tests/bench/bench.py starts secutools-mock, builds the
# queues, times each figure against its floor or peer and prints a table.
#
#   bash tests/bench/run.sh                  # everything (about seven minutes)
#   bash tests/bench/run.sh --skip-baseline  # without the slow bash+curl+jq peer
#   bash tests/bench/run.sh --only-fleet     # the fleet's rows alone (PostgreSQL)
#   bash tests/bench/run.sh --help           # the other options
#
# Needs python3, and curl, jq, flock for the baseline reaper; the fleet's
# rows need PostgreSQL's initdb and pg_ctl (Debian: postgresql), else they
# are skipped on one line. Not a test: cargo test never runs it and asserts
# no timing.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
for tool in python3 curl jq flock; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: missing ${missing[*]} (apt-get install python3 curl jq util-linux)" >&2
    exit 1
fi

cargo build --release --quiet --bins
exec python3 tests/bench/bench.py "$@"
