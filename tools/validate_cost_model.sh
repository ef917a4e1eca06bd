#!/usr/bin/env bash
# The cost model against measured runs on this machine, in three regimes
# (docs/PERFORMANCE.md, "Cost model validation"): `moebench validate` of a
# preset per regime, which calibrates the cpu backend at the regime's link
# cap before each repetition of the runs it models.  Prints markdown; takes
# about 10 minutes on 2 cores.  Usage:
#   tools/validate_cost_model.sh [BUILD_DIR]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-build}/harness/moebench"
[ -x "$bin" ] || { echo "validate_cost_model.sh: no $bin; build first" >&2; exit 1; }
# regime: preset, link cap (0 = uncapped), generated tokens
runs=(
  "mixed switch-base-8 6 32"
  "copy-bound bench-decode 2 16"
  "compute-bound paper-regime 0 16"
)
for r in "${runs[@]}"; do
  set -- $r
  regime=$1 preset=$2 link=$3 gen=$4
  echo "### $regime: $preset, link ${link} GB/s (0: uncapped)"
  echo
  "$bin" validate --preset "$preset" --link-gbps "$link" --prompt-len 32 --gen-len "$gen" --reps 3
  echo
done
