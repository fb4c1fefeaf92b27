"""Wrappers around an engine's denoiser for inpainting (the unmasked area follows the source) and seamless
tiles (roll-and-blend); both pass the denoiser's ``ops`` on to the samplers."""

from __future__ import annotations

import numpy as np

from ..engines.ops import ops_for


class Inpaint:
    """Keeps the unmasked area on the source at every step (the source noised to the step's level)."""

    def __init__(self, model, src, noise, mask, flow):
        self.model, self.src, self.noise, self.mask, self.flow = model, src, noise, mask, flow
        self.ops = getattr(model, "ops", None)  # the samplers' array ops, passed on

    def __call__(self, x, sigma, **kw):
        s = float(sigma)
        noised = self.src * (1.0 - s) + self.noise * s if self.flow else self.src + self.noise * s
        keep = 1.0 - self.mask
        x = x * self.mask + noised * keep
        x0 = self.model(x, s, **kw)
        return x0 * self.mask + self.src * keep


class Seamless:
    """Roll-and-blend: each call shifts the latent by a seeded random offset (whole patches),
    denoises, and shifts back, so no fixed seam survives; the VAE decodes with circular padding."""

    def __init__(self, model, engine, seed, patch):
        self.model, self.engine, self.patch = model, engine, max(int(patch), 1)
        self.ops = getattr(model, "ops", None)
        self.rng = np.random.Generator(np.random.PCG64(int(seed) % 2**64 + 7919))
        self.calls = 0

    def __call__(self, x, sigma, **kw):
        h, w = int(x.shape[-2]), int(x.shape[-1])
        dy = int(self.rng.integers(0, max(h // self.patch, 1))) * self.patch
        dx = int(self.rng.integers(0, max(w // self.patch, 1))) * self.patch
        self.calls += 1
        xr = roll(x, dy, dx)
        x0 = self.model(xr, sigma, **kw)
        return roll(x0, -dy, -dx)


def roll(x, dy, dx):
    """``x`` rolled by (dy, dx) over its last two axes, with the ops of its framework."""
    return ops_for(x).roll2d(x, dy, dx)
