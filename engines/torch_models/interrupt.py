"""Progress and interrupt points inside one long module call (a VAE decode/encode, a transformer step, a text encoder).

A diffusers VAE runs its whole decoder in one ``forward``, a transformer its whole block stack; to report
progress and honour Cancel within them, forward pre-hooks call ``on_step()`` before each layer for the
duration of a ``with`` block: :func:`conv_steps` before every ``Conv2d`` (``on_step`` is typically
``Progress.update``, itself the interrupt point), :func:`block_steps` before every block of a transformer or
text encoder (:func:`blocks`; by default ``on_step`` is :func:`spriteforge.progress.check_interrupt`), so a
request stops the call before its next layer. The hooks change nothing in the computation and are removed
on exit, also when the step raises.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ...progress import check_interrupt

_CONVS = (torch.nn.Conv2d, torch.nn.Conv3d)  # (Conv3d: the Qwen-Image VAE's causal convolutions)


def conv_count(module) -> int:
    """How many ``Conv2d`` / ``Conv3d`` layers ``module`` has (each runs once per untiled forward of one frame)."""
    return sum(1 for m in module.modules() if isinstance(m, _CONVS))


def kl_tiles(vae, latent_hw) -> int:
    """How many tiles diffusers' ``AutoencoderKL.tiled_decode`` cuts a latent of ``latent_hw`` into (1 if unknown)."""
    size = getattr(vae, "tile_latent_min_size", None)
    factor = getattr(vae, "tile_overlap_factor", None)
    if not size or factor is None:
        return 1
    step = max(1, int(size * (1 - factor)))
    return max(1, math.ceil(latent_hw[0] / step) * math.ceil(latent_hw[1] / step))


def blocks(module) -> list:
    """The blocks of ``module``: the items of its outermost ``ModuleList``s (a transformer's ``transformer_blocks``
    and Flux's ``single_transformer_blocks``, T5's ``encoder.block``, CLIP's and Gemma's ``layers``)."""
    found, outer = [], []
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.ModuleList) and not any(name.startswith(o) for o in outer):
            outer.append(name + ".")
            found.extend(m)
    return found


@contextlib.contextmanager
def before_each(layers, on_step=check_interrupt):
    """Within the block, ``on_step()`` runs before every module in ``layers``; yields their count."""
    handles = [m.register_forward_pre_hook(lambda _mod, _args: on_step()) for m in layers]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def conv_steps(module, on_step):
    """Within the block, ``on_step()`` runs before every ``Conv2d`` / ``Conv3d`` of ``module``; yields the layer count."""
    return before_each([m for m in module.modules() if isinstance(m, _CONVS)], on_step)


def block_steps(module, on_step=check_interrupt):
    """Within the block, ``on_step()`` (the interrupt check) runs before every block of ``module`` (:func:`blocks`)."""
    return before_each(blocks(module) if module is not None else [], on_step)
