"""No key-colour fringe and no specks: the decontaminating key (pixel.alpha.key_to_alpha) and the README's main job.

Fringe here is what a user sees around a sprite keyed off magenta: opaque pixels whose hue is within 25
degrees of the key's (magenta, 300 deg), saturated (HSV s > 0.5) and not dark (v > 0.2); no colour of the
demo model's vocabulary is that close (purple is at 270, pink at 336). Islands are 8-connected opaque
components other than the largest one, smaller than the workflow's Alpha Cleanup ``min_island``.
Counted with colorsys and scipy.ndimage, not with the library's own helpers.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spriteforge import pixel

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "example_workflows" / "api" / "sprite_demo.json"
KEY = (255, 0, 255)


def fringe_pixels(rgba: np.ndarray) -> int:
    n = 0
    for r, g, b in rgba[rgba[..., 3] >= 128][:, :3].astype(float) / 255.0:
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        dh = abs(h * 360.0 - 300.0)
        n += min(dh, 360.0 - dh) <= 25.0 and s > 0.5 and v > 0.2
    return int(n)


def islands(rgba: np.ndarray, below: int) -> list[int]:
    ndimage = pytest.importorskip("scipy.ndimage")
    lab, n = ndimage.label(rgba[..., 3] >= 128, structure=np.ones((3, 3)))
    sizes = sorted(np.bincount(lab.ravel())[1:].tolist())
    return [s for s in sizes[:-1] if s < below]


def _edged_square(blends=(0.75, 0.6, 0.25)):
    """A red square with a dark 1-px outline on magenta, ringed by pixels that are the outline colour blended
    with the key (what an image model's soft edge is), alpha falling off outwards."""
    img = np.zeros((24, 24, 3), np.float64)
    img[:] = KEY
    outline = np.array([22, 16, 30.0])
    img[6:18, 6:18] = outline
    img[7:17, 7:17] = (214, 40, 40)
    img[7:17, 14:17] = (150, 24, 24)  # a shadow side
    for i, a in enumerate(blends):
        lo, hi = 5 - i, 18 + i
        ring = np.zeros((24, 24), bool)
        ring[lo:hi + 1, lo:hi + 1] = True
        ring[lo + 1:hi, lo + 1:hi] = False
        img[ring] = a * outline + (1 - a) * np.array(KEY)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def test_decontaminating_key_removes_the_fringe_of_blended_edges():
    img = _edged_square()
    plain = pixel.key_to_alpha(img, KEY, decontaminate=False)
    clean = pixel.key_to_alpha(img, KEY)
    assert fringe_pixels(plain) > 100  # the thresholded key keeps the 75% and 50% rings: magenta-tinted
    assert fringe_pixels(clean) == 0
    # the mostly-sprite rings are kept with the key taken out (the outline's colour); the mostly-key
    # ring (25%) goes, and so does the background
    alpha = clean[..., 3] > 0
    assert alpha[4:20, 4:20].all() and alpha.sum() == 16 * 16
    ring = clean[4, 4:20, :3].astype(int)
    assert np.abs(ring - [22, 16, 30]).max() <= 6
    # the sprite's own pixels are untouched
    assert np.array_equal(clean[6:18, 6:18, :3], img[6:18, 6:18])


def test_decontaminating_key_keeps_purple_and_pink_sprites_whole():
    from spriteforge.sprites import SpriteSpec, render, to_key_rgb

    for spec in (SpriteSpec("gem", "purple", "small"), SpriteSpec("heart", "pink", outline=True),
                 SpriteSpec("potion", "purple", "large", variant=3)):
        rgba = render(spec)
        out = pixel.key_to_alpha(to_key_rgb(rgba))
        assert np.array_equal(out, rgba), spec


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "demo_model" / "model_index.json").exists(), reason="demo_model/ is not present")
def test_main_job_has_no_key_fringe_and_no_specks(tmp_path):
    from spriteforge.execution.runner import run_workflow

    min_island = json.loads(WF.read_text())["7"]["inputs"]["min_island"]
    assert min_island >= 4  # specks of 1-3 pixels are what users saw
    res = run_workflow(WF, out_dir=tmp_path)  # the README's main job, exactly as shipped
    sprites = sorted(p for p in res.files if Path(p).name.startswith("demo_sprite_"))
    assert len(sprites) == 8
    counts = []
    for p in sprites:
        with Image.open(p) as im:
            rgba = np.asarray(im.convert("RGBA"))
        assert (rgba[..., 3] > 0).mean() > 0.05
        counts.append((fringe_pixels(rgba), islands(rgba, min_island)))
    assert counts == [(0, [])] * 8, counts
