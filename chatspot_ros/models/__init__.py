"""Models the project ships with the package.

``tabletop``: a 6 M-parameter ChatSpot trained by ``chatspot-train`` on the synthetic tabletop
world (docs/world.md, docs/training.md). It knows only that world (coloured cubes, balls and
triangles on a table seen from above); its folder's README.md is the model card with the command
that reproduces it and its evaluation. It is the default of ``make demo`` and of the node when
``model.path`` is empty.
"""
from __future__ import annotations

from pathlib import Path

TABLETOP = Path(__file__).resolve().parent / "tabletop"


def shipped_model(name: str = "tabletop") -> Path:
    """The folder of a shipped model; a clear error when the package was installed without it."""
    path = Path(__file__).resolve().parent / name
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the shipped model {name!r} is missing from {path}: reinstall chatspot_ros "
                                "with its package data, or set model.path to a checkpoint folder")
    return path
