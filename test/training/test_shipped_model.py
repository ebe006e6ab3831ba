"""The shipped tabletop model (chatspot_ros/models/tabletop) meets the issue's targets through
chatspot-eval on a small split it never trained on (training used split 1; this is split 4242)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from chatspot_ros.models import shipped_model  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from chatspot_ros.evaluation import EvalConfig, evaluate
    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.runtime.config import RuntimeConfig
    from chatspot_ros.world.annotations import write_split

    root = tmp_path_factory.mktemp("shipped")
    world = write_split(root / "world", seed=4242, frames=60)
    chatspot = ChatSpot.from_config(RuntimeConfig(model_path=str(shipped_model())))
    config = EvalConfig.for_world(world, root / "eval", noise=(0.2,), batch_regions=256, progress=False, plot=False)
    return evaluate(chatspot, config)


def test_the_shipped_model_is_small_and_documented() -> None:
    folder = shipped_model()
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 20 * 2**20
    card = (folder / "README.md").read_text()
    assert "chatspot-train run --preset tabletop" in card and "chatspot-eval" in card
    assert json.loads((folder / "config.json").read_text())["chatspot_dialect"] == "chatspot"


def test_the_shipped_model_meets_its_targets_on_a_fresh_split(report) -> None:
    tasks = report["tasks"]
    box = tasks["classification/box"]["accuracy"]
    point = tasks["classification/point"]["accuracy"]
    assert box >= 0.90, tasks["classification/box"]
    assert point >= 0.85, tasks["classification/point"]
    # 60 frames: thresholds a few points under the 1,000-frame figures (model card) absorb the sampling
    assert tasks["actions/box"]["accuracy"] >= 0.88, tasks["actions/box"]
    assert tasks["rec/expression"]["acc_at_0_5"] >= 0.70, tasks["rec/expression"]
    noisy = tasks["classification/box"]["noise"]["0.2"]["accuracy"]
    assert box - noisy <= 0.05, (box, noisy)


def test_the_shipped_model_runs_in_float16_as_a_gpu_runs_it() -> None:
    from chatspot_ros.training import tabletop_model as tm
    from chatspot_ros.training.model_setup import from_checkpoint

    setup = from_checkpoint(shipped_model())
    # raises when any logit of the REC or region probe overflows; the text penalty is already
    # fitted (up to the float16 rounding of the saved weights)
    assert tm.check_in_dtype(setup, "float16") == pytest.approx(1.0, rel=0.05)
