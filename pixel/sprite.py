"""The sprite clean-up chain, once. ``spriteforge pixel`` runs it whole (:func:`clean_sprites`); the pixel nodes
(one node a step, as the shipped workflows wire them) share its palette rules (:func:`indexed_palette`,
:func:`outline_color`).

Per image: native-grid recovery -> downscale -> alpha clean-up (:func:`prepare_sprite`); then one palette for
all images, or one per image (:func:`sprite_palette`); then quantize/dither -> outline -> edge bleed -> upscale
(:func:`finish_sprite`). :func:`clean_sprites` runs the whole chain on a batch. An indexed file's palette,
when none was given, is the image's own colours (:func:`image_palette`), in one order everywhere: by OKLab
lightness, then a, then b (dark to light), so the node and the command line write the same indices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError
from . import alpha as A
from . import palette as P
from .color import srgb_to_oklab
from .grid import recover_grid
from .quantize import quantize
from .scale import downscale, upscale


def _bad(msg: str) -> SpriteForgeError:
    return SpriteForgeError(BAD_INPUT, msg)


@dataclass(frozen=True)
class SpriteSteps:
    """What the chain does; the defaults do nothing but pass the image through."""

    detect_grid: bool = False
    snap: int | None = None                  # with detect_grid: round the size to a multiple
    factor: int | None = None                # downscale by a whole factor ...
    size: tuple[int, int] | None = None      # ... or to (width, height)
    method: str = "kcentroid"                # downscale method
    fit: str = "exact"                       # cells that do not divide the image: exact (refuse), crop or pad
    alpha_level: int | None = None           # clean alpha at this threshold (0..255); None leaves alpha alone
    min_island: int = 0
    max_hole: int = 0
    strays: bool = False
    dither: str = "none"
    dither_strength: float = 1.0
    protect_edges: bool = False
    outline: str | int | None = None         # "#rrggbb", or an index into the palette
    bleed: bool = True                       # colour transparent pixels from the edge
    upscale: int = 1


@dataclass
class SpriteBatch:
    """The results of :func:`clean_sprites`."""

    images: list = field(default_factory=list)     # RGBA uint8, one per input
    palettes: list = field(default_factory=list)   # the palette each image was quantized with (or None)
    notes: list = field(default_factory=list)      # e.g. "grid x8.00" per image
    palette: P.Palette | None = None               # the one shared palette, when there is one


def prepare_sprite(img: np.ndarray, steps: SpriteSteps) -> tuple[np.ndarray, str]:
    """Grid recovery, downscale and alpha clean-up of one RGBA image; (image, note)."""
    note = ""
    if steps.detect_grid:
        img, info = recover_grid(img, snap_multiple=steps.snap)
        note = f"grid x{info.scale:.2f}" if info.found else "no pixel grid found: kept at its full size"
    if steps.factor or steps.size:
        kw = {"factor": steps.factor} if steps.factor else {"size": tuple(steps.size)}
        img = downscale(img, method=steps.method, fit=steps.fit, **kw)
    if steps.alpha_level is not None:
        rgb, al = A.clean(img[..., :3], img[..., 3], level=steps.alpha_level, min_island=steps.min_island,
                          max_hole=steps.max_hole, strays=steps.strays, bleed_edges=False)
        img = np.concatenate([rgb, al[..., None]], -1)
    return img, note


def outline_color(spec, palette: P.Palette | None):
    """The outline colour of ``spec``: a hex string as is, an index (int or digits) as that palette colour."""
    if isinstance(spec, str) and not re.fullmatch(r"\s*\d+\s*", spec):
        return spec.strip()
    if palette is None:
        raise _bad(f"outline colour {spec} is a palette index but there is no palette. Give a palette or a hex colour.")
    i = int(spec)
    if not 0 <= i < len(palette):
        raise _bad(f"outline colour {i}: the palette has colours 0..{len(palette) - 1}.")
    return palette.colors[i]


def finish_sprite(img: np.ndarray, palette: P.Palette | None, steps: SpriteSteps) -> np.ndarray:
    """Quantize/dither to ``palette`` (if any), outline, bleed and upscale one RGBA image."""
    if palette is not None:
        img = quantize(img, palette, steps.dither, strength=steps.dither_strength, protect_edges=steps.protect_edges)
    rgb, al = img[..., :3], img[..., 3]
    if steps.outline is not None:
        rgb, al = A.outline(rgb, al, outline_color(steps.outline, palette))
    if steps.bleed:
        rgb = A.bleed(rgb, al)
    img = np.concatenate([rgb, al[..., None]], -1)
    return upscale(img, steps.upscale) if steps.upscale > 1 else img


def sprite_palette(frames: list[np.ndarray], palette=None, *, colors: int | None = None, method: str = "kmeans",
                   seed: int = 0) -> P.Palette | None:
    """The palette shared by ``frames``: ``palette`` (a Palette, shipped name or file), else ``colors`` fitted
    to all frames with ``method``, else None (no quantization)."""
    if palette is not None:
        return P.resolve_palette(palette)
    if colors:
        return P.extract(frames, int(colors), method, seed=seed)
    return None


def clean_sprites(images: list[np.ndarray], steps: SpriteSteps, *, palette=None, colors: int | None = None,
                  per_image: bool = False, method: str = "kmeans", seed: int = 0, names=None) -> SpriteBatch:
    """The whole chain on RGBA images: one palette for all (``palette``, or ``colors`` fitted to every image)
    unless ``per_image`` fits ``colors`` to each image alone. ``names`` (file names) are put in front of the
    message of an image's error."""
    out = SpriteBatch()
    frames = []
    for i, img in enumerate(images):
        try:
            img, note = prepare_sprite(img, steps)
        except SpriteForgeError as err:
            if names is None:
                raise
            raise SpriteForgeError(err.code, f"{names[i]}: {err.message}", hint=err.hint,
                                   details=err.details) from err
        frames.append(img)
        out.notes.append(note)
    out.palette = None if per_image else sprite_palette(frames, palette, colors=colors, method=method, seed=seed)
    for img in frames:
        pal = P.extract(img, int(colors), method, seed=seed) if per_image else out.palette
        out.images.append(finish_sprite(img, pal, steps))
        out.palettes.append(pal)
    return out


def image_palette(frames) -> P.Palette:
    """The frames' own opaque colours (<= 255) sorted by OKLab (L, a, b), else a 255-colour k-means fit."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    opaque = np.concatenate([f[..., :3][f[..., 3] >= 128] for f in frames]) if len(frames) else np.zeros((0, 3))
    if len(opaque) == 0:
        return P.Palette(np.zeros((1, 3), np.uint8), "empty")
    uniq = np.unique(opaque.astype(np.uint8), axis=0)
    if len(uniq) <= 255:
        lab = srgb_to_oklab(uniq)
        return P.Palette(uniq[np.lexsort((lab[:, 2], lab[:, 1], lab[:, 0]))], "image")
    return P.kmeans(list(frames), 255, seed=0)


def with_missing_colors(pal: P.Palette, img: np.ndarray) -> P.Palette:
    """``pal`` plus any opaque colour of the RGBA ``img`` it lacks (e.g. the outline colour), if room remains."""
    cols = np.unique(img[..., :3][img[..., 3] >= 128], axis=0)
    have = {tuple(c) for c in pal.colors.tolist()}
    extra = [c for c in cols.tolist() if tuple(c) not in have]
    if not extra or len(pal) + len(extra) > 255:
        return pal
    return P.Palette(np.concatenate([pal.colors, np.array(extra, np.uint8)]), pal.name)


def indexed_palette(frames, palette: P.Palette | None = None, *, add_missing: bool = False) -> P.Palette:
    """The palette an indexed file of ``frames`` is written with: ``palette`` (with the frames' colours it lacks
    when ``add_missing``), or else the frames' own colours (:func:`image_palette`)."""
    if palette is None:
        return image_palette(frames)
    pal = P.resolve_palette(palette)
    if add_missing:
        for f in ([frames] if isinstance(frames, np.ndarray) and frames.ndim == 3 else frames):
            pal = with_missing_colors(pal, f)
    return pal


__all__ = ["SpriteSteps", "SpriteBatch", "prepare_sprite", "finish_sprite", "outline_color", "sprite_palette",
           "clean_sprites", "image_palette", "with_missing_colors", "indexed_palette"]
