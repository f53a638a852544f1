#!/usr/bin/env bash
# Rolling restart through the admin socket, then waits until every slot runs a new,
# ready worker and the adapter table is unchanged.
#
# Usage: ops/rolling-restart.sh [--state-dir DIR] [--timeout SECONDS]
# Exit: 0 done and verified, 1 not verified in time (see the message), 3/4 as `lorikeet ctl`.
set -euo pipefail
lorikeet="${LORIKEET:-lorikeet}"
state_dir="${LORIKEET_STATE_DIR:-./lorikeet-state}"
timeout=300
while (($#)); do
    case "$1" in
        --state-dir) state_dir="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        -h|--help) sed -n 2,6p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 64 ;;
    esac
done
ctl() { "$lorikeet" ctl "$@" --json --state-dir "$state_dir"; }
pids() { ctl workers | python3 -c 'import json,sys; print(" ".join(str(w["pid"]) for w in json.load(sys.stdin)))'; }

before_pids="$(pids)"
before_table="$(ctl adapters | python3 -c 'import json,sys; t=json.load(sys.stdin); print(t["version"])')"
ctl restart >/dev/null
echo "rolling restart started (workers: $before_pids)"
deadline=$((SECONDS + timeout))
while ((SECONDS < deadline)); do
    if ctl workers | python3 -c '
import json, sys
old = set(sys.argv[1].split())
workers = json.load(sys.stdin)
slots = {w["slot"] for w in workers}
ok = all(w["state"] == "ready" and str(w["pid"]) not in old for w in workers) and len(workers) == len(slots)
sys.exit(0 if ok else 1)' "$before_pids"; then
        after_table="$(ctl adapters | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')"
        echo "every worker replaced and ready (workers: $(pids)); table version $before_table -> $after_table"
        exit 0
    fi
    sleep 1
done
echo "rolling restart not complete after ${timeout}s:" >&2
"$lorikeet" ctl workers --state-dir "$state_dir" >&2 || true
exit 1
