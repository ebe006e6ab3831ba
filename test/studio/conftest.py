"""test/studio: the test helpers of this folder are importable (fakes, studio_harness)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
