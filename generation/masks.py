"""Image and mask arrays of a generation (numpy): resizing, batching, feathered masks, the inpaint composite
and the bad-image check. Images are float ``[B,H,W,C]`` in 0..1, masks ``[B,H,W]`` with 1 = repaint."""

from __future__ import annotations

import numpy as np

from ..engines.ops import to_numpy
from ..errors import BAD_INPUT, SpriteForgeError


def to_batch(a: np.ndarray, batch: int, what: str) -> np.ndarray:
    if a.shape[0] == batch:
        return a
    if a.shape[0] == 1:
        return np.repeat(a, batch, axis=0)
    if batch % a.shape[0] == 0:
        return np.concatenate([a] * (batch // a.shape[0]), axis=0)
    raise SpriteForgeError(BAD_INPUT, f"the {what} has {a.shape[0]} items but the batch size is {batch}: give 1 or {batch}.")


def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear resize of [B,H,W,C] or [B,H,W] float arrays (PIL per channel)."""
    from PIL import Image

    if img.shape[1] == h and img.shape[2] == w:
        return img
    squeeze = img.ndim == 3
    a = img[..., None] if squeeze else img
    out = np.empty((a.shape[0], h, w, a.shape[3]), np.float32)
    for b in range(a.shape[0]):
        for c in range(a.shape[3]):
            out[b, :, :, c] = np.asarray(Image.fromarray(a[b, :, :, c].astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    return out[..., 0] if squeeze else out


def box_blur(m: np.ndarray, radius: int, passes: int = 1) -> np.ndarray:
    """Separable box blur of [B,H,W], edge-clamped (two passes: a tent)."""
    if radius <= 0:
        return m
    out = m.astype(np.float32)
    for _ in range(passes):
        for axis in (1, 2):
            pad = [(0, 0)] * 3
            pad[axis] = (radius, radius)
            p = np.pad(out, pad, mode="edge")
            c = np.cumsum(p, axis=axis, dtype=np.float64)
            zero = np.zeros_like(np.take(c, [0], axis=axis))
            c = np.concatenate([zero, c], axis=axis)
            n = out.shape[axis]
            hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
            lo = np.take(c, np.arange(0, n), axis=axis)
            out = ((hi - lo) / (2 * radius + 1)).astype(np.float32)
    return out


def feather_mask(mask: np.ndarray, feather: int) -> np.ndarray:
    """A soft-edged version of a [B,H,W] 0..1 mask that never shrinks the repaint area (dilate, then blur)."""
    m = np.clip(mask.astype(np.float32), 0.0, 1.0)
    if feather <= 0:
        return m
    r = max(int(feather) // 2, 1)
    # dilate by r so that the blurred mask is 1 over the whole original repaint area
    hard = (m > 0.5).astype(np.float32)
    dil = (box_blur(hard, r) > 1e-6).astype(np.float32) if r > 0 else hard
    soft = box_blur(dil, r)
    return np.maximum(m, np.clip(soft, 0.0, 1.0))


def latent_mask(mask: np.ndarray, f: int) -> np.ndarray:
    """[B,H,W] pixel mask -> [B,1,h,w] latent mask (area average)."""
    b, H, W = mask.shape
    return mask.reshape(b, H // f, f, W // f, f).mean(axis=(2, 4))[:, None].astype(np.float32)


def is_bad_image(images: np.ndarray) -> str | None:
    """'nan' when the images hold NaN/Inf, 'black' when every pixel is (near) zero, else None."""
    if images is None or images.size == 0:
        return "empty"
    if not np.isfinite(images).all():
        return "nan"
    if float(np.max(images)) < 1.0 / 255.0:
        return "black"
    return None


def composite_inpaint(images: np.ndarray, source, mask, feather: int = 8) -> np.ndarray:
    """Generated ``images`` where ``mask`` (1 = repaint, feathered by ``feather`` px) and ``source`` elsewhere."""
    b, H, W = images.shape[:3]
    src = to_numpy(source)
    if src.ndim == 3:
        src = src[None]
    src = to_batch(resize(np.clip(src[..., :3], 0, 1), W, H), b, "init image")
    m = to_numpy(mask)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 2:
        m = m[None]
    m = to_batch(feather_mask(np.clip(resize(m, W, H), 0, 1), feather), b, "mask")
    return (src * (1.0 - m[..., None]) + images * m[..., None]).astype(np.float32)
