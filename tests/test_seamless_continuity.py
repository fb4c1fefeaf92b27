"""Seamless tiles, measured on what the built-in demo model generates, on both engines.

A tile is seamless when the wrap (its right column against its left, its bottom row against its top) looks like any
line inside it. The figure here: the mean |right - left| over the mean |column j+1 - column j| inside the tile
(rows likewise), over a batch. About 1 means the wrap is one more inner line. Far above 1 is a seam; far below 1 is
a frame: the demo model draws a sprite in the middle of a flat key-colour field, so a tile generated without
roll-and-blend (the denoiser never sees across the wrap) has flat edges that meet trivially, and tiled in a grid
it shows every sprite boxed by the same gutter. Roll-and-blend (``generation.wrappers.Seamless``) lets the sprite
lie anywhere on the torus, so the wrap is as busy as the inside. Measured at commit time on both engines (same
figures, the engines agree): tiled x 1.10 / y 1.64 over 8 sprites, tiled with the roll made a no-op 0.08 / 0.32,
untiled 0.09 / 0.22.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spriteforge import pipeline as P
from spriteforge.engines import get_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEMO = Path(__file__).resolve().parents[1] / "demo_model"
LOW, HIGH = 0.6, 2.5  # the wrap within these times the inner lines: neither a frame nor a seam


def wrap_ratios(images: np.ndarray) -> tuple[float, float]:
    """(x, y): mean |right - left column| / mean |neighbouring columns inside|, and bottom/top against rows;
    ``images`` is ``[B, H, W, C]``."""
    inner_x = np.abs(np.diff(images, axis=2)).mean()
    inner_y = np.abs(np.diff(images, axis=1)).mean()
    return (float(np.abs(images[:, :, -1] - images[:, :, 0]).mean() / inner_x),
            float(np.abs(images[:, -1] - images[:, 0]).mean() / inner_y))


def _tiles(engine_name: str, tile: bool, batch: int, steps: int) -> np.ndarray:
    engine = get_engine(engine_name, "cpu")
    handle = engine.load_model(str(DEMO))
    params = P.GenerateParams(prompt="large red gem", seed=100, steps=steps, cfg=4.5, width=32, height=32,
                              tile=tile, batch_size=batch)
    return P.generate(engine, handle, params)


def test_the_wrap_of_a_tile_is_like_its_inner_lines_on_torch():
    tiled = wrap_ratios(_tiles("torch", True, batch=8, steps=12))
    print(f"torch wrap/inner x {tiled[0]:.2f} y {tiled[1]:.2f}")
    assert all(LOW < r < HIGH for r in tiled), tiled
    untiled = wrap_ratios(_tiles("torch", False, batch=8, steps=12))  # the measure tells the two apart
    assert all(r < LOW for r in untiled), untiled


def test_the_wrap_of_a_tile_is_like_its_inner_lines_on_mlx():
    pytest.importorskip("mlx.core")  # an optional engine (the test extra installs it on Linux)
    tiled = wrap_ratios(_tiles("mlx", True, batch=4, steps=8))
    print(f"mlx wrap/inner x {tiled[0]:.2f} y {tiled[1]:.2f}")
    assert all(LOW < r < HIGH for r in tiled), tiled
