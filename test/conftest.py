"""Session-wide test setup: DDS on loopback, a private ROS domain, and the tiny checkpoints.

The environment variables are set at import time, before any test module imports rclpy, so
that every process a test starts (they inherit os.environ) stays on loopback too.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ros_domain import claim_session_domain  # noqa: E402

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# One domain per test session so that parallel runs on one machine do not see each other, even
# when scripts/env.sh exported one (its fixed 42 would be shared by every run): see ros_domain.py.
SESSION_DOMAIN = claim_session_domain()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight LLaVA checkpoint, saved with save_pretrained, built once per session."""
    from chatspot_ros.testing.tiny_model import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), preset="tiny", seed=0)
