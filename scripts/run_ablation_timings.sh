#!/usr/bin/env bash
# The ablation table's seconds per meta-step: for each ablation row of
# scripts/run_reproduction.sh, mamlpp-benchmark with exactly that row's
# flagfile and overrides, at epoch 0 (the epoch every row starts in: MSL on
# where the row has it, first order for the DA row), on random inputs of
# the row's shapes. One `<row>.json` and `<row>.log` per row in OUT_DIR,
# which `python scripts/results_tables.py --results=... --timings=OUT_DIR`
# puts in the table.
#
#   bash scripts/run_ablation_timings.sh OUT_DIR [STEPS]
#
# The training runs' own wall times are not used: they share the machine
# with other work. Nothing else may run meanwhile (pause a training run with
# SIGTERM or SIGSTOP first). Environment: MAMLPP_BENCHMARK, the benchmark
# command (default mamlpp-benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ $# -gt 2 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: $0 OUT_DIR [STEPS]" >&2
  exit 2
fi
OUT=$1
STEPS=${2:-10}
read -r -a BENCHMARK <<<"${MAMLPP_BENCHMARK:-mamlpp-benchmark}"
# The rows of results_tables.py's ABLATION, in the paper's order.
ROWS=(maml_5w1s_s0 ablation_bn ablation_bn_lslr ablation_bn_lslr_msl
      mamlpp_5w1s_s0 ablation_mamlpp_da)
mkdir -p "$OUT"

status=0
for row in "${ROWS[@]}"; do
  mapfile -t args < <(bash scripts/run_reproduction.sh --args "$row")
  command=("${BENCHMARK[@]}" "${args[@]}" --phase=train --epoch=0
    "--steps=$STEPS" --warmup=2 "--output_json=$OUT/$row.json")
  echo "== $row: ${command[*]}"
  if ! "${command[@]}" >"$OUT/$row.log" 2>&1; then
    echo "failed: see $OUT/$row.log" >&2
    tail -5 "$OUT/$row.log" >&2
    status=1
    continue
  fi
  grep -E "seconds_per_iteration|peak_rss" "$OUT/$row.log" || true
done
exit $status
