#!/usr/bin/env bash
# Health check for load balancers and orchestrators: exit 0 when the server answers
# GET /health with 200 (the worker that took the connection reaches a healthy engine).
#
# Usage: ops/healthcheck.sh [URL]   (default http://127.0.0.1:8000/health; LORIKEET_URL)
# With --deep, also requires the supervisor to report every worker ready (admin socket;
# run on the host, as the server's user): ops/healthcheck.sh --deep [--state-dir DIR]
set -euo pipefail
url="${LORIKEET_URL:-http://127.0.0.1:8000/health}"
deep=0
state_dir="${LORIKEET_STATE_DIR:-./lorikeet-state}"
while (($#)); do
    case "$1" in
        --deep) deep=1; shift ;;
        --state-dir) state_dir="$2"; shift 2 ;;
        *) url="$1"; shift ;;
    esac
done
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)"
if [[ "$code" != "200" ]]; then
    echo "unhealthy: $url answered ${code:-nothing}" >&2
    exit 1
fi
if ((deep)); then
    "${LORIKEET:-lorikeet}" ctl status --json --state-dir "$state_dir" | python3 -c '
import json, sys
s = json.load(sys.stdin)
ok = s["ready_workers"] == s["workers"] and s["engine_state"] == "running" and s["leader_slot"] >= 0
print("%d/%d workers ready, engine %s, leader slot %d" % (s["ready_workers"], s["workers"], s["engine_state"], s["leader_slot"]))
sys.exit(0 if ok else 1)'
fi
echo "healthy"
