# shellcheck shell=bash disable=SC2154 # variables of scripts/bench.sh, which sources this
# rotation: `hazina keys rotate` on a database of its own, at rotation_rows / 10 and at
# rotation_rows (-r) credentials, to show memory stays flat in the row count. Prints
# rotation_report's JSON line for each size (scenario "rotation": rows, seconds,
# rows_per_sec, rss_peak_mb, backend, progress_lines).
scenario_rotation() {
  # A separate database, so the row count is exactly what is rotated; memory is measured at
  # two sizes to show it stays flat in the row count.
  for rows in $((rotation_rows / 10)) "$rotation_rows"; do
    rot=$work/rotation-$rows
    mkdir -p "$rot"
    HAZINA_DATABASE_URL=sqlite://$rot/rot.db HAZINA_KEYRING=$rot/keyring "$bin/hazina" keys init >/dev/null
    HAZINA_DATABASE_URL=sqlite://$rot/rot.db HAZINA_KEYRING=$rot/keyring "$bin/hazina-seed" --credentials "$rows" --prefix rot >/dev/null
    rotation_report rotation HAZINA_DATABASE_URL="sqlite://$rot/rot.db" HAZINA_KEYRING="$rot/keyring"
  done
}
