from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smoke_setup_factory():
    """A fresh 'smoke' preset setup per call (cheap: the tokenizer is trained once per process)."""
    from chatspot_ros.training.model_setup import from_preset

    return lambda seed=0: from_preset("smoke", seed=seed)
