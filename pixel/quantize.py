"""Map images onto a palette, with or without dithering. Matching is nearest colour in OKLab.

* :func:`match` - nearest palette index per pixel (no dithering);
* :func:`dither` - indices with ``none``, ``fs`` (Floyd-Steinberg), ``atkinson`` or ``bayer2/4/8``;
* :func:`quantize` - the same, returning an RGB(A) image (alpha passes through).

Error diffusion runs in OKLab on anti-diagonal wavefronts: pixel (y, x) depends only on
pixels with a smaller ``x + 2*y``, so every pixel of one wavefront is matched and spreads its
error in one vectorised numpy step (``W + 2H`` steps instead of ``W * H``).  Scan order is
therefore the classic left-to-right, top-to-bottom one (no serpentine).
"""

from __future__ import annotations

import numpy as np

from .color import bad, check_alpha, check_image, srgb_to_oklab
from .palette import Palette, resolve_palette

DITHERS = ("none", "fs", "atkinson", "bayer2", "bayer4", "bayer8")
_ALIASES = {"floyd-steinberg": "fs", "floyd_steinberg": "fs", "floydsteinberg": "fs", "bayer": "bayer4",
            "": "none", "off": "none"}

# (dy, dx, weight) taps
_KERNELS = {
    "fs": [(0, 1, 7 / 16), (1, -1, 3 / 16), (1, 0, 5 / 16), (1, 1, 1 / 16)],
    "atkinson": [(0, 1, 1 / 8), (0, 2, 1 / 8), (1, -1, 1 / 8), (1, 0, 1 / 8), (1, 1, 1 / 8), (2, 0, 1 / 8)],
}


def _palette_lab(palette) -> tuple[Palette, np.ndarray]:
    pal = resolve_palette(palette)
    return pal, srgb_to_oklab(pal.colors).astype(np.float32)


def _nearest(lab: np.ndarray, plab: np.ndarray) -> np.ndarray:
    """Nearest palette index for OKLab rows ``N x 3`` (chunked so memory stays small)."""
    out = np.empty(len(lab), np.int64)
    pn = (plab * plab).sum(1)
    step = max(1, (1 << 22) // max(len(plab), 1))
    for i in range(0, len(lab), step):
        x = lab[i:i + step]
        out[i:i + step] = np.argmin(pn[None, :] - 2.0 * (x @ plab.T), axis=1)
    return out


def match(img, palette) -> np.ndarray:
    """Nearest palette colour (OKLab distance) per pixel: ``H x W`` int indices into ``palette.colors``."""
    img = check_image(img)
    pal, plab = _palette_lab(palette)
    rgb = img[..., :3].reshape(-1, 3)
    key = (rgb[:, 0].astype(np.int32) << 16) | (rgb[:, 1].astype(np.int32) << 8) | rgb[:, 2]
    uniq, inv = np.unique(key, return_inverse=True)
    ucol = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], 1).astype(np.uint8)
    idx = _nearest(srgb_to_oklab(ucol), plab)
    return idx[inv.reshape(-1)].reshape(img.shape[:2])


def bayer_matrix(n: int) -> np.ndarray:
    """The ``n x n`` Bayer threshold matrix (n = 2, 4, 8), values in (0, 1) centred on 0.5."""
    if n not in (2, 4, 8):
        raise bad(f"Bayer size {n} is not supported. Use 2, 4 or 8.")
    m = np.array([[0, 2], [3, 1]])
    while len(m) < n:
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    return (m + 0.5) / (n * n)


def _spread(plab: np.ndarray) -> float:
    """Typical gap between palette colours (median nearest-neighbour distance in OKLab)."""
    if len(plab) < 2:
        return 0.0
    d = np.sqrt(((plab[:, None] - plab[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(1)))


def _diffuse(lab: np.ndarray, plab: np.ndarray, kernel, strength: float, keep: np.ndarray | None) -> np.ndarray:
    """Error diffusion on wavefronts ``t = x + 2y``. ``keep`` marks pixels matched without error (not diffused)."""
    h, w, _ = lab.shape
    pad_l, pad_r, pad_b = 1, 2, 2
    wp = w + pad_l + pad_r
    buf = np.zeros(((h + pad_b) * wp, 3), np.float32)
    buf.reshape(h + pad_b, wp, 3)[:h, pad_l:pad_l + w] = lab
    orig = buf.copy() if keep is not None else None
    keepf = None
    if keep is not None:
        keepf = np.zeros((h + pad_b) * wp, bool)
        keepf.reshape(h + pad_b, wp)[:h, pad_l:pad_l + w] = keep
    out = np.zeros((h + pad_b) * wp, np.int64)
    pn = (plab * plab).sum(1)
    plab_t = np.ascontiguousarray(plab.T)
    lo, hi = plab.min(0), plab.max(0)  # clamp to the palette's box: no runaway error
    taps = [(dy * wp + dx, np.float32(wt * strength)) for dy, dx, wt in kernel]
    step = wp - 2  # consecutive pixels of a wavefront (y+1, x-2) are wp-2 apart in the flat buffer
    for t in range(w + 2 * (h - 1)):
        y0 = max(0, (t - w + 2) // 2)  # x = t - 2y < w
        y1 = min(h - 1, t // 2)
        if y1 < y0:
            continue
        s0 = y0 * wp + (t - 2 * y0) + pad_l
        sl = slice(s0, s0 + (y1 - y0) * step + 1, step)
        v = np.clip(buf[sl], lo, hi)
        j = np.argmin(pn - 2.0 * (v @ plab_t), axis=1)
        err = v - plab[j]
        if keepf is not None:
            k = keepf[sl]
            if k.any():
                vk = orig[sl][k]
                j[k] = np.argmin(pn - 2.0 * (vk @ plab_t), axis=1)
                err[k] = 0.0
        out[sl] = j
        for off, wt in taps:
            buf[s0 + off: s0 + off + (y1 - y0) * step + 1: step] += err * wt
    return out.reshape(h + pad_b, wp)[:h, pad_l:pad_l + w]


def edge_mask(img, *, alpha=None, contrast: float = 0.25, dark_only: bool = True) -> np.ndarray:
    """Pixels to leave undithered: silhouette edges (opaque pixels next to transparent ones) and outlines
    (pixels much darker, by ``contrast`` in OKLab L, than a 4-neighbour)."""
    img = check_image(img)
    if alpha is None and img.shape[2] == 4:
        alpha = img[..., 3]
    L = srgb_to_oklab(img[..., :3])[..., 0]
    p = np.pad(L, 1, mode="edge")
    neigh = np.stack([p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
    diff = neigh - L[None] if dark_only else np.abs(neigh - L[None])
    m = (diff > contrast).any(0)
    if alpha is not None:
        a = check_alpha(alpha, img.shape) >= 128
        pa = np.pad(a, 1, mode="constant", constant_values=False)
        border = ~(pa[:-2, 1:-1] & pa[2:, 1:-1] & pa[1:-1, :-2] & pa[1:-1, 2:])
        m |= a & border
    return m


def dither(img, palette, method: str = "fs", *, strength: float = 1.0, protect_edges: bool = False,
           alpha=None, edge_contrast: float = 0.25) -> np.ndarray:
    """Palette indices (``H x W`` int) for an RGB(A) uint8 image, with dithering.

    ``method``: ``none``, ``fs``, ``atkinson``, ``bayer2``, ``bayer4``, ``bayer8``. ``strength`` (0..1)
    scales the diffused error / the Bayer offset. ``alpha`` (or the image's 4th channel): transparent
    pixels spread no error, so whatever colour they hold cannot leak into the sprite.
    ``protect_edges`` leaves silhouette edges and dark outlines (see :func:`edge_mask`) undithered:
    they take their nearest colour and spread no error.
    """
    img = check_image(img)
    m = _ALIASES.get(str(method).lower(), str(method).lower())
    if m not in DITHERS:
        raise bad(f"unknown dither {method!r}. Use one of {', '.join(DITHERS)}.")
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        raise bad(f"dither strength {strength!r} is not a number. Give 0..1.") from None
    if not 0.0 <= strength <= 1.0:
        raise bad(f"dither strength {strength} is outside 0..1. Give 0..1.")
    pal, plab = _palette_lab(palette)
    if m == "none" or strength == 0.0 or len(pal) == 1:
        return match(img, pal)
    if alpha is None and img.shape[2] == 4:
        alpha = img[..., 3]
    keep = edge_mask(img, alpha=alpha, contrast=edge_contrast) if protect_edges else None
    if alpha is not None and m in _KERNELS:
        clear = check_alpha(alpha, img.shape) < 128  # transparent pixels spread no error into the sprite
        if clear.any():
            keep = clear if keep is None else (keep | clear)
    lab = srgb_to_oklab(img[..., :3])
    if m.startswith("bayer"):
        n = int(m[5:])
        t = bayer_matrix(n).astype(np.float32) - 0.5
        h, w = img.shape[:2]
        tile = np.tile(t, (h // n + 1, w // n + 1))[:h, :w]
        lab = lab.copy()
        off = tile * (_spread(plab) * strength)
        if keep is not None:
            off = np.where(keep, 0.0, off)
        lab[..., 0] += off
        return _nearest(lab.reshape(-1, 3), plab).reshape(h, w)
    return _diffuse(lab, plab, _KERNELS[m], strength, keep)


def apply_palette(indices: np.ndarray, palette) -> np.ndarray:
    """Indices -> RGB uint8 image."""
    pal = resolve_palette(palette)
    idx = np.asarray(indices)
    if idx.size and (idx.min() < 0 or idx.max() >= len(pal)):
        raise bad("palette indices out of range for this palette. Use the palette the indices were made with.")
    return pal.colors[idx]


def quantize(img, palette, method: str = "none", *, strength: float = 1.0, protect_edges: bool = False,
             alpha=None) -> np.ndarray:
    """Quantize an RGB(A) uint8 image to ``palette``; returns the same channel count (alpha untouched)."""
    img = check_image(img)
    pal = resolve_palette(palette)
    if alpha is None and img.shape[2] == 4:
        alpha = img[..., 3]
    idx = dither(img, pal, method, strength=strength, protect_edges=protect_edges, alpha=alpha)
    rgb = pal.colors[idx]
    if img.shape[2] == 4:
        return np.concatenate([rgb, img[..., 3:]], -1)
    return rgb
