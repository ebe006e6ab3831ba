#!/usr/bin/env bash
# The plain recipe at GPU scale, with its learning curve (issue 24; NOT RUN in this repository yet).
#
#   bash scripts/gpu_plain_recipe.sh [MINUTES] [SLICES] [OUT]     defaults: 10 minutes, 5 slices, build/gpu_plain
#
# On a CUDA machine (an H200 for the issue's target):
#  1. scripts/bench_train.py on the tabletop preset: samples/s of the old loop and of the fast one
#     (workers, fused AdamW, bf16, compiled forward) side by side; target >= 20,000 samples/s.
#  2. chatspot-train run --preset tabletop --plain (transformers' default initialization, no wiring,
#     no stage 0, the shipped model's mix), MINUTES of training in SLICES slices (--max-minutes,
#     --resume); after each slice the model is evaluated on 150 frames of the val split with the
#     controls, one row of OUT/curve.csv (steps, samples, minutes, classification, whole image, REC,
#     plans loose and strict).
#  3. the final model on every hard split (150 frames each) and the test split, with the controls;
#     OUT/splits.md is the table docs/evaluation.md shows for the shipped model.
# Environment: BATCH (512), WORKERS (8), LR (1e-3), STEPS (the cosine schedule's length; default:
# MINUTES at 20,000 samples/s).
set -euo pipefail
MINUTES=${1:-10}
SLICES=${2:-5}
OUT=${3:-build/gpu_plain}
BATCH=${BATCH:-512}
WORKERS=${WORKERS:-8}
LR=${LR:-1e-3}
STEPS=${STEPS:-$(( MINUTES * 60 * 20000 / BATCH ))}
cd "$(dirname "$0")/.."
source scripts/env.sh
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: this script is for a GPU machine'"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"

python scripts/bench_train.py --preset tabletop --device cuda --bf16 --compile --workers "$WORKERS" \
  --batch-size "$BATCH" --steps 30 --warmup 5 --json "$OUT/bench.json" | tee "$OUT/bench.md"

[ -f build/world/val150/instances.json ] || chatspot-world render --split val --frames 150 --out build/world/val150
echo "slice,step,samples,minutes,cls_box,cls_point,cls_whole_image,rec_acc50,plans,plans_strict,plans_whole_image" \
  > "$OUT/curve.csv"
SLICE_MIN=$(python -c "print($MINUTES / $SLICES)")
for k in $(seq 1 "$SLICES"); do
  resume=""; [ "$k" -gt 1 ] && resume="--resume"
  chatspot-train run --preset tabletop --plain --world-seed 1 --world-frames 8000 --max-turns 1 \
    --mix classify=4,describe=1,attribute=1,locate=1,task=2,image_level=0.5 \
    --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --warmup-steps 50 --save-every 1000000 --log-every 10 \
    --device cuda --bf16 --compile --workers "$WORKERS" --max-minutes "$SLICE_MIN" $resume --out "$OUT/run" \
    > "$OUT/train.$k.log" 2>&1
  chatspot-eval --model "$OUT/run/model" --world build/world/val150 --controls --device cuda --no-progress \
    --overwrite --out "$OUT/eval.$k" > "$OUT/eval.$k.log" 2>&1
  python - "$OUT" "$k" "$SLICE_MIN" "$BATCH" <<'PY'
import json, sys
out, k, slice_min, batch = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
m = json.load(open(f"{out}/eval.{k}/metrics.json"))["tasks"]
state = __import__("torch").load(f"{out}/run/state/state.pt", map_location="cpu", weights_only=False)
g = lambda name, *path: (lambda v: "" if v is None else f"{v:.4f}")(
    __import__("functools").reduce(lambda d, p: (d or {}).get(p), path, m.get(name)))
row = [k, state["step"], state["step"] * batch, round(k * slice_min, 2), g("classification/box", "accuracy"),
       g("classification/point", "accuracy"), g("classification/box", "controls", "whole_image", "accuracy"),
       g("rec/expression", "acc_at_0_5"), g("actions/box", "accuracy"), g("actions/box", "strict", "accuracy"),
       g("actions/box", "controls", "whole_image", "accuracy")]
open(f"{out}/curve.csv", "a").write(",".join(map(str, row)) + "\n")
print("curve:", row)
PY
done

for split in test crowded same_category sizes overlap tables; do
  [ -f "build/world/${split}150/instances.json" ] || chatspot-world render --split "$split" --frames 150 --out "build/world/${split}150"
  chatspot-eval --model "$OUT/run/model" --world "build/world/${split}150" --controls --device cuda --no-progress \
    --overwrite --out "$OUT/splits/$split" > "$OUT/splits.$split.log" 2>&1
done
python -m chatspot_ros.evaluation.splits_table "$OUT"/splits/*/metrics.json | tee "$OUT/splits.md"
echo "done: $OUT/bench.md, $OUT/curve.csv, $OUT/splits.md"
