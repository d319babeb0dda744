#!/usr/bin/env bash
# The docs/results.md runs on real Omniglot, one named row each: the seed
# spread and the ablation at the CPU budget (4 epochs x 500 meta-steps,
# cosine annealing over those 4 epochs), and the paper's full budget
# (the flagfile as it is: 100 x 500) for 5-way and 20-way 1-shot. Every row is the paper flagfile plus
# the overrides listed below, nothing else.
#
#   bash tools/run_reproduction.sh RESULTS_DIR [ROW ...]   # default: all
#   bash tools/run_reproduction.sh --list                  # rows, commands
#   bash tools/run_reproduction.sh --args ROW              # a row's flags
#
# Rows run one after the other, in the order given. A row whose run
# directory has test_summary.json is done and skipped; any other row is
# started or resumed (the resume is exact), so stopping this script (Ctrl-C,
# SIGTERM to mamlpp-train: it checkpoints first) and rerunning it with the
# same arguments loses nothing. It stops at the first row that exits
# non-zero, with that exit code. Each row appends its output and
# `/usr/bin/time -v` figures to RESULTS_DIR/ROW.log.
#
# Environment: DATA_DIR (default ../shared/data/omniglot); MAMLPP_TRAIN, the
# train command (default mamlpp-train), e.g. to run a fixed copy of the code.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-../shared/data/omniglot}
read -r -a TRAIN <<<"${MAMLPP_TRAIN:-mamlpp-train}"
MAMLPP="flags/maml++_omniglot_5way_1shot.cfg"
MAML="flags/maml_omniglot_5way_1shot.cfg"
CPU_BUDGET="--total_epochs=4 --iterations_per_epoch=500"
BN="--per_step_bn_statistics=true --per_step_bn_weights=true"
LSLR="--learn_inner_lr=true"
MSL="--multi_step_loss=true --msl_epochs=10"

# name | flagfile | overrides. The ablation adds the MAML++ parts to MAML
# in the paper's order; "+ CA" on top of "+ MSL" is the MAML++ flagfile
# itself, i.e. the row mamlpp_5w1s_s0. DA (first order for the first half
# of the run: epochs 0..1 of 4) is its own row on top of MAML++.
ROWS=(
  "mamlpp_5w1s_s0|$MAMLPP|$CPU_BUDGET --seed=0"
  "maml_5w1s_s0|$MAML|$CPU_BUDGET --seed=0"
  "mamlpp_20w1s_s0|flags/maml++_omniglot_20way_1shot.cfg|$CPU_BUDGET --seed=0"
  "ablation_bn|$MAML|$CPU_BUDGET --seed=0 $BN"
  "ablation_bn_lslr|$MAML|$CPU_BUDGET --seed=0 $BN $LSLR"
  "ablation_bn_lslr_msl|$MAML|$CPU_BUDGET --seed=0 $BN $LSLR $MSL"
  "ablation_mamlpp_da|$MAMLPP|$CPU_BUDGET --seed=0 --first_order_to_second_order_epoch=1"
  "mamlpp_5w1s_s1|$MAMLPP|$CPU_BUDGET --seed=1"
  "maml_5w1s_s1|$MAML|$CPU_BUDGET --seed=1"
  "mamlpp_5w1s_s2|$MAMLPP|$CPU_BUDGET --seed=2"
  "maml_5w1s_s2|$MAML|$CPU_BUDGET --seed=2"
  "mamlpp_5w1s_full|$MAMLPP|--seed=0"
  "mamlpp_20w1s_full|flags/maml++_omniglot_20way_1shot.cfg|--seed=0"
)

row_fields() {  # row_fields NAME: prints "flagfile|overrides", or fails.
  local row
  for row in "${ROWS[@]}"; do
    if [ "${row%%|*}" = "$1" ]; then
      echo "${row#*|}"
      return 0
    fi
  done
  return 1
}

if [ "${1:-}" = "--list" ]; then
  for row in "${ROWS[@]}"; do
    IFS="|" read -r name flagfile overrides <<<"$row"
    echo "$name: ${TRAIN[*]} --flagfile=$flagfile --data_dir=$DATA_DIR" \
      "--workdir=RESULTS_DIR/$name $overrides"
  done
  exit 0
fi
if [ "${1:-}" = "--args" ]; then  # One flag per line, for other scripts.
  if [ $# -ne 2 ] || ! fields=$(row_fields "$2"); then
    echo "error: --args takes one row name; bash $0 --list shows the rows" >&2
    exit 2
  fi
  IFS="|" read -r flagfile overrides <<<"$fields"
  echo "--flagfile=$flagfile"
  # shellcheck disable=SC2086  # The overrides are words by design.
  printf '%s\n' $overrides
  exit 0
fi
if [ $# -lt 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: $0 RESULTS_DIR [ROW ...] | --list" >&2
  exit 2
fi
RESULTS=$1
shift
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for row in "${ROWS[@]}"; do names+=("${row%%|*}"); done
fi
for name in "${names[@]}"; do
  if ! row_fields "$name" >/dev/null; then
    echo "error: unknown row $name; bash $0 --list shows the rows" >&2
    exit 2
  fi
done
mkdir -p "$RESULTS"

for name in "${names[@]}"; do
  IFS="|" read -r flagfile overrides <<<"$(row_fields "$name")"
  workdir="$RESULTS/$name"
  if [ -f "$workdir/test_summary.json" ]; then
    echo "== $name: done ($workdir/test_summary.json)"
    continue
  fi
  # shellcheck disable=SC2206  # The overrides are words by design.
  command=("${TRAIN[@]}" "--flagfile=$flagfile" "--data_dir=$DATA_DIR"
    "--workdir=$workdir" $overrides)
  echo "== $name: ${command[*]} (log: $RESULTS/$name.log)"
  echo "== $(date -u +%FT%TZ) ${command[*]}" >>"$RESULTS/$name.log"
  status=0
  /usr/bin/time -v "${command[@]}" >>"$RESULTS/$name.log" 2>&1 || status=$?
  if [ $status -ne 0 ]; then
    echo "== $name stopped with exit code $status; rerun the same command" \
      "to resume it (log: $RESULTS/$name.log)" >&2
    exit $status
  fi
done
