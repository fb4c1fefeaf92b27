from __future__ import annotations

import numpy as np
import pytest

from spriteforge import pixel
from spriteforge.sprites import dataset
from spriteforge.sprites.generator import to_key_rgb


def test_key_to_alpha_recovers_the_sprites_alpha_exactly():
    rgba, _, _ = dataset(12, seed=5)
    out = pixel.key_to_alpha(to_key_rgb(rgba))
    assert set(np.unique(out[..., 3])) <= {0, 255}
    assert np.array_equal(out[..., 3] > 0, rgba[..., 3] >= 128)
    opaque = rgba[..., 3] >= 128
    assert np.array_equal(out[..., :3][opaque], rgba[..., :3][opaque])


def test_other_key_colours_and_float_input():
    img = np.zeros((4, 4, 3), np.float32)
    img[...] = (0.0, 1.0, 0.0)  # green screen
    img[1:3, 1:3] = (0.8, 0.2, 0.8)  # a magenta-ish sprite must survive a green key
    out = pixel.key_to_alpha(img, (0, 255, 0))
    assert out[..., 3].sum() == 4 * 255 and out[0, 0, 3] == 0


def test_key_to_alpha_node():
    torch = pytest.importorskip("torch")
    from spriteforge.nodes.pixel import PixelKeyToAlpha

    rgba, _, _ = dataset(2, seed=1)
    image = torch.from_numpy(to_key_rgb(rgba).astype(np.float32) / 255.0)
    res = PixelKeyToAlpha.execute(image, key_color="#ff00ff", threshold=0.3)
    img, mask = res.args
    assert img.shape == image.shape and mask.shape == image.shape[:3]
    assert np.array_equal(mask.numpy() > 0.5, rgba[..., 3] >= 128)
