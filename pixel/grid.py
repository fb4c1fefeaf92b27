"""Native-grid recovery for "fake" pixel art (upscaled, blurred, compressed AI output).

1. Edge profiles: mean absolute difference between neighbouring columns (rows), all channels
   (alpha included). Edges are the profile's clear local maxima (:func:`find_edges`; JPEG ringing
   and the ripples of one blurred edge are dropped).
2. Period: the LARGEST period (fractional ones included) whose grid explains (nearly) all gaps
   between consecutive edges and the image borders (:func:`estimate_period`). Every divisor of the
   true cell size explains them as well, a multiple does not: edges at 32, 48, 72, 96 give 8, not
   16 (72 is off a 16-grid), so sparse sprites with few edges and harmonics are both handled.
   A period twice the true one (art drawn in 2x2 clusters, blurred: the single-cell edges fade) is
   halved when the half-way lines carry edges and the quarter lines do not (:func:`_refine_half`).
   The two axes share one period when it explains both (:func:`_common_scale`; an axis without
   edges takes the other's).
3. Snapping: starting from the strongest edge, cuts are tracked outwards one period at a time,
   each moved onto the strongest real edge within a quarter of a period (so slightly non-uniform
   grids, e.g. 7/8/7/8-pixel cells of a x7.5 upscale or random 7-9 pixel cells, are followed);
   with no edge there the lattice position is kept; round(length / period) cells.
4. Check: edges must sit on the cuts and cell centres must be flat (:func:`edge_contrast`);
   native-resolution art or noise scores about 1 and is returned as is (scale 1).
   On a noisy image every line of the profile sits on a noise floor; :func:`noise_contrast` measures
   above it (and the half-period test of step 2 too).
5. Each cell's colour (:func:`estimate_cells`): the medians of the cell cores (:func:`sample_cells`)
   start a least-squares fit of "cells, blurred by a Gaussian per YCbCr channel" to every pixel, the
   blur chosen by the fit's residual; on fractional scales the cells may have fractional boundaries.
   The blur and JPEG's subsampled chroma reach into the cores of small (4-pixel) cells; the fit takes
   that back out. A sharp integer grid keeps the core medians exactly.

Limits: an axis with only one or two edges at a fractional scale does not determine the scale (many
periods fit); native art whose strong edges all fall on a k-pixel grid reads as a k-times upscale.

``recover_grid`` returns the true-resolution uint8 image and a :class:`GridInfo` (scale, cuts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .color import bad, check_image


@dataclass
class GridInfo:
    scale_x: float
    scale_y: float
    cuts_x: list
    cuts_y: list
    width: int
    height: int

    @property
    def scale(self) -> float:
        """Mean cell size (the upscale factor of the fake pixel art)."""
        return (self.scale_x + self.scale_y) / 2.0

    @property
    def found(self) -> bool:
        """False when no grid was found (a photo, or art already at its native size): scale 1, size unchanged."""
        return self.scale_x != 1.0 or self.scale_y != 1.0

    def to_dict(self) -> dict:
        return {"scale": round(self.scale, 3), "scale_x": round(self.scale_x, 3), "scale_y": round(self.scale_y, 3),
                "width": self.width, "height": self.height}


def edge_profiles(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(column profile length W-1, row profile length H-1): mean |difference| of neighbours, summed over channels."""
    x = img.astype(np.float32)
    px = np.abs(np.diff(x, axis=1)).sum(2).mean(0)
    py = np.abs(np.diff(x, axis=0)).sum(2).mean(1)
    return px, py


def find_edges(profile: np.ndarray, *, rel: float = 0.08, k_noise: float = 6.0, local: float = 0.2,
               window: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(positions, strengths) of the edges in an edge profile: local maxima clearly above the noise floor.

    Position ``i`` is the boundary between pixel ``i`` and ``i + 1`` (a cut at ``i + 1``). The floor is
    measured on the lower half of the profile (cell interiors); a peak must stand ``k_noise`` noise
    deviations above it, reach ``rel`` of the strongest edge and ``local`` of the strongest one within
    ``window`` pixels (JPEG ringing lives in the 8x8 block of a strong edge and is a few percent of it).
    Ripples on one blurred edge (maxima without a real dip between them) count once.
    """
    prof = np.asarray(profile, np.float64)
    if len(prof) < 3:
        return np.zeros(0, int), np.zeros(0)
    low = prof[prof <= np.percentile(prof, 50)]
    base = float(np.median(low))
    # noise: the spread of the cell interiors, or of the second difference where heavy blur leaves no
    # flat interiors (a smooth profile has small second differences; noise does not)
    noise = 1.4826 * min(float(np.median(np.abs(low - base))),
                         float(np.median(np.abs(np.diff(prof, 2)))) / np.sqrt(6.0))
    r = prof - base
    pad = np.pad(r, 1, constant_values=-np.inf)
    peak = (pad[1:-1] >= pad[:-2]) & (pad[1:-1] > pad[2:])  # plateaus: the first position
    thr = max(k_noise * noise, rel * r.max(), 1e-9)
    near = np.lib.stride_tricks.sliding_window_view(np.pad(r, window, constant_values=-np.inf),
                                                   2 * window + 1).max(1)
    pos = np.flatnonzero(peak & (r >= thr) & (r >= local * near))
    if len(pos) > 1:
        # one blurred edge, rippled by JPEG, can show several maxima with shallow dips between them: of two
        # neighbouring maxima whose dip is less than half as deep as the lower one is high, the lower goes
        dip = np.minimum.reduceat(r, pos)[:-1]
        a, b = r[pos[:-1]], r[pos[1:]]
        shallow = (np.minimum(a, b) - dip) < 0.5 * np.minimum(a, b)
        drop = np.zeros(len(pos), bool)
        drop[:-1] |= shallow & (a < b)
        drop[1:] |= shallow & (b <= a)
        pos = pos[~drop]
    return pos, r[pos]


def _tolerance(period):
    """How far (pixels) a gap between two edges may be from a whole number of cells: a fractional scale
    rounds each edge by up to half a pixel (a gap by up to 1); blur, JPEG and uneven cells add a little.
    Kept tight (at most 1.25 px): a loose tolerance lets a few far-apart edges fit long wrong periods by chance."""
    return np.minimum(1.25, 0.75 + 0.05 * np.asarray(period, np.float64))


def _gaps(edges: np.ndarray, strength: np.ndarray, length: int, periods: np.ndarray,
          dominance: float = 0.3, reach: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaps between consecutive edges (and the image borders) as each candidate period sees them:
    ``(gaps, weights)``, both ``len(periods) x (len(edges) + 1)``; weight 0 marks no gap.

    For a period ``p`` real edges are at least about a cell apart, so an edge less than ``p - 1.5`` pixels
    (and less than ``reach``, the JPEG block) from one more than 1/``dominance`` times as strong is ringing
    of that one and is skipped. Gaps that touch a border count half (the image may be cropped mid-cell).
    """
    cut = np.asarray(edges, np.float64) + 1.0
    s = np.asarray(strength, np.float64)
    p = np.asarray(periods, np.float64)[:, None]
    dist = np.abs(cut[:, None] - cut[None, :])
    dom = np.where(dominance * s[None, :] > s[:, None], dist, np.inf).min(1, initial=np.inf)  # nearest stronger
    active = np.ones((len(p), len(cut) + 2), bool)
    active[:, 1:-1] = dom[None, :] >= np.minimum(p - 1.5, reach)
    x = np.concatenate([[0.0], cut, [float(length)]])
    idx = np.where(active, np.arange(len(x))[None, :], -1)
    prev = np.maximum.accumulate(idx, axis=1)[:, :-1]  # last active index before each position
    gaps = x[None, 1:] - x[prev]
    wgt = np.where(active[:, 1:], 1.0, 0.0)
    wgt[(prev == 0) | (np.arange(1, len(x)) == len(x) - 1)[None, :]] *= 0.5
    wgt[gaps <= 0] = 0.0
    return gaps, wgt


def period_fit(edges: np.ndarray, strength: np.ndarray, length: int, periods: np.ndarray,
               with_error: bool = False):
    """Weighted fraction of the gaps (:func:`_gaps`) that are a whole number of cells of each candidate
    period, within :func:`_tolerance`; with ``with_error`` also the mean squared residual (capped at the
    tolerance) relative to ``p**2 / 12``, the residual of gaps that fit no grid (so periods compare)."""
    p = np.asarray(periods, np.float64)[:, None]
    gaps, wgt = _gaps(edges, strength, length, periods)
    n = np.maximum(1.0, np.rint(gaps / p))
    res = np.abs(gaps - n * p)
    tol = _tolerance(p)
    tot = np.maximum(wgt.sum(1), 1e-12)
    fit = np.where(wgt.sum(1) > 0, ((res <= tol) * wgt).sum(1) / tot, 0.0)
    if not with_error:
        return fit
    err = (wgt * np.minimum(res, tol) ** 2).sum(1) / tot / (p[:, 0] ** 2 / 12.0)
    return fit, err


def _period_grid(min_period: float, max_period: float) -> np.ndarray:
    return np.exp(np.arange(np.log(min_period), np.log(max_period) + 1e-9, 0.002))


def estimate_period(profile: np.ndarray, *, min_period: float = 2.0, max_period: float | None = None,
                    length: int | None = None, need: float = 0.85, slack: float = 0.02) -> tuple[float, float]:
    """(period, fraction of gaps explained) of the cell boundaries in an edge profile; (1.0, 0.0) when none.

    The period is the LARGEST one whose grid explains (nearly) all edges: every divisor of the true period
    (2x2 clusters, harmonics) explains them too, a multiple does not (edges at 32, 48, 72: 16 leaves 72
    off-grid, 8 fits). Fractional periods (7.5) and slightly uneven cells are allowed by the tolerance,
    which also lets a few far-apart edges fit some long period loosely by chance (gaps 30 and 66 fit
    7.36 within 0.6 px, 6 exactly): so only periods whose relative residual is within ``slack`` of the
    best one compete, and within the longest such range the best-fitting period is refined.
    """
    prof = np.asarray(profile, np.float64)
    length = len(prof) + 1 if length is None else int(length)
    edges, strength = find_edges(prof)
    max_period = min(max_period or length / 3.0, length / 2.0)
    if len(edges) == 0 or max_period <= min_period:
        return 1.0, 0.0
    periods = _period_grid(min_period, max_period)
    fit, err = period_fit(edges, strength, length, periods, with_error=True)
    feasible = fit >= need
    if not feasible.any():
        return 1.0, 0.0
    good = feasible & (err <= err[feasible].min() + slack)
    # the top connected run of good periods (a small gap in the fine grid does not split it)
    top = int(np.flatnonzero(good)[-1])
    lo = top
    while lo > 0 and (good[lo - 1] or (lo >= 2 and good[lo - 2])):
        lo -= 1
    i = lo + int(np.argmin(np.where(good[lo:top + 1], err[lo:top + 1], np.inf)))
    gaps, wgt = _gaps(edges, strength, length, periods[i:i + 1])
    return _fit_period(gaps[0], wgt[0], float(periods[i])), float(fit[i])


def _fit_period(gaps: np.ndarray, wgt: np.ndarray, p: float) -> float:
    """Weighted least-squares period of gaps that are whole numbers of cells; gaps off the grid (a stray
    edge, a cropped border) are left out."""
    for _ in range(3):
        n = np.maximum(1.0, np.rint(gaps / p))
        w = wgt * (np.abs(gaps - n * p) <= _tolerance(p))
        if w.sum() <= 0:
            break
        p = float((w * gaps * n).sum() / (w * n * n).sum())
    return p


def snap_cuts(profile: np.ndarray, period: float, length: int) -> list[int]:
    """Cut positions (cell starts, plus ``length`` at the end): a grid of the period, each line moved onto a
    real edge within a quarter of a cell (the strongest one there); lines with no edge nearby stay on the grid."""
    edges, strength = find_edges(profile, rel=0.05, k_noise=4.0)
    cut_at = edges + 1  # an edge between pixels i and i+1 is a cut at i+1
    reach = max(0.6, period / 4.0)

    def best_near(pos: float) -> tuple[int, bool]:
        near = np.flatnonzero(np.abs(cut_at - pos) <= reach)
        if len(near) == 0:
            return int(round(pos)), False
        return int(cut_at[near[np.argmax(strength[near])]]), True

    if len(cut_at) == 0:
        return [int(round(v)) for v in np.arange(0.0, length - period * 0.5, period)] + [length]
    # follow the edges outwards from the strongest one; the expected position moves on by one period
    # each step and re-anchors on every real edge found (so slow drift and jitter are both followed)
    start = int(cut_at[np.argmax(strength)])
    cuts = [start]
    exp = float(start)
    while exp + period < length - period * 0.5:
        exp += period
        nxt, real = best_near(exp)
        if nxt <= cuts[-1]:
            nxt, real = int(round(exp)), False
        if real:
            exp = float(nxt)
        cuts.append(nxt)
    exp = float(start)
    while exp - period > period * 0.5:
        exp -= period
        prv, real = best_near(exp)
        if prv >= cuts[0]:
            prv, real = int(round(exp)), False
        if real:
            exp = float(prv)
        cuts.insert(0, prv)
    cuts = [0] + [c for c in cuts if 0 < c < length] + [length]
    # drop slivers at the borders (partial cells narrower than half a period join their neighbour)
    if len(cuts) > 2 and cuts[1] - cuts[0] < period * 0.5:
        cuts.pop(1)
    if len(cuts) > 2 and cuts[-1] - cuts[-2] < period * 0.5:
        cuts.pop(-2)
    return cuts


def _uniform(cuts: list[int], n: int) -> list[int]:
    return [int(round(v)) for v in np.linspace(cuts[0], cuts[-1], n + 1)]


def sample_cells(img: np.ndarray, cuts_y, cuts_x, *, inner: float = 0.5) -> np.ndarray:
    """Per-channel median of the central ``inner`` fraction of each cell -> ``len(cuts_y)-1 x len(cuts_x)-1 x C``."""
    def samples(cuts):
        cuts = np.asarray(cuts)
        size = np.diff(cuts)
        frac_in = 1.0 if size.min() <= 3 else inner  # tiny cells: every pixel votes
        k = int(max(1, min(5, np.floor(size.min() * frac_in))))
        frac = (np.arange(k) + 0.5) / k  # 0..1 across the inner part
        lo = cuts[:-1] + size * (1 - frac_in) / 2.0
        pos = lo[:, None] + frac[None, :] * size[:, None] * frac_in
        return np.clip(np.floor(pos).astype(int), cuts[:-1, None], cuts[1:, None] - 1)

    sy, sx = samples(cuts_y), samples(cuts_x)
    block = img[sy[:, :, None, None], sx[None, None, :, :]]  # ny x ky x nx x kx x C
    ny, ky, nx, kx, c = block.shape
    block = block.transpose(0, 2, 1, 3, 4).reshape(ny, nx, ky * kx, c)
    return np.clip(np.rint(np.median(block, axis=2)), 0, 255).astype(np.uint8)


# JPEG's (ITU-R BT.601 full range) YCbCr: JPEG blurs chroma more than luma (4:2:0 subsampling), so the blur
# is estimated per channel in the space the encoder used
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_SIGMAS = np.array([0.0, 0.3, 0.5, 0.7, 0.9, 1.2, 1.6, 2.2, 3.0])  # coarse; refined by midpoints


def _blur_axis(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian blur of a 2-D float array along one axis (reflected borders); ``sigma`` 0 is the identity."""
    if sigma <= 0:
        return x
    r = int(np.ceil(3.0 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > r else "edge")
    n = x.shape[axis]
    out = np.zeros_like(x)
    for i, w in enumerate(k):
        out += w * (xp[i:i + n] if axis == 0 else xp[:, i:i + n])
    return out


def _axis_operator(bounds: np.ndarray, sigma: float, length: int) -> np.ndarray:
    """``length x cells``: column ``j`` is how much of each pixel ``0..length-1`` cell ``j`` covers along one axis
    (cell boundaries may be fractional, and a window's first and last cell may reach past its pixels), blurred
    by ``sigma``. The pixel count is given, not taken from the bounds: fractional bounds of a window do not span
    a whole number of its pixels."""
    b = np.asarray(bounds, np.float64)
    px = np.arange(int(length), dtype=np.float64)[:, None]
    cover = np.clip(np.minimum(px + 1.0, b[None, 1:]) - np.maximum(px, b[None, :-1]), 0.0, 1.0)
    return _blur_axis(cover, sigma, 0)


def _fractional_bounds(cuts: np.ndarray) -> np.ndarray:
    """The cell boundaries of a fractional scale (4.3x), when the integer cuts are a rounded uniform lattice:
    a least-squares line through the inner cuts, image borders kept. Other grids (integer scales, uneven
    cells) keep their integer cuts."""
    c = np.asarray(cuts, np.float64)
    inner = np.arange(1, len(c) - 1)
    if len(inner) < 3:
        return c
    period, offset = np.polyfit(inner, c[inner], 1)
    line = offset + period * inner
    if abs(period - round(period)) < 0.05 or np.abs(line - c[inner]).max() > 1.0:
        return c
    return np.concatenate([[c[0]], np.clip(line, c[0], c[-1]), [c[-1]]])


def _ridge(ky: np.ndarray, kx: np.ndarray, x: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    """``argmin_C sum_c |ky C_c kx^T - x_c|^2 + lam |C_c - prior_c|^2`` for every channel ``c`` at once.

    The normal equations are Kronecker-structured: with ``ky^T ky = U_y S_y U_y^T`` (likewise x) the solution
    is diagonal in the eigenbases, so no ``cells^2 x cells^2`` system is ever formed."""
    sy, uy = np.linalg.eigh(ky.T @ ky)
    sx, ux = np.linalg.eigh(kx.T @ kx)
    xc, pc = np.moveaxis(x, -1, 0), np.moveaxis(prior, -1, 0)  # channels first: batched matrix products
    t = uy.T @ (ky.T @ xc @ kx + lam * pc) @ ux
    t /= np.maximum(sy, 0)[:, None] * np.maximum(sx, 0)[None, :] + lam
    return np.moveaxis(uy @ t @ ux.T, 0, -1)


def _window(cuts: np.ndarray, n: int) -> tuple[int, int]:
    a = max(0, (len(cuts) - 1 - n) // 2)
    return a, min(len(cuts) - 1, a + n)


def estimate_cells(img: np.ndarray, cuts_y, cuts_x, *, max_fit_cells: int = 32, ridge: float = 0.05) -> np.ndarray:
    """Each cell's colour, undoing the blur that bled neighbouring cells into it.

    The fake image is modelled as the piecewise-constant cell image blurred by a Gaussian (one sigma per
    channel, in JPEG's YCbCr: 4:2:0 chroma subsampling blurs chroma more than luma), plus noise and
    compression error. The cell colours are the least-squares fit of that model to every pixel, pulled
    slightly (``ridge`` x cell area) towards the medians of the cell cores (:func:`sample_cells`) so that
    noise is not amplified where the blur is wide. The blur of each channel is the candidate sigma whose
    fit leaves the least residual, measured on at most ``max_fit_cells`` x ``max_fit_cells`` cells from the
    middle (coarse candidates, then the midpoints beside the best). Small cells, whose cores the blur and
    JPEG's chroma reach (4x upscales), get their colours
    back; where no blur is found (a sharp image on an integer grid) the core medians are kept exactly. A
    fractional scale (4.3x) is fitted with fractional cell boundaries (:func:`_fractional_bounds`), so the
    pixels a boundary splits count for both cells by the share each covers, when that fits better than the
    integer cuts (a nearest-neighbour resize to 7.5x has hard 7/8-pixel cells).
    """
    img = check_image(img)
    cy, cx = np.asarray(cuts_y, int), np.asarray(cuts_x, int)
    start = sample_cells(img, cy, cx)
    if min(len(cy), len(cx)) < 3:
        return start
    m = np.eye(img.shape[2])
    m[:3, :3] = _YCC
    x = img[cy[0]:cy[-1], cx[0]:cx[-1]].astype(np.float64) @ m.T
    prior = start.astype(np.float64) @ m.T
    cy, cx = cy - cy[0], cx - cx[0]
    lam = ridge * float(np.mean(np.diff(cy))) * float(np.mean(np.diff(cx)))
    # the blur per channel: the sigma whose fit leaves the least residual (on a middle window)
    y0, y1 = _window(cy, max_fit_cells)
    x0, x1 = _window(cx, max_fit_cells)
    obs = x[cy[y0]:cy[y1], cx[x0]:cx[x1]]
    pw = prior[y0:y1, x0:x1]

    def search(by, bx):
        """(per-channel best sigma, its residual) for one set of cell boundaries."""
        wy, wx = by[y0:y1 + 1] - cy[y0], bx[x0:x1 + 1] - cx[x0]
        tried: dict[float, np.ndarray] = {}

        def trial(sigmas):
            for s in sigmas:
                s = round(float(s), 3)
                if s in tried:
                    continue
                ky, kx = _axis_operator(wy, s, obs.shape[0]), _axis_operator(wx, s, obs.shape[1])
                fit = _ridge(ky, kx, obs, pw, lam)
                tried[s] = ((ky @ np.moveaxis(fit, -1, 0) @ kx.T - np.moveaxis(obs, -1, 0)) ** 2).mean((1, 2))
            keys = np.array(sorted(tried))
            err = np.stack([tried[k] for k in keys])
            return keys[np.argmin(err, 0)], err.min(0)

        best, _ = trial(_SIGMAS)  # coarse, then the midpoints beside each channel's best
        grid = sorted(tried)
        near = set()
        for b in set(best.tolist()):
            i = grid.index(round(float(b), 3))
            near.update((grid[j] + b) / 2.0 for j in (i - 1, i + 1) if 0 <= j < len(grid))
        return trial(sorted(near))

    by, bx = cy, cx
    best, err = search(cy, cx)
    fy, fx = _fractional_bounds(cy), _fractional_bounds(cx)
    if fy is not cy or fx is not cx:  # a fractional scale: resampled (split boundary pixels) or nearest (not)
        fbest, ferr = search(fy, fx)
        if ferr.sum() < err.sum():
            by, bx, best = fy, fx, fbest
    if best.max() <= 0 and by is cy and bx is cx:
        return start
    cells = prior.copy()
    for s in np.unique(best):
        ch = np.flatnonzero(best == s)
        if s <= 0 and by is cy and bx is cx:
            continue  # sharp channel on an integer grid: the core medians are exact
        ky, kx = _axis_operator(by, s, x.shape[0]), _axis_operator(bx, s, x.shape[1])
        cells[..., ch] = _ridge(ky, kx, x[..., ch], prior[..., ch], lam)
    out = cells @ np.linalg.inv(m).T
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def detect_grid(img, *, min_scale: float = 2.0, max_scale: float | None = None, min_contrast: float = 2.0) -> GridInfo:
    """Detect the native pixel grid of an upscaled image (uint8 RGB(A)). Scale 1 means no grid was found."""
    img = check_image(img)
    h, w = img.shape[:2]
    if h < 4 or w < 4:
        raise bad(f"image {w}x{h} is too small to detect a pixel grid. Use an image of at least 4x4 pixels.")
    px, py = edge_profiles(img)
    kx, _ = estimate_period(px, min_period=min_scale, max_period=max_scale, length=w)
    ky, _ = estimate_period(py, min_period=min_scale, max_period=max_scale, length=h)
    none = GridInfo(1.0, 1.0, list(range(w + 1)), list(range(h + 1)), w, h)
    # blurred art drawn in 2x2 clusters: single-cell details fade below the edge threshold and the
    # remaining edges all fit twice the cell size; the weak half-way edges tell it apart
    kx = _refine_half(px, kx, w, min_scale)
    ky = _refine_half(py, ky, h, min_scale)
    kx, ky = _common_scale(px, py, kx, ky, w, h, min_scale)

    def axis(prof, period, length):
        if period < min_scale:
            return None, 0.0
        cuts = snap_cuts(prof, period, length)
        # noise raises every line of the profile alike; the floor-aware contrast sees through it
        # (only for cells of 3+ pixels: a 2-pixel lattice fitted to sparse native edges always looks sharp)
        noisy = noise_contrast(prof, cuts) * min_contrast / 3.0 if period >= 3.0 else 0.0
        return cuts, max(edge_contrast(prof, cuts), noisy)

    cuts_x, rx = axis(px, kx, w)
    cuts_y, ry = axis(py, ky, h)
    # an axis with no edges at all (stripes) has nothing to contradict the other axis' grid
    if not px.any() and ry >= min_contrast:
        rx = np.inf
    if not py.any() and rx >= min_contrast:
        ry = np.inf
    # an axis whose cuts do not sit on the edges borrows the other axis' period (square pixels)
    if rx < min_contrast <= ry:
        kx = ky
        cuts_x, rx = axis(px, kx, w)
    elif ry < min_contrast <= rx:
        ky = kx
        cuts_y, ry = axis(py, ky, h)
    if rx < min_contrast or ry < min_contrast:
        return none
    return GridInfo(float(kx), float(ky), cuts_x, cuts_y, len(cuts_x) - 1, len(cuts_y) - 1)


def _refine_half(profile: np.ndarray, period: float, length: int, min_scale: float) -> float:
    """Halve the period while the half-way lines carry real edges.

    Art drawn in 2x2 clusters, blurred, can make twice the true cell size the strongest period.
    Then the lines half-way between cuts are true cell borders (edges wherever neighbouring art
    pixels differ), while at a quarter of the way (inside the true cells) the profile is flat.
    For a true period the half-way lines are cell centres and as flat as the quarters.
    """
    prof = np.asarray(profile, np.float64)
    low = prof[prof <= np.percentile(prof, 50)]
    floor = float(np.median(low))
    spread = 1.4826 * float(np.median(np.abs(low - floor)))
    if floor < 1.0:  # clean: no floor to take off (keeps the original test exactly)
        floor = spread = 0.0
    while period / 2.0 >= max(min_scale, 2.0):
        cuts = np.asarray(snap_cuts(prof, period, length))
        a, b = cuts[:-1], cuts[1:]
        full = (b - a) >= 4
        if full.sum() < 3:
            break
        a, b = a[full], b[full]

        def at(pos, window=True):
            i = np.clip(np.rint(pos).astype(int) - 1, 1, len(prof) - 2)
            return np.maximum(np.maximum(prof[i - 1], prof[i]), prof[i + 1]) if window else prof[i]

        # measured above the noise floor (noise lifts every line alike; 0 on clean images)
        mid = at((a + b) / 2.0).mean() - floor  # an edge near the half-way line (rounding: +-1)
        quarter = np.concatenate([at(a + (b - a) / 4.0, False), at(a + 3 * (b - a) / 4.0, False)]).mean() - floor
        on = (at(b[b < length]).mean() if (b < length).any() else 0.0) - floor
        if mid > 2.0 * max(quarter, 0.0) + 2.0 * spread and mid > 0.15 * on:
            period /= 2.0
        else:
            break
    return period


def _common_scale(px, py, kx, ky, w, h, min_scale, need: float = 0.85) -> tuple[float, float]:
    """Square cells unless the edges say otherwise.

    An axis with no edges takes the other axis' period. Otherwise, when one of the two periods explains
    the edges of both axes (an axis with few edges can fit a wrong period by chance, or a slightly
    different fractional one), both axes use it, fitted to the gaps of both; the longer period is tried
    first (the longest grid that explains every edge). When neither does (truly different cell widths
    and heights), each axis keeps its own.
    """
    if kx < min_scale and ky >= min_scale:
        return ky, ky
    if ky < min_scale and kx >= min_scale:
        return kx, kx
    if kx < min_scale:
        return kx, ky
    ex, sx = find_edges(px)
    ey, sy = find_edges(py)
    for p in sorted({kx, ky}, reverse=True):
        if period_fit(ex, sx, w, [p])[0] < need or period_fit(ey, sy, h, [p])[0] < need:
            continue
        gx, wx = _gaps(ex, sx, w, [p])
        gy, wy = _gaps(ey, sy, h, [p])
        joint = _fit_period(np.concatenate([gx[0], gy[0]]), np.concatenate([wx[0], wy[0]]), p)
        return (joint, joint) if abs(joint - p) <= 0.05 * p else (p, p)
    return kx, ky


def edge_contrast(profile: np.ndarray, cuts) -> float:
    """Mean edge strength on the cut lines over the mean at the cells' centre lines: about 1 for
    native art, noise or smooth photos; well above 2 for a real upscaling grid, blurred or not
    (edges between cells, flat cell centres)."""
    prof = np.asarray(profile, np.float64)
    c = np.asarray(cuts, int)
    inner = c[1:-1] - 1
    a, b = c[:-1], c[1:]
    keep = (b - a) >= 2
    centre = np.clip(np.rint((a[keep] + b[keep]) / 2.0).astype(int) - 1, 0, len(prof) - 1)
    if len(inner) == 0 or len(centre) == 0:
        return 0.0
    on, off = prof[inner].mean(), prof[centre].mean()
    return float(on / off) if off > 0 else (np.inf if on > 0 else 0.0)


def noise_contrast(profile: np.ndarray, cuts) -> float:
    """Edge contrast above the noise floor: (cut lines - floor) / (cell centre lines - floor + spread).

    Noise adds about the same to every line of the edge profile, which pulls :func:`edge_contrast` towards 1
    on a noisy upscale. Here the floor (median of the profile's lower half) is taken off first and the
    spread of that lower half added below, so pure noise and native art stay near or under 1 (cuts and
    centres alike sit a spread or so above the floor) while a noisy grid, whose centres sit on the floor,
    scores high. Cuts and centres are each represented by their strongest quarter (a sprite on a flat
    background has edges on only some of its cut lines; for native art both quarters look alike). A cut
    line takes the strongest of its position and the two beside it (a fractional,
    interpolated scale splits an edge over two positions); a centre line is its own position only (a 4-pixel
    cell's neighbours of the centre already touch those split edges). For native art that bias is about one
    spread, far below the threshold the caller uses (3)."""
    prof = np.asarray(profile, np.float64)
    c = np.asarray(cuts, int)
    a, b = c[:-1], c[1:]
    keep = (b - a) >= 3
    if len(c) < 3 or not keep.any() or len(prof) < 3:
        return 0.0
    low = prof[prof <= np.percentile(prof, 50)]
    floor = float(np.median(low))
    spread = 1.4826 * float(np.median(np.abs(low - floor)))
    if floor < 1.0:  # no noise floor (flat cell interiors): edge_contrast already decides
        return 0.0
    pad = np.pad(prof, 1, mode="edge")
    win = np.maximum(np.maximum(pad[:-2], pad[1:-1]), pad[2:])
    def top(v):  # a sprite on a flat background has edges on only some cut lines: the strongest quarter
        v = np.sort(v)[::-1]
        return float(v[:max(2, len(v) // 4)].mean())

    on = top(win[np.clip(c[1:-1] - 1, 0, len(prof) - 1)])
    off = top(prof[np.clip(np.rint((a[keep] + b[keep]) / 2.0).astype(int) - 1, 0, len(prof) - 1)])
    den = off - floor + spread
    return float((on - floor) / den) if den > 1e-9 else (np.inf if on > floor else 0.0)


def recover_grid(img, *, snap_multiple: int | None = None, min_scale: float = 2.0,
                 max_scale: float | None = None) -> tuple[np.ndarray, GridInfo]:
    """Detect the grid, snap to it and return ``(true-resolution image, GridInfo)``.

    ``snap_multiple`` (8, 16, 32...) rounds the recovered width and height to a multiple of it and
    re-cuts the detected extent uniformly (useful when a 64x64 sprite came back as 63x64).
    """
    img = check_image(img)
    info = detect_grid(img, min_scale=min_scale, max_scale=max_scale)
    cx, cy = info.cuts_x, info.cuts_y
    if snap_multiple:
        try:
            m = int(snap_multiple)
        except (TypeError, ValueError):
            raise bad(f"snap multiple {snap_multiple!r} is not a whole number. Use 8, 16 or 32.") from None
        if m < 1:
            raise bad(f"snap multiple {m} must be >= 1. Use 8, 16 or 32.")
        nx = max(m, int(round(info.width / m)) * m)
        ny = max(m, int(round(info.height / m)) * m)
        if nx > img.shape[1] or ny > img.shape[0]:
            raise bad(f"snapping to a multiple of {m} needs {nx}x{ny} cells but the image is only "
                      f"{img.shape[1]}x{img.shape[0]}. Use a smaller multiple.")
        if nx != info.width:
            cx = _uniform(cx, nx)
        if ny != info.height:
            cy = _uniform(cy, ny)
        info = GridInfo((cx[-1] - cx[0]) / nx, (cy[-1] - cy[0]) / ny, cx, cy, nx, ny)
    if info.width == img.shape[1] and info.height == img.shape[0]:
        return img.copy(), info
    return estimate_cells(img, cy, cx), info
