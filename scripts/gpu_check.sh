#!/usr/bin/env bash
# The GPU checks of the ROS-free core, in one run on a device machine (shared/ENVIRONMENT.md, "GPU").
#
#   OUT=/path/for/results bash scripts/gpu_check.sh
#
# 1. environment.json   torch / transformers / onnxruntime versions, GPU, providers, TensorRT or not
# 2. bench_llava7b.jsonl chatspot-bench --preset llava7b (random fp16 7 B, 576 image tokens) on cuda,
#                        K = 1 4 16: naive (processor + generate per region) vs runtime, identical
#                        greedy tokens checked in the same run, ceiling, memory-bandwidth fraction
# 3. decoders_llava7b.jsonl the decode loops side by side: dynamic, static, static + torch.compile
#                        (CUDA graphs), K = 1 and 16, identical greedy ids, KV memory of each
# 4. onnx_cuda.json      fp32 ONNX of vision tower + projector on onnxruntime's CUDA provider vs torch
#                        (fp32 and the runtime's fp16), per-frame ms, greedy tokens from both features,
#                        and what vision_backend "auto" picks
# 5. summary.json        per step: exit status and seconds
#
# Every step has its own time limit, so one that hangs cannot take the others with it; the whole
# run stays under about 13 minutes on an H100 (the 7 B checkpoint is built once, in $WORK, and
# reused by step 3). Only small JSON and log files are written to $OUT.
#
# A smoke run of the script itself on a CPU machine (tiny preset, float32, the CUDA provider then
# reported as missing): CHATSPOT_GPU_DEVICE=cpu CHATSPOT_GPU_PRESET=tiny OUT=/tmp/out bash scripts/gpu_check.sh
set -uo pipefail

OUT="${OUT:?set OUT to the folder that receives the results}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${CHATSPOT_GPU_WORK:-/tmp/chatspot-gpu-check}"
DEVICE="${CHATSPOT_GPU_DEVICE:-cuda}"
PRESET="${CHATSPOT_GPU_PRESET:-llava7b}"
if [ "$DEVICE" = cpu ]; then DTYPE=float32; else DTYPE=float16; fi
MODEL="$WORK/$PRESET"
ENGINES="$WORK/engines"
mkdir -p "$OUT" "$WORK"
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
STEPS=()

step() {  # step NAME LIMIT_SECONDS COMMAND...: run one check, keep its status and time
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}")
  echo "== $name: rc $rc in $((SECONDS - start)) s" >&2
}

step environment 60 "$PYTHON" - "$OUT/environment.json" <<'PY'
import json, subprocess, sys
import torch, transformers
info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available()}
if torch.cuda.is_available():
    info.update(gpu=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()),
                memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
for name in ("onnx", "onnxruntime", "onnxscript", "tensorrt"):
    try:
        module = __import__(name)
        info[name] = getattr(module, "__version__", "present")
    except ImportError as err:
        info[name] = f"missing ({err})"
try:
    import onnxruntime
    info["onnxruntime_providers"] = onnxruntime.get_available_providers()
except ImportError:
    pass
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.used,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError as err:
    info["nvidia_smi"] = f"not run ({err})"
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info))
PY

# Builds the random fp16 7 B checkpoint into $MODEL (on the GPU) the first time, then benches it.
step "bench_$PRESET" 300 "$PYTHON" -m chatspot_ros.cli.bench --preset "$PRESET" --model-cache "$MODEL" \
  --device "$DEVICE" --dtype "$DTYPE" --k 1 4 16 --max-new-tokens 16 --repeats 3 --json \
  >"$OUT/bench_$PRESET.jsonl" 2>"$OUT/bench_$PRESET.log"

# The decode loops side by side (issue #10): the first dynamic loop, the static one eager, and compiled
# (CUDA graphs); greedy ids checked equal, KV memory per loop. With bench_$PRESET's bandwidth fraction
# (the runtime's default loop, static + compile on CUDA) and its K=16 speedup over naive generate.
step "decoders_$PRESET" 300 "$PYTHON" -m chatspot_ros.cli.bench --preset "$PRESET" --model-cache "$MODEL" \
  --device "$DEVICE" --dtype "$DTYPE" --k 1 16 --max-new-tokens 32 --repeats 3 --json \
  --decoders dynamic static static+compile >"$OUT/decoders_$PRESET.jsonl" 2>"$OUT/decoders_$PRESET.log"

step onnx_cuda_vs_torch 230 "$PYTHON" - "$MODEL" "$ENGINES" "$OUT/onnx_cuda.json" "$DEVICE" "$DTYPE" \
  <<'PY' 2>"$OUT/onnx_cuda.log"
"""fp32 ONNX of the vision encoder on onnxruntime-cuda vs torch, on the llava7b checkpoint."""
import copy, json, logging, statistics, sys, time, traceback
import numpy as np
import torch

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
model_dir, engine_dir, out_path, device, dtype = sys.argv[1:6]
result: dict = {"model": model_dir, "device": device, "dtype": dtype}


def sync() -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def dump() -> None:
    with open(out_path, "w") as handle:
        json.dump(result, handle, indent=2)


def ms_per_frame(backend, frame, runs=10):
    backend.encode([frame])  # warm-up (CUDA graphs, cuDNN autotune, allocator)
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        backend.encode([frame])
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 2)


try:
    import onnxruntime as ort
    from chatspot_ros.runtime import ChatSpotRuntime, GenerationConfig, RuntimeConfig
    from chatspot_ros.runtime.backends import create_vision_backend
    from chatspot_ros.runtime.onnx_vision import OnnxRuntimeVisionBackend, compare_with_torch, export_vision_onnx
    from chatspot_ros.runtime.vision import VisionEncoder

    result["providers"] = ort.get_available_providers()
    rt = ChatSpotRuntime.load(RuntimeConfig(model_path=model_dir, device=device, dtype=dtype))
    encoder = VisionEncoder.from_llava(rt.model)
    start = time.perf_counter()
    artifact = export_vision_onnx(encoder, engine_dir)
    result["export_s"] = round(time.perf_counter() - start, 1)
    result["onnx_mb"] = round(artifact.path.stat().st_size / 1e6, 1)
    onnx = OnnxRuntimeVisionBackend(artifact.path, rt.preprocess, rt.device, rt.dtype)
    result["backend"] = onnx.name
    fp32 = copy.deepcopy(encoder).float()  # same weights, fp32: what the fp32 graph should reproduce
    for label, reference in (("vs_torch_fp32", fp32), (f"vs_torch_{dtype}", encoder)):
        delta = compare_with_torch(onnx, reference, artifact.image_size)
        result[label] = {"max_abs": delta.max_abs, "relative": delta.relative, "reference_max": delta.reference_max}
    del fp32
    dump()

    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    result["torch_ms_per_frame"] = ms_per_frame(rt.backend, frame)
    result["onnxruntime_fp32_ms_per_frame"] = ms_per_frame(onnx, frame)

    # Greedy answers from torch features vs onnxruntime features (cast to fp16), 4 region prompts.
    prompts = [rt.conversation.render(q) for q in (
        "What is in this region? [0.10, 0.20, 0.55, 0.80]", "What color is it? [0.40, 0.40, 0.60, 0.70]",
        "Describe the image.", "What text can you see here? [0.01, 0.02, 0.30, 0.25]")]
    gen = GenerationConfig(max_new_tokens=16)
    torch_tokens = [g.token_ids for g in rt.generate(rt.encode(frame), prompts, gen)]
    features = rt.encode(frame)
    features.features = onnx.encode([frame])
    onnx_tokens = [g.token_ids for g in rt.generate(features, prompts, gen)]
    result["greedy_prompts_identical"] = sum(a == b for a, b in zip(torch_tokens, onnx_tokens))
    result["greedy_prompts"] = len(prompts)

    auto = create_vision_backend("auto", encoder=encoder, preprocess=rt.preprocess, device=rt.device,
                                 dtype=rt.dtype, engine_dir=engine_dir)
    result["auto_picks"] = auto.name
    result["ok"] = True
except Exception as err:  # a report, not a library: record what failed and exit non-zero
    result["ok"] = False
    result["error"] = f"{type(err).__name__}: {err}"
    result["traceback"] = traceback.format_exc()[-4000:]
dump()
print(json.dumps({k: v for k, v in result.items() if k != "traceback"}))
sys.exit(0 if result["ok"] else 1)
PY

{
  echo "["
  for i in "${!STEPS[@]}"; do
    [ "$i" -gt 0 ] && echo ","
    echo "  ${STEPS[$i]}"
  done
  echo "]"
} >"$OUT/summary.json"
cat "$OUT/summary.json" >&2
