"""Command-line tools without ROS: chatspot-ask, -bench, -build-engine, -train, -eval, -world.

Importing the package sets the OpenMP wait policy the tools run with (cli/threads.py) before any
of them imports torch.
"""
from __future__ import annotations

from chatspot_ros.cli.threads import prepare_environment

prepare_environment()
