"""chatspot-world: render splits of the tabletop world with their annotation files (docs/world.md).

  chatspot-world render --seed 1000 --frames 1000 --out data/world/val
  chatspot-world show --seed 1000 --index 3 --out frame.png      # one frame, boxes and names drawn
  chatspot-world bag --seed 1000 --frames 20 --out data/world/bag --storage mcap   # a robot log
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chatspot_ros.cli.errors import UsageError, cli_main, finish_parser, writable_folder

# What `render` writes into --out; --overwrite removes these first so two runs never mix.
RENDER_OUTPUTS = ("images", "instances.json", "refs.jsonl", "region_qa.jsonl", "tasks.jsonl")


@cli_main("chatspot-world")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatspot-world", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="write images/, instances.json, refs.jsonl, region_qa.jsonl, tasks.jsonl")
    render.add_argument("--seed", type=int, help="the split's seed (training uses 1; evaluation 1000+); "
                        "default: the --split's seed")
    render.add_argument("--split", help="a named split (docs/world.md: train, val, test, crowded, same_category, "
                        "sizes, overlap, tables): its variant and seed")
    render.add_argument("--variant", help="draw frames by a hard split's rules (standard, crowded, same_category, "
                        "sizes, overlap, tables); default: the --split's, else standard")
    render.add_argument("--frames", type=int, required=True, help="how many frames to render")
    render.add_argument("--start", type=int, default=0, help="index of the first frame")
    render.add_argument("--out", required=True, help="the split folder to write (new or empty)")
    render.add_argument("--overwrite", action="store_true",
                        help="replace an earlier split in a non-empty --out (its images and annotation files)")
    show = sub.add_parser("show", help="draw one frame with its annotations")
    show.add_argument("--seed", type=int, required=True, help="the split's seed")
    show.add_argument("--index", type=int, default=0, help="the frame's index in the split")
    show.add_argument("--out", required=True, help="PNG to write (its folder must exist)")
    from chatspot_ros.world.bag import add_bag_parser, run_bag

    add_bag_parser(sub)  # chatspot-world bag: a robot log (docs/replay.md)
    args = finish_parser(parser).parse_args(argv)
    if args.command == "bag":
        return run_bag(args)
    if args.command == "render":
        if args.frames < 1:
            parser.error("--frames must be >= 1")
        from chatspot_ros.world.annotations import SPLITS, write_split
        from chatspot_ros.world.scene import VARIANTS

        if args.split is not None and args.split not in SPLITS:
            parser.error(f"unknown --split {args.split!r}; known: {', '.join(SPLITS)}")
        if args.variant is not None and args.variant not in VARIANTS:
            parser.error(f"unknown --variant {args.variant!r}; known: {', '.join(VARIANTS)}")
        variant, seed = SPLITS[args.split] if args.split else ("standard", None)
        variant, seed = args.variant or variant, args.seed if args.seed is not None else seed
        if seed is None:
            parser.error("give --seed or --split")
        writable_folder(args.out, "--out", overwrite=args.overwrite, outputs=RENDER_OUTPUTS)
        out = write_split(args.out, seed, args.frames, start=args.start, progress=True, variant=variant,
                          split=args.split)
        print(f"wrote {args.frames} frames of world seed {seed} ({variant}) to {out}")
        return 0
    from PIL import Image, ImageDraw

    from chatspot_ros.world import region_caption, render as render_frame, sample_scene

    folder = Path(args.out).expanduser().resolve().parent
    if not folder.is_dir():
        raise UsageError(f"--out {args.out}: the folder {folder} does not exist; create it or choose another path")
    scene = sample_scene(args.seed, args.index)
    image = Image.fromarray(render_frame(scene))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw.rectangle(obj.box, outline=(255, 255, 255))
        draw.text((obj.box[0], max(0, obj.box[1] - 11)), obj.category, fill=(255, 255, 255))
        print(f"{obj.category:16s} box {tuple(int(v) for v in obj.box)}  {region_caption(obj)}")
    try:
        image.save(args.out)
    except ValueError as err:  # PIL: unknown file extension
        raise UsageError(f"--out {args.out}: {err}; give a .png (or .jpg) file name") from None
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
