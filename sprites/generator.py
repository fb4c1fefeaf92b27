"""Procedural 32x32 RGBA game sprites drawn from code, with captions.

Every sprite is a :class:`SpriteSpec` (object kind, colour, size, outline, a variation seed) rendered by
:func:`render` into an ``H x W x 4`` uint8 array: transparent background (alpha 0), opaque sprite pixels
(alpha 255), hard pixel-art edges, a three-step shading ramp of the base colour (highlight upper left,
shadow lower right) and an optional 1-pixel dark outline. :func:`caption` writes the caption
``"[size] [colour] [object] [with outline]"`` ("red potion", "small blue gem with outline").

Deterministic by seed: :func:`random_spec` (and :func:`sample`) draw everything from
``numpy.random.default_rng(seed)``, and rendering is a pure function of the spec.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

SIZE = 32

# Named base colours: clearly distinct hues (and white / gray / brown) so a colour word has one meaning.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "orange": (240, 128, 24),
    "yellow": (246, 222, 52),
    "gold": (212, 160, 30),
    "green": (56, 176, 60),
    "cyan": (40, 206, 214),
    "blue": (44, 84, 226),
    "purple": (128, 58, 196),
    "pink": (246, 134, 178),
    "white": (236, 236, 232),
    "gray": (128, 128, 132),
    "brown": (130, 82, 44),
}

KINDS = ("potion", "sword", "shield", "gem", "coin", "heart", "key", "tree", "slime", "chest", "mushroom", "star")

# size word -> scale of the object's box inside the 32x32 frame ("" = medium, no word in the caption)
SIZES: dict[str, float] = {"small": 0.62, "": 0.8, "large": 0.97}

OUTLINE = (22, 16, 30)  # the 1-px outline: near black, slightly violet
NEUTRAL_DARK = (70, 52, 40)  # hilts, trunks, bands: small secondary parts
NEUTRAL_LIGHT = (214, 206, 190)  # glass, stems, eyes' whites

# The key colour of the RGB training images / generated images (see :func:`to_key_rgb` and
# :func:`key_to_alpha`): magenta, the classic sprite-sheet key; no named colour is near it.
KEY_COLOR = (255, 0, 255)


@dataclass(frozen=True)
class SpriteSpec:
    kind: str
    color: str
    size: str = ""  # "small", "" (medium) or "large"
    outline: bool = False
    variant: int = 0  # seeds the small variations (shape details, offsets, hue jitter)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown sprite kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; choose one of {', '.join(COLORS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of small, '' (medium), large")


def caption(spec: SpriteSpec) -> str:
    """``"[size] [colour] [object] [with outline]"``, e.g. ``"small blue gem with outline"``."""
    words = [spec.size] if spec.size else []
    words += [spec.color, spec.kind]
    if spec.outline:
        words += ["with", "outline"]
    return " ".join(words)


def parse_caption(text: str) -> SpriteSpec:
    """The spec a caption describes (inverse of :func:`caption`, variant 0)."""
    words = text.lower().split()
    size = words.pop(0) if words and words[0] in ("small", "large") else ""
    outline = words[-2:] == ["with", "outline"]
    if outline:
        words = words[:-2]
    if len(words) != 2:
        raise ValueError(f"caption {text!r} is not '[size] colour object [with outline]'")
    return SpriteSpec(words[1], words[0], size, outline)


def vocabulary() -> list[str]:
    """Every word a caption can contain."""
    return sorted({"small", "large", "with", "outline", *COLORS, *KINDS})


def random_spec(rng_or_seed) -> SpriteSpec:
    rng = np.random.default_rng(rng_or_seed) if not isinstance(rng_or_seed, np.random.Generator) else rng_or_seed
    kind = KINDS[int(rng.integers(len(KINDS)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    size = ("small", "", "large")[int(rng.integers(3))]
    outline = bool(rng.random() < 0.5)
    return SpriteSpec(kind, color, size, outline, int(rng.integers(2**31 - 1)))


def sample(seed: int) -> tuple[np.ndarray, str]:
    """One random sprite and its caption, deterministic by ``seed``."""
    spec = random_spec(seed)
    return render(spec), caption(spec)


def dataset(n: int, seed: int = 0) -> tuple[np.ndarray, list[str], list[SpriteSpec]]:
    """``n`` random sprites (``n x 32 x 32 x 4`` uint8), their captions and specs."""
    rng = np.random.default_rng(seed)
    specs = [random_spec(rng) for _ in range(n)]
    return np.stack([render(s) for s in specs]), [caption(s) for s in specs], specs


# --------------------------------------------------------------------------- shapes
# Each shape function gets pixel-centre coordinates (u, v) in the object's box, u to the right and v down,
# both -1..1, and returns a label map: 0 empty, 1 base colour, 2 dark neutral, 3 light neutral, 4 outline colour.


def _ellipse(u, v, cx, cy, rx, ry):
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0


def _rect(u, v, x0, y0, x1, y1):
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def _poly(u, v, pts):
    """Inside a convex polygon given clockwise (in screen coordinates)."""
    inside = np.ones(u.shape, bool)
    n = len(pts)
    for i in range(n):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % n]
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _potion(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    style = int(r.integers(3))
    if style == 0:  # round flask
        body = _ellipse(u, v, 0, 0.3, 0.8, 0.68)
        neck = _rect(u, v, -0.24, -0.62, 0.24, -0.2)
    elif style == 1:  # tall bottle
        body = _rect(u, v, -0.55, -0.3, 0.55, 0.95) & _ellipse(u, v, 0, 0.3, 0.75, 1.0)
        neck = _rect(u, v, -0.22, -0.65, 0.22, -0.25)
    else:  # conical flask
        body = _poly(u, v, [(-0.25, -0.3), (0.25, -0.3), (0.85, 0.95), (-0.85, 0.95)])
        neck = _rect(u, v, -0.25, -0.62, 0.25, -0.28)
    lab[body] = 1
    glass_top = body & (v < (-0.05 if style != 2 else 0.05))
    lab[glass_top] = 3
    lab[neck] = 3
    lab[_rect(u, v, -0.2, -0.95, 0.2, -0.62)] = 2  # cork
    return lab


def _sword(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    w = 0.13 + 0.05 * r.random()
    # diagonal sword from lower left (hilt) to upper right (tip)
    s = (u - v) / np.sqrt(2)  # along the blade
    t = (u + v) / np.sqrt(2)  # across
    blade = (s > -0.55) & (s < 1.05) & (np.abs(t) <= w * (1.0 - np.clip((s - 0.85) / 0.25, 0, 1)))
    guard = (np.abs(s + 0.62) <= 0.09) & (np.abs(t) <= 0.42 + 0.1 * r.random())
    hilt = (s > -1.05) & (s <= -0.6) & (np.abs(t) <= 0.09)
    pommel = ((s + 1.12) ** 2 + t**2) <= 0.03
    lab[blade] = 1
    lab[guard] = 2
    lab[hilt] = 2
    lab[pommel] = 1
    return lab


def _shield(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    top = -0.85
    body = (u >= -0.8) & (u <= 0.8) & (v >= top) & (v <= 0.25) | _ellipse(u, v, 0, 0.2, 0.8, 0.78) & (v > 0.2)
    lab[body] = 1
    inner = (u >= -0.62) & (u <= 0.62) & (v >= top + 0.18) & (v <= 0.25) | _ellipse(u, v, 0, 0.2, 0.62, 0.6) & (v > 0.2)
    rim = body & ~inner
    lab[rim] = 2 if r.random() < 0.5 else 3
    if r.random() < 0.5:  # boss
        lab[_ellipse(u, v, 0, -0.1, 0.17, 0.17)] = 3
    return lab


def _gem(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    style = int(r.integers(2))
    if style == 0:  # brilliant cut: flat top, pointed bottom
        pts = [(-0.45, -0.7), (0.45, -0.7), (0.9, -0.2), (0.0, 0.95), (-0.9, -0.2)]
    else:  # rhombus
        pts = [(0.0, -0.95), (0.7, 0.0), (0.0, 0.95), (-0.7, 0.0)]
    lab[_poly(u, v, pts)] = 1
    return lab


def _coin(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    rx = 0.85 if r.random() < 0.6 else 0.55  # face-on or turning
    lab[_ellipse(u, v, 0, 0, rx, 0.85)] = 1
    return lab


def _heart(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    x, y = u / 0.95, -(v - 0.1) / 0.95
    inside = (x**2 + y**2 - 0.55) ** 3 - x**2 * y**3 * 1.1 <= 0
    lab[inside] = 1
    return lab


def _key(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    ring = _ellipse(u, v, -0.5, -0.45, 0.42, 0.42) & ~_ellipse(u, v, -0.5, -0.45, 0.19, 0.19)
    shaft = _rect(u, v, -0.2, -0.58, 0.9, -0.32)
    teeth = _rect(u, v, 0.55, -0.32, 0.7, 0.0) | _rect(u, v, 0.3, -0.32, 0.45, -0.1 + 0.1 * r.random())
    lab[ring | shaft | teeth] = 1
    return lab


def _tree(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    lab[_rect(u, v, -0.16, 0.35, 0.16, 0.98)] = 2  # trunk
    if r.random() < 0.5:  # round canopy
        lab[_ellipse(u, v, 0, -0.25, 0.85, 0.72)] = 1
    else:  # conifer
        lab[_poly(u, v, [(0.0, -1.0), (0.85, 0.55), (-0.85, 0.55)])] = 1
    return lab


def _slime(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    body = _ellipse(u, v, 0, 0.35, 0.92, 0.75) & (v <= 0.85)
    lab[body] = 1
    for ex in (-0.3, 0.3):
        lab[_ellipse(u, v, ex, 0.2, 0.12, 0.17)] = 4
    return lab


def _chest(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    lab[_rect(u, v, -0.9, -0.55, 0.9, 0.8)] = 1
    lab[_rect(u, v, -0.9, -0.12, 0.9, 0.0)] = 2  # lid seam band
    for bx in (-0.62, 0.62):
        lab[_rect(u, v, bx - 0.08, -0.55, bx + 0.08, 0.8)] = 2
    lab[_rect(u, v, -0.12, -0.16, 0.12, 0.15)] = 3  # lock
    return lab


def _mushroom(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    lab[_rect(u, v, -0.25, -0.05, 0.25, 0.9)] = 3  # stem
    cap = _ellipse(u, v, 0, -0.05, 0.92, 0.8) & (v <= 0.05)
    lab[cap] = 1
    if r.random() < 0.6:  # spots
        for sx, sy in ((-0.45, -0.3), (0.2, -0.52), (0.5, -0.15)):
            lab[_ellipse(u, v, sx, sy, 0.13, 0.11) & cap] = 3
    return lab


def _star(u, v, r):
    lab = np.zeros(u.shape, np.uint8)
    ang = np.arctan2(u, -v)
    rad = np.sqrt(u**2 + (v - 0.05) ** 2)
    k = 5
    phase = (ang * k / (2 * np.pi)) % 1.0
    edge = 0.95 - (0.95 - 0.42) * (np.minimum(phase, 1 - phase) * 2)
    lab[rad <= edge] = 1
    return lab


_SHAPES = {
    "potion": _potion, "sword": _sword, "shield": _shield, "gem": _gem, "coin": _coin, "heart": _heart,
    "key": _key, "tree": _tree, "slime": _slime, "chest": _chest, "mushroom": _mushroom, "star": _star,
}


# --------------------------------------------------------------------------- colour


def _ramp(rgb, jitter: float):
    """(shadow, base, highlight) of a base colour: hue kept, value/saturation shifted."""
    r, g, b = (c / 255.0 for c in rgb)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h = (h + jitter) % 1.0
    base = colorsys.hsv_to_rgb(h, s, v)
    shadow = colorsys.hsv_to_rgb(h, min(1.0, s * 1.05 + 0.05), v * 0.68)
    hi = colorsys.hsv_to_rgb(h, s * 0.7, min(1.0, v * 1.18 + 0.08))
    return [np.array([round(c * 255) for c in x], np.uint8) for x in (shadow, base, hi)]


def render(spec: SpriteSpec, size: int = SIZE) -> np.ndarray:
    """The sprite as an ``size x size x 4`` uint8 RGBA array (alpha exactly 0 or 255)."""
    r = np.random.default_rng(spec.variant)
    scale = SIZES[spec.size] * (1.0 + 0.05 * (r.random() - 0.5))
    half = (size / 2.0) * scale
    margin = 2 if spec.outline else 1
    room = max(0.0, size / 2.0 - half - margin)
    dx = float(np.clip(r.normal(0, 0.8), -room, room))
    dy = float(np.clip(r.normal(0, 0.8), -room, room))
    aspect = 1.0 + 0.08 * (r.random() - 0.5)
    c = (np.arange(size) + 0.5 - size / 2.0)
    v, u = np.meshgrid((c - dy) / (half * aspect), (c - dx) / (half / aspect), indexing="ij")
    lab = _SHAPES[spec.kind](u, v, r)
    inside = lab > 0
    if spec.outline:  # keep the object one pixel off the border so the outline fits
        inside[[0, 1, -2, -1], :] = False
        inside[:, [0, 1, -2, -1]] = False
        lab[~inside] = 0
    shadow, base, hi = _ramp(COLORS[spec.color], 0.012 * (r.random() - 0.5))
    # light from the upper left: a shading coordinate per pixel relative to the object's centre
    ys, xs = np.nonzero(inside)
    if len(ys) == 0:
        return np.zeros((size, size, 4), np.uint8)
    cy, cx = ys.mean(), xs.mean()
    yy, xx = np.mgrid[0:size, 0:size]
    light = ((xx - cx) + (yy - cy)) / max(2.0, half)
    # distance to the silhouette edge (4-neighbour erosion steps) for a rim shadow
    er = inside.copy()
    depth = np.zeros(inside.shape, np.int32)
    for _ in range(2):
        n = er.copy()
        n[1:, :] &= er[:-1, :]
        n[:-1, :] &= er[1:, :]
        n[:, 1:] &= er[:, :-1]
        n[:, :-1] &= er[:, 1:]
        er = n
        depth += er
    img = np.zeros((size, size, 4), np.uint8)
    base_px = lab == 1
    tone = np.ones(inside.shape, np.int32)  # 0 shadow, 1 base, 2 highlight
    tone[light > 0.55] = 0
    tone[(light > 0.15) & (depth == 0)] = 0
    tone[(light < -0.45) & (depth >= 1)] = 2
    ramp = np.stack([shadow, base, hi])
    img[base_px, :3] = ramp[tone[base_px]]
    for value, col in ((2, NEUTRAL_DARK), (3, NEUTRAL_LIGHT), (4, OUTLINE)):
        m = lab == value
        if value == 3:  # light neutrals shade too
            shade = np.where(light[m] > 0.4, 0.8, 1.0)[:, None]
            img[m, :3] = (np.array(col)[None] * shade).astype(np.uint8)
        else:
            img[m, :3] = col
    img[inside, 3] = 255
    if spec.outline:
        ring = np.zeros_like(inside)
        ring[1:, :] |= inside[:-1, :]
        ring[:-1, :] |= inside[1:, :]
        ring[:, 1:] |= inside[:, :-1]
        ring[:, :-1] |= inside[:, 1:]
        ring &= ~inside
        img[ring, :3] = OUTLINE
        img[ring, 3] = 255
    return img


# --------------------------------------------------------------------------- key colour <-> alpha


def to_key_rgb(rgba: np.ndarray, key=KEY_COLOR) -> np.ndarray:
    """RGBA uint8 (..., H, W, 4) -> RGB uint8 with transparent pixels set to the key colour."""
    a = np.asarray(rgba)
    out = a[..., :3].copy()
    out[a[..., 3] < 128] = np.asarray(key, np.uint8)
    return out


def key_to_alpha(rgb, key=KEY_COLOR, *, threshold: float = 0.3) -> np.ndarray:
    """RGB sprite(s) on the key colour -> RGBA uint8 with alpha exactly 0 or 255 (see :func:`spriteforge.pixel.alpha.key_to_alpha`)."""
    from ..pixel.alpha import key_to_alpha as _key_to_alpha

    return _key_to_alpha(rgb, key, threshold=threshold)


__all__ = [
    "SIZE", "COLORS", "KINDS", "SIZES", "KEY_COLOR", "OUTLINE", "SpriteSpec", "caption", "parse_caption", "vocabulary",
    "random_spec", "sample", "dataset", "render", "to_key_rgb", "key_to_alpha",
]
