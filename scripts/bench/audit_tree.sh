# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# audit_tree (only when named): the reveal with the audit log's Merkle tree extended in every
# group commit vs not (HAZINA_BENCH_SKIP_AUDIT_TREE=1), on two fresh databases, `rounds`
# interleaved rounds. Prints one JSON line (scenario "audit_tree": with/without tree rates,
# medians, p99s, ratio, bar "ratio >= 0.95", met, non_2xx).
scenario_audit_tree() {
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
}
