#!/usr/bin/env bash
# Instructions per request, access-token (a cached token) against the reveal, under
# callgrind: a count that repeats for the same binary and inputs whatever else the machine
# is doing, where the bench's rates move by ±15% round to round. For finding where a
# difference goes; the bench (scripts/bench.sh -s access-token) remains the measure.
#
# Release server on a temporary SQLite database with the bench's seed and Daraja stub,
# 200 warm-up requests of each, then N (default 1000) of each with 4 connections, each side
# in its own callgrind dump. Prints both totals per request, their ratio, and the functions
# whose inclusive counts differ most. Dumps stay in $OUT (default /tmp/hazina-callgrind).
#
# Under valgrind, SHA-256 runs its portable code (valgrind hides SHA-NI), so hashing counts
# several times what it costs natively; `perf` (scripts/profile-reveal.sh) shows that share.
#
#   scripts/count-instructions.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
out=${OUT:-/tmp/hazina-callgrind}
[[ -n ${NO_BUILD:-} ]] || cargo build --release --bins >&2
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
server_pid= stub=
trap 'kill $server_pid $stub 2>/dev/null || true; rm -rf "$work"' EXIT
# `serve` re-executes itself to set this unless it is set; valgrind would not follow.
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576
python3 scripts/daraja-stub.py "$work/stub-calls" >"$work/stub.port" &
stub=$!
until [[ -s $work/stub.port ]]; do sleep 0.05; done
export HAZINA_PROVIDER_MPESA_SANDBOX_URL=http://127.0.0.1:$(cat "$work/stub.port")
. scripts/seeded-server.sh
seeded_server "$work" count valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p"
id=$(curl -sf "$base/payments/credentials/" -H "Authorization: Bearer $tok" |
  python3 -c 'import json,sys; print(next(c["id"] for c in json.load(sys.stdin) if c["provider"] == "mpesa" and c["environment"] == "sandbox"))')
token() {
  oha --no-tui -n "$1" -c 4 -m POST -H "Authorization: Bearer $tok" -H 'Content-Type: application/json' \
    -d '{"reference":"bench-order"}' "$base/payments/credentials/$id/operations/access-token/" --output-format json >"$work/oha.json"
  ok "$1"
}
reveal() {
  oha --no-tui -n "$1" -c 4 -H "Authorization: Bearer $tok" "$base/payments/credentials/$id/get-private-key/" --output-format json >"$work/oha.json"
  ok "$1"
}
ok() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["statusCodeDistribution"]; sys.exit(d != {"200": int(sys.argv[2])})' "$work/oha.json" "$1"; }
token 200
reveal 200
# vgdb finds the process by its own listing (the pid of valgrind's client).
pid=$(vgdb -l 2>&1 | sed -n 's/use --pid=\([0-9]*\) .*hazina serve.*/\1/p' | head -1 || true)
[[ -n $pid ]] || { echo "callgrind's server not found by vgdb" >&2; exit 1; }
vgdb --pid="$pid" instrumentation on >/dev/null 2>&1
vgdb --pid="$pid" zero >/dev/null 2>&1
token "$n"
vgdb --pid="$pid" dump access-token >/dev/null 2>&1
vgdb --pid="$pid" zero >/dev/null 2>&1
reveal "$n"
vgdb --pid="$pid" dump reveal >/dev/null 2>&1
rm -rf "$out" && mkdir -p "$out"
cp "$work"/cg.*.1 "$out/access-token.callgrind"
cp "$work"/cg.*.2 "$out/reveal.callgrind"
python3 - "$out" "$n" <<'PY'
import collections, subprocess, sys
out, n = sys.argv[1], int(sys.argv[2])
def inclusive(side):
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", f"{out}/{side}.callgrind"],
                          capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for line in text.splitlines():
        line = line.strip()
        if not line[:1].isdigit() or "(" not in line:
            continue
        number, rest = line.split(" ", 1)
        counts[rest.split(")", 1)[1].strip()[:120]] += int(number.replace(",", ""))
    return counts
a, b = inclusive("access-token"), inclusive("reveal")
ta, tb = a["PROGRAM TOTALS"], b["PROGRAM TOTALS"]
print(f"instructions per request: access-token {ta / n:,.0f}, reveal {tb / n:,.0f}, reveal/access-token {tb / ta:.3f}")
print("largest differences (inclusive, per request): access-token - reveal, access-token, reveal")
for name in sorted(set(a) | set(b), key=lambda k: -abs(a[k] - b[k]))[1:31]:
    print(f"{(a[name] - b[name]) / n:>9,.0f} {a[name] / n:>9,.0f} {b[name] / n:>9,.0f}  {name}")
PY
