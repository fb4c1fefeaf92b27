"""Where an image goes on the model's canvas: keep the aspect ratio, pad, never stretch.

:func:`plan` fits an ``h x w`` image into the working resolution (a box such as 1024x1024
or 2560x1440), rounds the model size up to multiples of 32, and says how much to pad the
*original* image (centred) so that its aspect ratio equals the model canvas'. The padded
image is then resized uniformly to the model size; the predicted mask is resized back
and :func:`unpad` crops it to the original pixels. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import BAD_INPUT, DIMENSION_LIMIT, SpriteForgeError

MULTIPLE = 32
MIN_SIDE = 8  # smaller images carry too little to segment (and 1x1 inputs are almost always a wiring mistake)
MAX_RESOLUTION = 4096
MAX_PIXELS = 8192 * 8192  # 67 megapixels: the full-size input, alpha and output of one image stay near 1 GB
PAD_MODES = ("edge", "reflect", "constant")


@dataclass(frozen=True)
class Geometry:
    """Padding of the original image and the model's input size (both multiples of 32)."""

    src_h: int
    src_w: int
    top: int
    bottom: int
    left: int
    right: int
    model_h: int
    model_w: int

    @property
    def padded_h(self) -> int:
        return self.src_h + self.top + self.bottom

    @property
    def padded_w(self) -> int:
        return self.src_w + self.left + self.right

    @property
    def model_size(self) -> tuple[int, int]:
        return self.model_h, self.model_w

    @property
    def scale(self) -> float:
        return self.model_h / self.padded_h


def _box(resolution) -> tuple[int, int]:
    """(width, height) of the working box from an int (square) or a (w, h) pair."""
    if isinstance(resolution, (tuple, list)):
        bw, bh = int(resolution[0]), int(resolution[1])
    else:
        bw = bh = int(resolution)
    for v in (bw, bh):
        if v < MULTIPLE or v > MAX_RESOLUTION or v % MULTIPLE:
            raise SpriteForgeError(
                BAD_INPUT,
                f"resolution {v} must be a multiple of {MULTIPLE} between {MULTIPLE} and {MAX_RESOLUTION}.",
                details={"resolution": v},
            )
    return bw, bh


def check_size(h: int, w: int) -> None:
    """BAD_INPUT below :data:`MIN_SIDE`, DIMENSION_LIMIT above :data:`MAX_PIXELS` (checkable from a file's header,
    before the image is decoded)."""
    if h * w > MAX_PIXELS:
        raise SpriteForgeError(
            DIMENSION_LIMIT,
            f"the image is {w}x{h} pixels ({h * w / 1e6:.0f} megapixels); background removal takes at most "
            f"{MAX_PIXELS / 1e6:.0f} megapixels (the area of 8192x8192). Scale the image down first.",
            details={"width": w, "height": h, "max_pixels": MAX_PIXELS},
        )
    if h < MIN_SIDE or w < MIN_SIDE:
        raise SpriteForgeError(
            BAD_INPUT,
            f"the image is {w}x{h} pixels; background removal needs at least {MIN_SIDE}x{MIN_SIDE}. "
            "Check the image input (a 1x1 image usually means an empty or mis-wired input).",
            details={"width": w, "height": h},
        )


def _ceil_to(v: float, m: int) -> int:
    return max(m, int(math.ceil(v / m - 1e-9)) * m)


def plan(h: int, w: int, resolution=1024) -> Geometry:
    """Fit ``h x w`` into the ``resolution`` box keeping the aspect ratio; pad to multiples of 32."""
    check_size(h, w)
    bw, bh = _box(resolution)
    s = min(bw / w, bh / h)
    mh = _ceil_to(round(h * s), MULTIPLE)
    mw = _ceil_to(round(w * s), MULTIPLE)
    ph = max(h, int(round(mh / s)))
    pw = max(w, int(round(mw / s)))
    top = (ph - h) // 2
    left = (pw - w) // 2
    return Geometry(h, w, top, ph - h - top, left, pw - w - left, mh, mw)


def pad(arr: np.ndarray, g: Geometry, mode: str = "edge", value: float = 0.0) -> np.ndarray:
    """Pad ``arr`` ([H,W], [H,W,C] or [B,H,W,C]) by ``g`` (centred). ``mode``: edge, reflect or constant."""
    if mode not in PAD_MODES:
        raise SpriteForgeError(BAD_INPUT, f"pad mode {mode!r} is not one of {', '.join(PAD_MODES)}.")
    arr = np.asarray(arr)
    if arr.ndim in (2, 3):
        hw_axis = 0
    elif arr.ndim == 4:
        hw_axis = 1
    else:
        raise SpriteForgeError(BAD_INPUT, f"cannot pad an array of shape {arr.shape}.")
    if arr.shape[hw_axis] != g.src_h or arr.shape[hw_axis + 1] != g.src_w:
        raise SpriteForgeError(BAD_INPUT, f"array of shape {arr.shape} does not match the planned {g.src_h}x{g.src_w}.")
    widths = [(0, 0)] * arr.ndim
    widths[hw_axis] = (g.top, g.bottom)
    widths[hw_axis + 1] = (g.left, g.right)
    if mode == "reflect" and (max(g.top, g.bottom) >= g.src_h or max(g.left, g.right) >= g.src_w):
        mode = "symmetric" if (max(g.top, g.bottom) <= g.src_h and max(g.left, g.right) <= g.src_w) else "edge"
    if mode == "constant":
        return np.pad(arr, widths, mode="constant", constant_values=value)
    return np.pad(arr, widths, mode=mode)


def unpad(arr: np.ndarray, g: Geometry, *, batched: bool = False) -> np.ndarray:
    """Crop a padded array back to the original pixels: [H,W] / [H,W,C], or [B,H,W(,C)] with ``batched``."""
    arr = np.asarray(arr)
    a = 1 if batched else 0
    if arr.ndim < a + 2 or arr.shape[a] != g.padded_h or arr.shape[a + 1] != g.padded_w:
        raise SpriteForgeError(BAD_INPUT, f"array of shape {arr.shape} is not padded by this geometry ({g}).")
    if batched:
        return arr[:, g.top : g.top + g.src_h, g.left : g.left + g.src_w]
    return arr[g.top : g.top + g.src_h, g.left : g.left + g.src_w]
