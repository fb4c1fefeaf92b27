"""Wrappers that present a network's raw output as the denoiser the samplers call.

The samplers only ever see ``model(x, sigma, **extra) -> x0`` (a denoised estimate).
Engines wrap their networks with these:

* :func:`from_velocity` for rectified-flow models (SD3, Flux, Sana), where sigma = t,
  x_t = (1 - t) x0 + t n and the network predicts v = n - x0: x0 = x - t v;
* :func:`from_epsilon` / :func:`from_v_prediction` for DDPM-trained models, whose network
  sees the variance-preserving input x / sqrt(1 + sigma^2) and the timestep of sigma in
  a :class:`.schedules.DiscreteSchedule` (Karras et al. 2022, table 1).
"""

from __future__ import annotations

import math


def from_velocity(velocity_fn, timestep_fn=None):
    """x0-model from a flow network ``velocity_fn(x, timestep, **kw)``: x0 = x - t v.
    ``timestep_fn(t)`` maps sigma to the network's timestep (default: t itself)."""

    def denoise(x, t, **kw):
        v = velocity_fn(x, timestep_fn(t) if timestep_fn else t, **kw)
        return x - v * t

    return denoise


def from_epsilon(eps_fn, schedule):
    """x0-model from an eps-prediction network ``eps_fn(x_in, timestep, **kw)``:
    x0 = x - sigma eps(x / sqrt(1 + sigma^2), t(sigma))."""

    def denoise(x, sigma, **kw):
        c_in = 1.0 / math.sqrt(1.0 + sigma * sigma)
        return x - eps_fn(x * c_in, schedule.timestep(sigma), **kw) * sigma

    return denoise


def from_v_prediction(v_fn, schedule):
    """x0-model from a v-prediction network (Salimans & Ho 2022):
    x0 = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v."""

    def denoise(x, sigma, **kw):
        c_in = 1.0 / math.sqrt(1.0 + sigma * sigma)
        return x * (c_in * c_in) - v_fn(x * c_in, schedule.timestep(sigma), **kw) * (sigma * c_in)

    return denoise
