#!/usr/bin/env bash
# The CPU profile study (issue 21): budget=cpu and one change at a time, GRACE, protocol=holdout with five cuts
# per held-out unit, seeds 42 and 123, two single-thread runs at a time; FD001, or DATASET=FD002 (its runs go
# under FD002/). Each run selects on held-out units;
# the choice reads only their validation score (the best val/rmse_last, metrics.json's selection_score):
# results/cpu_profile_study/README.md. A variant whose two runs completed is skipped.
#   [DATASET=FD002] bash results/cpu_profile_study/sweep.sh [variant ...]      (default: all, in this order)
set -euo pipefail
cd "$(dirname "$0")/../.."
declare -A VARIANTS=(
  [base]=""
  [no_ema]="~callbacks.ema"
  [batch512]="data.batch_size=512"
  [lr2e-3]="optimizer.lr=2e-3"
  [lr1e-3]="optimizer.lr=1e-3"
  [lr5e-4]="optimizer.lr=5e-4"
  [dropout0.3]="model.backbone.dropout=0.3 model.dropout=0.3"
  [wd1e-3]="optimizer.weight_decay=1e-3"
  [batch512_hidden64]="data.batch_size=512 model.backbone.hidden_size=64"
  [stop10]="callbacks.early_stopping.patience=10"
  [no_plateau]="callbacks.plateau.patience=1000 callbacks.early_stopping.patience=1000"
  [epochs60_stop10]="trainer.max_epochs=60 callbacks.early_stopping.patience=10"
)
ORDER=(base no_ema batch512 lr2e-3 stop10 no_plateau epochs60_stop10)
DATASET=${DATASET:-FD001}
OUT=multirun/cpu_profile_study$([ "$DATASET" = FD001 ] || echo "/$DATASET")
for name in "${@:-${ORDER[@]}}"; do
  if grep -qs '"completed"' "$OUT/$name/s42/metrics.json" && grep -qs '"completed"' "$OUT/$name/s123/metrics.json"; then
    continue
  fi
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 .venv/bin/python -m grace_lit.train --multirun budget=cpu loss=gaba dataset=$DATASET \
    protocol=holdout protocol.val_cuts=5 seed=42,123 ${VARIANTS[$name]} \
    hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=$OUT hydra.sweep.subdir="$name/s\${seed}"
done
