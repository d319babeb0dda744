#!/usr/bin/env bash
# docs/benchmarks.md's ResNet-12 table: peak memory and seconds per
# meta-step of a second-order MSL meta-step (epoch 0 of the paper's
# mini-ImageNet 5-way 1-shot flagfile) with each query loss differentiated
# on its own tape (the default) and through the outer tape
# (--separate_query_backward=false), on ResNet-12 and on the 4-conv
# network; then the same ResNet-12 step in first order, which shows what
# the support passes of the second-order step hold; then 5-shot. Random
# inputs of the real shapes; one JSON per measurement in $OUT. A
# measurement that passes LIMIT_GB of resident memory is stopped there
# (exit 3, its JSON says so).
#
#   bash tools/run_query_backward_memory.sh [OUT_DIR] [LIMIT_GB]
#   python tools/query_backward_memory_table.py OUT_DIR
#
# The ResNet-12 15-query steps take minutes each on a 2-core CPU: about
# 50 minutes in all. Run it on an otherwise idle machine.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/query_backward_memory}
LIMIT_GB=${2:-18}
mkdir -p "$OUT"
FLAGFILE=flags/maml++_mini_imagenet_5way_1shot.cfg

bench() {  # bench NAME ARGS...
  local name=$1; shift
  echo "== $name"
  mamlpp-benchmark --flagfile="$FLAGFILE" --epoch=0 --warmup=0 \
    --memory_limit_gb="$LIMIT_GB" --output_json="$OUT/$name.json" "$@" \
    >"$OUT/$name.log" 2>&1
  local status=$?
  case $status in
    0) ;;
    3) echo "   stopped past ${LIMIT_GB} GB" ;;
    *) echo "   failed (exit $status): see $OUT/$name.log"; tail -5 "$OUT/$name.log" ;;
  esac
}

for separate in true false; do
  bench "conv4_q15_separate_$separate" --steps=3 \
    --separate_query_backward=$separate
  bench "resnet12_q3_separate_$separate" --steps=1 --backbone=resnet12 \
    --num_queries=3 --separate_query_backward=$separate
  bench "resnet12_q15_separate_$separate" --steps=1 --backbone=resnet12 \
    --separate_query_backward=$separate
done
# The support passes' share: the same step in first order, where the outer
# tape holds none of them.
bench resnet12_q15_first_order --steps=1 --backbone=resnet12 \
  --first_order_to_second_order_epoch=0
# 5-shot: 25 support images per inner step instead of 5.
FLAGFILE=flags/maml++_mini_imagenet_5way_5shot.cfg
bench resnet12_5shot_q15_separate_true --steps=1 --backbone=resnet12
bench resnet12_5shot_q15_first_order --steps=1 --backbone=resnet12 \
  --first_order_to_second_order_epoch=0
