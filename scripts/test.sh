#!/usr/bin/env bash
# hazina's test command: the whole suite on SQLite, the README's walk-throughs, then the
# integration suite again on PostgreSQL when one is reachable.
#
#   HAZINA_TEST_PG_URL  maintenance database used to create and drop one database per test
#                       (default postgres://postgres@127.0.0.1:5432/test)
#   CI=true             an unreachable PostgreSQL fails the run instead of being skipped
set -euo pipefail
cd "$(dirname "$0")/.."

pg_url=${HAZINA_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
export HAZINA_TEST_PG_URL=$pg_url

echo "==> SQLite: unit and integration tests"
HAZINA_TEST_BACKEND=sqlite cargo test --all-targets

# Every shell block of the README, verbatim, in order, against the binary the tests built
# (scripts/readme_test.py: a network namespace of its own, a fresh HOME, stub providers).
echo "==> README: every walk-through, as a newcomer pastes it"
python3 scripts/readme_test.py README.md

# host and port of the URL (postgres://user[:pw]@host[:port]/db)
hostport=${pg_url#*://}
hostport=${hostport#*@}
hostport=${hostport%%/*}
host=${hostport%%:*}
port=5432
[[ $hostport == *:* ]] && port=${hostport##*:}

if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  echo "==> PostgreSQL ($host:$port): integration tests"
  HAZINA_TEST_BACKEND=postgres cargo test --test api
else
  if [[ ${CI:-} == true ]]; then
    echo "FAIL: PostgreSQL at $host:$port is unreachable and CI=true: the PostgreSQL half must run in CI." >&2
    exit 1
  fi
  echo
  echo "NOTE: PostgreSQL at $host:$port is unreachable: the PostgreSQL half of the suite was NOT run."
  echo "      Start PostgreSQL or set HAZINA_TEST_PG_URL, then run scripts/test.sh again."
fi
