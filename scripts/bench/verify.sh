# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# verify: POST .../verify/ with the credential's private key. Prints report's JSON line
# (scenario "verify").
scenario_verify() {
  load verify "$connections" "${auth[@]}" -m POST -H 'Content-Type: application/json' \
    -d "{\"private_key\":\"$key\"}" "$base/payments/credentials/$id/verify/"
  report verify "$work/verify.json"
}
