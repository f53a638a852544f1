#!/usr/bin/env bash
# Loads adapters through the admin socket in batches of at most 256 items (the admin
# limit, docs/LIMITS.md), in order, with per-item results.
#
# Usage: ops/load-adapters.sh [--state-dir DIR] [--unload-missing] SOURCE
#   SOURCE is a directory (every subdirectory holding adapter_config.json is loaded
#   under its directory name) or a list file: one `NAME PATH` per line, # comments.
#   --unload-missing also unloads committed adapters that SOURCE does not name.
# Exit: 0 every item succeeded, 1 some item failed (see the output), 3/4 as `lorikeet ctl`.
set -euo pipefail
lorikeet="${LORIKEET:-lorikeet}"
state_dir="${LORIKEET_STATE_DIR:-./lorikeet-state}"
unload_missing=0
while (($#)); do
    case "$1" in
        --state-dir) state_dir="$2"; shift 2 ;;
        --unload-missing) unload_missing=1; shift ;;
        -h|--help) sed -n 2,9p "$0"; exit 0 ;;
        *) break ;;
    esac
done
source="${1:?usage: load-adapters.sh [--state-dir DIR] [--unload-missing] DIRECTORY|LIST}"

pairs="$(mktemp)"
trap 'rm -f "$pairs"' EXIT
if [[ -d "$source" ]]; then
    for config in "$source"/*/adapter_config.json; do
        [[ -e "$config" ]] || continue
        dir="$(cd "$(dirname "$config")" && pwd)"
        printf '%s %s\n' "$(basename "$dir")" "$dir" >>"$pairs"
    done
else
    grep -vE '^[[:space:]]*(#|$)' "$source" >"$pairs" || true
fi

current="$("$lorikeet" ctl adapters --json --state-dir "$state_dir")"
batch="$(python3 - "$pairs" "$unload_missing" "$current" <<'PY'
import json, sys
pairs_path, unload_missing, current = sys.argv[1], sys.argv[2] == "1", json.loads(sys.argv[3])
wanted = {}
for line in open(pairs_path):
    name, _, path = line.strip().partition(" ")
    if name and path.strip():
        wanted[name] = path.strip()
loaded = {a["name"]: a["path"] for a in current.get("adapters", [])}
items = [{"load": {"lora_name": n, "lora_path": p}} for n, p in sorted(wanted.items()) if n not in loaded]
if unload_missing:
    items += [{"unload": {"lora_name": n}} for n in sorted(loaded) if n not in wanted]
print(json.dumps(items))
PY
)"
if [[ "$batch" == "[]" ]]; then
    echo "nothing to do: every adapter is already loaded"
    exit 0
fi
# One `ctl batch` per 256 items; the exit status is the worst of them.
status=0
while IFS= read -r chunk; do
    echo "$chunk" | "$lorikeet" ctl batch - --state-dir "$state_dir" || { code=$?; ((code > status)) && status=$code; }
done < <(python3 -c 'import json, sys
items = json.loads(sys.stdin.read())
for start in range(0, len(items), 256):
    print(json.dumps(items[start:start + 256]))' <<<"$batch")
exit "$status"
