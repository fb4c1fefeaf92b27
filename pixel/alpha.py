"""Alpha that stays clean through the chain.

Masks are ``H x W`` arrays: uint8 0..255, bool, or float 0..1; 255/True/1 = opaque sprite pixel.
Functions returning masks return uint8 0/255; functions taking an RGB image take ``H x W x 3`` uint8.

* :func:`threshold` - binary alpha;
* :func:`label` - connected components (4 or 8 neighbours), pure numpy (run-length union-find);
* :func:`remove_islands` - drop opaque components smaller than N pixels;
* :func:`fill_pinholes` - make enclosed transparent holes of at most N pixels opaque;
* :func:`bleed` - push edge colours into transparent pixels (no dark halos when scaled/filtered);
* :func:`outline` - a 1-pixel outline in a given colour around the silhouette;
* :func:`remove_strays` - single pixels that differ from four agreeing neighbours take their colour;
* :func:`clean` - the chain in one call.
"""

from __future__ import annotations

import numpy as np

from .color import bad, check_alpha, check_image, parse_hex_color


def _mask(alpha, shape=None) -> np.ndarray:
    a = np.asarray(alpha)
    if a.ndim != 2:
        raise bad(f"mask has shape {a.shape}; expected H x W. Pass a single-channel mask.")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise bad("mask is empty. Pass a mask with at least one pixel.")
    return check_alpha(a, shape if shape is not None else a.shape, "mask")


def threshold(alpha, level: int = 128) -> np.ndarray:
    """Binary alpha: 255 where ``alpha >= level`` (0..255 scale), else 0."""
    a = _mask(alpha)
    if not 0 <= int(level) <= 255:
        raise bad(f"alpha threshold {level} is outside 0..255. Give 0..255.")
    return np.where(a >= int(level), 255, 0).astype(np.uint8)


def label(mask, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask: (int32 labels 1..n, 0 = background, n)."""
    m = np.asarray(mask).astype(bool)
    if connectivity not in (4, 8):
        raise bad(f"connectivity {connectivity} is not 4 or 8.")
    h, w = m.shape
    pad = np.zeros((h, w + 2), bool)
    pad[:, 1:-1] = m
    d = np.diff(pad.astype(np.int8), axis=1)
    sr, sc = np.nonzero(d == 1)   # run starts (row, col)
    er, ec = np.nonzero(d == -1)  # run ends (exclusive col)
    nruns = len(sr)
    labels = np.zeros((h, w), np.int32)
    if nruns == 0:
        return labels, 0
    # runs are in row-major order; per row offsets
    row_first = np.searchsorted(sr, np.arange(h + 1))
    ext = 1 if connectivity == 8 else 0
    a_arr = b_arr = np.zeros(0, np.int64)
    if h > 1 and row_first[1] < nruns:
        # overlaps between each run (rows >= 1) and the runs of the row above; keys are increasing
        # row-major, so a searchsorted on (row, col) keys finds the overlapping range of upper runs
        idx = np.arange(row_first[1], nruns)
        r = sr[idx].astype(np.int64)
        up0, up1 = row_first[r - 1], row_first[r]
        s, e = sc[idx] - ext, ec[idx] + ext
        stride = w + 3
        lo = np.searchsorted(sr.astype(np.int64) * stride + ec, (r - 1) * stride + s, side="right")
        hi = np.searchsorted(sr.astype(np.int64) * stride + sc, (r - 1) * stride + e, side="left")
        lo = np.maximum(lo, up0)
        hi = np.minimum(hi, up1)
        cnt = np.maximum(hi - lo, 0)
        if cnt.sum():
            a_arr = np.repeat(idx, cnt)
            b_arr = np.repeat(lo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt) + np.arange(cnt.sum())
    parent = np.arange(nruns)
    if len(a_arr):
        while True:
            pa, pb = parent[a_arr], parent[b_arr]
            mn = np.minimum(pa, pb)
            changed = (pa != pb).any()
            np.minimum.at(parent, pa, mn)
            np.minimum.at(parent, pb, mn)
            while True:  # pointer jumping
                nxt = parent[parent]
                if np.array_equal(nxt, parent):
                    break
                parent = nxt
            if not changed:
                break
    roots, comp = np.unique(parent, return_inverse=True)
    comp = comp.reshape(-1).astype(np.int32) + 1
    lens = ec - sc
    rows = np.repeat(sr, lens)
    cols = np.repeat(sc - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())
    labels[rows, cols] = np.repeat(comp, lens)
    return labels, len(roots)


def remove_islands(alpha, min_size: int, connectivity: int = 8) -> np.ndarray:
    """Binary alpha with opaque components smaller than ``min_size`` pixels made transparent."""
    a = _mask(alpha) >= 128
    if int(min_size) <= 1:
        return np.where(a, 255, 0).astype(np.uint8)
    lab, n = label(a, connectivity)
    sizes = np.bincount(lab.reshape(-1), minlength=n + 1)
    keep = sizes >= int(min_size)
    keep[0] = False
    return np.where(keep[lab], 255, 0).astype(np.uint8)


def fill_pinholes(alpha, max_size: int, connectivity: int = 4) -> np.ndarray:
    """Binary alpha with enclosed transparent holes of at most ``max_size`` pixels made opaque."""
    a = _mask(alpha) >= 128
    if int(max_size) <= 0:
        return np.where(a, 255, 0).astype(np.uint8)
    lab, n = label(~a, connectivity)
    sizes = np.bincount(lab.reshape(-1), minlength=n + 1)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    fill = sizes <= int(max_size)
    fill[0] = False
    fill[border] = False
    return np.where(a | fill[lab], 255, 0).astype(np.uint8)


def _neighbour_sum(x: np.ndarray, w8: bool = True) -> np.ndarray:
    p = np.pad(x, [(1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 2))
    s = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    if w8:
        s = s + p[:-2, :-2] + p[:-2, 2:] + p[2:, :-2] + p[2:, 2:]
    return s


def bleed(rgb, alpha, iterations: int = 8) -> np.ndarray:
    """RGB with transparent pixels coloured from their nearest opaque neighbours (``iterations`` rings;
    anything further gets the mean opaque colour). Alpha itself is not changed."""
    rgb = check_image(rgb, "image", channels=(3, 4))[..., :3]
    a = check_alpha(alpha, rgb.shape) >= 128
    if a.all() or not a.any():
        return rgb.copy()
    col = rgb.astype(np.float64) * a[..., None]
    known = a.astype(np.float64)
    out = col.copy()
    for _ in range(int(iterations)):
        if known.all():
            break
        s = _neighbour_sum(out * known[..., None])
        k = _neighbour_sum(known)
        new = (k > 0) & (known == 0)
        out[new] = s[new] / k[new, None]
        known = np.where(new, 1.0, known)
    rest = known == 0
    if rest.any():
        out[rest] = rgb[a].mean(0)
    out[a] = rgb[a]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def outline(rgb, alpha, color="#000000", *, connectivity: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Add a 1-pixel outline of ``color`` (hex string or RGB triple) around the silhouette: (rgb, alpha)."""
    rgb = check_image(rgb, "image")[..., :3]
    a = check_alpha(alpha, rgb.shape) >= 128
    if isinstance(color, str):
        c = np.array(parse_hex_color(color), np.uint8)
    else:
        c = np.asarray(color)
        if c.shape != (3,) or c.min() < 0 or c.max() > 255:
            raise bad(f"outline colour {color!r} is not an RGB triple. Give e.g. '#000000' or (0, 0, 0).")
        c = c.astype(np.uint8)
    ring = (_neighbour_sum(a.astype(np.int32), connectivity == 8) > 0) & ~a
    out = rgb.copy()
    out[ring] = c
    return out, np.where(a | ring, 255, 0).astype(np.uint8)


def remove_strays(rgb, alpha=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Stray-pixel clean-up: an opaque pixel with no opaque 8-neighbour becomes transparent, and a pixel whose
    four neighbours all share one colour different from its own takes that colour. Returns (rgb, alpha)."""
    rgb = check_image(rgb, "image")[..., :3]
    h, w = rgb.shape[:2]
    a = np.ones((h, w), bool) if alpha is None else check_alpha(alpha, rgb.shape) >= 128
    if alpha is not None:
        lonely = a & (_neighbour_sum(a.astype(np.int32)) == 0)
        a = a & ~lonely
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    key = np.where(a, key, -1)
    p = np.pad(key, 1, constant_values=-2)
    up, dn, lf, rt = p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]
    agree = (up == dn) & (up == lf) & (up == rt) & (up >= 0) & (up != key) & a
    out = rgb.copy()
    ys, xs = np.nonzero(agree)
    out[ys, xs] = rgb[ys - 1, xs]
    return out, (None if alpha is None else np.where(a, 255, 0).astype(np.uint8))


def clean(rgb, alpha, *, level: int = 128, min_island: int = 0, max_hole: int = 0, strays: bool = False,
          bleed_edges: bool = True, outline_color=None) -> tuple[np.ndarray, np.ndarray]:
    """Threshold -> remove islands -> fill pinholes -> stray clean-up -> outline -> bleed. Returns (rgb, alpha 0/255)."""
    rgb = check_image(rgb, "image")[..., :3]
    a = threshold(check_alpha(alpha, rgb.shape), level)
    if min_island and int(min_island) > 1:
        a = remove_islands(a, int(min_island))
    if max_hole and int(max_hole) > 0:
        filled = fill_pinholes(a, int(max_hole))
        if (filled != a).any():
            rgb = bleed(rgb, a, iterations=4)  # filled holes take their surroundings' colour
        a = filled
    if strays:
        rgb, a = remove_strays(rgb, a)
    if outline_color is not None:
        rgb, a = outline(rgb, a, outline_color)
    if bleed_edges:
        rgb = bleed(rgb, a)
    return rgb, a


def key_to_alpha(rgb, key=(255, 0, 255), *, threshold: float = 0.3) -> np.ndarray:
    """RGB image(s) on the key colour -> RGBA uint8 with alpha exactly 0 or 255.

    ``rgb`` is uint8 0..255 or float 0..1, shape ``(..., H, W, 3)``. A pixel is background when its RGB
    distance to the key colour, relative to the largest possible distance, is below ``threshold``, or
    when it is magenta-like (red and blue both well above green, as key pixels blended with an edge
    are; only for a magenta key). Background pixels get alpha 0 and RGB 0; sprite pixels keep their colour with alpha 255.
    """
    x = np.asarray(rgb)
    f = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else np.clip(x.astype(np.float32), 0.0, 1.0)
    k = np.asarray(key, np.float32) / 255.0
    d = np.sqrt(((f - k) ** 2).sum(-1)) / np.sqrt(3.0)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    magenta = (np.minimum(r, b) - g > 0.45) & (np.abs(r - b) < 0.3)
    if not (k[0] > 0.8 and k[2] > 0.8 and k[1] < 0.2):
        magenta = np.zeros_like(magenta)
    bg = (d < threshold) | magenta
    out = np.zeros(f.shape[:-1] + (4,), np.uint8)
    rgb8 = np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8)
    out[..., :3] = np.where(bg[..., None], 0, rgb8)
    out[..., 3] = np.where(bg, 0, 255)
    return out
