# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# floor: the server's floor, GET /healthz (no authentication, no database), at `connections`
# connections for `duration` seconds. Prints report's JSON line (scenario "floor").
scenario_floor() {
  load floor "$connections" "$base/healthz"
  report floor "$work/floor.json"
}
