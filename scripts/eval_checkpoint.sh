#!/usr/bin/env bash
# Evaluate the newest checkpoint of a chatspot-train run on a world split, while (or after) it trains:
#   bash scripts/eval_checkpoint.sh build/train/tabletop-v1 build/world/quick [extra chatspot-eval args]
# Exports state/state.pt to RUN/eval-model (tabletop preset), then runs chatspot-eval into RUN/eval-stepN.
set -euo pipefail
run=$1; world=$2; shift 2
model="$run/eval-model"
python -m chatspot_ros.cli.train export --run "$run" --preset tabletop --out "$model" | tail -1
step=$(python -c "import torch,sys; print(torch.load(sys.argv[1], weights_only=False)['step'])" "$run/state/state.pt")
python -m chatspot_ros.cli.eval --model "$model" --world "$world" --out "$run/eval-step$step" --overwrite "$@" \
  | tail -25
