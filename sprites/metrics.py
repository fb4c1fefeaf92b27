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


# --------------------------------------------------------------------------- shape quality against the generator


def reference_masks(kind: str, size: str = "", outline: bool = False, variants: int = 48, first_variant: int = 10**6) -> np.ndarray:
    """``variants x 32 x 32`` bool silhouettes the procedural generator draws for one (kind, size, outline):
    every shape style, scale jitter, aspect jitter and placement offset it uses, from variant seeds
    ``first_variant ..`` (far from the seeds :func:`spriteforge.sprites.dataset` draws from in practice;
    the colour does not change a silhouette)."""
    from .generator import SpriteSpec, render

    return np.stack([silhouette(render(SpriteSpec(kind, "red", size, outline, first_variant + i))) for i in range(variants)])


_REF_CACHE: dict = {}


def _refs(kind, size, outline, variants):
    key = (kind, size, outline, variants)
    if key not in _REF_CACHE:
        _REF_CACHE[key] = reference_masks(kind, size, outline, variants)
    return _REF_CACHE[key]


def shape_iou(mask: np.ndarray, kind: str, size: str = "", outline: bool = False, variants: int = 48) -> float:
    """How clean a generated silhouette is as a ``kind`` drawing: the best IoU of ``mask`` (H x W bool, e.g. the
    alpha of a sprite after key removal) against the generator's own silhouettes for that (kind, size, outline)
    over ``variants`` shape variations (:func:`reference_masks`).

    Best-of-variants, because a caption does not fix the variation: "red potion" may be any of the three flask
    styles, at any of the small offsets and scale jitters the generator draws, and a sample is judged against
    the nearest thing the training data could have shown for that caption. 1.0 means the exact pixels of one of
    the generator's drawings; the generator's own sprites on other variant seeds score 0.8-1.0 (the finite set
    of variants does not contain every offset), so compare against :func:`shape_iou_ceiling`."""
    refs = _refs(kind, size, outline, variants)
    m = np.asarray(mask, bool)
    inter = (refs & m[None]).sum((1, 2))
    union = (refs | m[None]).sum((1, 2))
    return float(np.max(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def caption_shape_iou(mask: np.ndarray, caption: str, variants: int = 48) -> float:
    """:func:`shape_iou` for the (kind, size, outline) a caption names ("small red key with outline")."""
    from .generator import parse_caption

    spec = parse_caption(caption)
    return shape_iou(mask, spec.kind, spec.size, spec.outline, variants)


def shape_iou_ceiling(kind: str, size: str = "", outline: bool = False, n: int = 16, variants: int = 48, seed: int = 7) -> float:
    """Mean :func:`shape_iou` of the generator's own sprites (variant seeds not among the references): the
    score a perfect model of the training data would reach under this measure."""
    from .generator import SpriteSpec, render

    rng = np.random.default_rng(seed)
    return float(np.mean([shape_iou(silhouette(render(SpriteSpec(kind, "red", size, outline, int(rng.integers(2**31 - 1))))),
                                    kind, size, outline, variants) for _ in range(n)]))


__all__ = ["HUE_FAMILIES", "FAMILY_NAMES", "WORD_FAMILY", "families", "color_shares", "chromatic_shares", "dominant_family",
           "mean_luminance", "blue_share", "silhouette", "iou", "reference_masks", "shape_iou", "caption_shape_iou", "shape_iou_ceiling"]
