"""``python -m chatspot_ros.agent --help`` prints the parameter table and exits 0 without starting a node."""
from __future__ import annotations

import re
import subprocess
import sys

from chatspot_ros.ros.agent import usage, wants_help
from chatspot_ros.service.config import PARAMETERS


def test_help_lists_every_parameter_with_its_default_and_description() -> None:
    text = usage()
    for spec in PARAMETERS:
        entry = text.split(f"\n  {spec.name}\n", 1)
        assert len(entry) == 2, f"{spec.name} missing from --help"
        body = " ".join(re.split(r"\n  (?=\S)", entry[1], maxsplit=1)[0].split())  # its wrapped lines
        assert body.startswith(" ".join(spec.description.split())), spec.name
        assert f"default: {spec.default!r}" in body, spec.name


def test_help_is_only_taken_before_the_ros_arguments() -> None:
    assert wants_help(["agent", "--help"]) and wants_help(["agent", "-h", "--ros-args"])
    assert not wants_help(["agent", "--ros-args", "-p", "x:=1", "--help"])
    assert not wants_help(["agent"])


def test_the_module_prints_help_and_exits_0() -> None:
    done = subprocess.run([sys.executable, "-m", "chatspot_ros.agent", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == usage()
