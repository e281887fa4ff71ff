#!/usr/bin/env bash
# BASELINE ONLY: not part of ccl-delegate, never run it on real queues.
#
# The peer of the benchmark's reap figure: the reaper one would write in
# plain bash with curl and jq, doing the same job as `ccl-delegate reap`
# for submitted markers, one job after the other. For each marker: GET the
# job's status; when completed, GET the result; write done/<id>.md (or
# failed/<id>.md) durably (temporary file, sync, rename without replacing,
# sync the directory); then remove the task and the marker and sync the
# inbox. Jobs still queued or running are left alone. It takes the queue
# lock once for the whole run (cheaper than reap's per-change locking).
#
# Usage: SECUTOOLS_URL=... SECUTOOLS_API_KEY=... baseline-reaper.sh PROJECT
set -euo pipefail

project=${1:?usage: baseline-reaper.sh PROJECT}
url=${SECUTOOLS_URL:?SECUTOOLS_URL is not set}
key=${SECUTOOLS_API_KEY:?SECUTOOLS_API_KEY is not set}
queue="$project/.agent-queue"
inbox="$queue/inbox"
mkdir -p "$queue/done" "$queue/failed"

exec 9>>"$queue/.ccl-delegate.lock"
flock 9

api() {
    curl -sS --fail-with-body -H "Authorization: Bearer $key" "$url/api/v1/jobs/$1"
}

# Writes stdin to $1/$2.md (or $2.N.md when taken), durably.
write_record() {
    local dir=$1 stem=$2 tmp target n=1
    tmp=$(mktemp "$queue/.baseline-tmp-XXXXXX")
    cat >"$tmp"
    sync "$tmp"
    target="$dir/$stem.md"
    # mv -n never replaces; the temporary file still there means it was taken.
    until mv -n -T "$tmp" "$target" 2>/dev/null && [ ! -e "$tmp" ]; do
        n=$((n + 1))
        [ "$n" -le 1000 ] || { echo "cannot place $tmp in $dir" >&2; return 1; }
        target="$dir/$stem.$n.md"
    done
    sync "$dir"
    echo "$target"
}

shopt -s nullglob
export TZ=UTC
for marker in "$inbox"/*.md.delegated; do
    task=${marker%.delegated}
    name=${task##*/}
    stem=${name%.md}
    { read -r job_id; read -r provider; read -r started_at; } < <(
        jq -r '.job_id, .provider, .started_at' "$marker")
    status_json=$(api "$job_id") || { echo "poll $job_id failed" >&2; continue; }
    { read -r status; read -r error; } < <(jq -r '.status, (.error // "" | tojson)' <<<"$status_json")
    printf -v now '%(%Y-%m-%dT%H:%M:%SZ)T' -1
    task_bytes=$(stat -c %s "$task")
    case $status in
    completed)
        result=$(api "$job_id/result") || { echo "result $job_id failed" >&2; continue; }
        # One jq renders the whole record but the original task; tojson
        # quotes the server's strings so they stay data in the YAML.
        target=$({
            jq -r --arg job "$job_id" --arg at "$started_at" --arg now "$now" \
                --arg bytes "$task_bytes" --arg name "$name" '
                "---\nstatus: completed\nprovider: \(.provider | tojson)\nmodel: \(.model | tojson)\n"
                + "cost_cad: \(.cost_cad)\njob_id: \($job)\ndelegated_at: \($at)\n"
                + "completed_at: \($now)\ntask_bytes: \($bytes)\n---\n"
                + "# Result (delegated to secutools)\n\(.response)\n---\n"
                + "provider: \(.provider), cost_cad: \(.cost_cad * 10000 | round / 10000)\n"
                + "## Original task (\($name))"' <<<"$result"
            cat "$task"
        } | write_record "$queue/done" "$stem")
        ;;
    failed | cancelled | expired)
        target=$({
            printf -- '---\nstatus: failed\nprovider: %s\nfailed_reason: %s\n' "$provider" "$status"
            printf 'job_id: %s\ndelegated_at: %s\nfailed_at: %s\ntask_bytes: %s\n---\n' \
                "$job_id" "$started_at" "$now" "$task_bytes"
            printf '# Delegation failed\nThe job ended `%s` on secutools: %s\n---\n' \
                "$status" "$error"
            printf '## Original task (%s)\n' "$name"
            cat "$task"
        } | write_record "$queue/failed" "$stem")
        ;;
    *)
        continue
        ;;
    esac
    rm -f -- "$task" "$marker"
    sync "$inbox"
    echo "${target##*/.agent-queue/} (job $job_id)"
done
