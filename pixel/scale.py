"""Downscale to pixel-art resolution, and nearest-neighbour integer upscale for display.

Every method works on whole cells: the image is cut into ``fy x fx`` cells (``fy = H / h``,
``fx = W / w`` must be whole numbers) and each cell becomes one output pixel:

* ``nearest`` - the cell's centre pixel;
* ``box`` - the mean (colours alpha-weighted for RGBA, so transparent pixels do not darken edges);
* ``kcentroid`` - dominant colour: 2-means inside the cell (start: darkest and lightest pixel,
  4 rounds), the larger cluster's centroid wins (ties: the darker one);
* ``median`` - per-channel median;
* ``contrast`` - contrast-aware (in the spirit of PixelOE): when a cell holds a thin dark
  detail (at least ``max(fy, fx) / 2`` pixels darker than the cell's median lightness by
  ``contrast`` in OKLab L) the mean of those dark pixels wins, so 1-pixel outlines survive;
  otherwise the per-channel median.

When the cells do not divide the image, ``fit`` says what happens: ``exact`` refuses (nothing of the sprite is
changed behind the user's back), ``crop`` cuts the rest off (centred), ``pad`` adds it (centred; transparent for
RGBA, the edge colours for RGB) - :func:`fit_to_cells`.

Inputs and outputs are uint8 ``H x W x 3/4`` arrays.
"""

from __future__ import annotations

import numpy as np

from .color import bad, check_image, srgb_to_oklab

METHODS = ("nearest", "box", "kcentroid", "median", "contrast")
FITS = ("exact", "crop", "pad")
FIT_HOW = "fit crop or pad: --fit on the command line, the Downscale node's fit input"
_ALIASES = {"k-centroid": "kcentroid", "k_centroid": "kcentroid", "mean": "box", "area": "box",
            "contrast-aware": "contrast", "contrast_aware": "contrast", "pixeloe": "contrast"}


def _int(v, what: str) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise bad(f"{what} {v!r} is not a number. Give a whole number >= 1.") from None
    if f != int(f) or f < 1:
        raise bad(f"{what} {v!r} must be a whole number >= 1.")
    return int(f)


def cell_size(shape, size=None, factor=None) -> tuple[int, int]:
    """Cell (fy, fx) for ``size=(w, h)`` or an integer ``factor``; raises BAD_INPUT when it does not divide."""
    h, w = int(shape[0]), int(shape[1])
    if (size is None) == (factor is None):
        raise bad("give either a target size (width, height) or a factor, not both/neither.")
    if factor is not None:
        f = _int(factor, "factor")
        if h % f or w % f:
            raise bad(f"image {w}x{h} is not divisible by factor {f}. Let it be cropped or padded to whole cells "
                      f"({FIT_HOW}), or pick a factor that divides both sides.", width=w, height=h, factor=f)
        return f, f
    try:
        tw, th = size
    except (TypeError, ValueError):
        raise bad(f"size {size!r} is not (width, height). Give two whole numbers.") from None
    tw, th = _int(tw, "target width"), _int(th, "target height")
    if tw > w or th > h or w % tw or h % th:
        raise bad(f"image {w}x{h} cannot be cut into {tw}x{th} whole cells. Pick a width that divides {w} and a "
                  f"height that divides {h}, or let it be cropped or padded to whole cells ({FIT_HOW}).",
                  width=w, height=h, target=[tw, th])
    return h // th, w // tw


def _target(shape, size, factor, fit: str) -> tuple[int, int]:
    """(height, width) the image is cropped or padded to so that whole cells divide it."""
    h, w = int(shape[0]), int(shape[1])
    if (size is None) == (factor is None):
        raise bad("give either a target size (width, height) or a factor, not both/neither.")
    whole = (lambda a, b: a // b) if fit == "crop" else (lambda a, b: -(-a // b))
    if factor is not None:
        f = _int(factor, "factor")
        ny, nx = whole(h, f), whole(w, f)
        if min(ny, nx) < 1:
            raise bad(f"image {w}x{h} is smaller than one {f}x{f} cell. Use a smaller factor.")
        return ny * f, nx * f
    try:
        tw, th = size
    except (TypeError, ValueError):
        raise bad(f"size {size!r} is not (width, height). Give two whole numbers.") from None
    tw, th = _int(tw, "target width"), _int(th, "target height")
    if fit == "crop" and (tw > w or th > h):
        raise bad(f"image {w}x{h} is smaller than the target {tw}x{th}; cropping cannot help. Use fit 'pad' or a "
                  "smaller size.")
    return whole(h, th) * th, whole(w, tw) * tw


def fit_to_cells(img, size=None, factor=None, fit: str = "exact") -> np.ndarray:
    """``img`` made divisible into the cells of ``size=(w, h)`` or ``factor``: ``exact`` leaves it as it is
    (:func:`cell_size` then refuses a size that does not divide), ``crop`` cuts the remainder off (centred), ``pad``
    fills up to whole cells (centred; transparent for RGBA, the edge colours for RGB)."""
    img = check_image(img)
    if fit not in FITS:
        raise bad(f"fit {fit!r} is not one of {', '.join(FITS)}.")
    if fit == "exact":
        return img
    H, W = _target(img.shape, size, factor, fit)
    h, w = img.shape[:2]
    if fit == "crop":
        top, left = (h - H) // 2, (w - W) // 2
        return img[top:top + H, left:left + W]
    top, left = (H - h) // 2, (W - w) // 2
    widths = ((top, H - h - top), (left, W - w - left), (0, 0))
    if img.shape[2] == 4:
        return np.pad(img, widths, mode="constant")
    return np.pad(img, widths, mode="edge")


def _cells(img: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """``H x W x C`` -> ``h x w x (fy*fx) x C``."""
    h, w, c = img.shape[0] // fy, img.shape[1] // fx, img.shape[2]
    return img.reshape(h, fy, w, fx, c).transpose(0, 2, 1, 3, 4).reshape(h, w, fy * fx, c)


def kcentroid_cells(x: np.ndarray, rounds: int = 4) -> np.ndarray:
    """Dominant colour of each cell. ``x``: ``N x P x C`` uint8 -> ``N x C`` float32 centroids.

    float32 is exact here for the sums (at most 4096 pixels x 255 < 2**24), and every other step is
    element-wise, so a per-cell loop computing the same steps gives bit-identical results.
    """
    n, p, c = x.shape
    xc = np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32)  # C x N x P
    lum = xc[:3].sum(0)
    ar = np.arange(n)
    ca = xc[:, ar, np.argmin(lum, 1)]  # C x N
    cb = xc[:, ar, np.argmax(lum, 1)]
    tot = xc.sum(2)
    for _ in range(rounds):
        da = np.zeros((n, p), np.float32)
        db = np.zeros((n, p), np.float32)
        for ch in range(c):
            da += np.square(xc[ch] - ca[ch][:, None])
            db += np.square(xc[ch] - cb[ch][:, None])
        inb = (db < da).astype(np.float32)
        nb = inb.sum(1)
        na = np.float32(p) - nb
        sb = (xc * inb[None]).sum(2)
        sa = tot - sb
        ca = np.where(na > 0, sa / np.maximum(na, 1), ca)
        cb = np.where(nb > 0, sb / np.maximum(nb, 1), cb)
    return np.where(nb > na, cb, ca).T


def downscale(img, size=None, factor=None, method: str = "kcentroid", *, fit: str = "exact",
              contrast: float = 0.12) -> np.ndarray:
    """Downscale a uint8 RGB(A) image to ``size=(w, h)`` or by an integer ``factor`` with ``method``, cropped or
    padded to whole cells first as ``fit`` says (:func:`fit_to_cells`)."""
    img = check_image(img)
    m = _ALIASES.get(str(method).lower(), str(method).lower())
    if m not in METHODS:
        raise bad(f"unknown downscale method {method!r}. Use one of {', '.join(METHODS)}.")
    img = fit_to_cells(img, size, factor, fit)
    fy, fx = cell_size(img.shape, size, factor)
    h, w, c = img.shape[0] // fy, img.shape[1] // fx, img.shape[2]
    if fy == fx == 1:
        return img.copy()
    if m == "nearest":
        return img[fy // 2::fy, fx // 2::fx][:h, :w].copy()
    cells = _cells(img, fy, fx)
    if m == "box":
        x = cells.astype(np.float64)
        if c == 4:
            a = x[..., 3:4]
            asum = a.sum(2)
            rgb = np.where(asum > 0, (x[..., :3] * a).sum(2) / np.maximum(asum, 1e-9), x[..., :3].mean(2))
            out = np.concatenate([rgb, asum / (fy * fx)], -1)
        else:
            out = x.mean(2)
    elif m == "kcentroid":
        out = kcentroid_cells(cells.reshape(h * w, fy * fx, c)).reshape(h, w, c)
    elif m == "median":
        out = np.median(cells, axis=2)
    else:  # contrast
        L = srgb_to_oklab(cells[..., :3])[..., 0]
        med_l = np.median(L, axis=2, keepdims=True)
        dark = L < med_l - float(contrast)
        if c == 4:
            dark &= cells[..., 3] >= 128
        ndark = dark.sum(2)
        use_dark = ndark >= max(1, max(fy, fx) // 2)
        dsum = (cells.astype(np.float64) * dark[..., None]).sum(2) / np.maximum(ndark, 1)[..., None]
        out = np.where(use_dark[..., None], dsum, np.median(cells, axis=2))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def upscale(img, factor: int) -> np.ndarray:
    """Nearest-neighbour integer upscale (for display / export): every pixel becomes a ``factor``-square."""
    img = check_image(img, channels=(1, 3, 4)) if np.asarray(img).ndim == 3 else None
    if img is None:
        raise bad("upscale needs an H x W x C image. Pass an RGB(A) array.")
    f = _int(factor, "upscale factor")
    if f > 64:
        raise bad(f"upscale factor {f} is too large. Use 1..64.")
    return np.repeat(np.repeat(img, f, axis=0), f, axis=1)
