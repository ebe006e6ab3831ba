"""chatspot-world: render splits of the tabletop world with their annotation files (docs/world.md).

  chatspot-world render --seed 1000 --frames 1000 --out data/world/val
  chatspot-world show --seed 1000 --index 3 --out frame.png      # one frame, boxes and names drawn
  chatspot-world bag --seed 1000 --frames 20 --out data/world/bag --storage mcap   # a robot log
"""
from __future__ import annotations

import argparse
import sys


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
    render.add_argument("--frames", type=int, required=True)
    render.add_argument("--start", type=int, default=0, help="index of the first frame")
    render.add_argument("--out", required=True)
    show = sub.add_parser("show", help="draw one frame with its annotations")
    show.add_argument("--seed", type=int, required=True)
    show.add_argument("--index", type=int, default=0)
    show.add_argument("--out", required=True, help="PNG to write")
    from chatspot_ros.world.bag import add_bag_parser, run_bag

    add_bag_parser(sub)  # chatspot-world bag: a robot log (docs/replay.md)
    args = parser.parse_args(argv)
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
        out = write_split(args.out, seed, args.frames, start=args.start, progress=True, variant=variant,
                          split=args.split)
        print(f"wrote {args.frames} frames of world seed {seed} ({variant}) to {out}")
        return 0
    from PIL import Image, ImageDraw

    from chatspot_ros.world import region_caption, render as render_frame, sample_scene

    scene = sample_scene(args.seed, args.index)
    image = Image.fromarray(render_frame(scene))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw.rectangle(obj.box, outline=(255, 255, 255))
        draw.text((obj.box[0], max(0, obj.box[1] - 11)), obj.category, fill=(255, 255, 255))
        print(f"{obj.category:16s} box {tuple(int(v) for v in obj.box)}  {region_caption(obj)}")
    image.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
