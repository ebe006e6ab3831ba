"""chatspot-replay: answer a robot recording's detections and clicks as the chatspot_agent node would (docs/replay.md).

  chatspot-replay BAG --out OUT                       # rosbag2 folder (sqlite3 or MCAP) or a ROS 1 .bag
  chatspot-replay BAG --out OUT --topics image=/camera/color/image_raw detections=/detector/detections
  chatspot-replay BAG --out OUT --backend vllm --server http://127.0.0.1:8000 --model CONFIG_DIR
  chatspot-replay BAG --out OUT --resume              # go on after an interruption
  chatspot-replay BAG --play [--rate 2]               # publish the recording into DDS for a live node

OUT gets recording/ (a rosbag2 MCAP with the input topics plus region_descriptions,
action_suggestions and debug/image), answers.jsonl, answers.csv, summary.json and summary.md.
No rclpy is imported except by --play.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from chatspot_ros.cli.errors import EXIT_USAGE, UsageError, cli_main
from chatspot_ros.remote.cli import add_backend_arguments
from chatspot_ros.runtime.config import DTYPES, QUANTIZATIONS, VISION_BACKENDS

PROG = "chatspot-replay"
SOURCE_PARAMS = Path(__file__).resolve().parents[2] / "config" / "agent.yaml"
RUN_FILE = "run.json"
# CLI option (dest) -> the node parameter it sets, when given (the vLLM options of chatspot-ask too).
OPTION_PARAMETERS = {
    "model": "model.path", "device": "model.device", "dtype": "model.dtype", "quantization": "model.quantization",
    "vision_backend": "vision.backend", "engine_dir": "vision.engine_dir", "dialect": "referring.format",
    "templates": "referring.templates", "max_new_tokens": "generation.max_new_tokens",
    "backend": "model.backend", "server": "server.url", "server_model": "server.model",
    "server_timeout": "server.timeout_s", "server_concurrency": "server.max_concurrency",
    "image_format": "server.image_format",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=_Formatter)
    parser.add_argument("bag", metavar="BAG", help="rosbag2 folder (sqlite3 or MCAP storage) or ROS 1 .bag file")
    parser.add_argument("--out", help="output folder (required unless --play)")
    parser.add_argument("--overwrite", action="store_true", help="empty a non-empty OUT first")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in OUT: answers already in OUT/answers.jsonl are reused")
    parser.add_argument("--topics", nargs="+", default=[], metavar="KEY=TOPIC",
                        help="input topics by the node's parameter names (image, detections, camera_info, "
                             "clicked_point, task); default: the node's topics.* parameters in --namespace")
    parser.add_argument("--namespace", default="/", help="the node's namespace (relative topics resolve in it; "
                                                         "outputs are written in it)")
    parser.add_argument("--params-file", default="", metavar="YAML",
                        help="the node's parameter file (default: the installed config/agent.yaml)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a node parameter, as -p of the node (repeatable), e.g. -p frames.wait_s=1.0")
    parser.add_argument("--start", type=float, default=None, metavar="S",
                        help="skip messages logged earlier than S seconds after the recording's start")
    parser.add_argument("--end", type=float, default=None, metavar="S",
                        help="stop at messages logged later than S seconds after the recording's start")
    parser.add_argument("--max-frames", type=int, default=0, metavar="N", help="stop after N image frames (0: all)")
    parser.add_argument("--no-debug-image", action="store_true", help="do not draw debug/image into the MCAP")
    parser.add_argument("--matcher", default="exact",
                        help="how answers are matched to the labelled class for the accuracy: exact or clip:DIR "
                             "(the evaluation suite's matchers)")
    parser.add_argument("--coco", default="", metavar="JSON",
                        help="COCO instances with the ground truth of the recorded frames (images found by a "
                             "'stamp_ns' field, else in the order of the recording's frames): the summary also "
                             "gives how often a description names the class of the box it is about")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="tracebacks and INFO logs")
    model = parser.add_argument_group("model (default: the node's model.* parameters; the shipped demo model)")
    model.add_argument("--model", default=None, help="checkpoint folder; with --backend vllm the served checkpoint's "
                                                     "config files")
    model.add_argument("--device", default=None, help="cpu | cuda | cuda:N")
    model.add_argument("--dtype", default=None, choices=DTYPES, help="weights dtype")
    model.add_argument("--quantization", default=None, choices=QUANTIZATIONS, help="weight-only quantization")
    model.add_argument("--vision-backend", default=None, choices=VISION_BACKENDS, help="vision encoder backend")
    model.add_argument("--engine-dir", default=None, help="folder of exported ONNX/TensorRT engines")
    model.add_argument("--format", dest="dialect", default=None, help="coordinate dialect (default: the checkpoint's)")
    model.add_argument("--templates", default=None, metavar="YAML", help="instruction templates file")
    model.add_argument("--max-new-tokens", type=int, default=None, help="answer length (generation.max_new_tokens)")
    add_backend_arguments(model)
    play = parser.add_argument_group("--play: publish the recording into DDS (imports rclpy)")
    play.add_argument("--play", action="store_true", help="publish the input topics at their recorded pace")
    play.add_argument("--rate", type=float, default=1.0, help="playback speed factor (2: twice as fast)")
    play.add_argument("--wait-subscribers", type=float, default=10.0, metavar="S",
                      help="wait up to S seconds for a subscriber on the image and detections topics")
    play.add_argument("--loop", type=int, default=1, metavar="N", help="play the recording N times")
    play.add_argument("--target-namespace", default=None, metavar="NS",
                      help="publish onto the node's topics in this namespace (default: --namespace)")
    return parser


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


# -- configuration ------------------------------------------------------------------------------


def default_params_file() -> Optional[Path]:
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("chatspot_ros")) / "config" / "agent.yaml"
        if shared.is_file():
            return shared
    except Exception:  # noqa: BLE001 - not a ROS install, or the package is not installed there
        pass
    return SOURCE_PARAMS if SOURCE_PARAMS.is_file() else None


def read_params_file(path: Path) -> dict[str, Any]:
    """The ``ros__parameters`` of a ROS 2 parameter file (the first node entry that has them)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"cannot read the parameter file {path}: {err}") from None
    for entry in data.values() if isinstance(data, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("ros__parameters"), dict):
            return dict(entry["ros__parameters"])
    raise UsageError(f"{path} has no '<node>: ros__parameters:' mapping (see config/agent.yaml)")


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    """The node's AgentConfig: parameter file, then -p, then the model options that were given."""
    from chatspot_ros.service.config import PARAMETERS_BY_NAME, AgentConfig

    path = Path(args.params_file) if args.params_file else default_params_file()
    if args.params_file and not path.is_file():
        raise UsageError(f"parameter file {path} does not exist")
    values = read_params_file(path) if path is not None else {}
    values = {k: v for k, v in values.items() if k in PARAMETERS_BY_NAME}  # e.g. use_sim_time
    for item in args.param:
        name, sep, value = item.partition("=")
        name = name.strip().removesuffix(":")
        if not sep or name not in PARAMETERS_BY_NAME:
            raise UsageError(f"-p {item!r}: expected NAME=VALUE with NAME a parameter of the node (config/agent.yaml)")
        values[name] = _parse_value(value.strip())
    for dest, name in OPTION_PARAMETERS.items():
        value = getattr(args, dest)
        if value is not None and value != parser.get_default(dest):
            values[name] = value
    spec = PARAMETERS_BY_NAME
    for name, value in list(values.items()):  # YAML ints for float parameters, as rclpy accepts them
        if isinstance(spec[name].default, float) and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
    try:
        config = AgentConfig.from_parameters(values)
    except (TypeError, ValueError) as err:
        raise UsageError(f"invalid node parameters: {err}") from None
    if config.model_backend == "local" and config.model_path.strip() and not Path(config.model_path).is_dir():
        raise UsageError(f"model folder {config.model_path} does not exist (--model)")
    return config


# -- the output folder ---------------------------------------------------------------------------


def prepare_out(out: Path, run: dict[str, Any], *, overwrite: bool, resume: bool) -> dict[str, list[dict]]:
    """Refuse a non-empty OUT unless --overwrite / --resume; with --resume, the previous answers
    (only when the previous run was made with the same recording, topics, parameters and model)."""
    from chatspot_ros.replay.outputs import read_answers

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if resume:
            previous_file = out / RUN_FILE
            if not previous_file.is_file():
                raise UsageError(f"--resume: {out} has no {RUN_FILE}; it is not the output of {PROG}")
            try:
                previous = json.loads(previous_file.read_text(encoding="utf-8"))
            except ValueError as err:
                raise UsageError(f"--resume: {previous_file} is damaged ({err}); use another --out or "
                                 "--overwrite") from None
            changed = sorted(k for k in set(run) | set(previous) if run.get(k) != previous.get(k))
            if changed:
                raise UsageError(f"--resume: {out} was made with other settings ({', '.join(changed)}); use "
                                 "another --out or --overwrite")
            done, bad = read_answers(out / "answers.jsonl")
            if bad:  # rewrite the log with the complete requests only
                rows = [r for group in done.values() for r in group]
                (out / "answers.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                   encoding="utf-8")
            shutil.rmtree(out / "recording", ignore_errors=True)  # rewritten whole from the recording
            return done
        if not overwrite:
            raise UsageError(f"--out {out} is not empty; pass --overwrite to replace it or --resume to continue it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(run, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {}


# -- accuracy ------------------------------------------------------------------------------------


def accuracy(answers_file: Path, matcher_spec: str) -> Optional[dict[str, Any]]:
    """How often a description names its detection's labelled class (the best class hypothesis),
    with the evaluation suite's matcher over the labels the recording uses; None without labels."""
    from chatspot_ros.evaluation.matching import Category, make_matcher
    from chatspot_ros.replay.outputs import read_answers

    done, _ = read_answers(answers_file)
    rows = [r for group in done.values() for r in group if r["role"] == "describe" and r.get("label")]
    if not rows:
        return None
    names = sorted({r["label"] for r in rows})
    categories = [Category(i + 1, name) for i, name in enumerate(names)]
    try:
        matcher = make_matcher(matcher_spec, categories)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--matcher: {err}") from None
    predicted = matcher.match([r["answer"] for r in rows])
    ids = {c.name: c.id for c in categories}
    correct = sum(1 for r, p in zip(rows, predicted) if p == ids[r["label"]])
    return {"source": "class hypotheses of the detections", "matcher": matcher.name, "labelled": len(rows),
            "correct": correct, "rate": correct / len(rows), "categories": len(categories)}


def accuracy_coco(answers_file: Path, coco_file: Path, image_stamps: list[int], matcher_spec: str,
                  tolerance_ns: int) -> dict[str, Any]:
    """As :func:`accuracy`, with the class of the COCO annotation that overlaps a described box most
    (IoU >= 0.5) in its frame as the label; descriptions without one are counted as unlabelled."""
    from chatspot_ros.evaluation.boxes import box_iou, xywh_to_xyxy
    from chatspot_ros.evaluation.matching import Category, make_matcher
    from chatspot_ros.replay.outputs import read_answers

    try:
        coco = json.loads(coco_file.read_text(encoding="utf-8"))
        categories = [Category(int(c["id"]), str(c["name"])) for c in coco["categories"]]
        images = sorted(coco["images"], key=lambda im: int(im["id"]))
        boxes: dict[int, list[tuple[Any, int]]] = {}
        for ann in coco["annotations"]:
            boxes.setdefault(int(ann["image_id"]), []).append((xywh_to_xyxy(ann["bbox"]), int(ann["category_id"])))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--coco {coco_file}: not a COCO instances file ({type(err).__name__}: {err})") from None
    by_stamp = {int(im["stamp_ns"]): int(im["id"]) for im in images if "stamp_ns" in im}
    by_order = {stamp: int(im["id"]) for stamp, im in zip(image_stamps, images)}

    def image_of(stamp: int) -> Optional[int]:
        if by_stamp:
            near = min(by_stamp, key=lambda s: abs(s - stamp))
            return by_stamp[near] if abs(near - stamp) <= tolerance_ns else None
        return by_order.get(stamp)

    done, _ = read_answers(answers_file)
    labelled, unlabelled = [], 0
    for row in (r for group in done.values() for r in group if r["role"] == "describe"):
        points = row.get("region") or []
        image = image_of(int(row["frame_stamp_ns"]))
        candidates = boxes.get(image, []) if image is not None and len(points) >= 2 else []
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        scored = [(box_iou((min(xs), min(ys), max(xs), max(ys)), box), cat) for box, cat in candidates]
        best = max(scored, default=(0.0, None))
        if best[0] >= 0.5:
            labelled.append((row["answer"], best[1]))
        else:
            unlabelled += 1
    try:
        matcher = make_matcher(matcher_spec, categories)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--matcher: {err}") from None
    predicted = matcher.match([a for a, _ in labelled]) if labelled else []
    correct = sum(1 for (_, truth), p in zip(labelled, predicted) if p == truth)
    return {"source": f"COCO ground truth {coco_file}", "matcher": matcher.name, "labelled": len(labelled),
            "correct": correct, "rate": correct / len(labelled) if labelled else None, "unlabelled": unlabelled,
            "categories": len(categories)}


# -- main ----------------------------------------------------------------------------------------


def replay(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from chatspot_ros.replay import recording as rec
    from chatspot_ros.replay.engine import Replayer
    from chatspot_ros.replay.outputs import AnswerLog, OutputBag, summary_markdown, write_csv
    from chatspot_ros.service.agent_service import ConfigureError

    if not args.out:
        raise UsageError("--out is required (or --play to publish the recording)")
    if args.max_frames < 0:
        raise UsageError("--max-frames must be >= 0")
    if args.coco and not Path(args.coco).is_file():
        raise UsageError(f"--coco {args.coco} does not exist")
    config = load_config(args, parser)
    topics = rec.parse_topic_mapping(args.topics, rec.default_topics(config, args.namespace), args.namespace)
    reader = rec.open_reader(args.bag)
    try:
        selected = rec.select_inputs(reader, topics, prefer_compressed=config.image_transport == "compressed")
        start_ns, stop_ns = _window(reader, args)
        out = Path(args.out)
        run = {"recording": str(Path(args.bag).resolve()), "topics": selected.topics, "namespace": args.namespace,
               "parameters": config.as_parameters(), "start": args.start, "end": args.end,
               "max_frames": args.max_frames}
        done = prepare_out(out, run, overwrite=args.overwrite, resume=args.resume)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the replay has its own progress bar
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        bag = OutputBag(out / "recording", rec.CdrConverter(reader))
        log = AnswerLog(out / "answers.jsonl")
        read = rec.ReadStats({}, {})
        replayer = None
        try:
            load_start = time.perf_counter()
            try:  # the node's model loading (AgentService.configure)
                replayer = Replayer(config, bag, log, args.namespace, done=done, debug_image=not args.no_debug_image)
            except ConfigureError as err:
                raise UsageError(str(err)) from None
            load_s = time.perf_counter() - load_start
            for note in replayer.configure_notes:
                print(f"{PROG}: note: {note}", file=sys.stderr)
            total = sum(c.msgcount for cs in selected.connections.values() for c in cs)
            from tqdm import tqdm

            with tqdm(total=total, unit="msg", desc="replay", disable=args.quiet, file=sys.stderr) as bar:
                wall_s = replayer.run(reader, selected, read, start_ns=start_ns, stop_ns=stop_ns,
                                      max_frames=args.max_frames, progress=bar.update)
        finally:
            log.close()
            bag.close()
            if replayer is not None:
                replayer.close()
    finally:
        reader.close()
    rows = write_csv(out / "answers.jsonl", out / "answers.csv")
    summary = make_summary(args, out, replayer, read, selected.topics, started, load_s, wall_s, rows, bag.count)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    d = summary["detections"]
    print(f"{summary['frames'].get('read', 0)} frames, {d.get('messages', 0)} detection messages: "
          f"{d.get('answered', 0)} answered, {d.get('unmatched', 0)} unmatched, {d.get('failed', 0)} failed; "
          f"{summary['regions'].get('answered', 0)} regions in {wall_s:.1f} s -> {out}", flush=True)
    if read.read_error:
        print(f"{PROG}: warning: the recording is damaged, stopped reading: {read.read_error}; the outputs hold "
              "what was read before", file=sys.stderr)
        return 1
    return 0


def make_summary(args: argparse.Namespace, out: Path, replayer: Any, read: Any, topics: dict[str, str],
                 started: str, load_s: float,
                 wall_s: float, rows: int, written: int) -> dict[str, Any]:
    """summary.json: the service's counters (one outcome per input, as the node's /diagnostics) by kind."""
    counters = replayer.service.stats.counters()

    def section(prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: int(v) for k, v in sorted(counters.items()) if k.startswith(prefix)}

    frames = section("images.")
    frames["read"] = frames.pop("received", 0)
    frames.update({f"frames.{k}": v for k, v in section("frames.").items()})
    detections = section("detections.")
    detections["messages"] = detections.pop("received", 0) + replayer.resumed["requests"]
    detections["answered"] = detections.get("answered", 0) + replayer.resumed["requests"]
    detections["resumed"] = replayer.resumed["requests"]
    regions = section("regions.")
    regions["answered"] = regions.get("answered", 0) + replayer.resumed["regions"]
    answered = detections["answered"] + section("clicks.").get("answered", 0)
    return {
        "recording": str(args.bag), "output": str(out / "recording"), "model": replayer.config.model_path,
        "backend": replayer.config.model_backend, "started": started, "load_s": round(load_s, 3),
        "elapsed_s": round(wall_s, 3), "topics": topics,
        "frames": frames, "detections": detections, "regions": regions, "clicks": section("clicks."),
        "camera_info": {"received": read.messages.get("camera_info", 0), "rejected": replayer.camera_rejected},
        "model_errors": int(counters.get("model.errors", 0)),
        "reading": {"messages": read.messages, "out_of_order": read.out_of_order, "undecodable": read.undecodable,
                    "read_error": read.read_error, "written": written},
        "answers": rows,
        "accuracy": accuracy(out / "answers.jsonl", args.matcher),
        "accuracy_coco": accuracy_coco(out / "answers.jsonl", Path(args.coco), replayer.image_stamps, args.matcher,
                                       replayer.config.match_tolerance_ns) if args.coco else None,
        "throughput": {"wall_s": round(wall_s, 3), "model_calls": replayer.model_calls,
                       "resumed_requests": replayer.resumed["requests"],
                       "frames_per_s": round(answered / wall_s, 3) if wall_s > 0 else 0.0,
                       "regions_per_s": round(regions["answered"] / wall_s, 3) if wall_s > 0 else 0.0},
        "errors": replayer.errors.errors,
    }


def _window(reader: Any, args: argparse.Namespace) -> tuple[Optional[int], Optional[int]]:
    if args.start is not None and args.end is not None and args.end < args.start:
        raise UsageError(f"--end {args.end} is before --start {args.start}")
    begin = int(reader.start_time)
    start_ns = begin + int(args.start * 1e9) if args.start is not None else None
    stop_ns = begin + int(args.end * 1e9) + 1 if args.end is not None else None
    return start_ns, stop_ns


@cli_main(PROG)  # the one error contract (chatspot_ros/cli/errors.py)
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from chatspot_ros.replay.recording import RecordingError

    try:
        if args.play:
            from chatspot_ros.replay.play import play

            return play(args)
        return replay(args, parser)
    except (UsageError, RecordingError) as err:
        if args.verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
