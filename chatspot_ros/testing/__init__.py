"""Names tests and scripts use for the random-weight checkpoints of :mod:`chatspot_ros.modelling`."""
from __future__ import annotations
