#!/usr/bin/env bash
# The plain reference at matched CPU time (issue 21): for each completed run of a cell, the plain 2x64 LSTM loop
# (benchmarks/plain_reference.py) on the same subset, seed and held-out split, trained for that run's cpu_time_s
# (its training only: evaluation is not counted, which favours the plain loop). One line per seed in
# results/cpu_campaign/plain_reference/<cell>_s<seed>.txt; the last line of each is the number to compare.
# These files were made by the unselected loop (its last epoch, wherever the budget stops it): the script as it
# stood at LAST_EPOCH_LOOP, its last change (FD001's files predate its held-out column). It now selects on
# held-out units (results/plain_curve/), so this runs that version, read from git.
#   bash results/cpu_campaign/plain_matched.sh FD001_grace_holdout [FD002_grace_holdout ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
LAST_EPOCH_LOOP=5518635
out=results/cpu_campaign/plain_reference
mkdir -p "$out"
script=$(mktemp --suffix=.py)
trap 'rm -f "$script"' EXIT
git show "$LAST_EPOCH_LOOP:benchmarks/plain_reference.py" > "$script"
for cell in "$@"; do
  for metrics in results/cpu_campaign/"$cell"/s*/metrics.json; do
    read -r dataset seed cpu < <(.venv/bin/python -c "import json,sys; m=json.load(open(sys.argv[1])); \
print(m['dataset'], m['seed'], m['cpu_time_s'])" "$metrics")
    file="$out/${cell}_s${seed}.txt"
    [ -s "$file" ] && grep -q "^plain_reference " "$file" && continue
    OMP_NUM_THREADS=1 PYTHONPATH=benchmarks .venv/bin/python "$script" --budget "$cpu" --seed "$seed" \
      "dataset=$dataset" > "$file.tmp" && mv "$file.tmp" "$file"
    tail -1 "$file"
  done
done
