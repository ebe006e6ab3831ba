"""The AgentService tests run without rclpy: plain values in, plain callbacks out."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
