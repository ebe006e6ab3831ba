"""What chatspot-train shows a user: loss.png has a legend naming both curves (issue #25)."""
from __future__ import annotations

from pathlib import Path

import pytest


def test_loss_png_has_a_legend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure

    from chatspot_ros.training.trainer import plot_loss_curve

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,loss,lr\n10,8.2,0.001\n20,2.5,0.0009\n30,0.9,0.0005\n")
    saved = []
    real_savefig = matplotlib.figure.Figure.savefig

    def capture(fig, *args, **kwargs):  # noqa: ANN001, ANN202
        saved.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    out = plot_loss_curve(metrics, tmp_path / "loss.png")
    assert out.stat().st_size > 0
    legend = saved[0].axes[0].get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["loss (logged steps, metrics.csv)", "lr"]
