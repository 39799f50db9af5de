# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# audit_scale (only when named): a log of AUDIT_ENTRIES (default 1,000,000) entries, seeded
# through the vault's own append; the `hazina audit verify` rate and the latency of 2,000
# inclusion and 2,000 consistency proofs. Prints one JSON line (scenario "audit_scale":
# entries, seed/verify rates, proof latencies, bar "proof p99 <= 10 ms", met).
scenario_audit_scale() {
  # A log of AUDIT_ENTRIES entries, appended through the vault's own chain-and-tree append.
  scale=$work/scale
  mkdir -p "$scale"
  export_env=(HAZINA_DATABASE_URL="sqlite://$scale/db" HAZINA_KEYRING="$scale/keyring")
  env "${export_env[@]}" "$bin/hazina" keys init >/dev/null
  echo "==> audit_scale: seeding $audit_entries audit entries" >&2
  seed_start=$(date +%s.%N)
  env "${export_env[@]}" "$bin/hazina-seed" --credentials 10 --prefix bench --audit-entries "$audit_entries" >/dev/null
  seed_end=$(date +%s.%N)
  printf 'auditor password 0123\n' | env "${export_env[@]}" "$bin/hazina" users create --username benchauditor --role auditor --password-stdin >/dev/null
  verify_start=$(date +%s.%N)
  verify_out=$(env "${export_env[@]}" "$bin/hazina" audit verify)
  verify_end=$(date +%s.%N)
  start_server "$scale"
  at=$(token_for "$aux_base" benchauditor "auditor password 0123")
  python3 - "$aux_base" "$at" "$seed_start" "$seed_end" "$verify_start" "$verify_end" "$verify_out" <<'PY'
import http.client, json, random, sys, time, urllib.parse
base, token, s0, s1, v0, v1, verify_out = sys.argv[1:8]
u = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(u.hostname, u.port)
hdr = {"Authorization": f"Bearer {token}"}
def get(path):
    conn.request("GET", path, headers=hdr)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"{path}: {r.status} {body[:200]!r}")
    return json.loads(body) if body[:1] in (b"{", b"[") else body
size = int(get("/audit/checkpoint/").decode().split("\n")[1])
rng = random.Random(6962)
def timed(paths):
    lat = []
    for p in paths:
        t = time.perf_counter(); get(p); lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"requests": len(lat), "p50_ms": round(lat[len(lat) // 2], 3), "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 3), "max_ms": round(lat[-1], 3)}
incl = timed([f"/audit/proofs/inclusion/?seq={rng.randint(1, size)}&tree_size={size}" for _ in range(2000)])
cons = timed([f"/audit/proofs/consistency/?from={rng.randint(1, size - 1)}&to={size}" for _ in range(2000)])
report = json.loads(verify_out)
if not report["ok"]:
    raise SystemExit(f"audit verify failed: {verify_out}")
checked = report["checked"]
print(json.dumps({
    "scenario": "audit_scale", "entries": size,
    "seed_entries_per_sec": round(size / (float(s1) - float(s0))),
    "verify_entries_per_sec": round(checked / (float(v1) - float(v0))), "verify_checked": checked,
    "inclusion_proof": incl, "consistency_proof": cons,
    "bar": "proof p99 <= 10 ms", "met": incl["p99_ms"] <= 10 and cons["p99_ms"] <= 10,
}))
PY
  stop_server
}
