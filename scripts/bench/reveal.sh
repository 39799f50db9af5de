# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# reveal: GET .../get-private-key/ on one credential. Prints report's JSON line (scenario
# "reveal") plus audit_entries (the credential.reveal entries the run added, from `hazina
# audit export`) and audit_matches_successes (whether that equals the 2xx answers).
scenario_reveal() {
  before=$("$bin/hazina" audit export | grep -c '"credential.reveal"' || true)
  load reveal "$connections" "${auth[@]}" "$base/payments/credentials/$id/get-private-key/"
  after=$("$bin/hazina" audit export | grep -c '"credential.reveal"' || true)
  ok=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(v for k,v in d.get("statusCodeDistribution",{}).items() if k.startswith("2")))' "$work/reveal.json")
  report reveal "$work/reveal.json" "{\"audit_entries\": $((after - before)), \"audit_matches_successes\": $([[ $((after - before)) -eq $ok ]] && echo true || echo false)}"
}
