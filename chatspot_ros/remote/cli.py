"""The command-line options of the backend choice, shared by chatspot-ask, chatspot-eval, chatspot-bench."""
from __future__ import annotations

import argparse
from typing import Any

from chatspot_ros.remote.config import BACKENDS, DEFAULT_API_KEY_ENV, IMAGE_FORMATS, ServerConfig


def add_backend_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """--backend local|vllm, --server URL and the client's options (a parser or an argument group)."""
    parser.add_argument("--backend", default="local", choices=BACKENDS,
                        help="local: load the checkpoint here; vllm: ask a vLLM server (--server); --model is then a "
                             "local copy of the served checkpoint's config files (weights not needed)")
    parser.add_argument("--server", default="", metavar="URL", help="the vLLM server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--server-model", default="", metavar="NAME",
                        help="the served model name (default: the --model folder's name)")
    parser.add_argument("--server-timeout", type=float, default=60.0, metavar="S",
                        help="per request, seconds (default: %(default)s)")
    parser.add_argument("--server-concurrency", type=int, default=8, metavar="N",
                        help="requests in flight at once (default: %(default)s)")
    parser.add_argument("--image-format", default="png", choices=IMAGE_FORMATS,
                        help=f"how the frame is sent (default png, lossless). API key: ${DEFAULT_API_KEY_ENV}")


def server_config_from_args(args: argparse.Namespace, model_dir: str) -> ServerConfig:
    if not args.server:
        raise ValueError("--backend vllm needs --server URL (e.g. http://127.0.0.1:8000)")
    return ServerConfig(url=args.server, model_config=str(model_dir), model=args.server_model,
                        timeout_s=args.server_timeout, max_concurrency=args.server_concurrency,
                        image_format=args.image_format)
