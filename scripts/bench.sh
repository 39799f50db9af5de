#!/usr/bin/env bash
# hazina's benchmarks (SPEC §8). Not part of the test suite; CI does not run it.
#
# Builds the release binaries, starts hazina on a temporary SQLite database (or on
# HAZINA_BENCH_DATABASE_URL, which must name an empty PostgreSQL database), seeds it, and
# drives `oha` (installed with cargo if missing) on loopback. Prints one JSON line per
# scenario: floor, reveal, list, verify, login, reveal_during_login_flood, rotation.
#
#   scripts/bench.sh [-d SECONDS] [-c CONNECTIONS] [-r ROTATION_ROWS] [-s SCENARIO ...]
#
# Rate limiting is turned off for the benchmark's principals (HAZINA_RATE_LIMIT_PER_MINUTE=0):
# the limiter would otherwise be what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=20
connections=32
rotation_rows=100000
only=()
while getopts "d:c:r:s:" opt; do
  case $opt in
    d) duration=$OPTARG ;;
    c) connections=$OPTARG ;;
    r) rotation_rows=$OPTARG ;;
    s) only+=("$OPTARG") ;;
    *) echo "usage: $0 [-d seconds] [-c connections] [-r rotation_rows] [-s scenario]..." >&2; exit 2 ;;
  esac
done
wants() { [[ ${#only[@]} -eq 0 ]] || [[ " ${only[*]} " == *" $1 "* ]]; }

echo "==> building release binaries" >&2
cargo build --release --bins >&2
if ! command -v oha >/dev/null 2>&1; then
  echo "==> installing oha (HTTP load generator)" >&2
  cargo install oha --locked >&2
fi
bin=target/release
work=$(mktemp -d)
server_pid=
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export HAZINA_KEYRING=$work/hazina.keyring
export HAZINA_DATABASE_URL=${HAZINA_BENCH_DATABASE_URL:-sqlite://$work/bench.db}
export HAZINA_BIND=127.0.0.1:0
export HAZINA_RATE_LIMIT_PER_MINUTE=0
export HAZINA_LOG=${HAZINA_LOG:-warn}
export HAZINA_SEED_PASSWORD="benchmark password 0123"
echo "==> rate limiting is OFF for this benchmark (HAZINA_RATE_LIMIT_PER_MINUTE=0)" >&2

"$bin/hazina" keys init >&2
"$bin/hazina-seed" --credentials 10 --prefix bench >&2

"$bin/hazina" serve 2>"$work/serve.log" &
server_pid=$!
port=
for _ in $(seq 1 200); do
  port=$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$work/serve.log" | head -1)
  [[ -n $port ]] && break
  sleep 0.05
done
[[ -n $port ]] || { cat "$work/serve.log" >&2; echo "server did not start" >&2; exit 1; }
base=http://127.0.0.1:$port

login_body='{"username":"bench000000","password":"benchmark password 0123"}'
token=$(curl -sf -X POST "$base/users/login/" -H 'Content-Type: application/json' -d "$login_body" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
id=$(curl -sf "$base/payments/credentials/" -H "Authorization: Bearer $token" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
key=$(curl -sf "$base/payments/credentials/$id/get-private-key/" -H "Authorization: Bearer $token" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["private_key"])')

rss_kb() { awk -v f="$1" '$1 == f":" {print $2}' "/proc/$server_pid/status"; }
idle_rss=$(rss_kb VmRSS)

# report SCENARIO OHA_JSON [extra json fields]
report() {
  python3 - "$1" "$2" "$idle_rss" "$(rss_kb VmHWM)" "$connections" "$duration" "${3:-}" <<'PY'
import json, sys
name, path, idle, peak, conns, secs, extra = sys.argv[1:8]
d = json.load(open(path))
s = d["summary"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
errors = sum(d.get("errorDistribution", {}).values()) + sum(v for k, v in codes.items() if not k.startswith("2"))
p = d.get("latencyPercentiles", {})
out = {
    "scenario": name,
    "requests_per_sec": round(s["requestsPerSec"], 1),
    "p50_ms": round(p.get("p50", 0) * 1000, 2),
    "p99_ms": round(p.get("p99", 0) * 1000, 2),
    "ok": ok,
    "errors": errors,
    "connections": int(conns),
    "duration_s": int(secs),
    "rss_idle_mb": round(int(idle) / 1024, 1),
    "rss_peak_mb": round(int(peak) / 1024, 1),
    "rate_limits": "off",
}
if extra:
    out.update(json.loads(extra))
print(json.dumps(out))
PY
}

load() { # load NAME CONNECTIONS oha-args...
  local name=$1 conns=$2; shift 2
  oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "${duration}s" -c "$conns" "$@" >"$work/$name.json"
}

auth=(-H "Authorization: Bearer $token")
if wants floor; then load floor "$connections" "$base/healthz"; report floor "$work/floor.json"; fi

if wants reveal; then
  before=$("$bin/hazina" audit export | grep -c '"credential.reveal"' || true)
  load reveal "$connections" "${auth[@]}" "$base/payments/credentials/$id/get-private-key/"
  after=$("$bin/hazina" audit export | grep -c '"credential.reveal"' || true)
  ok=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(v for k,v in d.get("statusCodeDistribution",{}).items() if k.startswith("2")))' "$work/reveal.json")
  report reveal "$work/reveal.json" "{\"audit_entries\": $((after - before)), \"audit_matches_successes\": $([[ $((after - before)) -eq $ok ]] && echo true || echo false)}"
fi

if wants list; then load list "$connections" "${auth[@]}" "$base/payments/credentials/"; report list "$work/list.json"; fi

if wants verify; then
  load verify "$connections" "${auth[@]}" -m POST -H 'Content-Type: application/json' \
    -d "{\"private_key\":\"$key\"}" "$base/payments/credentials/$id/verify/"
  report verify "$work/verify.json"
fi

if wants login; then
  load login "$connections" -m POST -H 'Content-Type: application/json' -d "$login_body" "$base/users/login/"
  report login "$work/login.json"
fi

if wants reveal_during_login_flood; then
  load reveal_alone "$connections" "${auth[@]}" "$base/payments/credentials/$id/get-private-key/"
  oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "${duration}s" -c 16 -m POST -H 'Content-Type: application/json' \
    -d "$login_body" "$base/users/login/" >"$work/flood.json" &
  flood=$!
  load reveal_flood "$connections" "${auth[@]}" "$base/payments/credentials/$id/get-private-key/"
  wait "$flood"
  unloaded=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["latencyPercentiles"]["p99"]*1000)' "$work/reveal_alone.json")
  logins=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["summary"]["requestsPerSec"],1))' "$work/flood.json")
  report reveal_during_login_flood "$work/reveal_flood.json" \
    "{\"unloaded_p99_ms\": $(printf '%.2f' "$unloaded"), \"logins_per_sec\": $logins}"
fi

if wants rotation; then
  # A separate database, so the row count is exactly what is rotated; memory is measured at
  # two sizes to show it stays flat in the row count.
  for rows in $((rotation_rows / 10)) "$rotation_rows"; do
    rot=$work/rotation-$rows
    mkdir -p "$rot"
    HAZINA_DATABASE_URL=sqlite://$rot/rot.db HAZINA_KEYRING=$rot/keyring "$bin/hazina" keys init >/dev/null
    HAZINA_DATABASE_URL=sqlite://$rot/rot.db HAZINA_KEYRING=$rot/keyring "$bin/hazina-seed" --credentials "$rows" --prefix rot >/dev/null
    HAZINA_DATABASE_URL=sqlite://$rot/rot.db HAZINA_KEYRING=$rot/keyring python3 - "$bin/hazina" "$rows" <<'PY'
import json, re, resource, subprocess, sys
out = subprocess.run([sys.argv[1], "keys", "rotate"], capture_output=True, text=True, check=True)
m = re.search(r"re-wrapped (\d+) data keys .* in ([\d.]+) s \((\d+) rows/s\)", out.stdout)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"scenario": "rotation", "rows": int(m.group(1)), "seconds": float(m.group(2)),
                  "rows_per_sec": int(m.group(3)), "rss_peak_mb": round(peak / 1024, 1),
                  "backend": "sqlite", "progress_lines": out.stderr.count("rewrapped")}))
PY
  done
fi
