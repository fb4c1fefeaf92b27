"""ComfyUI's IMAGE / MASK / LATENT values <-> numpy, once for every node (and the core IO stand-ins).

IMAGE is float32 torch ``[B,H,W,C]`` in 0..1, MASK float32 ``[B,H,W]``, LATENT ``{"samples": [B,C,h,w], ...}``.
The libraries take numpy: float images 0..1 (generation, background removal) or uint8 0..255 (pixel art).
Values that are not what their socket says raise BAD_INPUT naming the socket. torch is imported lazily.
"""

from __future__ import annotations

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError


def _bad(msg: str) -> SpriteForgeError:
    return SpriteForgeError(BAD_INPUT, msg)


# --------------------------------------------------------------------------- any tensor

def to_numpy(x, what: str = "the input") -> np.ndarray | None:
    """A torch tensor (any device/dtype) or array-like as float32 numpy; None stays None."""
    from ..engines.ops import to_numpy as array_to_numpy

    try:
        return array_to_numpy(x)
    except Exception as exc:  # noqa: BLE001 - a value of another type on this socket
        raise _bad(f"{what} is not a tensor ({type(x).__name__}). Connect the right output.") from exc


def to_tensor(a: np.ndarray):
    """float32 numpy -> a contiguous torch tensor (on the CPU, where ComfyUI keeps IMAGE and MASK)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# --------------------------------------------------------------------------- IMAGE

def image_array(image) -> np.ndarray:
    """IMAGE -> float32 ``[B,H,W,C]`` as it is (any channel count), or BAD_INPUT."""
    arr = to_numpy(image, "the image input")
    if arr is None:
        raise _bad("no image was connected.")
    if arr.ndim != 4:
        raise _bad(f"the image input has shape {tuple(arr.shape)}; an IMAGE is [batch, height, width, channels]. "
                   "If this is a MASK, convert it with 'Convert Mask to Image' first.")
    return arr


def _image_4d(image) -> np.ndarray:
    arr = to_numpy(image, "the image input")
    if arr is None:
        raise _bad("no image was connected.")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or 0 in arr.shape:
        raise _bad(f"IMAGE has shape {tuple(arr.shape)}; expected [B,H,W,3]. Connect an image output.")
    return arr


def image_in(image) -> np.ndarray:
    """IMAGE -> float32 RGB ``[B,H,W,3]`` in 0..1 (gray repeated, alpha dropped)."""
    a = _image_4d(image)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    return np.clip(a[..., :3], 0.0, 1.0).astype(np.float32)


def image_to_np(image, *, keep_alpha: bool = False) -> np.ndarray:
    """IMAGE -> uint8 ``[B,H,W,3]`` (``[B,H,W,4]`` for an RGBA IMAGE with ``keep_alpha``)."""
    a = _image_4d(image)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    if not keep_alpha:
        a = a[..., :3]
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def np_to_image(arr: np.ndarray):
    """uint8 ``[B,H,W,C]`` -> IMAGE (RGB; alpha dropped)."""
    return to_tensor(np.asarray(arr)[..., :3].astype(np.float32) / 255.0)


# --------------------------------------------------------------------------- MASK

def _mask_3d(m, shape) -> np.ndarray:
    if m.ndim == 2:
        m = m[None]
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    elif m.ndim == 4 and m.shape[1] == 1:  # SetLatentNoiseMask's [B,1,H,W]
        m = m[:, 0]
    if m.ndim != 3:
        raise _bad(f"MASK has shape {tuple(shape)}; expected [B,H,W] with 1 = repaint.")
    return m


def mask_in(mask) -> np.ndarray | None:
    """MASK (``[B,H,W]``, ``[H,W]``, ``[B,H,W,1]`` or ``[B,1,H,W]``) -> float32 ``[B,H,W]`` in 0..1; None stays None."""
    m = to_numpy(mask, "the mask input")
    if m is None:
        return None
    return np.clip(_mask_3d(m, m.shape), 0.0, 1.0).astype(np.float32)


def mask_tensor(mask):
    """:func:`mask_in` staying a torch tensor on its device (for ComfyUI's own sampling)."""
    import torch

    m = (mask if hasattr(mask, "shape") else torch.as_tensor(mask)).float()
    return _mask_3d(m, m.shape).clamp(0.0, 1.0)


def mask_to_np(mask, b: int, h: int, w: int) -> np.ndarray:
    """MASK as alpha (``[B,H,W]`` or ``[H,W]``; None = opaque) -> uint8 ``[B,H,W]`` (255 = opaque) for a
    ``b``-image batch of ``h`` x ``w``."""
    if mask is None:
        return np.full((b, h, w), 255, np.uint8)
    m = to_numpy(mask, "the mask input")
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != (h, w):
        raise _bad(f"MASK has shape {tuple(m.shape)} but the image is {h}x{w}. Use a mask of the image's size.")
    if m.shape[0] not in (1, b):
        raise _bad(f"MASK batch {m.shape[0]} does not match the image batch {b}. Use one mask or one per frame.")
    if m.shape[0] == 1 and b > 1:
        m = np.repeat(m, b, 0)
    return np.clip(np.rint(m * 255.0), 0, 255).astype(np.uint8)


def np_to_mask(alpha: np.ndarray):
    """uint8 ``[B,H,W]`` alpha -> MASK (1 = opaque)."""
    return to_tensor(np.asarray(alpha).astype(np.float32) / 255.0)


# --------------------------------------------------------------------------- LATENT

def latent_out(latents: np.ndarray, family: str, **extra) -> dict:
    """A LATENT of the pack: ``samples`` plus the family that made it and any non-None extras (``sf_*``)."""
    out = {"samples": to_tensor(latents), "sf_family": family}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def latent_samples(latent) -> np.ndarray:
    """A LATENT's ``samples`` as float32 numpy (``[B,C,h,w]``), or BAD_INPUT when it is no LATENT."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise _bad("the latent input is not a LATENT ({'samples': ...}).")
    return to_numpy(latent["samples"], "the latent input")


__all__ = ["to_numpy", "to_tensor", "image_array", "image_in", "image_to_np", "np_to_image", "mask_in", "mask_tensor",
           "mask_to_np", "np_to_mask", "latent_out", "latent_samples"]
