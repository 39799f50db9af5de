# shellcheck shell=bash disable=SC2034,SC2154 # variables of scripts/bench.sh, which sources this
# access-token (only when named): the token broker's cached access tokens beside the reveal on
# the same M-Pesa sandbox credential, against a Daraja stub on loopback, `rounds`
# interleaved rounds. Prints interleaved_summary's JSON line (scenario "access-token", sides
# access_token and reveal) plus provider_calls (the exchanges the stub answered).
#
# access_token_stub runs before the server starts (the runner calls it), so that the server
# is pointed at the stub; scenario_access_token is the measurement.
access_token_stub() {
  # A Daraja token endpoint on loopback for the token broker: answers every exchange with a
  # one-hour token and counts the calls (the scenario measures the broker's cache hits).
  python3 scripts/daraja-stub.py "$work/stub-calls" >"$work/stub.port" &
  stub_pid=$!
  for _ in $(seq 1 100); do [[ -s $work/stub.port ]] && break; sleep 0.05; done
  export HAZINA_PROVIDER_MPESA_SANDBOX_URL=http://127.0.0.1:$(cat "$work/stub.port")
}
scenario_access_token() {
  # The token broker's cache hits beside the reveal, on the same M-Pesa credential,
  # interleaved rounds; one exchange with the stub for the whole run.
  mid=$(mpesa_sandbox_id)
  curl -sf -X POST "$base/payments/credentials/$mid/operations/access-token/" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{}' >/dev/null
  echo "==> access-token: $rounds interleaved rounds of ${duration}s, access-token vs reveal on credential $mid" >&2
  # shellcheck disable=SC2317 # called through alternate
  token_round() {
    load "token-$1" "$connections" "${auth[@]}" -m POST -H 'Content-Type: application/json' \
      -d '{"reference":"bench-order"}' "$base/payments/credentials/$mid/operations/access-token/"
  }
  # shellcheck disable=SC2317 # called through alternate
  reveal_round() { load "tokenreveal-$1" "$connections" "${auth[@]}" "$base/payments/credentials/$mid/get-private-key/"; }
  alternate token_round reveal_round
  interleaved_summary access-token token access_token tokenreveal reveal \
    "{\"provider_calls\": $(cat "$work/stub-calls")}"
}
