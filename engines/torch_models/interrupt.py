"""Progress and interrupt points inside one long module call (a VAE decode/encode of a big image).

A diffusers VAE runs its whole decoder in one ``forward``; to report progress and honour Cancel
within it, :func:`conv_steps` puts a forward pre-hook on every ``Conv2d`` of the module for the
duration of a ``with`` block. Each hook calls ``on_step()`` (typically ``Progress.update``, which is
the interrupt point), so a request stops the call before its next convolution. The hooks change
nothing in the computation and are removed on exit, also when the step raises.
"""

from __future__ import annotations

import contextlib
import math

import torch


def conv_count(module) -> int:
    """How many ``Conv2d`` layers ``module`` has (each runs once per untiled forward)."""
    return sum(1 for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def kl_tiles(vae, latent_hw) -> int:
    """How many tiles diffusers' ``AutoencoderKL.tiled_decode`` cuts a latent of ``latent_hw`` into (1 if unknown)."""
    size = getattr(vae, "tile_latent_min_size", None)
    factor = getattr(vae, "tile_overlap_factor", None)
    if not size or factor is None:
        return 1
    step = max(1, int(size * (1 - factor)))
    return max(1, math.ceil(latent_hw[0] / step) * math.ceil(latent_hw[1] / step))


@contextlib.contextmanager
def conv_steps(module, on_step):
    """Within the block, ``on_step()`` runs before every ``Conv2d`` of ``module``; yields the layer count."""
    handles = [
        m.register_forward_pre_hook(lambda _mod, _args: on_step())
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
