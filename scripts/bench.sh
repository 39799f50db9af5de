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
#
# This file is the runner: it parses the flags, builds the binaries, starts and seeds the
# server, and calls the scenarios in order. The shared helpers (load, report, start_server,
# alternate, ...) are in scripts/bench/lib.sh; each scenario is scripts/bench/<scenario>.sh,
# which defines one function, scenario_<name>, and reads the runner's variables (bin, work,
# base, token, id, key, auth, duration, connections, rounds, ...).
set -euo pipefail
# The scenario files, found beside this script (before the cd below, so that a relative
# path to it still resolves).
bench_dir=$(dirname "${BASH_SOURCE[0]}")/bench
[[ $bench_dir == /* ]] || bench_dir=$PWD/$bench_dir
cd "$(dirname "$0")/.."

# Helpers and scenario functions only: sourcing them runs nothing.
# shellcheck source=SCRIPTDIR/bench/lib.sh
source "$bench_dir/lib.sh"
# shellcheck source=SCRIPTDIR/bench/floor.sh
source "$bench_dir/floor.sh"
# shellcheck source=SCRIPTDIR/bench/reveal.sh
source "$bench_dir/reveal.sh"
# shellcheck source=SCRIPTDIR/bench/list.sh
source "$bench_dir/list.sh"
# shellcheck source=SCRIPTDIR/bench/verify.sh
source "$bench_dir/verify.sh"
# shellcheck source=SCRIPTDIR/bench/login.sh
source "$bench_dir/login.sh"
# shellcheck source=SCRIPTDIR/bench/reveal_during_login_flood.sh
source "$bench_dir/reveal_during_login_flood.sh"
# shellcheck source=SCRIPTDIR/bench/rotation.sh
source "$bench_dir/rotation.sh"
# shellcheck source=SCRIPTDIR/bench/stk-password.sh
source "$bench_dir/stk-password.sh"
# shellcheck source=SCRIPTDIR/bench/access-token.sh
source "$bench_dir/access-token.sh"
# shellcheck source=SCRIPTDIR/bench/two_nodes.sh
source "$bench_dir/two_nodes.sh"
# shellcheck source=SCRIPTDIR/bench/audit_tree.sh
source "$bench_dir/audit_tree.sh"
# shellcheck source=SCRIPTDIR/bench/audit_scale.sh
source "$bench_dir/audit_scale.sh"
# shellcheck source=SCRIPTDIR/bench/scale.sh
source "$bench_dir/scale.sh"
# shellcheck source=SCRIPTDIR/bench/compare.sh
source "$bench_dir/compare.sh"

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

"$bin/hazina" keys init >&2
"$bin/hazina-seed" --credentials 10 --prefix bench >&2

stub_pid=
# The access-token scenario's Daraja stub has to be up before the server starts.
if wants_named access-token; then access_token_stub; fi

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

idle_rss=$(rss_kb VmRSS)

auth=(-H "Authorization: Bearer $token")

# The scenarios, in this order. The first ones run by default (or when named with -s), and
# not with --compare; the rest only when named.
if wants floor; then scenario_floor; fi
if wants reveal; then scenario_reveal; fi
if wants list; then scenario_list; fi
if wants verify; then scenario_verify; fi
if wants login; then scenario_login; fi
if wants reveal_during_login_flood; then scenario_reveal_during_login_flood; fi
if wants rotation; then scenario_rotation; fi
if wants_named stk-password; then scenario_stk_password; fi
if wants_named access-token; then scenario_access_token; fi
if wants_named two_nodes; then scenario_two_nodes; fi
if wants_named audit_tree; then scenario_audit_tree; fi
if wants_named audit_scale; then scenario_audit_scale; fi
if wants_named scale; then scenario_scale; fi

# --compare floor,openbao: its servers (peer_pids) are stopped on exit too.
peer_pids=()
trap 'stop_peers; cleanup' EXIT

if [[ -n $compare ]]; then scenario_compare; fi
