#!/usr/bin/env bash
# docs/benchmarks.md's step-time table: every MAML++ paper configuration, as
# (a) training at epoch 0 (second order, MSL on, as the flagfiles start),
# (b) training after MSL has annealed out (epoch 20: final-step loss only),
# (c) training first order (DA's first phase), and (d) evaluation.
# Then the speed options, on the two configurations they are for: bfloat16
# mixed precision and fused batch norm, training at epoch 0 and 20.
# Random inputs of the real shapes; one JSON per measurement in $OUT.
#
#   bash tools/run_benchmarks.sh [OUT_DIR] [STEPS] [-- extra mamlpp-benchmark flags]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/benchmarks}
STEPS=${2:-5}
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
EXTRA=("$@")
mkdir -p "$OUT"

bench() {  # bench NAME FLAGFILE ARGS...
  local name=$1 flagfile=$2; shift 2
  echo "== $name"
  mamlpp-benchmark --flagfile="$flagfile" --steps="$STEPS" --warmup=1 \
    --output_json="$OUT/$name.json" "$@" "${EXTRA[@]}" >"$OUT/$name.log" 2>&1 \
    || { echo "failed: see $OUT/$name.log"; tail -5 "$OUT/$name.log"; }
}

for exp in omniglot_5way_1shot omniglot_5way_5shot omniglot_20way_1shot \
           omniglot_20way_5shot mini_imagenet_5way_1shot mini_imagenet_5way_5shot; do
  flagfile="flags/maml++_$exp.cfg"
  bench "${exp}_train_msl" "$flagfile" --phase=train --epoch=0
  bench "${exp}_train_no_msl" "$flagfile" --phase=train --epoch=20
  bench "${exp}_train_first_order" "$flagfile" --phase=train --epoch=0 \
    --first_order_to_second_order_epoch=0
  bench "${exp}_eval" "$flagfile" --phase=eval
done
for exp in omniglot_5way_1shot mini_imagenet_5way_1shot; do
  flagfile="flags/maml++_$exp.cfg"
  for option in --mixed_precision=bfloat16 --fused_batch_norm; do
    tag=${option#--}; tag=${tag%%=*}
    bench "${exp}+${tag}_train_msl" "$flagfile" --phase=train --epoch=0 "$option"
    bench "${exp}+${tag}_train_no_msl" "$flagfile" --phase=train --epoch=20 "$option"
  done
done
python tools/benchmark_table.py "$OUT"
