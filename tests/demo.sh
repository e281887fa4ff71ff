#!/usr/bin/env bash
# A full delegation cycle on this machine, no secutools account needed:
# starts the bundled secutools-mock, makes a sample project with three
# tasks, submits them as a dispatcher would, reaps (as cron would) until
# nothing is in flight, and shows a done file.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "building ccl-delegate and secutools-mock (cargo build; the first build takes a minute or two)..."
cargo build --quiet --bins
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug"
for b in ccl-delegate secutools-mock; do
    [ -x "$bin/$b" ] || { echo "demo: $bin/$b was not built" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/ccl-delegate-demo.XXXXXX")
mock_pid=
trap '[ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null' EXIT

"$bin/secutools-mock" --port 0 --latency 30ms --statuses queued,running,completed >"$work/mock.out" &
mock_pid=$!
for _ in $(seq 100); do [ -s "$work/mock.out" ] && break; sleep 0.05; done
SECUTOOLS_URL=$(sed -n '1s/^listening on //p' "$work/mock.out")
[ -n "$SECUTOOLS_URL" ] || { echo "demo: secutools-mock did not start" >&2; exit 1; }
export SECUTOOLS_URL
export SECUTOOLS_API_KEY=demo-key-not-secret
export XDG_CONFIG_HOME="$work/config" XDG_STATE_HOME="$work/state"
echo "secutools-mock at $SECUTOOLS_URL"

project="$work/sample-project"
inbox="$project/.agent-queue/inbox"
mkdir -p "$project"
echo
echo "== ccl-delegate init makes the project's queue"
"$bin/ccl-delegate" init "$project"
cat >"$inbox/haiku.md" <<'TASK'
---
preferred_ai: gemini
complexity_hint: short creative text
---
Write a haiku about cron jobs.
TASK
cat >"$inbox/summary.md" <<'TASK'
---
allow_delegation: true
priority: high
---
Summarise the design of a Maildir queue in three sentences.
TASK
cat >"$inbox/refactor.md" <<'TASK'
---
needs_claude_code: true
---
Refactor src/ to use the new error type.
TASK

echo
echo "== the dispatcher submits each task"
for task in "$inbox"/*.md; do
    printf '%-12s decide: %-12s submit: ' "$(basename "$task")" "$("$bin/ccl-delegate" decide "$task")"
    rc=0
    "$bin/ccl-delegate" submit "$task" || rc=$?
    [ "$rc" -eq 10 ] && echo "   (exit 10: the dispatcher runs it locally)"
done

echo
echo "== cron reaps until nothing is in flight"
for _ in $(seq 30); do
    "$bin/ccl-delegate" reap --project "$project"
    ls "$inbox"/*.delegated >/dev/null 2>&1 || break
    sleep 0.3
done

echo
echo "== ccl-delegate status"
"$bin/ccl-delegate" status --project "$project"

echo
echo "== $project/.agent-queue/done/haiku.md"
cat "$project/.agent-queue/done/haiku.md"
echo
echo "(the sample project stays in $project)"
