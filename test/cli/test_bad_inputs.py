"""The error contract of every console script (chatspot_ros/cli/errors.py), driven by a table of bad inputs.

A user's mistake gives one line ``<prog>: error: <what is wrong; what to do>`` on stderr, no traceback,
and exit status 2. The table runs in-process through ``main(argv)``, which is the same wrapped
function the console script calls; a few rows also run as real subprocesses of the installed scripts.
"""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chatspot_ros.cli.errors import UsageError, cli_main, run_cli, writable_folder

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "chatspot_ros" / "models" / "tabletop"

MODULES = {
    "chatspot-ask": "chatspot_ros.cli.ask",
    "chatspot-bench": "chatspot_ros.cli.bench",
    "chatspot-build-engine": "chatspot_ros.cli.build_engine",
    "chatspot-eval": "chatspot_ros.cli.eval",
    "chatspot-train": "chatspot_ros.cli.train",
    "chatspot-world": "chatspot_ros.cli.world",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    full = root / "full"
    full.mkdir()
    (full / "old.txt").write_text("an earlier run\n")
    not_image = root / "notes.png"
    not_image.write_text("not an image\n")
    bad_jsonl = root / "bad.jsonl"
    bad_jsonl.write_text('{"hello": 1}\n')
    no_config = root / "no_config"
    no_config.mkdir()
    truncated = root / "truncated_model"
    shutil.copytree(SHIPPED, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    import cv2
    import numpy as np

    frame = root / "frame.png"
    cv2.imwrite(str(frame), np.full((240, 320, 3), 128, np.uint8))
    from chatspot_ros.world.annotations import write_split

    world = write_split(root / "world", 3, 1)
    return {"root": root, "full": full, "world": world, "not_image": not_image, "bad_jsonl": bad_jsonl,
            "no_config": no_config,
            "truncated": truncated, "frame": frame}


# (console script, argv with {placeholders}, a fragment the one line must hold)
BAD_INPUTS = [
    ("chatspot-world", "render --seed 1 --frames 1 --out {full}", "--overwrite"),
    ("chatspot-world", "render --seed 1 --frames 1 --out {not_image}", "is a file"),
    ("chatspot-world", "show --seed 1 --out /nowhere/at/all/frame.png", "does not exist"),
    ("chatspot-world", "show --seed 1 --out {root}/frame.xyz", ".png"),
    ("chatspot-world", "render --seed 1 --frames 0 --out {root}/w0", "--frames must be >= 1"),
    ("chatspot-train", "data build --world /nowhere --out {root}/x.jsonl", "--world /nowhere: no such folder"),
    ("chatspot-train", "data build --out {root}/x.jsonl", "no input"),
    ("chatspot-train", "data build --coco {root}/missing.json --out {root}/x.jsonl", "--coco"),
    ("chatspot-train", "data build --world {full} --out {bad_jsonl}", "--overwrite"),
    ("chatspot-train", "data show --data missing.jsonl", "--data missing.jsonl: no such file"),
    ("chatspot-train", "data show --data {bad_jsonl}", "not a training sample"),
    ("chatspot-train", "data show --data {root}", "is a folder"),
    ("chatspot-train", "run --base /tmp/nomodel-25 --world-seed 1 --out {root}/r1", "--base /tmp/nomodel-25"),
    ("chatspot-train", "run --base {no_config} --world-seed 1 --out {root}/r1", "no config.json"),
    ("chatspot-train", "run --preset huge --world-seed 1 --out {root}/r2", "--preset huge: unknown"),
    ("chatspot-train", "run --preset smoke --out {root}/r3", "no training data"),
    ("chatspot-train", "run --preset smoke --world-seed 1 --lora-r 4 --out {root}/r4", "--stage projector_llm"),
    ("chatspot-train", "run --preset smoke --world-seed 1 --steps 0 --out {root}/r5", "--steps must be >= 1"),
    ("chatspot-train", "export --run {root} --preset smoke --out {root}/e", "give the --out folder"),
    ("chatspot-ask", "--model {shipped} --image {root} --question q", "--image {root} is a folder"),
    ("chatspot-ask", "--model {shipped} --image /nowhere.png --question q", "no such file"),
    ("chatspot-ask", "--model {shipped} --image {not_image} --question q", "cannot read it as an image"),
    ("chatspot-ask", "--model /nowhere --image {frame} --question q", "--model /nowhere: no such folder"),
    ("chatspot-ask", "--model {no_config} --image {frame} --question q", "no config.json"),
    ("chatspot-ask", "--model {truncated} --image {frame} --question q", "damaged or truncated"),
    ("chatspot-ask", "--model {shipped} --image {frame} --box=-900,0,10,10 --question q", "wrong image or wrong units"),
    ("chatspot-ask", "--model {shipped} --image {frame} --question q --backend vllm", "--server"),
    ("chatspot-ask", "--model {shipped} --image {frame} --question q --threads 0", "--threads 0"),
    ("chatspot-eval", "--model /nowhere --world {world} --out {root}/ev1", "/nowhere"),
    ("chatspot-eval", "--model {shipped} --world /nowhere --out {root}/ev2", "/nowhere"),
    ("chatspot-eval", "--model {shipped} --world {full} --out {root}/ev3", "chatspot-world render"),
    ("chatspot-eval", "--model {shipped} --world {world} --out {full}", "--overwrite"),
    ("chatspot-build-engine", "--model {shipped} --device cpu", "--device cpu: a TensorRT engine is built for a CUDA"),
    ("chatspot-build-engine", "--model /nowhere --onnx-only", "--model /nowhere: no such folder"),
    ("chatspot-bench", "--model {shipped} --k 0", "--k values"),
]


def _argv(template: str, files: dict[str, Path]) -> list[str]:
    names = {k: str(v) for k, v in files.items()}
    names["shipped"] = str(SHIPPED)
    return [part.format(**names) for part in template.split()]


def _main(prog: str):  # noqa: ANN202
    return importlib.import_module(MODULES[prog]).main


@pytest.mark.parametrize("prog, argv, fragment", BAD_INPUTS, ids=[f"{p} {a}" for p, a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_2(prog: str, argv: str, fragment: str, files, capsys) -> None:
    args = _argv(argv, files)
    try:
        status = _main(prog)(args)
    except SystemExit as exit_:  # argparse's own errors: usage line + one error line, status 2
        status = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith(f"{prog}") and ": error: " in line]
    assert status == 2, err
    assert "Traceback" not in err, err
    assert len(error_lines) == 1, err
    assert lines[-1] == error_lines[0], err  # the error is the last thing printed
    assert fragment.format(**{k: str(v) for k, v in files.items()}) in error_lines[0], err


def test_every_console_script_is_under_the_contract() -> None:
    """Each chatspot-* console script in setup.py (new ones included) has a main wrapped by cli_main."""
    text = (REPO / "setup.py").read_text()
    scripts = {}
    for line in text.splitlines():
        line = line.strip().strip('",')
        if line.startswith("chatspot-") and "=" in line:
            name, target = (part.strip() for part in line.split("=", 1))
            scripts[name] = target
    assert set(MODULES) <= set(scripts), scripts
    for name, target in scripts.items():
        if name == "chatspot-agent":  # the ROS node: its own entry point (docs/node.md)
            continue
        module, func = target.split(":")
        main = getattr(importlib.import_module(module), func)
        assert hasattr(main, "unwrapped"), f"{name}: main is not wrapped by chatspot_ros.cli.errors.cli_main"


def test_run_cli_verbose_shows_the_traceback(capsys) -> None:
    def body(argv):  # noqa: ANN001, ANN202
        raise UsageError("bad thing;\nfix it")

    assert run_cli("prog", body, ["--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "prog: error: bad thing;; fix it"


def test_a_real_bug_keeps_its_traceback() -> None:
    @cli_main("prog")
    def main(argv=None):  # noqa: ANN001, ANN202
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        main([])


def test_ctrl_c_exits_130_with_a_hint(capsys) -> None:
    @cli_main("prog", interrupt_hint="continue with --resume")
    def main(argv=None):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    assert main([]) == 130
    assert capsys.readouterr().err.strip() == "prog: interrupted (Ctrl-C); continue with --resume"


def test_overwrite_replaces_only_the_tools_outputs(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "000019.png").write_bytes(b"stale")
    (tmp_path / "instances.json").write_text("{}")
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(UsageError, match="not empty"):
        writable_folder(tmp_path)
    writable_folder(tmp_path, overwrite=True, outputs=("images", "instances.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_world_render_never_mixes_runs(tmp_path: Path, capsys) -> None:
    """The finding of issue #25: 20 frames of one seed, then 5 of another into the same folder."""
    main = _main("chatspot-world")
    out = tmp_path / "w"
    assert main(["render", "--seed", "3", "--frames", "4", "--out", str(out)]) == 0
    assert main(["render", "--seed", "1000", "--frames", "2", "--out", str(out)]) == 2
    assert len(list((out / "images").iterdir())) == 4  # refused: nothing touched
    assert main(["render", "--seed", "1000", "--frames", "2", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]


def test_negative_box_is_accepted_and_the_clip_reported(files, capsys) -> None:
    """``--box -10,...`` (no '=') parses, and the clip to the image is a warning line, as docs/referring.md says."""
    status = _main("chatspot-ask")(["--model", str(SHIPPED), "--image", str(files["frame"]), "--box",
                                    "-10,20,100,120", "--question", "What can you see in this region?"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "chatspot-ask: warning: " in captured.err and "clipped" in captured.err, captured.err
    assert "[box [(0.0, 20.0), (100.0, 120.0)]]" in captured.out, captured.out


SUBPROCESS_ROWS = [
    ("chatspot-world", "show --seed 1 --out /nowhere/at/all/frame.png"),
    ("chatspot-train", "data show --data missing.jsonl"),
    ("chatspot-ask", "--model {shipped} --image {root} --question q"),
    ("chatspot-build-engine", "--model {shipped} --device cpu"),
    ("chatspot-eval", "--model /nowhere --world {world} --out {root}/ev9"),
    ("chatspot-bench", "--model {shipped} --k 0"),
]


def test_installed_scripts_follow_the_contract(files) -> None:
    """The same contract through the real console scripts, run side by side (each starts torch)."""
    procs = []
    for prog, argv in SUBPROCESS_ROWS:
        exe = shutil.which(prog)
        assert exe, f"{prog} is not installed (make setup)"
        procs.append((prog, subprocess.Popen([exe, *_argv(argv, files)], stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)))
    for prog, proc in procs:
        out, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (prog, err)
        assert lines and lines[-1].startswith(f"{prog}: error: "), (prog, err)
        assert "Traceback" not in err, (prog, err)


def test_cuda_asked_on_a_machine_without_it(files, capsys) -> None:
    """--device cuda where torch sees no GPU: one line that names the flag to use instead."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the mistake cannot be made here")
    status = _main("chatspot-ask")(["--model", str(SHIPPED), "--image", str(files["frame"]), "--question", "q",
                                    "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("chatspot-ask: error: ") and "--device cpu" in err, err
    assert "Traceback" not in err
