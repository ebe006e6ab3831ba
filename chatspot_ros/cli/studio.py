"""chatspot-studio: click-to-ask in the browser, beside the live agent or over the in-process pipeline.

    chatspot-studio                                   # beside a running chatspot_agent (ROS)
    chatspot-studio --ros-args -r __ns:=/robot1       # the agent of a namespace
    chatspot-studio --model DIR --image FILE          # no ROS: the pipeline in this process
    chatspot-studio --model DIR --world-seed 2026     # no ROS: a frame of the tabletop world

Then open the printed address (http://127.0.0.1:8765/ by default). docs/studio.md has the details.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatspot_ros.cli.errors import UsageError, cli_main, finish_parser

PROG = "chatspot-studio"


def build_parser() -> argparse.ArgumentParser:
    from chatspot_ros.studio.server import DEFAULT_PORT

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                     epilog="ROS arguments go after --ros-args (e.g. -r __ns:=/robot1).")
    web = parser.add_argument_group("server")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to bind; another than the loopback exposes the page to your network")
    web.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free port)")
    web.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                     help="another origin allowed to open the WebSocket, e.g. http://robot1.local:8765 (repeatable)")
    web.add_argument("--fps", type=float, default=10.0, help="frames sent to each page per second, at most")
    web.add_argument("--jpeg-quality", type=int, default=80, help="JPEG quality of the frames sent (1-100)")
    web.add_argument("--keep-frames", type=int, default=16,
                     help="recent frames held for a page to freeze (a frozen frame is kept while frozen)")
    web.add_argument("--max-message-bytes", type=int, default=16 * 1024,
                     help="largest page message taken; a larger one gets an error, ten times larger closes the socket")
    web.add_argument("--max-upload-bytes", type=int, default=8 * 1024 * 1024, help="largest image upload")
    web.add_argument("--rate", type=float, default=20.0, help="page messages per second per page (bursts of 2x)")
    web.add_argument("--max-pages", type=int, default=16, help="pages connected at once")
    web.add_argument("--templates", default="", metavar="YAML",
                     help="instruction templates for the presets; empty: the installed config/instructions.yaml")
    ros = parser.add_argument_group("with ROS (default when --model is not given)")
    ros.add_argument("--agent", default="chatspot_agent", help="the agent's node name (in the studio's namespace)")
    ros.add_argument("--transport", choices=("raw", "compressed"), default="raw",
                     help="camera topic to show: image (raw) or image/compressed")
    ros.add_argument("--refer", choices=("auto", "stamp", "pixels"), default="auto",
                     help="how a question names its frozen frame: by stamp, with its pixels, or by stamp "
                          "while at most --stamp-max-frames camera frames came after it")
    ros.add_argument("--stamp-max-frames", type=int, default=10,
                     help="with --refer auto: a frozen frame with more newer frames is sent as pixels (keep it "
                          "well under the agent's frames.buffer_size)")
    ros.add_argument("--answer-timeout-s", type=float, default=120.0, help="a question without answer is cancelled")
    local = parser.add_argument_group("without ROS (the pipeline in this process)")
    local.add_argument("--model", type=Path, help="checkpoint folder; selects the mode without ROS")
    local.add_argument("--image", type=Path, help="the first image (JPEG or PNG); the page can upload others")
    local.add_argument("--world-seed", type=int,
                       help="the first image: a tabletop world frame of this seed (without --image: 2026)")
    local.add_argument("--world-index", type=int, default=0, help="its frame index")
    local.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    local.add_argument("--max-new-tokens", type=int, default=64, help="default answer length in tokens")
    parser.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    return finish_parser(parser)


def split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(our arguments, the ROS arguments after ``--ros-args``)."""
    argv = list(argv)
    if "--ros-args" not in argv:
        return argv, []
    i = argv.index("--ros-args")
    return argv[:i], argv[i + 1:]


def first_image(args: argparse.Namespace) -> tuple[Any, str]:
    """The in-process mode's first frame: --image, else a world frame (seed 2026, the demo's, by default)."""
    if args.image is not None and args.world_seed is not None:
        raise UsageError("give --image or --world-seed, not both")
    if args.image is not None:
        from chatspot_ros.cli.ask import read_image

        try:
            return read_image(str(args.image)), args.image.name
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(f"{err}; give a JPEG or PNG file") from None
    from chatspot_ros.world import render, sample_scene

    seed = 2026 if args.world_seed is None else args.world_seed
    if seed < 0 or args.world_index < 0:
        raise UsageError("--world-seed and --world-index must be >= 0")
    return render(sample_scene(seed, args.world_index)), f"world seed {seed} frame {args.world_index}"


def make_backend(args: argparse.Namespace, ros_args: list[str], counters: Any) -> Any:
    if args.model is None:
        if args.image is not None or args.world_seed is not None:
            raise UsageError("--image and --world-seed need --model (they run without ROS)")
        try:
            from chatspot_ros.studio.ros_bridge import RosBackend
        except ImportError as err:
            raise UsageError(f"ROS 2 is not importable ({err}): source your ROS setup (scripts/env.sh), "
                             "or run without ROS with --model DIR --image FILE") from None
        return RosBackend(counters, ros_args=ros_args, agent=args.agent, transport=args.transport,
                          refer=args.refer, stamp_max_frames=args.stamp_max_frames,
                          answer_timeout_s=args.answer_timeout_s)
    if ros_args:
        raise UsageError("--ros-args applies to the ROS mode; drop it with --model")
    if not (args.model / "config.json").is_file():
        raise UsageError(f"{args.model} is not a checkpoint folder (no config.json); "
                         "try --model chatspot_ros/models/tabletop")
    if not 1 <= args.max_new_tokens <= 4096:
        raise UsageError("--max-new-tokens must be in [1, 4096]")
    image, name = first_image(args)
    from chatspot_ros.pipeline import ChatSpot, load_templates
    from chatspot_ros.runtime import RuntimeConfig
    from chatspot_ros.studio.local import LocalBackend

    try:
        config = RuntimeConfig(model_path=str(args.model), device=args.device,
                               dtype="float32" if args.device == "cpu" else "float16")
        chatspot = ChatSpot.from_config(config, templates=load_templates(args.templates))
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"cannot load {args.model}: {err}") from None
    return LocalBackend(chatspot, image, name, model_name=args.model.resolve().name,
                        max_new_tokens=args.max_new_tokens)


async def serve(studio: Any) -> None:
    """Run until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await studio.start()
    print(f"{PROG}: open {studio.url} in a browser ({studio.backend.mode} mode; Ctrl+C stops)", flush=True)
    try:
        await stop.wait()
    finally:
        await studio.stop()


@cli_main(PROG)  # the one error contract (chatspot_ros/cli/errors.py)
def main(argv: Sequence[str] | None = None) -> int:
    ours, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(ours)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from chatspot_ros.pipeline import load_templates
    from chatspot_ros.studio.hub import Counters
    from chatspot_ros.studio.protocol import Limits
    from chatspot_ros.studio.server import Studio, StudioConfig

    try:
        limits = Limits(max_message_bytes=args.max_message_bytes)
        config = StudioConfig(host=args.host, port=args.port, fps=args.fps, jpeg_quality=args.jpeg_quality,
                              keep_frames=args.keep_frames, limits=limits,
                              max_ws_message_bytes=10 * args.max_message_bytes,
                              max_upload_bytes=args.max_upload_bytes, rate=args.rate, max_pages=args.max_pages,
                              allowed_origins=tuple(args.allow_origin))
        templates = load_templates(args.templates)
    except ValueError as err:
        raise UsageError(str(err)) from None
    counters = Counters()
    backend = make_backend(args, ros_args, counters)
    studio = Studio(backend, config, templates, counters=counters)
    try:
        asyncio.run(serve(studio))
    except OSError as err:  # the port is taken, the address is not ours
        backend.close()
        raise UsageError(f"cannot serve on {args.host}:{args.port}: {err.strerror or err}; "
                         "pick another --port") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
