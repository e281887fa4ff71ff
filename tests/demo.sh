#!/usr/bin/env bash
# A full delegation cycle on this machine, no secutools account needed:
# starts the bundled secutools-mock (gemini's jobs fail, each provider has
# its price), makes a sample project with six tasks and a config with a
# budget, a limit and a failover chain, then runs a dispatcher loop around
# `submit` and a cron `reap` by turns until the queue is empty: a task fails
# over from gemini to claude, one is deferred by a limit (exit 75) and sent
# on a later pass, one is refused by a budget (exit 10) and run locally.
# Ends with `report` and a look inside the books.
#
# CCL_DEMO_BIN=DIR uses the binaries in DIR instead of building them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${CCL_DEMO_BIN:-}" ]; then
    bin=$CCL_DEMO_BIN
else
    echo "building ccl-delegate and secutools-mock (cargo build; the first build takes a minute or two)..."
    cargo build --quiet --bins
    bin="${CARGO_TARGET_DIR:-$PWD/target}/debug"
fi
for b in ccl-delegate secutools-mock; do
    [ -x "$bin/$b" ] || { echo "demo: $bin/$b was not built" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/ccl-delegate-demo.XXXXXX")
mock_pid=
trap '[ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null' EXIT

"$bin/secutools-mock" --port 0 --statuses running,completed \
    --provider-outcome gemini=failed \
    --provider-cost claude=0.25 --provider-cost gpu=0.02 >"$work/mock.out" &
mock_pid=$!
for _ in $(seq 100); do [ -s "$work/mock.out" ] && break; sleep 0.05; done
SECUTOOLS_URL=$(sed -n '1s/^listening on //p' "$work/mock.out")
[ -n "$SECUTOOLS_URL" ] || { echo "demo: secutools-mock did not start" >&2; exit 1; }
export SECUTOOLS_URL
export SECUTOOLS_API_KEY=demo-key-not-secret
export XDG_CONFIG_HOME="$work/config" XDG_STATE_HOME="$work/state"
echo "secutools-mock at $SECUTOOLS_URL: gemini's jobs fail; a claude job costs 0.25 CAD, a gpu job 0.02"

project="$work/sample-project"
inbox="$project/.agent-queue/inbox"
mkdir -p "$project" "$XDG_CONFIG_HOME/ccl-delegate"
cat >"$XDG_CONFIG_HOME/ccl-delegate/config.yaml" <<'CONFIG'
budget:
  providers:
    gemini: {daily_cad: 0.30, estimate_cad: 0.25}  # room for one gemini job at a time
max_in_flight:
  gpu: 1                                           # one gpu job in flight at a time
fallback:
  gemini: [claude]                                 # a failed gemini job goes to claude
CONFIG
echo
echo "== the config ($XDG_CONFIG_HOME/ccl-delegate/config.yaml)"
cat "$XDG_CONFIG_HOME/ccl-delegate/config.yaml"

echo
echo "== ccl-delegate init makes the project's queue"
"$bin/ccl-delegate" init "$project"
task() { printf -- '---\n%s\n---\n%s\n' "$2" "$3" >"$inbox/$1"; }
task haiku.md     'preferred_ai: gemini'                 'Write a haiku about cron jobs.'
task limerick.md  'preferred_ai: gemini'                 'Write a limerick about lock files.'
task refactor.md  'needs_claude_code: true'              'Refactor src/ to use the new error type.'
task review.md    'preferred_ai: claude'                 'Review the design of a Maildir queue.'
task summary.md   "preferred_ai: gpu"$'\n''priority: high' 'Summarise RFC 9110 in three sentences.'
task translate.md 'preferred_ai: gpu'                    'Translate the README into French.'

# The dispatcher's reaction to submit's exit code.
run_locally() {
    echo "    -> runs $(basename "$1") locally"
    mkdir -p "$project/ran-locally" && mv "$1" "$project/ran-locally/"
}
dispatch() {
    local task rc
    for task in "$inbox"/*.md; do
        [ -e "$task" ] || continue
        [ -e "$task.delegated" ] && continue        # owned by a secutools job: skip
        printf '%-13s decide: %-12s submit: ' "$(basename "$task")" "$("$bin/ccl-delegate" decide "$task")"
        rc=0
        "$bin/ccl-delegate" submit "$task" 2>"$work/submit.err" || rc=$?
        case $rc in
            0)  ;;                                  # delegated: skip it
            10) echo "    (exit 10: $(head -n1 "$work/submit.err" | sed 's/^ccl-delegate: //'))"
                run_locally "$task" ;;
            75) echo "    (exit 75: left for the next pass)" ;;
            *)  echo "    (exit $rc: $(cat "$work/submit.err"))"
                run_locally "$task" ;;
        esac
    done
}

for pass in $(seq 10); do
    echo
    echo "== dispatcher, pass $pass"
    dispatch
    echo "== cron: ccl-delegate reap"
    "$bin/ccl-delegate" reap --project "$project"
    ls "$inbox"/*.md >/dev/null 2>&1 || break
    sleep 0.2
done

echo
echo "== ccl-delegate status (tasks: the last job of each, by its record)"
"$bin/ccl-delegate" status --project "$project"

echo
echo "== ccl-delegate report (jobs: every job of a chain)"
"$bin/ccl-delegate" report

echo
echo "== $project/.agent-queue/done/haiku.md"
cat "$project/.agent-queue/done/haiku.md"

books="$XDG_STATE_HOME/ccl-delegate/books.sqlite"
echo
echo "== the books: $books"
query="SELECT provider, count(*), round(sum(cost_cad), 4) FROM ledger GROUP BY provider"
if command -v sqlite3 >/dev/null 2>&1; then
    echo "\$ sqlite3 -readonly $books \"$query\""
    sqlite3 -readonly "$books" "$query"
else
    echo "(sqlite3 is not installed: install it (Debian: apt-get install sqlite3) and run"
    echo " sqlite3 -readonly $books \"$query\")"
fi
echo
echo "(the sample project stays in $project)"
