# Sourced by the profiling scripts (profile-reveal.sh, count-instructions.sh): a release
# server on a temporary SQLite database with the bench's seed, 10 credentials owned by
# PREFIX000000, started under WRAPPER if one is given (valgrind, say). Needs $bin.
#
#   seeded_server WORK PREFIX [WRAPPER ...]    sets server_pid, base and tok (a login's token)
seeded_server() {
  local work=$1 prefix=$2 port=
  shift 2
  export HAZINA_KEYRING=$work/keyring HAZINA_DATABASE_URL=sqlite://$work/seeded.db HAZINA_BIND=127.0.0.1:0
  export HAZINA_RATE_LIMIT_PER_MINUTE=0 HAZINA_LOG=${HAZINA_LOG:-warn} HAZINA_SEED_PASSWORD="$prefix password 0123"
  "$bin"/hazina keys init >/dev/null
  "$bin"/hazina-seed --credentials 10 --prefix "$prefix" >/dev/null
  "$@" "$bin"/hazina serve 2>"$work/log" &
  server_pid=$!
  until port=$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$work/log" | head -1) && [[ -n $port ]]; do sleep 0.05; done
  base=http://127.0.0.1:$port
  tok=$(curl -sf -X POST "$base/users/login/" -H 'Content-Type: application/json' \
    -d "{\"username\":\"${prefix}000000\",\"password\":\"$HAZINA_SEED_PASSWORD\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
}
