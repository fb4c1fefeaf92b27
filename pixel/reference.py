"""Locking an image to a reference sprite: variants of one sprite (an edit model's recolour, damaged, night or
other-facing version) brought back onto the reference's pixel grid and palette, so that every variant is a
sprite of the reference's exact size whose colours are the reference's own.

* :func:`reference_palette`: the reference's opaque colours, in the order every indexed file of the pack uses
  (:func:`spriteforge.pixel.sprite.image_palette`), so a variant saved with it has the reference's indices;
* :func:`edit_reference`: the sprite enlarged by a whole factor (nearest neighbour) onto a flat key colour,
  the picture an edit model is given (a 64x64 sprite at x16 = 1024x1024);
* :func:`match_reference`: an image at model resolution -> the reference's size (downscaled by the factor its
  size gives, or by the grid :func:`spriteforge.pixel.grid.recover_grid` detects), alpha exactly 0/255 by the
  reference's transparency rule, every pixel one of the reference's colours.

Transparency follows the reference: a reference without transparent pixels gives opaque variants; otherwise
the variant's alpha comes from the key colour (``alpha="key"``: the edit model keeps the flat key background,
which becomes transparent, so a variant may change its silhouette, e.g. facing left), from the image's own
alpha (``"mask"``: a background-removal matte), or is the reference's alpha exactly (``"reference"``: the
same silhouette pixel for pixel, for recolours).

Every step is the pixel library's own: :func:`~spriteforge.pixel.scale.downscale`,
:func:`~spriteforge.pixel.grid.recover_grid`, :func:`~spriteforge.pixel.alpha.key_to_alpha`,
:func:`~spriteforge.pixel.alpha.clean`, :func:`~spriteforge.pixel.quantize.quantize`.
"""

from __future__ import annotations

import numpy as np

from . import alpha as A
from .color import bad, check_image, parse_hex_color
from .grid import recover_grid
from .palette import Palette
from .quantize import quantize
from .scale import FITS as SCALE_FITS
from .scale import downscale, upscale
from .sprite import image_palette

GRIDS = ("reference size", "detect")
FITS = ("scale",) + SCALE_FITS  # how an image the reference's cells do not divide is fitted
ALPHAS = ("key", "reference", "mask")
KEY_COLOR = "#ff00ff"


def _rgba(img, name: str) -> np.ndarray:
    """``img`` as uint8 RGBA (RGB is opaque)."""
    img = check_image(img, name)
    if img.shape[2] == 4:
        return img
    return np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], -1)


def _key(key) -> tuple[int, int, int]:
    if isinstance(key, str):
        return tuple(parse_hex_color(key))[:3]
    try:
        k = tuple(int(v) for v in key)
    except (TypeError, ValueError):
        raise bad(f"key colour {key!r} is not a colour. Give #rrggbb or three values 0..255.") from None
    if len(k) != 3 or min(k) < 0 or max(k) > 255:
        raise bad(f"key colour {key!r} is not a colour. Give #rrggbb or three values 0..255.")
    return k


def reference_palette(reference) -> Palette:
    """The reference sprite's own opaque colours (alpha >= 128), dark to light by OKLab as
    :func:`~spriteforge.pixel.sprite.image_palette` orders them. A reference with no opaque pixel, or with more
    colours than an indexed sprite holds (255), is refused: it is not a sprite to lock to."""
    ref = _rgba(reference, "reference")
    opaque = ref[..., :3][ref[..., 3] >= 128]
    if len(opaque) == 0:
        raise bad("the reference sprite has no opaque pixel. Give the sprite itself (its mask: 1 = sprite pixel).")
    n = len(np.unique(opaque, axis=0))
    if n > 255:
        raise bad(f"the reference has {n} colours; an indexed sprite has at most 255. Give the finished sprite "
                  "(after Quantize / Save Indexed), not a full-colour picture.", colors=n)
    pal = image_palette(ref)
    return Palette(pal.colors, "reference")


def transparent(reference) -> bool:
    """True when the reference sprite has transparent pixels (alpha < 128)."""
    return bool((_rgba(reference, "reference")[..., 3] < 128).any())


def _check_key(key: tuple, pal: Palette, threshold: float) -> None:
    """Refuse a key colour that would take a colour of the sprite with it (as :func:`key_to_alpha` measures)."""
    d = np.sqrt(((pal.colors.astype(np.float64) - np.asarray(key, np.float64)) ** 2).sum(1)) / (255.0 * np.sqrt(3.0))
    i = int(np.argmin(d))
    if d[i] < threshold:
        raise bad(f"key colour #{'%02x%02x%02x' % key} is close to the sprite's colour #{pal.hex()[i]}, which would "
                  "turn transparent too. Pick a key colour the sprite does not use (or a lower key threshold).",
                  key="#%02x%02x%02x" % key, color="#" + pal.hex()[i])


def edit_factor(width: int, height: int, size: int, multiple: int = 16) -> int:
    """The whole factor a ``width x height`` sprite is enlarged by for an edit model working at about ``size``
    pixels (long side): the largest factor that keeps the long side <= ``size`` and makes both sides a multiple
    of ``multiple`` (what the model's latent grid wants), else the largest that fits."""
    size, multiple = int(size), max(1, int(multiple))
    top = size // max(int(width), int(height))
    if top < 1:
        raise bad(f"the sprite is {width}x{height}, larger than the edit size {size}. Give a size of at least "
                  f"{max(width, height)}.", width=int(width), height=int(height), size=size)
    for f in range(top, 0, -1):
        if (width * f) % multiple == 0 and (height * f) % multiple == 0:
            return f
    return top


def edit_reference(reference, *, size: int = 1024, key=KEY_COLOR, multiple: int = 16,
                   threshold: float = 0.3) -> tuple[np.ndarray, int]:
    """``(RGB image, factor)``: the sprite enlarged by :func:`edit_factor` (nearest neighbour, every pixel a
    crisp square) with its transparent pixels on the flat ``key`` colour, as an edit model is given it.
    A key colour near one of the sprite's colours (``threshold``, as :func:`match_reference` keys) is refused."""
    ref = _rgba(reference, "reference")
    pal = reference_palette(ref)
    h, w = ref.shape[:2]
    f = edit_factor(w, h, size, multiple)
    rgb = ref[..., :3]
    if transparent(ref):
        k = _key(key)
        _check_key(k, pal, threshold)
        rgb = np.where(ref[..., 3:] >= 128, rgb, np.asarray(k, np.uint8))
    return upscale(np.ascontiguousarray(rgb), f), f


def _scale_to_cells(img: np.ndarray, rw: int, rh: int) -> np.ndarray:
    """``img`` resized (nearest neighbour: no new colours) to the nearest whole multiple of ``rw x rh``: a model that
    drew the picture at a size the sprite's cells do not divide drew the whole sprite at that size."""
    h, w = img.shape[:2]
    tw, th = rw * max(1, round(w / rw)), rh * max(1, round(h / rh))
    if (tw, th) == (w, h):
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(img), "RGBA").resize((tw, th), Image.NEAREST))


def match_reference(img, reference, *, grid: str = "reference size", method: str = "kcentroid", fit: str = "scale",
                    alpha: str = "key", key=KEY_COLOR, threshold: float = 0.3, dither: str = "none",
                    strength: float = 1.0, protect_edges: bool = True, min_island: int = 0,
                    max_hole: int = 0) -> np.ndarray:
    """``img`` (uint8 RGB, or RGBA whose alpha is the image's own matte) locked to ``reference`` (the native-size
    sprite, RGBA or opaque RGB): an RGBA uint8 image of the reference's size, alpha exactly 0 or 255, every pixel's
    colour one of :func:`reference_palette`.

    ``grid``: ``"reference size"`` downscales with ``method`` into ``width x height`` cells of the reference
    (an image the cells do not divide is, by ``fit``, resized to the nearest whole multiple (``scale``, nearest
    neighbour), cropped or padded (:func:`~spriteforge.pixel.scale.fit_to_cells`), or refused (``exact``)); ``"detect"`` recovers the
    image's own pixel grid and refuses a grid that is not the reference's size. ``alpha`` (used only when the
    reference has transparent pixels): ``"key"``, ``"reference"`` or ``"mask"`` (see the module). ``min_island`` /
    ``max_hole`` clean the alpha as :func:`~spriteforge.pixel.alpha.clean`; ``dither`` / ``strength`` /
    ``protect_edges`` are :func:`~spriteforge.pixel.quantize.quantize`'s."""
    ref = _rgba(reference, "reference")
    x = check_image(img, "image")
    if grid not in GRIDS:
        raise bad(f"grid {grid!r} is not one of {', '.join(GRIDS)}.")
    if alpha not in ALPHAS:
        raise bad(f"alpha {alpha!r} is not one of {', '.join(ALPHAS)}.")
    if fit not in FITS:
        raise bad(f"fit {fit!r} is not one of {', '.join(FITS)}.")
    pal = reference_palette(ref)
    rh, rw = ref.shape[:2]
    h, w = x.shape[:2]
    if h < rh or w < rw:
        raise bad(f"the image is {w}x{h}, smaller than the reference sprite ({rw}x{rh}). Give the image at the "
                  "edit model's size (at least the sprite's).", width=w, height=h, reference=[rw, rh])
    keyed = transparent(ref)
    if keyed and alpha == "mask" and x.shape[2] != 4:
        raise bad("alpha 'mask' needs the image's own alpha. Connect its mask, or use alpha 'key' or 'reference'.")
    full = _rgba(x, "image")
    if keyed and alpha == "key":
        k = _key(key)
        _check_key(k, pal, threshold)
        full = A.key_to_alpha(x[..., :3], k, threshold=float(threshold))
        if x.shape[2] == 4:  # the image's own matte too
            full[..., 3] = np.where(x[..., 3] >= 128, full[..., 3], 0)
    elif not keyed or alpha == "reference":
        full[..., 3] = 255
    if grid == "detect":
        small, info = recover_grid(full)
        if (info.width, info.height) != (rw, rh):
            raise bad(f"the image's pixel grid gives {info.width}x{info.height} pixels, the reference is {rw}x{rh}. "
                      "Use grid 'reference size' (the image's size / the sprite's size).",
                      grid=[info.width, info.height], reference=[rw, rh])
    else:
        if fit == "scale":
            full = _scale_to_cells(full, rw, rh)
        small = downscale(full, size=(rw, rh), method=method, fit="exact" if fit == "scale" else fit)
    if not keyed:
        a = np.full((rh, rw), 255, np.uint8)
    elif alpha == "reference":
        a = np.where(ref[..., 3] >= 128, 255, 0).astype(np.uint8)
    else:
        a = small[..., 3]
    rgb, a = A.clean(small[..., :3], a, level=128, min_island=int(min_island), max_hole=int(max_hole))
    if keyed and alpha == "reference":
        a = np.where(ref[..., 3] >= 128, 255, 0).astype(np.uint8)  # exactly the reference's silhouette
    rgb = quantize(rgb, pal, dither, strength=float(strength), protect_edges=bool(protect_edges), alpha=a)
    return np.concatenate([rgb, a[..., None]], -1)


__all__ = ["ALPHAS", "FITS", "GRIDS", "KEY_COLOR", "edit_factor", "edit_reference", "match_reference", "reference_palette",
           "transparent"]
