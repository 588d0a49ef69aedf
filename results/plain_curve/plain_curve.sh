#!/usr/bin/env bash
# The plain yardstick's accuracy-against-CPU curve (issue 30): per subset and seed, one run of
# benchmarks/plain_reference.py (the plain 2x64 LSTM loop on the framework's windows, protocol=holdout
# protocol.val_cuts=5, data.split_seed = the seed; the best held-out epoch within each budget scored on the test
# set once), one torch thread. Writes results/plain_curve/<subset>_s<seed>.json (the curve, every epoch's held-out
# score, environment, command, commit) and .txt (its printed log); a pair whose .txt already ends with the same
# budgets is skipped. The full study (about 100 CPU-minutes: 4 subsets x 5 seeds x 5 CPU-minutes, plus evaluation):
#   nice -n 5 bash results/plain_curve/plain_curve.sh
# A part of it, e.g. the demonstration in README.md:
#   DATASETS=FD001 SEEDS="42 123" BUDGETS="0.5 1 2" nice -n 5 bash results/plain_curve/plain_curve.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/plain_curve
DATASETS=${DATASETS:-"FD001 FD002 FD003 FD004"}
SEEDS=${SEEDS:-"42 123 456 789 1024"}
BUDGETS=${BUDGETS:-"0.5 1 2 5"}
for dataset in $DATASETS; do
  for seed in $SEEDS; do
    name="$out/${dataset}_s${seed}"
    [ -s "$name.txt" ] && tail -1 "$name.txt" | grep -q "^plain_reference budgets_min=${BUDGETS// /,} " && continue
    # shellcheck disable=SC2086  # BUDGETS: one argument per budget
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/plain_reference.py --threads 1 --seed "$seed" \
      --budgets $BUDGETS --out "$name.json" "dataset=$dataset" > "$name.txt.tmp" && mv "$name.txt.tmp" "$name.txt"
    tail -1 "$name.txt"
  done
done
