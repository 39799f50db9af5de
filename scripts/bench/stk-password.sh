# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# stk-password (only when named): the M-Pesa STK password operation beside the reveal on the
# same M-Pesa sandbox credential, `rounds` interleaved rounds. Prints interleaved_summary's
# JSON line (scenario "stk-password", sides stk_password and reveal).
scenario_stk_password() {
  # The provider operation beside the reveal, on the same M-Pesa credential, interleaved.
  mid=$(mpesa_sandbox_id)
  curl -sf -X POST "$base/payments/credentials/$mid/rotate/" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"secrets":{"passkey":"bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"}}' >/dev/null
  curl -sf -X PUT "$base/payments/credentials/$mid/" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"settings":{"business_short_code":"174379"}}' >/dev/null
  echo "==> stk-password: $rounds interleaved rounds of ${duration}s, stk-password vs reveal on credential $mid" >&2
  # shellcheck disable=SC2317 # called through alternate
  stk_round() {
    load "stk-$1" "$connections" "${auth[@]}" -m POST -H 'Content-Type: application/json' \
      -d '{"reference":"bench-order"}' "$base/payments/credentials/$mid/operations/stk-password/"
  }
  # shellcheck disable=SC2317 # called through alternate
  reveal_round() { load "stkreveal-$1" "$connections" "${auth[@]}" "$base/payments/credentials/$mid/get-private-key/"; }
  alternate stk_round reveal_round
  interleaved_summary stk-password stk stk_password stkreveal reveal '{}'
}
