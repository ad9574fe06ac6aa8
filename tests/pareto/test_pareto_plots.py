"""Pareto plots are written as PNG files."""

from __future__ import annotations

import numpy as np
import pytest

from steerl.pareto import plot_front_2d, plot_parallel

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    out = plot_front_2d(
        rng.random((12, 2)),
        tmp_path / "front.png",
        directions=["max", "min"],
        names=["accuracy", "length"],
        labels=[f"r{i}" for i in range(12)],
        title="sweep",
    )
    assert out.read_bytes()[:8] == PNG
    out = plot_parallel(rng.random((10, 4)), tmp_path / "sub" / "parallel.png")
    assert out.read_bytes()[:8] == PNG


def test_plot_errors(tmp_path):
    with pytest.raises(ValueError, match="2 objectives"):
        plot_front_2d(np.ones((3, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="names"):
        plot_parallel(np.ones((3, 3)), tmp_path / "x.png", names=["a"])
