# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# reveal_during_login_flood: the reveal alone, then the reveal while 16 connections flood
# POST /users/login/. Prints report's JSON line for the flooded reveal (scenario
# "reveal_during_login_flood") plus unloaded_p99_ms (the reveal alone) and logins_per_sec.
scenario_reveal_during_login_flood() {
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
}
