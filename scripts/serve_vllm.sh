#!/usr/bin/env bash
# Serve a checkpoint folder with vLLM's OpenAI-compatible server, with the flags this project needs.
#
#   scripts/serve_vllm.sh MODEL_DIR [PORT] [-- extra vLLM flags]
#
#   MODEL_DIR   a local checkpoint folder (llava-hf layout: published weight names, config files)
#   PORT        default 8000
#
# Environment:
#   CHATSPOT_SERVE_HOST           bind address (default 127.0.0.1: the server stays on this machine; a fleet
#                                 server behind a firewall binds 0.0.0.0 on purpose, see docs/vllm.md)
#   CHATSPOT_SERVE_DTYPE          default float32 on the CPU build, bfloat16 with a GPU build (float16 works too)
#   CHATSPOT_SERVE_NAME           the served model name clients must ask for (default: the folder's name)
#   CHATSPOT_SERVE_MAX_MODEL_LEN  context length (default: the checkpoint's max_position_embeddings)
#   VLLM_API_KEY                  when set, vLLM requires it (clients: CHATSPOT_VLLM_API_KEY); never printed
#   CHATSPOT_VLLM_VENV            the venv with vLLM (default .venv-vllm, made by scripts/setup_vllm.sh)
#   VLLM_CPU_KVCACHE_SPACE        KV cache GiB of the CPU build (default here: 1, enough for small models)
#   CHATSPOT_SERVE_WORK_DIR       where the compile cache and generated chat templates go (default: build/ of
#                                 the source tree; an installed copy is given one by the launch file)
#   CHATSPOT_PYTHON               a Python that imports chatspot_ros, for the chat template (default: the vLLM
#                                 venv's, with the source tree on PYTHONPATH)
#
# What it sets: --block-size 32 with --enable-prefix-caching (the CPU default block of 128 tokens
# is never filled by a ~100-token region prompt, so nothing would be shared; 32 lets every region
# of a frame reuse the image prefix), a chat template generated from
# chatspot_ros/referring/conversation.py when the checkpoint ships none, VLLM_CACHE_ROOT under
# the work dir (torch.compile's cache: the second start is faster). The server is started with exec:
# this script's PID is the server's.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
fi
model="$(cd "$1" 2>/dev/null && pwd)" || { echo "serve_vllm: no such folder: $1" >&2; exit 2; }
shift
port=8000
if [ $# -gt 0 ] && [ "$1" != "--" ]; then port="$1"; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
venv="${CHATSPOT_VLLM_VENV:-$repo/.venv-vllm}"
python="$venv/bin/python"
[ -x "$python" ] || { echo "serve_vllm: $venv has no vLLM; set CHATSPOT_VLLM_VENV to a venv with vLLM, or run 'make setup-vllm' in the source tree" >&2; exit 2; }
[ -f "$model/config.json" ] || { echo "serve_vllm: $model has no config.json" >&2; exit 2; }

name="${CHATSPOT_SERVE_NAME:-$(basename "$model")}"
host="${CHATSPOT_SERVE_HOST:-127.0.0.1}"
if "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  dtype="${CHATSPOT_SERVE_DTYPE:-bfloat16}"
else
  dtype="${CHATSPOT_SERVE_DTYPE:-float32}"
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
fi
work="${CHATSPOT_SERVE_WORK_DIR:-$repo/build}"
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$work/vllm-cache}"
mkdir -p "$VLLM_CACHE_ROOT"

args=(--model "$model" --served-model-name "$name" --host "$host" --port "$port" --dtype "$dtype"
      --block-size 32 --enable-prefix-caching)
# The context length is the checkpoint's (max_position_embeddings) unless asked for.
[ -n "${CHATSPOT_SERVE_MAX_MODEL_LEN:-}" ] && args+=(--max-model-len "$CHATSPOT_SERVE_MAX_MODEL_LEN")
# A chat template for checkpoints without one: exactly the prompt the local runtime builds.
template_dir="$work/vllm-templates"
mkdir -p "$template_dir"
template="$template_dir/$name.jinja"
set +e
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "${CHATSPOT_PYTHON:-$python}" -m chatspot_ros.remote.chat_template "$model" \
  --if-missing --out "$template"
status=$?
set -e
case "$status" in
  0) args+=(--chat-template "$template"); echo "serve_vllm: chat template $template (the checkpoint has none)" ;;
  3) echo "serve_vllm: using the checkpoint's own chat template" ;;
  *) echo "serve_vllm: cannot make a chat template for $model" >&2; exit 2 ;;
esac

echo "serve_vllm: $name on http://$host:$port ($dtype; api key: $([ -n "${VLLM_API_KEY:-}" ] && echo required || echo none))"
cd "$repo"
exec "$python" -m vllm.entrypoints.openai.api_server "${args[@]}" "$@"
