"""Colour conversion and the array conventions used by the whole ``pixel`` library.

Conventions (every public function of :mod:`spriteforge.pixel` follows them):

* An *image* is a numpy ``uint8`` array ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA), sRGB.
  Functions that also accept floats say so; floats are in ``0..1``.
* An *alpha* / *mask* is ``H x W`` ``uint8`` (0..255) or ``bool``; 255/True = opaque sprite pixel.
* A *palette* is :class:`spriteforge.pixel.palette.Palette` (``colors``: ``N x 3`` uint8).
* Perceptual work (palette fitting, colour matching, error diffusion) happens in OKLab
  (Björn Ottosson, 2020), as float32 ``... x 3`` arrays with L in 0..1.

Bad input raises ``SpriteForgeError(BAD_INPUT, ...)``.
"""

from __future__ import annotations

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError

# sRGB 8-bit -> linear light, as a lookup table (exact for uint8 input).
_LIN_LUT = np.where(
    np.arange(256) / 255.0 <= 0.04045,
    np.arange(256) / 255.0 / 12.92,
    ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
).astype(np.float32)

_M1 = np.array(
    [[0.4122214708, 0.5363325363, 0.0514459929],
     [0.2119034982, 0.6806995451, 0.1073969566],
     [0.0883024619, 0.2817188376, 0.6299787005]], dtype=np.float64)
_M2 = np.array(
    [[0.2104542553, 0.7936177850, -0.0040720468],
     [1.9779984951, -2.4285922050, 0.4505937099],
     [0.0259040371, 0.7827717662, -0.8086757660]], dtype=np.float64)
_M1_INV = np.linalg.inv(_M1)
_M2_INV = np.linalg.inv(_M2)


def bad(message: str, **details) -> SpriteForgeError:
    """Build the BAD_INPUT error used throughout the pixel library."""
    return SpriteForgeError(BAD_INPUT, message, details=details or None)


def check_image(img, name: str = "image", *, allow_float: bool = False, channels=(3, 4)) -> np.ndarray:
    """Validate an ``H x W x C`` image and return it as a numpy array (uint8 unless ``allow_float``)."""
    if not isinstance(img, np.ndarray):
        try:
            img = np.asarray(img)
        except Exception as exc:  # noqa: BLE001
            raise bad(f"{name} is not an array ({type(img).__name__}). Pass an H x W x 3/4 uint8 numpy array.") from exc
    if img.ndim != 3 or img.shape[2] not in channels:
        raise bad(f"{name} has shape {img.shape}; expected H x W x {'/'.join(map(str, channels))}. "
                  "Pass an RGB or RGBA image array.", shape=list(img.shape))
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise bad(f"{name} is empty ({img.shape[0]}x{img.shape[1]}). Pass an image with at least one pixel.")
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        if allow_float:
            return img
        return to_uint8(img)
    if np.issubdtype(img.dtype, np.integer) or img.dtype == bool:
        if img.size and (img.min() < 0 or img.max() > 255):
            raise bad(f"{name} has integer values outside 0..255. Pass uint8 data.")
        return img.astype(np.uint8)
    raise bad(f"{name} has dtype {img.dtype}; expected uint8 (or float in 0..1). Convert it first.")


def check_alpha(alpha, shape, name: str = "alpha") -> np.ndarray:
    """Validate an ``H x W`` alpha (uint8, bool or float 0..1); return uint8 0..255."""
    a = np.asarray(alpha)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.shape != tuple(shape[:2]):
        raise bad(f"{name} has shape {a.shape} but the image is {tuple(shape[:2])}. Pass a mask of the image's size.")
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        return to_uint8(a)
    return np.clip(a, 0, 255).astype(np.uint8)


def to_uint8(x) -> np.ndarray:
    """Float 0..1 -> uint8 0..255 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def srgb_to_linear(rgb) -> np.ndarray:
    """sRGB (uint8 0..255, or float 0..1) -> linear light float32 0..1."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        return _LIN_LUT[rgb]
    c = np.asarray(rgb, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((np.maximum(c, 0) + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(lin) -> np.ndarray:
    """Linear light float 0..1 -> sRGB float32 0..1 (not clipped)."""
    c = np.asarray(lin, dtype=np.float32)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(np.maximum(c, 0), 1 / 2.4) - 0.055).astype(np.float32)


def srgb_to_oklab(rgb) -> np.ndarray:
    """sRGB ``... x 3`` (uint8, or float 0..1) -> OKLab float32 ``... x 3``."""
    rgb = np.asarray(rgb)
    if rgb.shape[-1] != 3:
        raise bad(f"colours have {rgb.shape[-1]} channels; expected 3 (RGB). Drop the alpha channel first.")
    lin = srgb_to_linear(rgb)
    lms = lin @ _M1.T.astype(np.float32)
    lms = np.cbrt(np.maximum(lms, 0))
    return (lms @ _M2.T.astype(np.float32)).astype(np.float32)


def oklab_to_srgb(lab, *, as_uint8: bool = True) -> np.ndarray:
    """OKLab ``... x 3`` -> sRGB: uint8 (rounded, gamut-clipped) or float32 0..1 (clipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    lms = lab @ _M2_INV.T
    lin = (lms ** 3) @ _M1_INV.T
    s = np.clip(linear_to_srgb(np.clip(lin, 0, 1)), 0, 1)
    return to_uint8(s) if as_uint8 else s.astype(np.float32)


def delta_e(a, b) -> np.ndarray:
    """Per-pixel OKLab distance (ΔE_OK, Euclidean) between two sRGB images/colour arrays of equal shape."""
    return np.sqrt(((srgb_to_oklab(a) - srgb_to_oklab(b)) ** 2).sum(-1))


def mean_delta_e(a, b) -> float:
    """Mean OKLab ΔE between two RGB images (x100 is the usual 'ΔE_OK' scale; this returns the raw 0..1 unit)."""
    a = check_image(a)[..., :3]
    b = check_image(b)[..., :3]
    if a.shape != b.shape:
        raise bad(f"images differ in shape ({a.shape} vs {b.shape}). Compare images of the same size.")
    return float(delta_e(a, b).mean())


def parse_hex_color(text: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` / ``"rrggbb"`` / ``"#rgb"`` -> (r, g, b)."""
    t = str(text).strip().lstrip("#")
    if len(t) == 3:
        t = "".join(c * 2 for c in t)
    if len(t) != 6 or any(c not in "0123456789abcdefABCDEF" for c in t):
        raise bad(f"{text!r} is not a colour. Give it as hex, e.g. #1a1c2c.")
    return int(t[0:2], 16), int(t[2:4], 16), int(t[4:6], 16)
