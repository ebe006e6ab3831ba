"""The README's and the model card's built-by-hand / learned table is the inventory script's
output for the shipped weights (never typed in), and its rows cover every parameter."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
MARKED = re.compile(r"<!-- inventory: .*? -->\n(.*?)\n<!-- /inventory -->", re.S)


@pytest.fixture(scope="module")
def shipped_rows():
    from chatspot_ros.training.inventory import SHIPPED, inventory
    from chatspot_ros.training.model_setup import from_checkpoint

    setup = from_checkpoint(ROOT / SHIPPED, add_box_tokens=False)
    return inventory(setup.model), sum(p.numel() for p in setup.model.parameters())


def test_rows_cover_every_parameter_and_locate_the_wired_parts(shipped_rows) -> None:
    rows, total = shipped_rows
    assert sum(r.parameters for r in rows) == total == 6_266_752
    by_part = {r.part: r for r in rows}
    assert by_part["projector"].how == by_part["decoder layers 0-3"].how == "built by hand"
    assert by_part["vision tower"].how == "learned (stage 0)"
    assert "471 non-zero attention weights and 8 MLP units" in by_part["decoder layers 0-3"].note
    learned_decoder = by_part["decoder layers 4-5 and final norm"].parameters + by_part["LM head"].parameters
    assert 1.9e6 < learned_decoder < 2.0e6


@pytest.mark.parametrize("doc", ["README.md", "chatspot_ros/models/tabletop/README.md", "docs/training.md"])
def test_docs_carry_the_scripts_table(shipped_rows, doc) -> None:
    from chatspot_ros.training.inventory import markdown

    found = MARKED.findall((ROOT / doc).read_text())
    assert found, f"{doc} has no <!-- inventory: ... --> table"
    assert all(table == markdown(shipped_rows[0]) for table in found)
