# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# two_nodes (only when named): the reveal on one node at `connections` connections, then on
# two nodes sharing the database at half the connections each, `rounds` rounds. Meant for
# PostgreSQL (HAZINA_BENCH_DATABASE_URL). Prints one JSON line (scenario "two_nodes":
# backend, one/two node rates, medians, p99s, ratio two / one, non_2xx).
scenario_two_nodes() {
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
}
