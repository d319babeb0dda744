#!/usr/bin/env bash
# docs/benchmarks.md's side-by-side table: every MAML++ paper configuration, ours
# (mamlpp-benchmark, the defaults) and the authors' PyTorch code
# (tools/benchmark_authors.py on their experiment config), one right after
# the other, on random inputs of the same shapes:
#   train_msl     training at epoch 0: second order, MSL on;
#   train_no_msl  training at epoch 20: second order, MSL annealed out;
#   eval          5 first-order inner steps + the query pass.
# Then what the peak memory of the large configurations costs: ours with
# one task in flight, two tasks in flight, and with glibc's malloc instead
# of TensorFlow's BFC allocator.
#
#   [ONLY="mini_imagenet_5way_1shot ..."] [WARMUP=1] [MEMORY_OPTIONS=1] \
#     bash tools/run_side_by_side.sh OUT_DIR AUTHORS_DIR TORCH_PYTHON [STEPS]
#
# A memory-only pass (peaks are reached in the first call; the speeds of
# one step are not figures to quote) skips the warm-up and the options:
#   WARMUP=0 MEMORY_OPTIONS=0 bash tools/run_side_by_side.sh OUT AUTH PY 1
#
# AUTHORS_DIR: a checkout of AntreasAntoniou/HowToTrainYourMAMLPytorch;
# TORCH_PYTHON: a Python with torch, numpy and absl-py (not TensorFlow).
# Nothing else may run on the machine meanwhile (pause training runs with
# SIGTERM; they resume exactly). One JSON and one log per measurement in
# OUT_DIR; `python tools/side_by_side_table.py OUT_DIR` tabulates them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  echo "usage: $0 OUT_DIR AUTHORS_DIR TORCH_PYTHON [STEPS]" >&2
  exit 2
fi
OUT=$1
AUTHORS=$2
TORCH_PYTHON=$3
STEPS=${4:-3}
WARMUP=${WARMUP:-1}
MEMORY_OPTIONS=${MEMORY_OPTIONS:-1}
mkdir -p "$OUT"

# Our flagfile | the authors' experiment config (seed 0).
# The most used first, so that a stopped run has measured them;
# ONLY="name ..." in the environment picks a subset by our names.
ALL_CONFIGS=(
  "mini_imagenet_5way_1shot|mini-imagenet_maml++-mini-imagenet_1_2_0.01_48_5_0"
  "omniglot_5way_1shot|omniglot_maml++-omniglot_1_8_0.1_64_5_0"
  "omniglot_20way_1shot|omniglot_maml++-omniglot_1_8_0.1_64_20_0"
  "omniglot_5way_5shot|omniglot_maml++-omniglot_5_8_0.1_64_5_0"
  "mini_imagenet_5way_5shot|mini-imagenet_maml++-mini-imagenet_5_2_0.01_48_5_0"
  "omniglot_20way_5shot|omniglot_maml++-omniglot_5_8_0.1_64_20_0"
)
CONFIGS=()
for pair in "${ALL_CONFIGS[@]}"; do
  if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" ${pair%%|*} "* ]]; then
    CONFIGS+=("$pair")
  fi
done
PHASES=("train_msl|--phase=train --epoch=0"
        "train_no_msl|--phase=train --epoch=20"
        "eval|--phase=eval")

measure() {  # measure NAME COMMAND...: one measurement, never fatal.
  local name=$1; shift
  echo "== $name"
  if ! /usr/bin/time -v "$@" --output_json="$OUT/$name.json" \
      >"$OUT/$name.log" 2>&1; then
    echo "failed: see $OUT/$name.log"
    tail -5 "$OUT/$name.log"
  fi
}

for pair in "${CONFIGS[@]}"; do
  IFS="|" read -r exp theirs <<<"$pair"
  for phase in "${PHASES[@]}"; do
    IFS="|" read -r tag args <<<"$phase"
    # shellcheck disable=SC2086  # $args are words by design.
    measure "${exp}_${tag}_ours" mamlpp-benchmark \
      --flagfile="flags/maml++_$exp.cfg" --steps="$STEPS" --warmup="$WARMUP" $args
    # shellcheck disable=SC2086
    measure "${exp}_${tag}_authors" "$TORCH_PYTHON" \
      tools/benchmark_authors.py --authors_dir="$AUTHORS" \
      --config="$theirs" --steps="$STEPS" --warmup="$WARMUP" $args
  done
done

# What holds the peak on the large configurations: tasks in flight and the
# allocator's pool, training at epoch 0 (the peak of a run).
for exp in mini_imagenet_5way_1shot mini_imagenet_5way_5shot omniglot_20way_5shot; do
  if [ "$MEMORY_OPTIONS" = 0 ]; then break; fi
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $exp "* ]]; then continue; fi
  for tasks in 1 2; do
    measure "${exp}_train_msl_ours+tasks${tasks}" mamlpp-benchmark \
      --flagfile="flags/maml++_$exp.cfg" --steps="$STEPS" --warmup="$WARMUP" \
      --phase=train --epoch=0 --parallel_tasks="$tasks"
    measure "${exp}_train_msl_ours+tasks${tasks}+malloc" \
      env TF_CPU_ALLOCATOR_USE_BFC=false mamlpp-benchmark \
      --flagfile="flags/maml++_$exp.cfg" --steps="$STEPS" --warmup="$WARMUP" \
      --phase=train --epoch=0 --parallel_tasks="$tasks"
  done
done
python tools/side_by_side_table.py "$OUT"
