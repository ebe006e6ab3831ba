"""chatspot-train: build precise-referring training data and train ChatSpot models (no ROS).

  chatspot-train data build --world DIR --out train.jsonl          # or --coco/--ocr/--qa/--captions
  chatspot-train data show --data train.jsonl --preset tabletop -n 3
  chatspot-train run --preset smoke --world-seed 1 --steps 20 --out runs/smoke   # a tiny model in a minute
  chatspot-train run --preset tabletop --world-seed 1 --world-frames 20000 --steps 3000 --out runs/t1
  chatspot-train run --base llava-1.5-7b-hf --stage projector_llm --lora-r 16 --data train.jsonl --out runs/l1

docs/training.md describes the recipe, the data format and the shipped tabletop model.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

from chatspot_ros.cli.errors import UsageError, cli_main, existing_path, finish_parser
from chatspot_ros.cli.threads import configure_threads
from chatspot_ros.training.recipe import STAGES, TrainConfig

# Help of the TrainConfig flags (their defaults come from TrainConfig and are shown by --help).
_CONFIG_HELP = {
    "steps": "optimizer steps", "batch_size": "samples per step (per accumulation micro-batch)",
    "grad_accum": "micro-batches accumulated per step", "warmup_steps": "linear learning-rate warm-up steps",
    "max_length": "tokens per sequence, image tokens included; longer samples are rejected and counted",
    "seed": "seed of sampling, shuffling and dropout", "threads": "torch CPU threads (0: one per core)",
    "log_every": "steps between metrics.csv rows", "save_every": "steps between saved states (for --resume)",
    "lora_r": "LoRA rank on the LLM (0: no LoRA; needs --stage projector_llm)", "lora_alpha": "LoRA scaling",
    "lr": "peak learning rate", "min_lr_ratio": "the cosine schedule ends at --lr times this",
    "weight_decay": "AdamW weight decay", "clip_grad": "gradient-norm clip", "lora_dropout": "LoRA dropout",
}
_CONFIG_NAMES = ("steps", "batch_size", "grad_accum", "warmup_steps", "max_length", "seed", "threads", "log_every",
                 "save_every", "lora_r", "lora_alpha", "lr", "min_lr_ratio", "weight_decay", "clip_grad",
                 "lora_dropout", "stage")


def _as_flags(message: str) -> str:
    """TrainConfig's messages name fields (lora_r, stage='x'); the user typed flags (--lora-r, --stage x)."""
    message = re.sub(r"\bstage='(\w+)'", r"--stage \1", message)
    for name in _CONFIG_NAMES:
        message = re.sub(rf"(?<![-\w]){name}\b", "--" + name.replace("_", "-"), message)
    return message


def _read_data(path: str):  # noqa: ANN202 (list of training Samples)
    from chatspot_ros.training.dataset import read_jsonl

    existing_path(path, "--data", kind="file", hint="write one with 'chatspot-train data build'")
    try:
        return read_jsonl(path)
    except ValueError as err:
        raise UsageError(f"--data {err}") from None


def _add_data_sources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coco", action="append", default=[], help="COCO instances JSON (boxes, categories, polygons)")
    p.add_argument("--images", help="image folder of --coco/--ocr (default: next to the JSON, or its images/)")
    p.add_argument("--ocr", action="append", default=[], help="COCO-Text v2 style JSON (utf8_string, bbox)")
    p.add_argument("--qa", action="append", default=[], help="region QA JSONL {image, question, answers, box|point}")
    p.add_argument("--refs", action="append", default=[], help="referring expressions JSONL {image, expression, bbox}")
    p.add_argument("--tasks", action="append", default=[], help="tasks JSONL {image, task, bbox, plan}")
    p.add_argument("--captions", action="append", default=[], help="image captions JSONL {image, caption}")
    p.add_argument("--world", action="append", default=[], help="a world split folder (chatspot-world render)")


_SOURCE_FLAGS = ("coco", "ocr", "qa", "refs", "tasks", "captions", "world")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatspot-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="build or show a training dataset").add_subparsers(dest="data_command",
                                                                                        required=True)
    build = data.add_parser("build", help="write a JSONL dataset from annotation files")
    _add_data_sources(build)
    build.add_argument("--out", required=True, help="the JSONL file to write")
    build.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    build.add_argument("--conversations-per-image", type=int, default=4, help="conversations drawn per image")
    build.add_argument("--max-turns", type=int, default=3, help="question/answer turns per conversation")
    build.add_argument("--seed", type=int, default=0, help="seed of the drawn conversations")
    build.add_argument("--render-for", help="also write LLaVA 'conversations' rendered for this checkpoint folder")
    show = data.add_parser("show", help="print rendered samples as the model will see them")
    show.add_argument("--data", required=True, help="a JSONL file from 'data build'")
    show.add_argument("-n", type=int, default=3, help="how many samples to print")
    show.add_argument("--preset", default="tabletop", help="render for a fresh preset's geometry and tokenizer")
    show.add_argument("--base", help="render for this checkpoint folder instead")
    show.add_argument("--seed", type=int, default=0, help="initialization seed of the fresh preset")
    show.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="bold the supervised answers (auto: only on a terminal)")

    export = sub.add_parser("export", help="write a run's latest checkpoint (state/state.pt) as a model folder")
    export.add_argument("--run", required=True, help="the --out folder of a run")
    start_e = export.add_mutually_exclusive_group(required=True)
    start_e.add_argument("--preset", help="the preset the run started from")
    start_e.add_argument("--base", help="the checkpoint folder the run started from")
    export.add_argument("--model-seed", type=int, default=0, help="the run's --model-seed")
    export.add_argument("--out", required=True, help="the model folder to write")
    export.add_argument("--plain", action="store_true", help="the run was a --plain one (no wired route to check)")
    export.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="precision of the saved weights")

    run = sub.add_parser("run", help="train")
    start = run.add_mutually_exclusive_group(required=True)
    start.add_argument("--preset", help="train a fresh tabletop model of this preset: tabletop (the shipped "
                       "model's shape) or smoke (a tiny one that trains in a minute, for trying the tools)")
    start.add_argument("--base", help="fine-tune this llava-hf checkpoint folder (stages 1 and 2)")
    run.add_argument("--data", action="append", default=[], help="JSONL dataset(s) from 'data build'")
    run.add_argument("--world-seed", type=int, help="draw samples from this world split on the fly")
    run.add_argument("--world-frames", type=int, default=20000, help="frames of --world-seed drawn from")
    run.add_argument("--out", required=True, help="run folder: metrics.csv, loss.png, state/, model/")
    run.add_argument("--stage", choices=STAGES, default=None, help="default: scratch for --preset, projector_llm for --base")
    d = TrainConfig()
    for name in ("steps", "batch_size", "grad_accum", "warmup_steps", "max_length", "seed", "threads",
                 "log_every", "save_every", "lora_r", "lora_alpha"):
        run.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name), help=_CONFIG_HELP[name])
    for name in ("lr", "min_lr_ratio", "weight_decay", "clip_grad", "lora_dropout"):
        run.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name), help=_CONFIG_HELP[name])
    run.add_argument("--max-turns", type=int, default=3, help="turns per drawn world conversation")
    run.add_argument("--mix", default="", metavar="KIND=W,...",
                     help="world turn weights, e.g. classify=4,locate=1 (docs/training.md)")
    run.add_argument("--vision-pretrain-steps", type=int, default=0,
                     help="stage 0 for a fresh preset: patch colour/shape targets from the world (docs/training.md)")
    run.add_argument("--vision-pretrain-frames", type=int, default=2000, help="world frames stage 0 draws from")
    run.add_argument("--freeze-path", action="store_true",
                     help="keep the wired referring path fixed (a tabletop preset after stage 0, or a checkpoint "
                          "trained from one; docs/training.md)")
    run.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU; on a CPU often slower)")
    run.add_argument("--workers", type=int, default=0,
                     help="processes that draw, render, tokenize and collate batches ahead of the step (0: inline)")
    run.add_argument("--no-fused", action="store_true", help="plain AdamW instead of the fused one")
    run.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    run.add_argument("--max-minutes", type=float, default=0.0,
                     help="stop (and save) after this many minutes of training, even before --steps (0: no limit)")
    run.add_argument("--plain", action="store_true",
                     help="with --preset: transformers' default initialization, no wired route (the plain recipe)")
    run.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    run.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    run.add_argument("--dry-run", action="store_true", help="encode 1,000 samples, print token counts and rejections, stop")
    run.add_argument("--resume", action="store_true", help="continue from --out/state/state.pt")
    run.add_argument("--model-seed", type=int, default=0, help="initialization seed of a fresh preset")
    run.add_argument("--eval-world-seed", type=int, help="after training, evaluate on this world split")
    run.add_argument("--eval-frames", type=int, default=200, help="frames of --eval-world-seed")
    run.add_argument("--export", help="also copy the final model folder here")
    run.add_argument("--export-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                     help="precision of the saved model")
    return finish_parser(parser)


def _data_build(args: argparse.Namespace) -> int:
    from chatspot_ros.training import builders

    given = [(flag, p) for flag in _SOURCE_FLAGS for p in getattr(args, flag)]
    if not given:
        raise UsageError("no input: give at least one of --world DIR, --coco JSON, --ocr JSON, --qa, --refs, "
                         "--tasks or --captions JSONL (e.g. --world data/world/train from 'chatspot-world render')")
    for flag, path in given:
        existing_path(path, f"--{flag}", kind="dir" if flag == "world" else "file")
    if args.images:
        existing_path(args.images, "--images", kind="dir")
    if Path(args.out).exists() and not args.overwrite:
        raise UsageError(f"--out {args.out} exists; choose another file or pass --overwrite")
    samples = builders.build_samples(
        coco=args.coco, images=args.images, ocr=args.ocr, qa=args.qa, refs=args.refs, tasks=args.tasks,
        captions=args.captions, world=args.world, conversations_per_image=args.conversations_per_image,
        max_turns=args.max_turns, seed=args.seed,
    )
    setup = None
    if args.render_for:
        from chatspot_ros.training.model_setup import from_checkpoint

        setup = from_checkpoint(args.render_for)
    if not samples:
        raise UsageError(f"the inputs ({', '.join(p for _, p in given)}) hold no samples; nothing written")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for sample in samples:
            record = sample.to_json(setup.builder if setup else None, setup.conversation if setup else None)
            f.write(json.dumps(record) + "\n")
    counts: dict[str, int] = {}
    for s in samples:
        for t in s.turns:
            counts[t.template] = counts.get(t.template, 0) + 1
    print(f"wrote {len(samples)} samples to {out}; turns by template: {json.dumps(counts, sort_keys=True)}")
    return 0


def _setup_for(preset: str | None, base: str | None, seed: int = 0, wired: bool = True):  # noqa: ANN202
    from chatspot_ros.training.model_setup import from_checkpoint, from_preset
    from chatspot_ros.training.tabletop_model import PRESETS

    if base:
        existing_path(base, "--base", kind="dir", hint="give a llava-hf checkpoint folder")
        if not (Path(base) / "config.json").is_file():
            raise UsageError(f"--base {base} has no config.json; give a llava-hf checkpoint folder")
        return from_checkpoint(base)
    if (preset or "tabletop") not in PRESETS:
        raise UsageError(f"--preset {preset}: unknown; choose one of {', '.join(PRESETS)}")
    return from_preset(preset or "tabletop", seed=seed, wired=wired)


def _data_show(args: argparse.Namespace) -> int:
    from chatspot_ros.training.conversations import render_prompt_and_answers
    from chatspot_ros.training.dataset import ConversationEncoder
    from chatspot_ros.training.tokenization import Encoded

    samples = _read_data(args.data)
    setup = _setup_for(args.preset, args.base)
    encoder = ConversationEncoder(setup.tokenizer, setup.builder, setup.conversation, setup.num_image_tokens, 4096)
    bold = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    on, off = ("\033[1m", "\033[0m") if bold else ("", "")
    for sample in samples[: args.n]:
        print(f"=== {sample.id}  {sample.image}  ({sample.source})")
        for context, answer in render_prompt_and_answers(setup.builder, setup.conversation, sample):
            print(f"{context}{on}{answer}{setup.conversation.end_of_turn}{off}")
        result = encoder(sample)
        if isinstance(result, Encoded):
            print(f"--- {len(result.input_ids)} tokens ({setup.num_image_tokens} image), "
                  f"{result.supervised} supervised")
        else:
            print(f"--- REJECTED {result.reason}: {result.detail}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import torch

    from chatspot_ros.training import card
    from chatspot_ros.training.sources import SampleMix
    from chatspot_ros.training.trainer import ListSource
    from chatspot_ros.training.world_source import WorldSource

    stage = args.stage or ("scratch" if args.preset else "projector_llm")
    if not args.data and args.world_seed is None:
        raise UsageError("no training data: give --data FILE.jsonl (from 'chatspot-train data build') "
                         "and/or --world-seed S")
    try:
        config = _train_config(args, stage)
    except ValueError as err:
        raise UsageError(_as_flags(str(err))) from None
    sources = [ListSource(_read_data(p), name=Path(p).name) for p in args.data]
    if args.plain and not args.preset:
        raise UsageError("--plain builds a fresh --preset without the wired route; it has no meaning with --base")
    setup = _setup_for(args.preset, args.base, args.model_seed, wired=not args.plain)  # checks --preset/--base first
    configure_threads(config.threads or None)  # --threads 0: one per core (or CHATSPOT_THREADS), passive waits
    torch.manual_seed(config.seed)
    if args.world_seed is not None:
        mix = SampleMix(max_turns=args.max_turns).with_weights(args.mix)
        sources.append(WorldSource(args.world_seed, args.world_frames, mix=mix))
    source = sources[0] if len(sources) == 1 else card.MixedSource(sources)
    return _train(args, config, stage, setup, source)


def _train_config(args: argparse.Namespace, stage: str) -> TrainConfig:
    return TrainConfig(
        stage=stage, steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        clip_grad=args.clip_grad, max_length=args.max_length, seed=args.seed, threads=args.threads,
        bf16=args.bf16, workers=args.workers, fused=not args.no_fused, compile=args.compile,
        max_minutes=args.max_minutes,
        gradient_checkpointing=args.gradient_checkpointing, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, log_every=args.log_every,
        save_every=args.save_every, device=args.device,
    )


def _train(args: argparse.Namespace, config: TrainConfig, stage: str, setup, source) -> int:  # noqa: ANN001
    import torch

    from chatspot_ros.training import card
    from chatspot_ros.training.dataset import ConversationEncoder
    from chatspot_ros.training.export import save_llava_hf
    from chatspot_ros.training.recipe import apply_lora, apply_stage
    from chatspot_ros.training.trainer import Trainer, plot_loss_curve

    trainable = apply_stage(setup.model, stage)
    resuming = args.resume and (Path(args.out) / "state" / "state.pt").exists()
    if args.vision_pretrain_steps and args.plain:
        raise UsageError("--vision-pretrain-steps wires the stage-0 head into the route; --plain has no route")
    if args.vision_pretrain_steps and not resuming and not args.dry_run:
        if not args.preset or args.world_seed is None:
            raise UsageError("--vision-pretrain-steps needs --preset and --world-seed")
        from chatspot_ros.training import referring_path as rp
        from chatspot_ros.training import tabletop_model as tm
        from chatspot_ros.training.vision_pretrain import pretrain_vision, region_readout_accuracy

        torch.manual_seed(config.seed)
        layout = rp.layout_for(setup.model.config)
        _, head = pretrain_vision(setup.model, setup.preprocess, seed=args.world_seed,
                                  frames=args.vision_pretrain_frames, steps=args.vision_pretrain_steps, layout=layout)
        readout = region_readout_accuracy(setup.model, head, setup.preprocess, seed=args.world_seed,
                                          frames=min(200, args.vision_pretrain_frames))
        print("stage 0: category from the patch head averaged over the region (training frames): "
              + ", ".join(f"{k} {v:.1%}" for k, v in readout.items()))
        rp.wire_projector(setup.model, layout, head, seed=args.model_seed)
        tm.calibrate_path(setup)
        rec = rp.check_answer_box(setup.model, tm.box_probe(setup, seed=997), layout, setup.tokenizer,
                                  tm.COORD_TOKENS)
        print(f"answer-box route on unseen frames (teacher-forced REC Acc@0.5): box the route finds "
              f"{rec['found']:.1%}, its readout {rec['readout']:.1%}")
    if args.freeze_path:
        from chatspot_ros.training.referring_path import freeze, wiring_problems
        from chatspot_ros.training.tabletop_model import COORD_TOKENS

        problems = wiring_problems(setup.model, setup.tokenizer, COORD_TOKENS)
        if problems:  # freezing an unwired model would pin its pretrained layers and LM-head columns for nothing
            raise UsageError(f"--freeze-path: {setup.origin} does not carry the wired referring path "
                             f"({problems[0]}); train it without --freeze-path")

        frozen = set(freeze(setup.model))
        trainable = [n for n, p in setup.model.named_parameters() if p.requires_grad]
        print(f"--freeze-path: {len(frozen)} tensors of the referring path frozen")
    model = setup.model
    if config.lora_r:
        model = apply_lora(model, config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.to(config.device)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    print(f"model {setup.origin}: {n_all / 1e6:.2f} M parameters, {n_train / 1e6:.2f} M trainable (stage {stage}, "
          f"{len(trainable)} tensors); {setup.num_image_tokens} image tokens; dialect {setup.builder.dialect.name}; "
          f"conversation {setup.conversation.name}")
    if setup.added_tokens:
        print(f"added special tokens {list(setup.added_tokens)} (embeddings resized)")
    encoder = ConversationEncoder(setup.tokenizer, setup.builder, setup.conversation, setup.num_image_tokens,
                                  config.max_length)
    trainer = Trainer(model, encoder, setup.preprocess, source, config, args.out, setup.tokenizer.pad_token_id)
    if args.dry_run:
        return card.dry_run(trainer, n=1000)
    out = Path(args.out)
    if args.resume:
        if not trainer.load_state():
            print(f"--resume: no state in {out / 'state'}; starting fresh")
    elif (out / "state" / "state.pt").exists():
        raise UsageError(f"--out {out} holds a run already; pass --resume to continue it or choose another --out")
    started = time.time()
    trainer.run()
    wall = time.time() - started
    final = model.merge_and_unload() if config.lora_r else model
    final.eval()
    model_dir = save_llava_hf(final, setup.tokenizer, setup.image_processor, out / "model",
                              dtype=args.export_dtype)
    if (out / "metrics.csv").exists():
        plot_loss_curve(out / "metrics.csv", out / "loss.png", title=f"chatspot-train {setup.origin}")
    card.write_model_card(model_dir, args=sys.argv[1:], config=config, setup=setup, trainer=trainer,
                          wall_s=wall, source=source, eval_world_seed=args.eval_world_seed,
                          eval_frames=args.eval_frames)
    if args.export:
        import shutil

        shutil.copytree(model_dir, args.export, dirs_exist_ok=True)
        print(f"exported to {args.export}")
    print(f"done: {trainer.step} steps in {wall / 60:.1f} min; model in {model_dir}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from chatspot_ros.training.export import save_llava_hf

    state_path = Path(args.run) / "state" / "state.pt"
    if not state_path.is_file():
        raise UsageError(f"--run {args.run}: no {state_path}; give the --out folder of a chatspot-train run")
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    if state["config"].get("lora_r"):
        raise UsageError("--run is a LoRA run: let it finish (it merges the adapters), then use its model/ folder")
    setup = _setup_for(args.preset, args.base, args.model_seed, wired=not args.plain)
    named = dict(setup.model.named_parameters())
    unknown = [n for n in state["trainable"] if n not in named]
    if unknown:
        raise UsageError(f"{state_path} does not belong to this --preset/--base: unknown parameters {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            named[name].copy_(tensor)
    if args.preset and not args.plain:  # a wired tabletop model: it must run in the precision it is saved in
        from chatspot_ros.training import tabletop_model as tm

        factor = tm.check_in_dtype(setup, args.dtype)
        print(f"checked in {args.dtype} on the REC and region probes (find head text penalty x{factor:.3g})")
    out = save_llava_hf(setup.model.eval(), setup.tokenizer, setup.image_processor, args.out, dtype=args.dtype)
    print(f"exported step {state['step']} of {args.run} to {out}")
    return 0


@cli_main("chatspot-train", interrupt_hint="a run continues from its last saved state with --resume")
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "data":
        return _data_build(args) if args.data_command == "build" else _data_show(args)
    if args.command == "export":
        return _export(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
