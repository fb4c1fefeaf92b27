"""Native-grid recovery for "fake" pixel art (upscaled, blurred, compressed AI output).

1. Edge profiles: mean absolute difference between neighbouring columns (rows), all channels.
2. Period: the profile's spectrum is evaluated on a fine grid of (non-integer) periods; the
   fundamental is the longest-period spectral peak within ``peak_ratio`` of the strongest one
   (shorter periods with equally strong peaks are its harmonics).
3. Snapping: starting from the strongest boundary, cuts are tracked outwards one period at a time,
   each moved to the strongest edge within a third of a period (so slightly non-uniform grids,
   e.g. 7/8/7/8-pixel cells of a x7.5 upscale, are followed); with no clear edge the expected
   position is kept.
4. Check: edges must concentrate on the cuts (mean edge strength on cuts over elsewhere, see
   :func:`edge_contrast`); native-resolution art or noise scores about 1 and is returned as is (scale 1).
5. Each cell's colour is the per-channel median of its central samples (borders are where the blur
   and compression ringing live).

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

    def to_dict(self) -> dict:
        return {"scale": round(self.scale, 3), "scale_x": round(self.scale_x, 3), "scale_y": round(self.scale_y, 3),
                "width": self.width, "height": self.height}


def edge_profiles(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(column profile length W-1, row profile length H-1): mean |difference| of neighbours, summed over channels."""
    x = img.astype(np.float32)
    px = np.abs(np.diff(x, axis=1)).sum(2).mean(0)
    py = np.abs(np.diff(x, axis=0)).sum(2).mean(1)
    return px, py


def estimate_period(profile: np.ndarray, *, min_period: float = 2.0, max_period: float | None = None,
                    peak_ratio: float = 0.6) -> tuple[float, float]:
    """(period, confidence 0..1) of the boundary pattern in an edge profile; (1.0, 0.0) when none is found."""
    prof = np.asarray(profile, np.float64)
    n = len(prof)
    if n < 4 or prof.sum() <= 0:
        return 1.0, 0.0
    prof = prof - np.median(prof)
    prof = np.maximum(prof, 0)
    if prof.sum() <= 0:
        return 1.0, 0.0
    max_period = min(max_period or n / 3.0, n / 2.0)
    if max_period <= min_period:
        return 1.0, 0.0
    fmin, fmax = 1.0 / max_period, 1.0 / min_period
    freqs = np.arange(fmin, fmax, 1.0 / (8.0 * n))
    xs = np.arange(n)
    score = np.empty(len(freqs))
    for i in range(0, len(freqs), 512):
        f = freqs[i:i + 512]
        ang = 2 * np.pi * f[:, None] * xs[None, :]
        score[i:i + 512] = np.hypot(np.cos(ang) @ prof, np.sin(ang) @ prof)
    score /= prof.sum()
    peaks = np.flatnonzero((score[1:-1] >= score[:-2]) & (score[1:-1] >= score[2:])) + 1
    if len(peaks) == 0:
        return 1.0, 0.0
    best = score[peaks].max()
    cand = peaks[score[peaks] >= 0.85 * best]
    sm = np.convolve(np.pad(prof, 1), [1.0, 1.0, 1.0], mode="valid")
    level = 0.3 * np.percentile(sm[sm > 0], 90) if (sm > 0).any() else 0.0

    def support(i: int) -> float:
        """Fraction of the candidate grid's lines that sit on a real edge."""
        f = freqs[i]
        per = 1.0 / f
        z = (prof * np.exp(2j * np.pi * f * xs)).sum()
        x0 = (np.angle(z) / (2 * np.pi * f)) % per
        pos = np.rint(np.arange(x0, n, per)).astype(int)
        pos = pos[(pos >= 0) & (pos < n)]
        return float((sm[pos] > level).mean()) if len(pos) else 0.0

    # The strongest spectral peak is the grid, unless it is a harmonic: sharp (unblurred) edges give the
    # fundamental's multiples equal strength, and then the harmonic's lines fall in flat cell interiors
    # about half of the time. A near-equal peak at a multiple of the period with clearly better support wins.
    top = peaks[int(np.argmax(score[peaks]))]
    period, sup = 1.0 / freqs[top], support(top)
    for i in sorted(cand, key=lambda j: freqs[j], reverse=True):
        per = 1.0 / freqs[i]
        m = per / period
        if m > 1.5 and abs(m - round(m)) < 0.08 and support(i) >= 1.3 * sup:
            period, sup = per, support(i)
    return float(period), float(best)


def snap_cuts(profile: np.ndarray, period: float, length: int) -> list[int]:
    """Cut positions (cell starts, plus ``length`` at the end) following the strongest edges near a period grid."""
    prof = np.asarray(profile, np.float64)
    sm = np.convolve(np.pad(prof, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    strong = np.percentile(sm, 90) if len(sm) else 0.0
    floor = 0.25 * strong
    win = max(1, int(period / 3.0))

    def best_near(pos: float) -> int:
        c = int(round(pos))
        lo, hi = max(1, c - win), min(length - 1, c + win)
        if hi < lo:
            return c
        seg = sm[lo - 1:hi]  # cut at k means an edge between k-1 and k: profile index k-1
        if len(seg) == 0:
            return c
        j = int(np.argmax(seg))
        return lo + j if seg[j] >= floor else c

    start = int(np.argmax(sm)) + 1
    cuts = [start]
    pos = start
    while pos + period < length - period * 0.5:
        nxt = best_near(pos + period)
        if nxt <= pos:
            nxt = int(round(pos + period))
        cuts.append(nxt)
        pos = nxt
    pos = start
    while pos - period > period * 0.5:
        prv = best_near(pos - period)
        if prv >= pos:
            prv = int(round(pos - period))
        cuts.insert(0, prv)
        pos = prv
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
        k = int(max(1, min(5, np.floor(size.min() * inner))))
        frac = (np.arange(k) + 0.5) / k  # 0..1 across the inner part
        lo = cuts[:-1] + size * (1 - inner) / 2.0
        pos = lo[:, None] + frac[None, :] * size[:, None] * inner
        return np.clip(np.floor(pos).astype(int), cuts[:-1, None], cuts[1:, None] - 1)

    sy, sx = samples(cuts_y), samples(cuts_x)
    block = img[sy[:, :, None, None], sx[None, None, :, :]]  # ny x ky x nx x kx x C
    ny, ky, nx, kx, c = block.shape
    block = block.transpose(0, 2, 1, 3, 4).reshape(ny, nx, ky * kx, c)
    return np.clip(np.rint(np.median(block, axis=2)), 0, 255).astype(np.uint8)


def detect_grid(img, *, min_scale: float = 2.0, max_scale: float | None = None, min_contrast: float = 1.8) -> GridInfo:
    """Detect the native pixel grid of an upscaled image (uint8 RGB(A)). Scale 1 means no grid was found."""
    img = check_image(img)
    h, w = img.shape[:2]
    if h < 4 or w < 4:
        raise bad(f"image {w}x{h} is too small to detect a pixel grid. Use an image of at least 4x4 pixels.")
    px, py = edge_profiles(img)
    kx, _ = estimate_period(px, min_period=min_scale, max_period=max_scale)
    ky, _ = estimate_period(py, min_period=min_scale, max_period=max_scale)
    none = GridInfo(1.0, 1.0, list(range(w + 1)), list(range(h + 1)), w, h)

    def axis(prof, period, length):
        if period < min_scale:
            return None, 0.0
        cuts = snap_cuts(prof, period, length)
        return cuts, edge_contrast(prof, cuts)

    cuts_x, rx = axis(px, kx, w)
    cuts_y, ry = axis(py, ky, h)
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


def edge_contrast(profile: np.ndarray, cuts) -> float:
    """Mean edge strength on the cut lines over the mean elsewhere: about 1 for native art or noise,
    well above 2 when the cuts are a real upscaling grid (edges only between cells)."""
    prof = np.asarray(profile, np.float64)
    inner = np.asarray(cuts[1:-1], int) - 1
    if len(inner) == 0 or len(inner) >= len(prof):
        return 0.0
    on = np.zeros(len(prof), bool)
    on[inner] = True
    off = prof[~on].mean()
    return float(prof[on].mean() / off) if off > 0 else (np.inf if prof[on].mean() > 0 else 0.0)


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
    return sample_cells(img, cy, cx), info
