# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# login: POST /users/login/ for one account (a password hash per request). Prints report's
# JSON line (scenario "login").
scenario_login() {
  load login "$connections" -m POST -H 'Content-Type: application/json' -d "$login_body" "$base/users/login/"
  report login "$work/login.json"
}
