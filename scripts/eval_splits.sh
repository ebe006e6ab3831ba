#!/usr/bin/env bash
# Render every named split of the tabletop world (docs/world.md) and evaluate one model on each with
# the controls, the stage-0 head baseline and the strict plan metric (docs/evaluation.md).
#   bash scripts/eval_splits.sh [MODEL] [FRAMES] [OUT]      defaults: the shipped model, 300, build/eval/splits
# Then: python -m chatspot_ros.evaluation.splits_table OUT/*/metrics.json   (the README table)
set -euo pipefail
MODEL=${1:-chatspot_ros/models/tabletop}
FRAMES=${2:-300}
OUT=${3:-build/eval/splits}
SPLITS=${SPLITS:-"val test crowded same_category sizes overlap tables"}
THREADS=${THREADS:-2}
BASELINE=${BASELINE:---stage0-baseline}   # BASELINE= for a model without the wiring
cd "$(dirname "$0")/.."
mkdir -p "$(dirname "$OUT")" "$OUT"
for split in $SPLITS; do
  world=build/world/${split}${FRAMES}
  if [ ! -f "$world/instances.json" ]; then
    chatspot-world render --split "$split" --frames "$FRAMES" --out "$world"
  fi
  echo "=== $split: chatspot-eval --model $MODEL --world $world --controls $BASELINE --out $OUT/$split"
  chatspot-eval --model "$MODEL" --world "$world" --controls $BASELINE --threads "$THREADS" --no-progress \
    --overwrite --out "$OUT/$split" > "$OUT.$split.log" 2>&1 || { echo "$split failed: see $OUT.$split.log"; exit 1; }
  tail -n 1 "$OUT.$split.log"
done
