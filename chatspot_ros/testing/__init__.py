"""Test and demo helpers: random-weight checkpoints built offline (no downloads)."""
from __future__ import annotations
