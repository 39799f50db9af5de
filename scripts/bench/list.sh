# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# list: GET /payments/credentials/ (the merchant's ten credentials). Prints report's JSON
# line (scenario "list").
scenario_list() {
  load list "$connections" "${auth[@]}" "$base/payments/credentials/"
  report list "$work/list.json"
}
