#!/usr/bin/env bash
# The README "Results" runs: real Omniglot, the paper flagfiles, a CPU budget
# of 4 epochs x 500 meta-iterations (cosine annealing over those 4 epochs),
# 600 validation and 600 test tasks, top-5 ensemble. Each run resumes if
# interrupted: rerun this script. Logs go to $RESULTS/<run>.log.
#
#   bash scripts/run_omniglot_results.sh [RESULTS_DIR] [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-runs/results}
DATA_DIR=${2:-../shared/data/omniglot}
BUDGET=(--total_epochs=4 --iterations_per_epoch=500)
mkdir -p "$RESULTS"

run() {  # run NAME FLAGFILE
  local name=$1 flagfile=$2
  echo "== $name: $flagfile (log: $RESULTS/$name.log)"
  /usr/bin/time -v mamlpp-train --flagfile="$flagfile" --data_dir="$DATA_DIR" \
    --workdir="$RESULTS/$name" "${BUDGET[@]}" >>"$RESULTS/$name.log" 2>&1
}

run mamlpp_omniglot_5w1s "flags/maml++_omniglot_5way_1shot.cfg"
run maml_omniglot_5w1s "flags/maml_omniglot_5way_1shot.cfg"
run mamlpp_omniglot_20w1s "flags/maml++_omniglot_20way_1shot.cfg"

python scripts/plot_learning_curves.py \
  --run="MAML++ 5w1s=$RESULTS/mamlpp_omniglot_5w1s" \
  --run="MAML 5w1s=$RESULTS/maml_omniglot_5w1s" \
  --run="MAML++ 20w1s=$RESULTS/mamlpp_omniglot_20w1s" \
  --output=docs/learning_curves.png
