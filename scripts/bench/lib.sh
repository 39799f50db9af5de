# shellcheck shell=bash disable=SC2034,SC2154 # variables of scripts/bench.sh, which sources this
# Helpers shared by the scenarios in this folder; sourced by scripts/bench.sh, whose variables
# (bin, work, server_pid, idle_rss, base, token, connections, duration, rounds, peer_pids)
# they read when called. Defining them runs nothing.

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

# rss_kb FIELD: the main server's FIELD (VmRSS, VmHWM) from /proc/PID/status, in kB.
rss_kb() { awk -v f="$1" '$1 == f":" {print $2}' "/proc/$server_pid/status"; }

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

# free_port: a free TCP port on loopback (for the --compare peers).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# stop_peers: stops the --compare peers (peer_pids); run by the exit trap.
stop_peers() { for p in "${peer_pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
