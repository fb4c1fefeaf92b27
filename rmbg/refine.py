"""Mask refinement on float alpha maps [H, W] in 0..1 (1 = foreground). Pure numpy.

* :func:`threshold` - hard cut (0 disables).
* :func:`grow` - dilate (radius > 0) or erode (radius < 0), a near-disk (octagon) kernel.
* :func:`feather` - Gaussian blur of the alpha (sigma in pixels), edges only in effect.
* :func:`remove_islands` - drop foreground specks smaller than an area (pixels).
* :func:`fill_holes` - fill enclosed background holes up to an area (pixels).
* :func:`label` - connected components (4- or 8-connected), run-length + union-find, vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError


def _check(alpha: np.ndarray) -> np.ndarray:
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim != 2:
        raise SpriteForgeError(BAD_INPUT, f"a mask must be 2-D [H, W]; got shape {a.shape}.")
    return a


def threshold(alpha: np.ndarray, t: float) -> np.ndarray:
    """1 where alpha >= t, else 0; ``t <= 0`` returns alpha unchanged."""
    a = _check(alpha)
    if t <= 0:
        return a.copy()
    return (a >= t).astype(np.float32)


def _max3(a: np.ndarray, square: bool) -> np.ndarray:
    p = np.pad(a, 1, mode="edge")
    if square:
        r = np.maximum(np.maximum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
        return np.maximum(np.maximum(r[:-2], r[1:-1]), r[2:])
    c = p[1:-1, 1:-1]
    return np.maximum.reduce([c, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])


def grow(alpha: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation (radius > 0) or erosion (radius < 0) by |radius| pixels.

    Alternating 3x3 cross and square steps give an octagonal, nearly round kernel.
    """
    a = _check(alpha)
    r = int(radius)
    if r == 0:
        return a.copy()
    x = a if r > 0 else 1.0 - a
    for i in range(abs(r)):
        x = _max3(x, square=(i % 2 == 1))
    return (x if r > 0 else 1.0 - x).astype(np.float32)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur_axis(a: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    r = len(k) // 2
    n = a.shape[axis]
    widths = [(0, 0)] * a.ndim
    widths[axis] = (r, r)
    # 'symmetric' repeats the edge sample (d c b a | a b c d), like scipy.ndimage's 'reflect'.
    mode = "symmetric" if r <= n else "edge"
    p = np.pad(a, widths, mode=mode).astype(np.float64)
    out = np.zeros(a.shape, dtype=np.float64)
    for i, w in enumerate(k):
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(i, i + n)
        out += w * p[tuple(sl)]
    return out


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the first two axes (reflect at the borders, kernel to 4 sigma)."""
    if sigma <= 0:
        return np.asarray(a, dtype=np.float32).copy()
    k = gaussian_kernel(sigma)
    return _blur_axis(_blur_axis(np.asarray(a, dtype=np.float64), k, 0), k, 1).astype(np.float32)


def feather(alpha: np.ndarray, sigma: float) -> np.ndarray:
    """Soften the mask edge with a Gaussian of ``sigma`` pixels (0 disables)."""
    a = _check(alpha)
    if sigma <= 0:
        return a.copy()
    return np.clip(gaussian_blur(a, sigma), 0.0, 1.0)


def label(binary: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of a boolean [H, W] map: (labels int32 with 0 = background, count).

    Rows are run-length encoded; runs in consecutive rows that touch (4- or 8-connected)
    are joined with a vectorised union-find (min-label propagation with pointer jumping).
    """
    b = np.asarray(binary, dtype=bool)
    if b.ndim != 2:
        raise SpriteForgeError(BAD_INPUT, f"label() needs a 2-D map; got {b.shape}.")
    H, W = b.shape
    labels = np.zeros((H, W), dtype=np.int32)
    if not b.any():
        return labels, 0
    p = np.zeros((H, W + 2), dtype=np.int8)
    p[:, 1:-1] = b
    d = np.diff(p, axis=1)
    sr, sc = np.nonzero(d == 1)  # run starts (column sc), row-major order
    er, ec = np.nonzero(d == -1)  # run ends (exclusive column ec)
    n = len(sr)
    parent = np.arange(n)
    # Runs of row r+1 that overlap runs of row r.
    ext = 1 if connectivity == 8 else 0
    row_first = np.searchsorted(sr, np.arange(H + 1))
    ea, eb = [], []
    for r in range(H - 1):
        a0, a1 = row_first[r], row_first[r + 1]
        b0, b1 = row_first[r + 1], row_first[r + 2]
        if a0 == a1 or b0 == b1:
            continue
        s_a, e_a = sc[a0:a1], ec[a0:a1]
        s_b, e_b = sc[b0:b1], ec[b0:b1]
        # For each run in row r: the runs of row r+1 with s_b < e_a + ext and e_b > s_a - ext.
        lo = np.searchsorted(e_b, s_a - ext, side="right")
        hi = np.searchsorted(s_b, e_a + ext, side="left")
        cnt = np.maximum(hi - lo, 0)
        if cnt.sum() == 0:
            continue
        ia = np.repeat(np.arange(a0, a1), cnt)
        offs = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        ib = b0 + np.repeat(lo, cnt) + offs
        ea.append(ia)
        eb.append(ib)
    if ea:
        ea = np.concatenate(ea)
        eb = np.concatenate(eb)
        while True:
            m = np.minimum(parent[ea], parent[eb])
            new = parent.copy()
            np.minimum.at(new, ea, m)
            np.minimum.at(new, eb, m)
            new = new[new]
            while True:
                nn = new[new]
                if np.array_equal(nn, new):
                    break
                new = nn
            if np.array_equal(new, parent):
                break
            parent = new
    roots, comp = np.unique(parent, return_inverse=True)
    comp = comp.astype(np.int32) + 1
    lengths = ec - sc
    flat = labels.reshape(-1)
    run_rows = np.repeat(sr, lengths)
    run_cols = np.repeat(sc, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    flat[run_rows * W + run_cols] = np.repeat(comp, lengths)
    return labels, len(roots)


def remove_islands(alpha: np.ndarray, min_area: int, level: float = 0.5, connectivity: int = 8) -> np.ndarray:
    """Zero foreground components (alpha >= level) smaller than ``min_area`` pixels, with their soft rim."""
    a = _check(alpha).copy()
    if min_area <= 0:
        return a
    core = a >= level
    lab, n = label(core, connectivity)
    if n == 0:
        return a
    areas = np.bincount(lab.reshape(-1), minlength=n + 1)
    small = areas < min_area
    small[0] = False
    drop = small[lab]
    if not drop.any():
        return a
    # The rim (alpha below level) around a removed speck goes too, but not a rim shared with a kept part.
    near = grow(drop.astype(np.float32), 2) > 0
    kept = grow((core & ~drop).astype(np.float32), 2) > 0
    a[drop | (near & ~core & ~kept)] = 0.0
    return a


def fill_holes(alpha: np.ndarray, max_area: int, level: float = 0.5) -> np.ndarray:
    """Set enclosed background regions (alpha < level, not touching the border) of at most
    ``max_area`` pixels to 1 (``max_area`` < 0: any size; 0 disables)."""
    a = _check(alpha).copy()
    if max_area == 0:
        return a
    bg = a < level
    lab, n = label(bg, connectivity=4)
    if n == 0:
        return a
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    areas = np.bincount(lab.reshape(-1), minlength=n + 1)
    fill = np.ones(n + 1, dtype=bool)
    fill[0] = False
    fill[border] = False
    if max_area > 0:
        fill &= areas <= max_area
    a[fill[lab]] = 1.0
    return a


@dataclass(frozen=True)
class RefineOptions:
    """Mask refinement, applied in this order: threshold, fill holes, remove islands, grow, feather."""

    threshold: float = 0.0
    fill_holes: int = 0  # max hole area in pixels; 0 = off, -1 = any size
    remove_islands: int = 0  # min island area in pixels; 0 = off
    grow: int = 0  # pixels; < 0 erodes
    feather: float = 0.0  # Gaussian sigma in pixels

    @property
    def active(self) -> bool:
        return bool(self.threshold > 0 or self.fill_holes or self.remove_islands > 0 or self.grow or self.feather > 0)


def refine(alpha: np.ndarray, opts: RefineOptions) -> np.ndarray:
    """Apply every enabled step of ``opts`` to one alpha map."""
    a = _check(alpha)
    if not opts.active:
        return a
    a = threshold(a, opts.threshold)
    if opts.fill_holes:
        a = fill_holes(a, opts.fill_holes)
    if opts.remove_islands > 0:
        a = remove_islands(a, opts.remove_islands)
    if opts.grow:
        a = grow(a, opts.grow)
    if opts.feather > 0:
        a = feather(a, opts.feather)
    return a.astype(np.float32)
