#!/usr/bin/env bash
# The layers check CI runs: no circle between the top-level modules of src/, no import that
# points up the order in src/layers.txt, and every module named in that order.
#
#   scripts/layers.sh            (needs ../shared/tools/layers.py beside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."

tool=${LAYERS_TOOL:-../shared/tools/layers.py}
if [[ ! -f $tool ]]; then
  echo "FAIL: $tool not found (set LAYERS_TOOL to the layers script)" >&2
  exit 1
fi

status=0
out=$(python3 "$tool" src --order src/layers.txt) || status=$?
echo "$out"
if [[ $status -ne 0 ]]; then
  echo "FAIL: modules import each other in a circle (above)" >&2
  exit 1
fi
if grep -q '^up:' <<<"$out"; then
  echo "FAIL: an import points up the order in src/layers.txt (the up: lines above)" >&2
  exit 1
fi

# Every top-level module must have its place, or its imports go unchecked.
listed=$(grep -v '^#' src/layers.txt | sed '/^\s*$/d' | sort)
present=$( (cd src && ls -d */ 2>/dev/null | tr -d / ; ls *.rs | sed 's/\.rs$//') | grep -vx 'lib\|main\|bin' | sort)
missing=$(comm -13 <(echo "$listed") <(echo "$present"))
if [[ -n $missing ]]; then
  echo "FAIL: modules with no place in src/layers.txt: $missing" >&2
  exit 1
fi
echo "layers: every import follows src/layers.txt"
