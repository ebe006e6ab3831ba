"""Session-wide test setup: DDS on loopback, a private ROS domain, and the tiny checkpoints.

The environment variables are set at import time, before any test module imports rclpy, so
that every process a test starts (they inherit os.environ) stays on loopback too.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# One domain per test session so that parallel runs on one machine do not see each other.
# Domains 1..101 keep clear of 0 (the default a user's own nodes sit on).
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 101))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight LLaVA checkpoint, saved with save_pretrained, built once per session."""
    from chatspot_ros.testing.tiny_model import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), preset="tiny", seed=0)
