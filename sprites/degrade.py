"""Degraded "fake" pixel art for grid-recovery checks: procedural sprites, upscaled and damaged, seeded.

:func:`art` draws a small true-resolution RGB sprite: either a game sprite of :mod:`.generator` rendered at
the requested size on a flat background colour, or a palette mosaic (2x2 blobs with single-pixel detail,
the hardest case: every cell may differ from its neighbours). :func:`degrade` makes the "fake" version an
image model or an image host would produce:

* ``scale``: nearest-neighbour upscale; a non-integer scale (4.3) is the integer upscale below it resized
  with bilinear interpolation to ``round(n * scale)`` pixels (a slightly rescaled upload: cells of a
  fractional width with interpolated edges, not just 4- and 5-pixel columns);
* ``blur``: Gaussian blur (sigma in pixels), ``noise``: Gaussian noise (sigma in 0..255 units),
  ``jpeg``: JPEG quality (PIL's default 4:2:0 chroma subsampling, as most encoders write).

:data:`DEGRADATIONS` names the cases the benchmark and the tests use. Everything is a pure function of
the seed (``numpy.random.default_rng``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from . import generator as G

DEGRADATIONS: dict[str, dict] = {
    "clean": {},
    "blur": {"blur": 0.7},
    "noise": {"noise": 4.0},
    "jpeg": {"jpeg": 90},
    "blur+noise+jpeg": {"blur": 0.7, "noise": 3.0, "jpeg": 90},
}

SCALES = (4.0, 4.3, 6.0, 8.0)

BACKGROUNDS = ((255, 0, 255), (30, 30, 60), (236, 236, 232), (90, 140, 90), (0, 0, 0))


def _mosaic(rng: np.random.Generator, size: int) -> np.ndarray:
    n = int(rng.integers(6, 17))  # colours
    pal = rng.integers(0, 256, (n, 3))
    idx = rng.integers(0, n, (size // 2 + 1, size // 2 + 1)).repeat(2, 0).repeat(2, 1)[:size, :size]
    idx = np.where(rng.random((size, size)) < 0.3, rng.integers(0, n, (size, size)), idx)
    return pal[idx].astype(np.uint8)


def art(seed: int, size: int = 16, kind: str | None = None) -> np.ndarray:
    """A ``size x size x 3`` uint8 true-resolution sprite, deterministic by ``seed``.

    ``kind`` is ``"sprite"`` (a :mod:`.generator` sprite on a flat background), ``"mosaic"`` or ``None``
    (chosen by the seed, two sprites for each mosaic).
    """
    rng = np.random.default_rng(seed)
    if kind is None:
        kind = "mosaic" if rng.random() < 1 / 3 else "sprite"
    if kind == "mosaic":
        return _mosaic(rng, size)
    if kind != "sprite":
        raise ValueError(f"unknown art kind {kind!r}; use 'sprite' or 'mosaic'")
    rgba = G.render(G.random_spec(rng), size)
    bg = np.asarray(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], np.uint8)
    return np.where(rgba[..., 3:] > 0, rgba[..., :3], bg).astype(np.uint8)


def upscale(img: np.ndarray, scale: float) -> np.ndarray:
    """Nearest-neighbour upscale; a fractional ``scale`` resizes the integer upscale below it bilinearly."""
    k = int(np.floor(scale))
    big = img.repeat(k, 0).repeat(k, 1)
    if abs(scale - k) < 1e-9:
        return big
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(big).resize((int(round(w * scale)), int(round(h * scale))), Image.BILINEAR))


def degrade(img: np.ndarray, scale: float, *, blur: float = 0.0, noise: float = 0.0, jpeg: int = 0,
            seed: int = 0) -> np.ndarray:
    """The fake pixel-art version of ``img`` (uint8 RGB): upscale, blur, noise, JPEG, in that order."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(upscale(np.asarray(img, np.uint8), scale))
    if blur:
        im = im.filter(ImageFilter.GaussianBlur(blur))
    out = np.asarray(im).astype(np.float64)
    if noise:
        out = out + rng.normal(0.0, noise, out.shape)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if jpeg:
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, "JPEG", quality=int(jpeg))
        out = np.asarray(Image.open(buf).convert("RGB"))
    return out


def cells_right(out: np.ndarray, truth: np.ndarray, tol: int = 24) -> float:
    """Fraction of cells whose every channel is within ``tol`` of the truth; 0 when the shapes differ."""
    if out.shape != truth.shape:
        return 0.0
    return float((np.abs(out.astype(int) - truth.astype(int)).max(-1) <= tol).mean())


def cases(seeds, size: int = 16, degradations=None, scales=SCALES):
    """Yield ``(degradation name, scale, seed, truth, fake)`` for every combination."""
    for name in degradations or DEGRADATIONS:
        for scale in scales:
            for seed in seeds:
                truth = art(seed, size)
                yield name, scale, seed, truth, degrade(truth, scale, seed=seed + 7919, **DEGRADATIONS[name])
