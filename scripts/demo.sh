#!/usr/bin/env bash
# Run slade/full-pipeline on a preset through the local services, wait, and report:
# metrics table, the two UI addresses and where the wall time went.
# Usage: scripts/demo.sh [PRESET] [extra `prefect deployment run` args, e.g. --param ...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
preset="${1:-quickstart}"
shift || true
cd "$SLADE_REPO"
log="$SLADE_HOME/logs/last-run.log"
started=$(date +%s.%N)
status=0
echo "prefect deployment run slade/full-pipeline (preset $preset); event stream: $log"
prefect deployment run slade/full-pipeline --param "preset=\"$preset\"" "$@" --watch \
    >"$log" 2>&1 || status=$?
flow_run_id=$(grep -oE 'UUID: [0-9a-f-]{36}' "$log" | head -n1 | cut -d' ' -f2)
[[ -n "$flow_run_id" ]] || { tail -n 20 "$log" >&2; echo "no flow run was created" >&2; exit 1; }
grep -E "^Flow run finished" "$log" || true
python scripts/report.py "$flow_run_id" --submitted "$started"
exit "$status"
