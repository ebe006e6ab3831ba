"""The launch file's literal tables (argument help, parameter and studio mappings), read without launch_ros."""
from __future__ import annotations

import ast
from pathlib import Path

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "agent.launch.py"


def launch_tables() -> dict[str, object]:
    tables = {}
    for node in ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                tables[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return tables
