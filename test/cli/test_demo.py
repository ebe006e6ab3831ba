"""`make demo` end to end (scripts/demo.py with the shipped model): it waits for the answers it reports,
accounts for every detection message it sent (answered or dropped by the node, with the reason), and
says OK only when answers arrived and were checked against the truth."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_reports_what_it_waited_for() -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--seconds", "3", "--answer-wait", "180"],
                          cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert out.rstrip().endswith("[demo] OK"), out[-2000:]
    sent = re.search(r"(\d+) detection messages and (\d+) click sent", out)
    got = re.search(r"scene: (\d+) description messages received, (\d+) not answered by the node \(([^)]*)\); "
                    r"waited until all (\d+) answered or dropped", out)
    assert sent and got, out[-3000:]
    assert int(got.group(4)) == int(sent.group(1)) + int(sent.group(2))
    assert int(got.group(1)) > 0
    checked = re.search(r"(\d+) of (\d+) region descriptions name the right object", out)
    assert checked and int(checked.group(2)) > 0, out[-2000:]
    assert "chatspot-studio" in out  # how to watch it in the browser
