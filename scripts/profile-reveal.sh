#!/usr/bin/env bash
# Profiles the reveal path: release server on a temporary SQLite database, `oha` driving
# reveals, `perf record` (software cpu-clock sampling: this VM has no hardware counters) on
# the server. Prints the hottest symbols; the raw profile stays in $OUT (default
# /tmp/hazina-reveal.perf). Needs `perf` (Debian: linux-perf) and `oha`.
#
#   scripts/profile-reveal.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
out=${OUT:-/tmp/hazina-reveal.perf}
[[ -n ${NO_BUILD:-} ]] || cargo build --release --bins >&2
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
server_pid=
trap 'kill $server_pid 2>/dev/null || true; rm -rf "$work"' EXIT
. scripts/seeded-server.sh
seeded_server "$work" prof
pid=$server_pid
id=$(curl -sf "$base/payments/credentials/" -H "Authorization: Bearer $tok" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
perf record -e cpu-clock -F 2000 -g -p "$pid" -o "$out" -- sleep "$secs" 2>/dev/null &
rec=$!
oha --no-tui -z "${secs}s" -c 32 -H "Authorization: Bearer $tok" "$base/payments/credentials/$id/get-private-key/" | grep -E "Requests/sec|99.00%"
wait $rec || true
echo "== by thread"
perf report -i "$out" --no-children --sort comm --stdio -g none 2>/dev/null | grep -E "^ +[0-9]" | head -12
echo "== by library"
perf report -i "$out" --no-children --sort dso --stdio -g none 2>/dev/null | grep -E "^ +[0-9]" | head -12
echo "== hottest symbols"
perf report -i "$out" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -E "^ +[0-9]" | head -30
