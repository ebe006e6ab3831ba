"""chatspot-build-engine: export the vision tower + projector to ONNX and build a TensorRT engine.

    chatspot-build-engine --model DIR [--engine-dir engines] [--precision fp16]
        [--min-batch 1 --opt-batch 1 --max-batch 4] [--workspace-gib 4] [--onnx-only] [--force]

The engine lands in ``<engine-dir>/vision-<model hash>-<key digest>.engine`` with a JSON sidecar
holding its key (model hash, ONNX hash, TensorRT version, GPU SM, precision, shapes) and sha256;
the runtime loads it only when every field matches. ``--onnx-only`` stops after the ONNX export
(works without TensorRT and without a GPU).

Needs a CUDA GPU and NVIDIA's ``tensorrt`` Python package for the engine. The build path follows
the TensorRT 10 Python API and has not been run on this project's machines (see docs/runtime.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from chatspot_ros.cli.errors import UsageError, cli_main, existing_path, finish_parser
from chatspot_ros.runtime.config import DTYPES

PROG = "chatspot-build-engine"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--model", required=True, help="local checkpoint folder (llava-hf layout)")
    parser.add_argument("--engine-dir", default="engines", help="the engine cache folder the runtime reads")
    parser.add_argument("--device", default="cuda",
                        help="the GPU the engine is for (cuda | cuda:N); an engine is built on the GPU it runs on")
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="dtype the model is loaded in for hashing/export (default: float16 on cuda, "
                             "float32 for --onnx-only on a machine without CUDA)")
    parser.add_argument("--precision", default="fp16", choices=("fp16", "fp32"), help="the engine's precision")
    parser.add_argument("--min-batch", type=int, default=1, help="smallest batch of frames the engine accepts")
    parser.add_argument("--opt-batch", type=int, default=1, help="the batch TensorRT tunes for")
    parser.add_argument("--max-batch", type=int, default=4, help="largest batch of frames the engine accepts")
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="TensorRT builder workspace in GiB")
    parser.add_argument("--onnx-only", action="store_true",
                        help="export the ONNX graph and stop (no GPU or TensorRT needed)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a valid engine exists")
    parser.add_argument("--check", action="store_true", help="after building, load it and compare with torch")
    parser.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    return finish_parser(parser)


def check_device(device: str, onnx_only: bool, cuda_available: bool) -> None:
    """A TensorRT engine is built for, and on, a CUDA GPU: say so before loading anything."""
    if onnx_only:
        return
    if not device.startswith("cuda"):
        raise UsageError(f"--device {device}: a TensorRT engine is built for a CUDA GPU; give --device cuda (or "
                         f"cuda:N) on a GPU machine, or --onnx-only to export only the ONNX graph here")
    if not cuda_available:
        raise UsageError("no CUDA GPU here (torch sees none): a TensorRT engine is built on the GPU it will run on; "
                         "run this on that machine, or pass --onnx-only to export only the ONNX graph")


@cli_main(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    existing_path(args.model, "--model", kind="dir", hint="give a checkpoint folder (llava-hf layout)")
    import torch

    check_device(args.device, args.onnx_only, torch.cuda.is_available())

    from chatspot_ros.runtime.backends import check_engine_dir
    from chatspot_ros.runtime.config import RuntimeConfig
    from chatspot_ros.runtime.loading import inspect_checkpoint, load_model
    from chatspot_ros.runtime.onnx_vision import export_vision_onnx, model_hash
    from chatspot_ros.runtime.tensorrt_engine import (
        StaleEngineError,
        TensorRTVisionBackend,
        build_engine,
        find_engine,
        make_key,
    )
    from chatspot_ros.runtime.vision import ImagePreprocessor, VisionEncoder

    device = torch.device("cpu" if args.onnx_only and args.device.startswith("cuda")
                          and not torch.cuda.is_available() else args.device)
    dtype = args.dtype or ("float32" if device.type == "cpu" else "float16")
    try:
        config = RuntimeConfig(model_path=args.model, device=str(device), dtype=dtype, engine_dir=args.engine_dir)
        info = inspect_checkpoint(config)
        check_engine_dir(args.engine_dir, info.path)
        model, _, image_processor = load_model(info, config)
        encoder = VisionEncoder.from_llava(model)
        onnx = export_vision_onnx(encoder, args.engine_dir, encoder_hash=model_hash(encoder), force=args.force)
        print(json.dumps({"onnx": str(onnx.path), "model_hash": onnx.model_hash, "onnx_hash": onnx.onnx_hash}))
        if args.onnx_only:
            return 0
        key = make_key(onnx, device, args.precision, min_batch=args.min_batch, opt_batch=args.opt_batch,
                       max_batch=args.max_batch)
        try:
            path = find_engine(args.engine_dir, key)
            if args.force:
                raise FileNotFoundError("--force")
            print(json.dumps({"engine": str(path), "key": key.digest, "status": "up to date"}))
        except (FileNotFoundError, StaleEngineError) as err:
            logging.getLogger("chatspot_ros.runtime").info("building: %s", err)
            path = build_engine(onnx, key, args.engine_dir, workspace_gib=args.workspace_gib)
            print(json.dumps({"engine": str(path), "key": key.digest, "status": "built"}))
        if args.check:
            from chatspot_ros.runtime.onnx_vision import compare_with_torch

            preprocess = ImagePreprocessor(image_processor, info.pad_to_square)
            backend = TensorRTVisionBackend(Path(path), key, preprocess, device, torch.float16)
            delta = compare_with_torch(backend, encoder, onnx.image_size)
            print(json.dumps({"engine": str(path), "max_abs_diff_vs_torch": delta.max_abs,
                              "relative_diff_vs_torch": delta.relative}))
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as err:
        raise UsageError(str(err)) from err
    return 0


if __name__ == "__main__":
    sys.exit(main())
