"""The shell commands of README.md and docs/*.md: every one is either run here or left out for a stated reason.

Commands are read from the fenced code blocks (continuation lines joined, comments dropped, heredoc
bodies skipped). ``EXCLUDED`` lists, by pattern, what does not run in seconds on a CPU-only machine
without downloads, with the reason. Everything else runs, in document order per file, in a scratch
folder that links the repository's chatspot_ros/, config/ and scripts/; the only rewrites are the
ones in ``REWRITES`` (sizes and placeholders), so a renamed flag, a moved path or a changed output
breaks this test. A new command in the docs that matches neither list fails
``test_every_doc_command_is_classified`` until it is added to one of them.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMANDS = ("chatspot-", "python ", "python3 ", "make ", "bash ", "source ", "ros2 ", "colcon ", "rosdep ", "pip ",
            "mkdir ", "cd ")
SHIPPED = "chatspot_ros/models/tabletop"

# (regex on the command, why it does not run in the suite)
EXCLUDED: list[tuple[str, str]] = [
    (r"^make (demo|test|bench|setup|setup-vllm|test-vllm)\b", "runs for minutes; CI runs make test itself and "
     "test/cli/test_demo.py runs scripts/demo.py"),
    (r"^source scripts/env\.sh", "the suite already runs inside that environment"),
    (r"^(mkdir -p ~/ws|cd ~/ws|rosdep |colcon |pip install|ros2 )", "needs a ROS 2 install (no ros2cli here)"),
    (r"python -m chatspot_ros\.agent(?! --help$)|^chatspot-agent",
     "starts the node, which runs until stopped (test/ros)"),
    (r"--backend vllm|serve_vllm|setup_vllm|vllm", "needs a vLLM server (make test-vllm)"),
    (r"gpu_check|gpu_plain_recipe|--device cuda|llava7b", "needs a GPU"),
    (r"^(chatspot-bench|python -m chatspot_ros\.cli\.bench)|bench_(node|eval|threads|train)\.py",
     "a benchmark: minutes, and its figures come from a full run"),
    (r"scripts/(soak|cycle_lifecycle)\.py", "a soak / lifecycle run: 10-30 minutes"),
    (r"^chatspot-train (run|export)\b", "training: minutes to hours (test/training runs a smoke run)"),
    (r"eval_splits\.sh|--split |--frames (100|300)\b.*val100|chatspot-bench-tiny",
     "evaluation on full splits or on a bench-built model: minutes"),
    (r"\b(MODEL|DIR|OUT)\b(?!_DIR)|(?<!chatspot_ros)/models/|/path/to"
     r"|instances_val2017|cocotext|refcoco|pointqa|vizwiz|dino",
     "a placeholder or a dataset the user downloads"),
    (r"^python - ", "converts a dataset the user downloads (heredoc)"),
    (r"splits_table", "reads the results of the split evaluations (eval_splits.sh: minutes)"),
    (r"^chatspot-(replay|publish|studio)|chatspot-world bag|--play", "the node, a recording or a browser: "
     "test/replay and test/studio run these"),
]

# Rewrites applied before running: sizes only, and the model placeholder of the quick start.
REWRITES: list[tuple[str, str]] = [
    (r"--frames (\d{2,})", "--frames 3"),
    (r"--model MODEL_DIR", f"--model {SHIPPED}"),
    (r"/tmp/", "tmp/"),
]


def doc_commands(path: Path) -> list[str]:
    """Shell commands of the fenced code blocks of one Markdown file, in order."""
    out: list[str] = []
    in_block, heredoc, pending = False, None, ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        marker = re.search(r"<<-?'?(\w+)'?", line)
        if marker:
            heredoc = marker.group(1)
        line = line.removeprefix("$ ")
        if not line.startswith(COMMANDS):
            continue
        line = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing "  # comment"
        if line:
            out.append(" ".join(line.split()))
    return out


def classify(command: str) -> str | None:
    """The reason a command is left out, or None when it runs."""
    for pattern, reason in EXCLUDED:
        if re.search(pattern, command):
            return reason
    return None


RUNNABLE = ("chatspot-world render", "chatspot-world show", "chatspot-train data", "chatspot-ask", "chatspot-eval",
            "chatspot-build-engine --model chatspot_ros/models/tabletop --onnx-only",
            "python -m chatspot_ros.agent --help")


def test_every_doc_command_is_classified() -> None:
    unknown = []
    for doc in DOCS:
        for command in doc_commands(doc):
            if classify(command) is None and not command.startswith(RUNNABLE):
                unknown.append(f"{doc.relative_to(REPO)}: {command}")
    assert not unknown, ("doc commands neither run by this test nor excluded with a reason "
                         "(add them to RUNNABLE or EXCLUDED in test/docs/test_doc_examples.py):\n" + "\n".join(unknown))


def _runs() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        commands = [c for c in doc_commands(doc) if classify(c) is None and c.startswith(RUNNABLE)]
        if commands:
            found.append((str(doc.relative_to(REPO)), commands))
    return found


def test_the_readme_example_is_run() -> None:
    """The README's by-hand example (a frame, then chatspot-ask on the orange ball) is among the runs."""
    readme = dict(_runs())["README.md"]
    assert any(c.startswith("chatspot-world render --seed 7") for c in readme), readme
    assert any(c.startswith("chatspot-ask --model chatspot_ros/models/tabletop") for c in readme), readme


@pytest.mark.parametrize("doc, commands", _runs(), ids=[d for d, _ in _runs()])
def test_doc_commands_run(doc: str, commands: list[str], tmp_path: Path) -> None:
    for name in ("chatspot_ros", "config", "scripts"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, CHATSPOT_THREADS=os.environ.get("CHATSPOT_THREADS", "2"))
    for command in commands:
        run = command
        for pattern, replacement in REWRITES:
            run = re.sub(pattern, replacement, run)
        done = subprocess.run(run, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"{doc}: `{command}` (run as `{run}`) exited {done.returncode}:\n"
                                      f"{done.stderr[-3000:]}")
        if run.startswith("chatspot-ask --model chatspot_ros/models/tabletop") and "34,92,78,136" in run:
            assert "-> An orange ball." in done.stdout, done.stdout  # the README's promised answer
