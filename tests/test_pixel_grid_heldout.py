"""Held-out check of grid recovery on degraded fake pixel art (spriteforge.sprites.degrade).

The recovery was tuned on 16x16 art with seeds 0..29 and 1000..1029 (benchmarks/bench_grid.py); this file
uses its own: 20x20 art, seeds 5000..5003. Goal of issue 15: >= 97% of cells within 24/255 of the true
colour at 4x and above, blurred, noisy, JPEG'd and resampled to a non-integer scale.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from PIL import Image, ImageFilter

from spriteforge.pixel import grid
from spriteforge.sprites import degrade as D

SEEDS = range(5000, 5004)
SIZE = 20


@pytest.fixture(scope="module")
def results():
    ours, median = defaultdict(list), defaultdict(list)
    for name, scale, seed, truth, fake in D.cases(SEEDS, size=SIZE, degradations=["blur", "noise", "jpeg",
                                                                                  "blur+noise+jpeg"]):
        out, info = grid.recover_grid(fake)
        ours[(name, scale)].append(D.cells_right(out, truth))
        ok = out.shape == truth.shape
        median[(name, scale)].append(D.cells_right(grid.sample_cells(fake, info.cuts_y, info.cuts_x), truth)
                                     if ok else 0.0)
    return ours, median


def test_cells_right_on_held_out_sprites(results):
    ours, _ = results
    low = {k: round(float(np.mean(v)), 3) for k, v in ours.items() if np.mean(v) < 0.97}
    assert not low, f"cases under 97% of cells right: {low}"


def test_the_core_median_alone_falls_short_where_blur_and_jpeg_meet(results):
    # the old colour step (median of the cell cores) on the same grids: JPEG's chroma and the blur reach
    # the cores of 4-pixel cells; the deblurring fit is what brings these cases over the goal
    ours, median = results
    for scale in (4.0, 4.3):
        key = ("blur+noise+jpeg", scale)
        assert np.mean(median[key]) < 0.97 <= np.mean(ours[key])


def test_estimate_cells_inverts_a_known_blur():
    rng = np.random.default_rng(5101)
    cells = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    big = Image.fromarray(cells.repeat(4, 0).repeat(4, 1)).filter(ImageFilter.GaussianBlur(0.9))
    fake = np.clip(np.rint(np.asarray(big) + rng.normal(0, 1.0, (40, 48, 3))), 0, 255).astype(np.uint8)
    cuts_y, cuts_x = list(range(0, 41, 4)), list(range(0, 49, 4))
    err_fit = np.abs(grid.estimate_cells(fake, cuts_y, cuts_x).astype(int) - cells).max()
    err_median = np.abs(grid.sample_cells(fake, cuts_y, cuts_x).astype(int) - cells).max()
    assert err_fit <= 8 < err_median


def test_sharp_integer_grid_keeps_the_core_medians_exactly():
    rng = np.random.default_rng(5102)
    cells = rng.integers(0, 256, (9, 7, 4)).astype(np.uint8)
    big = cells.repeat(5, 0).repeat(5, 1)
    assert np.array_equal(grid.estimate_cells(big, list(range(0, 46, 5)), list(range(0, 36, 5))), cells)
