#!/usr/bin/env bash
# Create .venv-compat: the oldest transformers the runtime supports (requirements/runtime.txt,
# chatspot_ros/runtime/compat.py), beside the same torch, for `make test-compat` (CI runs the runtime,
# generation and parity tests a second time under it). Made only when asked; about 40 s and 1 GB the
# first time, a stamp check in a second afterwards. The main .venv is never touched.
#
#   * torch==2.13.0 is the CPU build from the machine's local wheel directory (shared/ENVIRONMENT.md);
#     it is installed first and alone, as scripts/setup.sh does, so nothing pulls a CUDA build.
#   * transformers is the floor of the supported range (5.17.0, what stock PyTorch GPU images ship);
#     every other package takes the main venv's pin from requirements/lock.txt, except those
#     transformers 5.17 itself constrains (huggingface_hub): those are resolved by pip.
#   * No ROS, no torchvision: the tests run from the source tree (PYTHONPATH), and 5.17's
#     AutoImageProcessor refuses CLIP without torchvision, which the loader handles (loading.py).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${CHATSPOT_COMPAT_VENV:-$repo/.venv-compat}"
python_bin="${PYTHON:-python3.11}"
transformers_spec="transformers==${CHATSPOT_COMPAT_TRANSFORMERS:-5.17.0}"
stamp="$venv/.chatspot-compat-stamp"
want="$transformers_spec $(sha256sum "$0" requirements/lock.txt | cut -c1-16 | tr '\n' ' ')"
log="$repo/build/compat-pip.log"
mkdir -p "$repo/build"

step() { printf '\n==> [setup-compat] %s\n' "$*"; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import transformers, torch" 2>/dev/null; then
  echo "setup-compat: $venv is ready ($transformers_spec)"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  step "creating $venv ($("$python_bin" --version))"
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
t0=$(date +%s)
# The lock's pins for what the runtime tests import, minus the packages transformers pins itself.
constraints="$repo/build/compat-constraints.txt"
grep -v -E '^(transformers|huggingface[-_]hub|tokenizers)==' requirements/lock.txt >"$constraints"
step "installing torch (local CPU wheel), $transformers_spec and the runtime test stack (log: build/compat-pip.log)"
{ "${pip[@]}" install --progress-bar off -c "$constraints" torch &&
  "${pip[@]}" install --progress-bar off -c "$constraints" "$transformers_spec" tokenizers safetensors \
    numpy pillow pyyaml onnx onnxruntime onnxscript opencv-python-headless pytest hypothesis; } >"$log" 2>&1 \
  || { grep -v 'is ignored' "$log" | tail -30; echo "setup-compat: pip install failed (log: $log)" >&2; exit 1; }

step "checking the imports"
"$venv/bin/python" -c "import torch, transformers, tokenizers; print(f'torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}')"
echo "$want" > "$stamp"
echo "setup-compat: done in $(( $(date +%s) - t0 )) s"
