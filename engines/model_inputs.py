"""What a model is fed, decided once for every engine: framework-free (plain Python and arithmetic).

The torch and MLX denoisers share these rules so a handle means the same on both: native inpaint / control model
detection, the model timestep for a sigma, the input scaling and the x0 a prediction gives (how a family's prompts
are encoded and its transformer called is the family's own: :mod:`spriteforge.models.families`). The arithmetic helpers take any array
type with ``+ - *`` (numpy, torch, MLX).
"""

from __future__ import annotations

import math

from ..errors import BAD_INPUT, SpriteForgeError
from ..models.families import registry


# --------------------------------------------------------------------------- native inpaint and control models
def is_fill_model(handle) -> bool:
    """A family's native inpaint model (Flux Fill: 384 input channels = latent + masked-image latent + packed mask)."""
    cfg = handle.config or {}
    inc = cfg.get("in_channels") or (handle.extras or {}).get("in_channels") or 64
    return registry.rules(handle.family).is_fill(handle.variant, int(inc))


def check_input_channels(family: str, in_channels) -> None:
    """UNSUPPORTED_ARCHITECTURE for input widths the family does not generate with (Flux Depth/Canny control models)."""
    registry.rules(family).check_input_channels(int(in_channels or 0))


# --------------------------------------------------------------------------- VAE inputs
def vae_images(handle, images):
    """Numpy float32 ``[B,H,W,3]`` images for the VAE encoder; BAD_INPUT for other shapes or sizes off the latent grid."""
    import numpy as np

    img = np.asarray(images, dtype=np.float32)
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[-1] not in (3, 4):
        raise SpriteForgeError(BAD_INPUT, f"an image must be [B,H,W,3], got shape {tuple(img.shape)}.")
    img = img[..., :3]
    f = int(handle.vae_scale_factor or 8)
    if img.shape[1] % f or img.shape[2] % f:
        raise SpriteForgeError(BAD_INPUT, f"image size {img.shape[2]}x{img.shape[1]} is not a multiple of {f}: resize or crop it first.")
    return img


def check_latents(handle, z) -> None:
    """BAD_INPUT unless ``z`` (any array type) is a ``[B,C,h,w]`` latent with the handle's channel count."""
    if z.ndim != 4:
        raise SpriteForgeError(BAD_INPUT, f"a latent must be [B,C,h,w], got shape {tuple(z.shape)}.")
    lc = int(handle.latent_channels or z.shape[1])
    if z.shape[1] != lc:
        raise SpriteForgeError(BAD_INPUT, f"the latent has {z.shape[1]} channels but the {handle.family} VAE takes {lc}: "
                               "decode it with the model it was made with.")


# --------------------------------------------------------------------------- sigma -> model input/output
def model_timestep(family: str, flow: bool, sigma: float, model_schedule=None) -> float:
    """The timestep the transformer gets at ``sigma``."""
    if model_schedule is not None:
        return float(model_schedule.timestep(sigma))
    return sigma * registry.rules(family).flow_multiplier if flow else sigma


def model_input(x, prediction: str, sigma: float):
    """What the model sees for ``x`` at ``sigma``: ``x/sqrt(sigma²+1)`` for eps/v (VE -> VP), ``x`` for flow."""
    return x / math.sqrt(sigma * sigma + 1.0) if prediction in ("eps", "v") else x


def to_x0(x, pred, sigma: float, prediction: str):
    """The denoised sample for a model prediction (``flow`` velocity, ``v`` or ``eps``)."""
    if prediction == "v":
        a = 1.0 / math.sqrt(sigma * sigma + 1.0)
        return x * (a * a) - pred * (a * sigma)
    return x - pred * sigma  # eps and flow alike
