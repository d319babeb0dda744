#!/usr/bin/env bash
# The Results tables' seconds per meta-step: for each ablation row of
# tools/run_reproduction.sh, mamlpp-benchmark with exactly that row's
# flagfile and overrides, at epoch 0 (the epoch every row starts in: MSL on
# where the row has it, first order for the DA row), on random inputs of
# the row's shapes; and for the full-budget row (mamlpp_5w1s_full), its two
# kinds of step: epoch 0 (MSL on, epochs 0-9) and epoch 10 (MSL off, epochs
# 10-99; 10 is the flagfile's --msl_epochs). One `<name>.json` and
# `<name>.log` per measurement in OUT_DIR (`<row>` for the ablation rows,
# `mamlpp_5w1s_full.epoch<E>` for the full budget), which
# `python tools/results_tables.py --results=... --timings=OUT_DIR` puts in
# the tables.
#
#   bash tools/run_ablation_timings.sh OUT_DIR [STEPS] [ROUNDS] [NAME ...]
#
# NAMEs (default: all) pick measurements by the names above, e.g.
# `mamlpp_5w1s_full.epoch0 mamlpp_5w1s_full.epoch10` for the full budget's
# two alone; the others' files in OUT_DIR are left as they are.
#
# ROUNDS (default 1) passes over all the measurements, one after the other
# in each pass, so that a slow spell of the machine hits every row alike;
# each pass writes `<name>.round<K>.json`, and `<name>.json` gets the
# figures of the pass with the median seconds_per_iteration. Round files of
# an earlier call in OUT_DIR are deleted first, so they never mix into the
# median.
#
# The training runs' own wall times are not used: they share the machine
# with other work. Nothing else may run meanwhile (pause a training run with
# SIGTERM or SIGSTOP first). Environment: MAMLPP_BENCHMARK, the benchmark
# command (default mamlpp-benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: $0 OUT_DIR [STEPS] [ROUNDS] [NAME ...]" >&2
  exit 2
fi
OUT=$1
STEPS=${2:-10}
ROUNDS=${3:-1}
shift $(($# < 3 ? $# : 3))
WANTED=("$@")
if ! [[ "$STEPS" =~ ^[1-9][0-9]*$ && "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: STEPS and ROUNDS are positive integers, got $STEPS $ROUNDS" >&2
  exit 2
fi
read -r -a BENCHMARK <<<"${MAMLPP_BENCHMARK:-mamlpp-benchmark}"
# The full-budget row's first epoch without MSL, read from its flags by the
# same reader as results_tables.py's full-budget table.
MSL_EPOCHS=$(python -c 'import sys; sys.path.insert(0, "tools")
import results_tables
print(results_tables.full_budget_flags().get("msl_epochs", ""))')
if ! [[ "$MSL_EPOCHS" =~ ^[0-9]+$ ]]; then
  echo "error: the full-budget row's flags set no --msl_epochs=N" \
    "(bash tools/run_reproduction.sh --args mamlpp_5w1s_full)" >&2
  exit 2
fi
# name|row|epoch: the rows of results_tables.py's ABLATION, in the paper's
# order, then the full-budget row's two kinds of meta-step.
MEASUREMENTS=(
  "maml_5w1s_s0|maml_5w1s_s0|0"
  "ablation_bn|ablation_bn|0"
  "ablation_bn_lslr|ablation_bn_lslr|0"
  "ablation_bn_lslr_msl|ablation_bn_lslr_msl|0"
  "mamlpp_5w1s_s0|mamlpp_5w1s_s0|0"
  "ablation_mamlpp_da|ablation_mamlpp_da|0"
  "mamlpp_5w1s_full.epoch0|mamlpp_5w1s_full|0"
  "mamlpp_5w1s_full.epoch$MSL_EPOCHS|mamlpp_5w1s_full|$MSL_EPOCHS"
)
if [ ${#WANTED[@]} -gt 0 ]; then
  declare -A BY_NAME
  for measurement in "${MEASUREMENTS[@]}"; do
    BY_NAME[${measurement%%|*}]=$measurement
  done
  chosen=()
  for wanted in "${WANTED[@]}"; do
    if [ -z "$wanted" ] || [ -z "${BY_NAME[$wanted]:-}" ]; then
      echo "error: no measurement named '$wanted'; the names are:" \
        "${MEASUREMENTS[*]%%|*}" >&2
      exit 2
    fi
    chosen+=("${BY_NAME[$wanted]}")
  done
  MEASUREMENTS=("${chosen[@]}")
fi
NAMES=()
for measurement in "${MEASUREMENTS[@]}"; do
  NAMES+=("${measurement%%|*}")
done
mkdir -p "$OUT"

for name in "${NAMES[@]}"; do
  rm -f "$OUT/$name".round*.json "$OUT/$name".round*.log
done

status=0
for round in $(seq 1 "$ROUNDS"); do
  for measurement in "${MEASUREMENTS[@]}"; do
    IFS="|" read -r base row epoch <<<"$measurement"
    mapfile -t args < <(bash tools/run_reproduction.sh --args "$row")
    name="$base.round$round"
    command=("${BENCHMARK[@]}" "${args[@]}" --phase=train "--epoch=$epoch"
      "--steps=$STEPS" --warmup=2 "--output_json=$OUT/$name.json")
    echo "== $name: ${command[*]}"
    if ! "${command[@]}" >"$OUT/$name.log" 2>&1; then
      echo "failed: see $OUT/$name.log" >&2
      tail -5 "$OUT/$name.log" >&2
      status=1
      continue
    fi
    grep -E "seconds_per_iteration|peak_rss" "$OUT/$name.log" || true
  done
done
# <name>.json: the round with the median time (the lower middle one for an
# even count), the figures of one real measurement rather than a blend.
for name in "${NAMES[@]}"; do
  python3 - "$OUT" "$name" <<'PY' || status=1
import json, pathlib, sys
out, name = pathlib.Path(sys.argv[1]), sys.argv[2]
runs = sorted(
    (json.loads(p.read_text()) for p in out.glob(f"{name}.round*.json")),
    key=lambda figures: figures["seconds_per_iteration"],
)
if not runs:
    sys.exit(f"error: no round of {name} succeeded; see {out}/{name}.round*.log")
median = dict(runs[(len(runs) - 1) // 2])
median["rounds_seconds_per_iteration"] = [
    figures["seconds_per_iteration"] for figures in runs
]
(out / f"{name}.json").write_text(json.dumps(median, indent=2, sort_keys=True))
print(f"{name}: {median['seconds_per_iteration']} s per meta-step "
      f"(median of {len(runs)}: {median['rounds_seconds_per_iteration']})")
PY
done
exit $status
