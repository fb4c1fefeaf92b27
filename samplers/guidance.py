"""Classifier-free guidance and its two common corrections.

All functions take denoised estimates (x0) by default, like the samplers' model output.
SpriteForge's own Sampler (``engines/denoiser.py``, both engines) and the ComfyUI-MODEL bridge
(``comfy_bridge.py``) use the same :func:`cfg_rescale` and :func:`dynamic_threshold`, their settings
checked by :func:`check_guidance`.
Array work beyond + - * / goes through an ``ops`` object (:mod:`.ops`): the engine's
``engine.ops`` for torch/MLX arrays; numpy's when not given.
"""

from __future__ import annotations

import math

from ..errors import BAD_INPUT, SpriteForgeError
from .ops import default_ops


def cfg(cond, uncond, scale: float):
    """Classifier-free guidance (Ho & Salimans 2022): uncond + scale (cond - uncond)."""
    return uncond + (cond - uncond) * float(scale)


def cfg_rescale(cond, uncond, scale: float, phi: float = 0.7, *, x=None, sigma: float | None = None,
                flow: bool = False, ops=None):
    """CFG with rescaling (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
    are Flawed", eq. 15-16).

    g = cfg(cond, uncond, scale); g_rescaled = g * std(cond) / std(g) (per sample);
    result = phi g_rescaled + (1 - phi) g.

    Lin et al. rescale the v-prediction.  With ``x`` (the current sample) and ``sigma`` given,
    ``cond``/``uncond`` are treated as denoised estimates, converted to v, rescaled there and
    converted back: for k-diffusion (VE) space with alpha = 1/sqrt(1+sigma^2),
    v = alpha (x - x0)/sigma - alpha sigma x0 and x0 = alpha^2 x - alpha sigma v (Salimans & Ho
    2022); for flow models (``flow=True``) v = (x - x0)/t and x0 = x - t v.
    Without ``x``/``sigma`` the rescaling is applied to the given predictions directly.
    """
    ops = default_ops(cond, ops)
    to_v = from_v = None
    if x is not None and sigma is not None and sigma > 0:
        s = float(sigma)
        if flow:
            def to_v(d):
                return (x - d) * (1.0 / s)

            def from_v(v):
                return x - v * s
        else:
            a = 1.0 / math.sqrt(1.0 + s * s)

            def to_v(d):
                return (x - d) * (a / s) - d * (a * s)

            def from_v(v):
                return x * (a * a) - v * (a * s)
    if to_v is not None:
        cond, uncond = to_v(cond), to_v(uncond)
    guided = cfg(cond, uncond, scale)
    rescaled = guided * (ops.std_per_sample(cond) / ops.std_per_sample(guided))
    out = rescaled * float(phi) + guided * (1.0 - float(phi))
    return from_v(out) if from_v is not None else out


def dynamic_threshold(x0, percentile: float = 0.995, ops=None):
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3).

    s = the ``percentile`` quantile of |x0| per sample, s = max(s, 1); x0 is clamped to
    [-s, s] and divided by s.
    """
    ops = default_ops(x0, ops)
    s = ops.maximum(ops.quantile_per_sample(ops.abs(x0), float(percentile)), 1.0)
    return ops.clip(x0, -s, s) / s


def check_guidance(cfg_rescale: float = 0.0, dynamic_threshold: float = 0.0) -> tuple[float, float]:
    """The two corrections' settings as floats; BAD_INPUT unless ``cfg_rescale`` is in [0, 1] and
    ``dynamic_threshold`` is 0 (off) or a percentile in (0, 1]."""
    phi, pct = float(cfg_rescale or 0.0), float(dynamic_threshold or 0.0)
    if not (math.isfinite(phi) and 0.0 <= phi <= 1.0):
        raise SpriteForgeError(BAD_INPUT, f"cfg_rescale is a blend in [0, 1] (0 = off), not {cfg_rescale}. "
                               "Use 0.3-0.7 to tame over-saturated colours at high cfg.")
    if not (math.isfinite(pct) and 0.0 <= pct <= 1.0):
        raise SpriteForgeError(BAD_INPUT, f"dynamic_threshold is a percentile in (0, 1] or 0 for off, not {dynamic_threshold}. "
                               "Use e.g. 0.995.")
    return phi, pct

