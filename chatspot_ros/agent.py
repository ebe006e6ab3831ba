"""``python -m chatspot_ros.agent`` and the ``chatspot-agent`` console script: the node's entry
point, which lives beside the node in :mod:`chatspot_ros.ros.agent` (kept here because the docs,
the launch file and users' scripts name this module)."""
from __future__ import annotations

import sys

from chatspot_ros.ros.agent import executor_threads, main, spin_until_shutdown, usage

__all__ = ["executor_threads", "main", "spin_until_shutdown", "usage"]

if __name__ == "__main__":
    sys.exit(main())
