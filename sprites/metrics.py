"""Measurements of sprites that say what they mean: colour families, luminance, silhouettes.

Used by the demo model's meaning tests and its model card; pure numpy on ``H x W x 4`` uint8 RGBA
(or batches ``B x H x W x 4``).
"""

from __future__ import annotations

import numpy as np

# hue families (degrees, start inclusive); pixels with low saturation or value are "neutral"
HUE_FAMILIES = (
    ("red", 345, 15), ("orange", 15, 38), ("yellow", 38, 70), ("green", 70, 165),
    ("cyan", 165, 200), ("blue", 200, 255), ("purple", 255, 290), ("pink", 290, 345),
)
FAMILY_NAMES = tuple(n for n, _, _ in HUE_FAMILIES) + ("neutral",)
# the family a colour word is expected to produce
WORD_FAMILY = {
    "red": "red", "orange": "orange", "yellow": "yellow", "gold": "yellow", "green": "green", "cyan": "cyan",
    "blue": "blue", "purple": "purple", "pink": "pink", "white": "neutral", "gray": "neutral", "brown": "orange",
}


def _hsv(rgb: np.ndarray):
    f = rgb.astype(np.float32) / 255.0
    mx, mn = f.max(-1), f.min(-1)
    d = mx - mn
    s = np.where(mx > 0, d / np.maximum(mx, 1e-6), 0.0)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    dd = np.maximum(d, 1e-6)
    h = np.where(mx == r, ((g - b) / dd) % 6.0, np.where(mx == g, (b - r) / dd + 2.0, (r - g) / dd + 4.0)) * 60.0
    return h, s, mx


def families(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel colour family index into :data:`FAMILY_NAMES` for uint8 RGB ``(..., 3)``."""
    h, s, v = _hsv(np.asarray(rgb))
    out = np.full(h.shape, len(HUE_FAMILIES), np.int32)
    chroma = (s >= 0.3) & (v >= 0.25)
    for i, (_, a, b) in enumerate(HUE_FAMILIES):
        m = ((h >= a) | (h < b)) if a > b else ((h >= a) & (h < b))
        out[chroma & m] = i
    return out


def color_shares(rgba: np.ndarray) -> dict[str, float]:
    """Share of each colour family among the opaque pixels of one sprite (neutral included)."""
    a = np.asarray(rgba)
    opaque = a[..., 3] >= 128
    n = int(opaque.sum())
    if n == 0:
        return {k: 0.0 for k in FAMILY_NAMES}
    fam = families(a[..., :3])[opaque]
    counts = np.bincount(fam, minlength=len(FAMILY_NAMES))
    return {k: float(c) / n for k, c in zip(FAMILY_NAMES, counts)}


def chromatic_shares(rgba: np.ndarray) -> dict[str, float]:
    """Share of each hue family among the opaque, coloured (non-neutral) pixels."""
    sh = color_shares(rgba)
    tot = sum(v for k, v in sh.items() if k != "neutral")
    return {k: (v / tot if tot > 0 else 0.0) for k, v in sh.items() if k != "neutral"}


def dominant_family(rgba: np.ndarray) -> str:
    """The most common hue family among coloured pixels ("neutral" when almost nothing is coloured)."""
    sh = color_shares(rgba)
    if sh["neutral"] > 0.8:
        return "neutral"
    ch = chromatic_shares(rgba)
    return max(ch, key=ch.get)


def mean_luminance(rgba: np.ndarray) -> float:
    """Mean Rec.709 luma (0..1) of the opaque pixels."""
    a = np.asarray(rgba)
    opaque = a[..., 3] >= 128
    if not opaque.any():
        return 0.0
    f = a[..., :3][opaque].astype(np.float32) / 255.0
    return float((f @ np.array([0.2126, 0.7152, 0.0722], np.float32)).mean())


def blue_share(rgba: np.ndarray) -> float:
    """Mean of B / (R + G + B) over opaque pixels (1/3 for grays)."""
    a = np.asarray(rgba)
    opaque = a[..., 3] >= 128
    if not opaque.any():
        return 0.0
    f = a[..., :3][opaque].astype(np.float32) + 1.0
    return float((f[:, 2] / f.sum(-1)).mean())


def silhouette(rgba: np.ndarray) -> np.ndarray:
    """The opaque mask (bool)."""
    return np.asarray(rgba)[..., 3] >= 128


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else 1.0


__all__ = ["HUE_FAMILIES", "FAMILY_NAMES", "WORD_FAMILY", "families", "color_shares", "chromatic_shares", "dominant_family",
           "mean_luminance", "blue_share", "silhouette", "iou"]
