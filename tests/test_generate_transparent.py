"""``spriteforge generate`` on the built-in demo model writes transparent sprites (the magenta key removed with
the decontaminating key); ``--keep-key`` keeps the raw image, and other models are never keyed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spriteforge import pixel

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (REPO / "demo_model" / "model_index.json").exists(),
                                reason="demo_model/ is not present")


def test_generate_on_the_demo_model_is_transparent_by_default(tmp_path, capsys):
    from spriteforge.cli.main import main

    common = ["--prompt", "red potion", "--seed", "4", "--json"]  # the model's own 20 steps (at 8 this model's potion is a muddy magenta)
    assert main(["-q", "generate", *common, "--out", str(tmp_path / "a")]) == 0
    keyed = json.loads(capsys.readouterr().out)
    assert main(["-q", "generate", *common, "--keep-key", "--out", str(tmp_path / "b")]) == 0
    raw = json.loads(capsys.readouterr().out)

    with Image.open(keyed["images"][0]) as im:
        assert im.mode == "RGBA" and im.size == (32, 32)
        assert json.loads(im.text["spriteforge"])["key_removed"] == "#ff00ff"
        rgba = np.asarray(im)
    with Image.open(raw["images"][0]) as im:
        assert im.mode == "RGB" and "key_removed" not in json.loads(im.text["spriteforge"])
        rgb = np.asarray(im)
    alpha = rgba[..., 3]
    assert set(np.unique(alpha)) <= {0, 255}
    assert 0.05 < (alpha > 0).mean() < 0.9
    assert (alpha[[0, 0, -1, -1], [0, -1, 0, -1]] == 0).all()  # the corners are background
    magenta = (np.abs(rgb.astype(int) - [255, 0, 255]).max(-1) < 80)
    assert magenta[[0, 0, -1, -1], [0, -1, 0, -1]].all()  # ... drawn in the key colour in the raw image
    # the transparent PNG is the raw image through the decontaminating key (8-bit rounding aside)
    ref = pixel.key_to_alpha(rgb)
    assert (ref[..., 3] != alpha).mean() < 0.02
    both = (ref[..., 3] > 0) & (alpha > 0)
    off = np.abs(ref[both][:, :3].astype(int) - rgba[both][:, :3]).max(-1) > 3  # a choice may flip at a rounding
    assert off.mean() < 0.02
    assert not pixel.alpha.near_key_hue(rgba[..., :3])[alpha > 0].any()


def test_key_colour_is_only_for_the_demo_model():
    from spriteforge.cli.generate import key_colour
    from spriteforge.resolve import DEMO, DEMO_DIR

    class H:
        def __init__(self, source):
            self.source = source

    assert key_colour(H(str(DEMO_DIR)), DEMO) == (255, 0, 255)
    assert key_colour(H(str(DEMO_DIR)), str(DEMO_DIR)) == (255, 0, 255)  # given as a path
    assert key_colour(H("/models/pixart-sigma.safetensors"), "pixart-sigma.safetensors") is None
