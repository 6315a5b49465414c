#!/usr/bin/env bash
# Run slade/sweep through the local services, wait, and print its trials table.
# Usage: scripts/sweep.sh PRESET SPACE_JSON [extra `prefect deployment run` args, e.g.
#        --param validation_classes=15 --param sampler=\"tpe\" --param trials=20]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
preset="$1"
space="$2"
shift 2
cd "$SLADE_REPO"
log="$SLADE_HOME/logs/last-sweep.log"
status=0
echo "prefect deployment run slade/sweep (preset $preset, space $space); event stream: $log"
prefect deployment run slade/sweep --param "preset=\"$preset\"" --param "space=$space" "$@" \
    --watch >"$log" 2>&1 || status=$?
flow_run_id=$(grep -oE 'UUID: [0-9a-f-]{36}' "$log" | head -n1 | cut -d' ' -f2)
[[ -n "$flow_run_id" ]] || { tail -n 20 "$log" >&2; echo "no flow run was created" >&2; exit 1; }
grep -E "^Flow run finished" "$log" || true
python scripts/sweep_report.py "$flow_run_id"
exit "$status"
