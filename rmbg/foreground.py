"""Foreground colour estimation: the colours of the object itself, without the background
mixed into its soft edges, so a cut-out shows no dark or light fringe on a new background.

* :func:`estimate_foreground_ml` - approximate fast multi-level foreground estimation
  (Germer, Uelwer, Conrad, Harmeling 2020): coarse-to-fine, at each level a few sweeps
  solving the per-pixel 2x2 system of the compositing equation with a smoothness term
  weighted by the alpha gradient. This version updates all pixels at once (Jacobi
  sweeps, vectorised numpy) rather than in place.
* :func:`blur_fusion` - Forte & Pitie's blur-fusion estimate (two passes, box blurs); faster.
* :func:`composite` - alpha (RGBA) or a background colour.
Pure numpy; images are float32 [H, W, 3] in 0..1, alpha [H, W].
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError
from ..progress import check_interrupt

METHODS = ("ml", "blur_fusion", "none")
COMPOSITES = ("alpha", "white", "black", "color")


def _resize_nearest(a: np.ndarray, h: int, w: int) -> np.ndarray:
    H, W = a.shape[:2]
    ys = np.minimum((np.arange(h) * H) // h, H - 1)
    xs = np.minimum((np.arange(w) * W) // w, W - 1)
    return a[ys][:, xs]


def _neighbours(a: np.ndarray):
    """The 4 neighbours of every pixel (edge-clamped): left, right, up, down."""
    p = np.pad(a, [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    return p[1:-1, :-2], p[1:-1, 2:], p[:-2, 1:-1], p[2:, 1:-1]


def estimate_foreground_ml(
    image: np.ndarray,
    alpha: np.ndarray,
    *,
    regularization: float = 1e-5,
    n_small_iterations: int = 10,
    n_big_iterations: int = 2,
    small_size: int = 32,
    gradient_weight: float = 1.0,
    return_background: bool = False,
):
    """Foreground colours F (and background B) with ``image ~= alpha * F + (1 - alpha) * B``."""
    img = np.asarray(image, dtype=np.float32)
    a_full = np.asarray(alpha, dtype=np.float32)
    if img.ndim != 3 or a_full.shape != img.shape[:2]:
        raise SpriteForgeError(BAD_INPUT, f"image {img.shape} and alpha {a_full.shape} do not match.")
    h0, w0, _ = img.shape
    n_levels = max(1, int(math.ceil(math.log2(max(h0, w0, 2)))))
    mean = img.reshape(-1, img.shape[2]).mean(axis=0)
    F = np.broadcast_to(mean, (1, 1, img.shape[2])).astype(np.float32)
    B = F.copy()
    for level in range(n_levels + 1):
        check_interrupt()  # a 1024^2 image takes a second or more here
        w = max(1, int(round(w0 ** (level / n_levels))))
        h = max(1, int(round(h0 ** (level / n_levels))))
        I = _resize_nearest(img, h, w)
        a = _resize_nearest(a_full, h, w)
        F = _resize_nearest(F, h, w).copy()
        B = _resize_nearest(B, h, w).copy()
        iters = n_small_iterations if (w <= small_size and h <= small_size) else n_big_iterations
        a1 = 1.0 - a
        # Neighbour weights depend on alpha only: compute once per level.
        wts = [regularization + gradient_weight * np.abs(a - an) for an in _neighbours(a)]
        wsum = sum(wts)
        a00 = a * a + wsum
        a11 = a1 * a1 + wsum
        a01 = a * a1
        inv_det = 1.0 / (a00 * a11 - a01 * a01)
        aI = a[..., None] * I
        a1I = a1[..., None] * I
        for _ in range(iters):
            fn = _neighbours(F)
            bnb = _neighbours(B)
            b0 = aI + sum(wk[..., None] * f for wk, f in zip(wts, fn))
            b1 = a1I + sum(wk[..., None] * b for wk, b in zip(wts, bnb))
            F = np.clip((inv_det * a11)[..., None] * b0 - (inv_det * a01)[..., None] * b1, 0.0, 1.0)
            B = np.clip(-(inv_det * a01)[..., None] * b0 + (inv_det * a00)[..., None] * b1, 0.0, 1.0)
    F = F.astype(np.float32)
    return (F, B.astype(np.float32)) if return_background else F


def _box_sum(a: np.ndarray, r: int) -> np.ndarray:
    """Sum over a (2r+1)^2 window clipped to the image (cumulative sums)."""
    H, W = a.shape[:2]
    c = np.cumsum(np.cumsum(a, axis=0, dtype=np.float64), axis=1)
    c = np.pad(c, [(1, 0), (1, 0)] + [(0, 0)] * (a.ndim - 2))
    y0 = np.clip(np.arange(H) - r, 0, H)
    y1 = np.clip(np.arange(H) + r + 1, 0, H)
    x0 = np.clip(np.arange(W) - r, 0, W)
    x1 = np.clip(np.arange(W) + r + 1, 0, W)
    return c[y1][:, x1] - c[y0][:, x1] - c[y1][:, x0] + c[y0][:, x0]


def _blur_fusion_pass(I, F, B, a, r):
    a3 = a[..., None]
    blur_a = _box_sum(a3, r)
    blur_F = _box_sum(F * a3, r) / (blur_a + 1e-5)
    blur_B = _box_sum(B * (1 - a3), r) / (_box_sum(1 - a3, r) + 1e-5)
    F = blur_F + a3 * (I - a3 * blur_F - (1 - a3) * blur_B)
    return np.clip(F, 0, 1), blur_B


def blur_fusion(image: np.ndarray, alpha: np.ndarray, r1: int = 90, r2: int = 6) -> np.ndarray:
    """Forte & Pitie (2021) blur-fusion foreground estimate: a large then a small blur radius."""
    I = np.asarray(image, dtype=np.float64)
    a = np.asarray(alpha, dtype=np.float64)
    F, blur_B = _blur_fusion_pass(I, I, I, a, r1)
    F, _ = _blur_fusion_pass(I, F, blur_B, a, r2)
    return F.astype(np.float32)


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, method: str = "ml") -> np.ndarray:
    if method == "ml":
        return estimate_foreground_ml(image, alpha)
    if method == "blur_fusion":
        return blur_fusion(image, alpha)
    if method == "none":
        return np.asarray(image, dtype=np.float32).copy()
    raise SpriteForgeError(BAD_INPUT, f"foreground method {method!r} is not one of {', '.join(METHODS)}.")


def parse_color(text: str) -> tuple[float, float, float]:
    """'#RRGGBB', 'RRGGBB' or '#RGB' -> floats in 0..1."""
    s = str(text).strip().lstrip("#")
    if len(s) == 3:
        s = "".join(ch * 2 for ch in s)
    try:
        if len(s) != 6:
            raise ValueError
        return tuple(int(s[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
    except ValueError:
        raise SpriteForgeError(BAD_INPUT, f"colour {text!r} is not a hex colour like #00ff00.") from None


def composite(foreground: np.ndarray, alpha: np.ndarray, mode: str = "alpha", color: str = "#00ff00") -> np.ndarray:
    """RGBA [..., 4] (mode 'alpha') or foreground over a white/black/colour background [..., 3]."""
    F = np.asarray(foreground, dtype=np.float32)
    a = np.asarray(alpha, dtype=np.float32)[..., None]
    if mode == "alpha":
        return np.concatenate([F, a], axis=-1)
    if mode == "white":
        bg = (1.0, 1.0, 1.0)
    elif mode == "black":
        bg = (0.0, 0.0, 0.0)
    elif mode == "color":
        bg = parse_color(color)
    else:
        raise SpriteForgeError(BAD_INPUT, f"composite {mode!r} is not one of {', '.join(COMPOSITES)}.")
    bgv = np.asarray(bg, dtype=np.float32)
    return (F * a + bgv * (1.0 - a)).astype(np.float32)
