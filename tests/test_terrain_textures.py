"""The demo model's terrain textures (issue #26 item 5): deterministic, opaque, of their terrain's colour, and
seamless under wrap as any inner line (the per-pair calibration is in tests/test_autotile_layouts.py)."""

from __future__ import annotations

import numpy as np
import pytest

from spriteforge.sprites import metrics
from spriteforge.sprites.terrain import TERRAINS, periodic_noise, render_terrain, terrain_dataset

COLOUR = {"grass": "green", "water": "blue", "sand": "orange", "stone": "neutral"}


@pytest.mark.parametrize("terrain", TERRAINS)
def test_a_texture_is_opaque_deterministic_and_of_its_colour(terrain):
    a = render_terrain(terrain, 3)
    assert a.shape == (32, 32, 4) and a.dtype == np.uint8 and (a[..., 3] == 255).all()
    assert np.array_equal(a, render_terrain(terrain, 3)) and not np.array_equal(a, render_terrain(terrain, 4))
    assert metrics.dominant_family(a) == COLOUR[terrain]


def test_the_noise_is_exactly_periodic():
    """Integer frequencies: the noise of a frame twice the size, seeded alike, is the small one tiled."""
    small = periodic_noise(np.random.default_rng(1), 16, modes=3)
    big = periodic_noise(np.random.default_rng(1), 32, modes=3)
    assert np.allclose(big[::2, ::2] / big[::2, ::2].std(), small / small.std())  # the same field, sampled finer
    wrap = np.abs(small[:, -1] - small[:, 0]).max()
    assert wrap <= np.abs(np.diff(small, axis=1)).max() + 1e-12


def test_the_dataset_names_each_terrain_in_turn():
    tex, names = terrain_dataset(8, seed=2)
    assert tex.shape == (8, 32, 32, 4) and names == list(TERRAINS) * 2
    with pytest.raises(ValueError, match="unknown terrain"):
        render_terrain("lava", 0)
