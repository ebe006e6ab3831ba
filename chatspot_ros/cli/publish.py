"""chatspot-publish: publish an image file or world scenes (with detections) to the chatspot_agent node at a rate.

  chatspot-publish --image frame.png --box 40,60,120,140=cup --rate 2          # the same frame, new stamps
  chatspot-publish --world-seed 1000 --frames 20 --rate 2 --count 20            # world frames with detections

For the by-hand section of the README without ros2cli: each tick publishes camera_info, the image
(raw rgb8, or --transport jpeg / png on <image>/compressed) and, when there are boxes, a
vision_msgs/Detection2DArray with the image's stamp, on the node's default topics (in --namespace).
Stamps are the wall clock at each tick. Imports rclpy; DDS stays on loopback
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless set).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from typing import Any

from chatspot_ros.cli.errors import EXIT_USAGE, UsageError, cli_main

PROG = "chatspot-publish"


def _box(text: str) -> tuple[tuple[float, float, float, float], str]:
    coords, _, label = text.partition("=")
    parts = [p for p in coords.replace(" ", "").split(",") if p]
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box needs X1,Y1,X2,Y2[=LABEL] in pixels, got {text!r}") from None
    if not (x1 > x0 and y1 > y0):
        raise argparse.ArgumentTypeError(f"--box {text!r}: X2 > X1 and Y2 > Y1 are needed")
    return (x0, y0, x1, y1), label


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=type("F", (argparse.RawDescriptionHelpFormatter,
                                                                argparse.ArgumentDefaultsHelpFormatter), {}))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="image file (PNG, JPEG, ...) published again and again")
    source.add_argument("--world-seed", type=int, help="publish frames of this tabletop-world split, with detections")
    parser.add_argument("--box", action="append", type=_box, default=[], metavar="X1,Y1,X2,Y2[=LABEL]",
                        help="a detection on --image (repeatable); without one only the image is published")
    parser.add_argument("--frames", type=int, default=10, help="world frames to cycle through (from --start)")
    parser.add_argument("--start", type=int, default=0, help="first world frame")
    parser.add_argument("--rate", type=float, default=2.0, help="ticks per second")
    parser.add_argument("--count", type=int, default=0, help="ticks to publish (0: until Ctrl-C)")
    parser.add_argument("--transport", default="raw", choices=("raw", "jpeg", "png"),
                        help="raw: sensor_msgs/Image on <image>; jpeg/png: CompressedImage on <image>/compressed "
                             "(start the node with image.transport:=compressed)")
    parser.add_argument("--namespace", default="/", help="the node's namespace")
    parser.add_argument("--topics", nargs="+", default=[], metavar="KEY=TOPIC",
                        help="other topics by the node's parameter names (image, detections, camera_info)")
    parser.add_argument("--wait-subscribers", type=float, default=10.0, metavar="S",
                        help="wait up to S seconds for the node's image subscription")
    parser.add_argument("--verbose", action="store_true", help="tracebacks")
    return parser


def _frames(args: argparse.Namespace) -> Any:
    """(rgb, [(box, label)]) per tick, forever."""
    if args.image:
        from chatspot_ros.cli.ask import read_image

        try:
            rgb = read_image(args.image)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from None
        while True:
            yield rgb, list(args.box)
    from chatspot_ros.world import render, sample_scene

    index = 0
    while True:
        scene = sample_scene(args.world_seed, args.start + index % args.frames)
        yield render(scene), scene
        index += 1


def run(args: argparse.Namespace) -> int:
    from chatspot_ros.replay import types as T
    from chatspot_ros.replay.play import DdsPublisher
    from chatspot_ros.replay.recording import default_topics, parse_topic_mapping
    from chatspot_ros.service.config import AgentConfig
    from chatspot_ros.world import bag

    if not args.rate > 0 or args.count < 0 or args.frames < 1:
        raise UsageError("--rate must be > 0, --count >= 0 and --frames >= 1")
    topics = parse_topic_mapping(args.topics, default_topics(AgentConfig.defaults(), args.namespace), args.namespace)
    image_topic = topics["image"] if args.transport == "raw" else topics["image_compressed"]
    image_type = T.IMAGE if args.transport == "raw" else T.COMPRESSED_IMAGE
    ts = T.typestore()
    frames = _frames(args)
    first = next(frames)  # a bad --image fails before any DDS start-up; published first below
    dds = DdsPublisher("chatspot_publish")
    ticks = 0
    try:
        missing = dds.wait_for_subscribers([(image_topic, image_type)], args.wait_subscribers)
        if missing:
            print(f"{PROG}: warning: no subscriber on {image_topic}; publishing anyway", file=sys.stderr)
        wall0 = time.monotonic()
        for rgb, content in itertools.chain([first], frames):
            stamp = time.time_ns()
            height, width = rgb.shape[:2]
            _, image = bag.image_message(ts, rgb, stamp, args.transport)
            dds.publish(topics["camera_info"], T.CAMERA_INFO,
                        ts.serialize_cdr(bag.camera_info_message(ts, stamp, width, height), T.CAMERA_INFO))
            dds.publish(image_topic, image_type, ts.serialize_cdr(image, image_type))
            if isinstance(content, list):
                dets = [bag.detection(ts, box, f"box{k}", [(label, 1.0)] if label else [], stamp)
                        for k, (box, label) in enumerate(content)]
                array = ts.types[T.DETECTIONS](header=bag._header(ts, stamp), detections=dets) if dets else None
            else:
                array = bag.scene_detections(ts, content, stamp)
            if array is not None:
                dds.publish(topics["detections"], T.DETECTIONS, ts.serialize_cdr(array, T.DETECTIONS))
            ticks += 1
            if args.count and ticks >= args.count:
                break
            delay = wall0 + ticks / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        dds.close()
    print(f"published {ticks} frames on {image_topic}", flush=True)
    return 0


@cli_main(PROG)  # the one error contract (chatspot_ros/cli/errors.py)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        if args.verbose:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
