# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# scale (only when named): SCALE_CREDENTIALS (default 1,000,000) credentials and SCALE_ENTRIES
# (default 10,000,000) audit entries seeded in bulk (SCALE_DIR keeps and reuses them); the
# reveal on the big database interleaved with the runner's small one, the list, auditor
# pages, verify and export rates, bytes per row and memory. Prints one JSON line (scenario
# "scale"), then, with SCALE_ROTATION set, rotation_report's line (scenario
# "scale_rotation").
scenario_scale() {
  # SCALE_CREDENTIALS credentials (ten per merchant) and SCALE_ENTRIES audit entries, seeded
  # in bulk; the reveal against the big database is interleaved with the small one above.
  # SCALE_DIR keeps the seeded database (and reuses it on the next run: seeding takes minutes).
  big=${SCALE_DIR:-$work/big}
  mkdir -p "$big"
  big_env=(HAZINA_DATABASE_URL="sqlite://$big/db" HAZINA_KEYRING="$big/keyring")
  seed_start=$(date +%s.%N)
  if [[ -f $big/db && -f $big/keyring ]]; then
    echo "==> scale: reusing the seeded database in $big" >&2
  else
    env "${big_env[@]}" "$bin/hazina" keys init >/dev/null
    echo "==> scale: seeding $scale_credentials credentials and $scale_entries audit entries" >&2
    env "${big_env[@]}" "$bin/hazina-seed" --credentials "$scale_credentials" --prefix big --audit-entries "$scale_entries" >/dev/null
    printf 'auditor password 0123\n' | env "${big_env[@]}" "$bin/hazina" users create --username bigauditor --role auditor --password-stdin >/dev/null
  fi
  seed_end=$(date +%s.%N)
  t0=$(date +%s.%N); env "${big_env[@]}" "$bin/hazina" audit verify >"$big/verify.json"; t1=$(date +%s.%N)
  env "${big_env[@]}" "$bin/hazina" audit export >/dev/null; t2=$(date +%s.%N)
  start_server "$big"
  big_pid=$aux_pid
  big_base=$aux_base
  btok=$(token_for "$big_base" "$(printf 'big%06d' $((scale_credentials / 20)))" "benchmark password 0123")
  bid=$(curl -sf "$big_base/payments/credentials/" -H "Authorization: Bearer $btok" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
  for round in $(seq 1 "$rounds"); do
    load "scale-small-$round" "$connections" -H "Authorization: Bearer $token" "$base/payments/credentials/$id/get-private-key/"
    load "scale-big-$round" "$connections" -H "Authorization: Bearer $btok" "$big_base/payments/credentials/$bid/get-private-key/"
  done
  load scale-list "$connections" -H "Authorization: Bearer $btok" "$big_base/payments/credentials/"
  at=$(token_for "$big_base" bigauditor "auditor password 0123")
  big_rss=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$big_pid/status")
  small_rss=$(rss_kb VmHWM)
  python3 - "$work" "$rounds" "$big_base" "$at" "$big/db" "$big/verify.json" "$seed_start" "$seed_end" "$t0" "$t1" "$t2" "$big_rss" "$small_rss" <<'PY'
import http.client, json, random, sqlite3, statistics, sys, time, urllib.parse
work, rounds, base, token, db, verify, s0, s1, t0, t1, t2, big_rss, small_rss = sys.argv[1:14]
rounds = int(rounds)
def oha(name):
    d = json.load(open(f"{work}/{name}.json"))
    codes = d.get("statusCodeDistribution", {})
    bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(d.get("errorDistribution", {}).values())
    return d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p99"] * 1000, bad
small = [oha(f"scale-small-{r}") for r in range(1, rounds + 1)]
big = [oha(f"scale-big-{r}") for r in range(1, rounds + 1)]
lst = oha("scale-list")
u = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(u.hostname, u.port)
hdr = {"Authorization": f"Bearer {token}"}
def get(path):
    conn.request("GET", path, headers=hdr)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"{path}: {r.status} {body[:200]!r}")
    return json.loads(body)
def timed(paths):
    lat = []
    for p in paths:
        t = time.perf_counter(); page = get(p); lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"requests": len(lat), "p50_ms": round(lat[len(lat) // 2], 3), "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 3)}
# Owners and credentials that the seeded entries name, read back from the database.
ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
creds = [r[0] for r in ro.execute("SELECT id FROM credentials ORDER BY random() LIMIT 500")]
owners = [r[0] for r in ro.execute("SELECT DISTINCT owner_id FROM credentials ORDER BY random() LIMIT 500")]
rng = random.Random(10)
filtered = timed([f"/audit/events/?credential={c}&limit=50" for c in creds[:250]]
                 + [f"/audit/events/?owner={o}&action=credential.reveal&limit=50" for o in owners[:250]])
# Cursor paging: follow next_cursor five pages deep from the newest, for 100 owners.
pages = []
for o in owners[:100]:
    cursor = None
    for _ in range(5):
        q = f"/audit/events/?owner={o}&limit=50" + (f"&cursor={cursor}" if cursor else "")
        t = time.perf_counter(); page = get(q); pages.append((time.perf_counter() - t) * 1000)
        cursor = page.get("next_cursor") if isinstance(page, dict) else None
        if not cursor:
            break
pages.sort()
cursor_p99 = round(pages[int(len(pages) * 0.99) - 1], 3)
sizes = {}
try:
    for name, size in ro.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
        sizes[name] = size
except sqlite3.OperationalError:
    pass
ncred = ro.execute("SELECT count(*) FROM credentials").fetchone()[0]
nent = ro.execute("SELECT count(*) FROM audit_log").fetchone()[0]
def owned(prefix_tables):
    return sum(v for k, v in sizes.items() if any(k == t or k.startswith(t + "_") or k.startswith(f"sqlite_autoindex_{t}") for t in prefix_tables))
cred_bytes = owned(["credentials", "credential_versions"])
entry_bytes = owned(["audit_log", "audit_tree"])
rep = json.load(open(verify))
med = statistics.median
sr, br = med([x[0] for x in small]), med([x[0] for x in big])
out = {
    "scenario": "scale", "credentials": ncred, "audit_entries": nent,
    "seed_seconds": round(float(s1) - float(s0), 1),
    "reveal_small_rps": [round(x[0], 1) for x in small], "reveal_big_rps": [round(x[0], 1) for x in big],
    "reveal_small_median_rps": round(sr, 1), "reveal_big_median_rps": round(br, 1), "reveal_big_over_small": round(br / sr, 3),
    "reveal_big_p99_ms": round(med([x[1] for x in big]), 2),
    "list_rps": round(lst[0], 1), "list_p99_ms": round(lst[1], 2),
    "auditor_filtered_page": filtered, "auditor_cursor_page_p99_ms": cursor_p99,
    "verify_entries_per_sec": round(rep["checked"] / (float(t1) - float(t0))), "verify_ok": rep["ok"],
    "export_entries_per_sec": round(nent / (float(t2) - float(t1))),
    "bytes_per_credential": round(cred_bytes / max(ncred, 1)) if sizes else None,
    "bytes_per_entry": round(entry_bytes / max(nent, 1)) if sizes else None,
    "rss_peak_mb_big": round(int(big_rss) / 1024, 1), "rss_peak_mb_small": round(int(small_rss) / 1024, 1),
    "non_2xx": sum(x[2] for x in small + big) + lst[2],
    "bars": "big/small >= 0.9, list and auditor page p99 <= 20 ms, verify >= 200,000 entries/s",
}
print(json.dumps(out))
PY
  stop_server
  if [[ -n ${SCALE_ROTATION:-} ]]; then
    rotation_report scale_rotation "${big_env[@]}"
  fi
}
