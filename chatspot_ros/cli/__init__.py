"""Command-line tools without ROS: chatspot-ask, chatspot-bench, chatspot-build-engine."""
from __future__ import annotations
