"""Noise schedules: lists of sigmas (descending, ending with 0.0) for the samplers.

Every schedule is ``fn(n_steps, sigma_min=None, sigma_max=None, *, model_schedule=None, **kw)``
returning a list of ``n_steps + 1`` Python floats that ends with ``0.0``.

Two kinds of schedule exist:

* *continuous* ones (``karras``, ``exponential``) only need the sigma range;
* *model* ones (``normal``, ``sgm_uniform``, ``simple``, ``ddim_uniform``, ``beta``)
  follow ComfyUI and pick from the model's own sigma table / timestep mapping, given
  as ``model_schedule``: a :class:`DiscreteSchedule` (DDPM-trained models: SD, PixArt,
  DiT) or a :class:`FlowSchedule` (rectified flow: SD3, Flux, Sana).  Without a model
  schedule they fall back to a table linear in sigma between ``sigma_min`` and
  ``sigma_max`` (``beta`` then uses the continuous form of diffusers' ``use_beta_sigmas``).

When ``sigma_min``/``sigma_max`` are ``None`` they are taken from ``model_schedule``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError
from .beta_dist import beta_ppf


# --------------------------------------------------------------------------- model schedules
class SigmaTableBase:
    """Shared behaviour of model schedules: an ascending table of training sigmas (``sigmas``, float64)."""

    sigmas: np.ndarray  # ascending, float64

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def __len__(self) -> int:
        return len(self.sigmas)


class DiscreteSchedule(SigmaTableBase):
    """The 1000 training noise levels of a DDPM-trained (discrete-time) model.

    From a beta schedule, alpha_bar_t = prod_{i<=t} (1 - beta_i) and the
    k-diffusion noise level is sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)
    (Ho et al. 2020; Karras et al. 2022, table 1).  ``sigmas[t]`` is ascending in t.

    * ``"linear"``: beta linear in t from ``beta_start`` to ``beta_end``
      (DDPM, PixArt, DiT: 0.0001 .. 0.02);
    * ``"scaled_linear"``: sqrt(beta) linear (Stable Diffusion: 0.00085 .. 0.012).

    :meth:`timestep` and :meth:`sigma` convert between sigma and a (fractional)
    timestep by linear interpolation in log-sigma, as ComfyUI and diffusers do.
    """

    def __init__(self, beta_schedule: str = "scaled_linear", beta_start: float = 0.00085,
                 beta_end: float = 0.012, num_timesteps: int = 1000, *, alphas_cumprod=None):
        if alphas_cumprod is None:
            if beta_schedule == "linear":
                betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
            elif beta_schedule == "scaled_linear":
                betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64) ** 2
            else:
                raise SpriteForgeError(BAD_INPUT, f"Unknown beta schedule {beta_schedule!r}. Use 'linear' or 'scaled_linear'.")
            alphas_cumprod = np.cumprod(1.0 - betas)
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        self.beta_schedule = beta_schedule
        self.alphas_cumprod = ac
        self.sigmas = np.sqrt((1.0 - ac) / ac)
        self.log_sigmas = np.log(self.sigmas)

    @classmethod
    def linear(cls, beta_start: float = 0.0001, beta_end: float = 0.02, num_timesteps: int = 1000) -> "DiscreteSchedule":
        """DDPM's linear schedule (PixArt, DiT)."""
        return cls("linear", beta_start, beta_end, num_timesteps)

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, num_timesteps: int = 1000) -> "DiscreteSchedule":
        """Stable Diffusion's schedule."""
        return cls("scaled_linear", beta_start, beta_end, num_timesteps)

    def timestep(self, sigma, quantize: bool = False):
        """Fractional timestep of ``sigma`` (interpolated in log-sigma, clamped to the table).

        ``quantize=True`` returns the nearest integer timestep instead.
        """
        ls = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-300))
        if quantize:
            t = np.abs(ls[..., None] - self.log_sigmas).argmin(axis=-1).astype(np.float64)
        else:
            t = np.interp(ls, self.log_sigmas, np.arange(len(self.sigmas), dtype=np.float64))
        return float(t) if t.ndim == 0 else t

    def sigma(self, timestep):
        """Sigma at a (fractional) timestep: exp of the linearly interpolated log-sigma."""
        t = np.clip(np.asarray(timestep, dtype=np.float64), 0, len(self.sigmas) - 1)
        lo = np.floor(t).astype(np.int64)
        hi = np.ceil(t).astype(np.int64)
        w = t - lo
        s = np.exp((1.0 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi])
        return float(s) if s.ndim == 0 else s

    def __repr__(self) -> str:
        return f"DiscreteSchedule({self.beta_schedule!r}, sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g})"


def flux_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
            base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Flux's resolution-dependent shift mu: linear in the image token count through
    (base_seq_len, base_shift) and (max_seq_len, max_shift)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


class FlowSchedule(SigmaTableBase):
    """Time/noise levels of a rectified-flow model, x_t = (1 - t) x0 + t noise (Esser et al. 2024).

    Sigma *is* t in [0, 1].  Resolution shifting warps t (Esser et al. 2024, sec. 5.3.2):

    * static shift (SD3: 3.0, Sana: ~3): ``sigma' = shift t / (1 + (shift - 1) t)``;
    * Flux (``mu`` given): ``sigma' = e^mu / (e^mu + (1/t - 1))``, with ``mu`` from
      :func:`flux_mu` (see :meth:`flux`).

    The table holds ``shifted(i / num_timesteps)`` for i = 1..num_timesteps.  As in ComfyUI,
    :meth:`timestep` is the value the model is conditioned on (``sigma * multiplier``, no
    un-shifting) while :meth:`sigma` maps an *unshifted* time to a shifted sigma; the
    ``normal`` schedule therefore equals diffusers' FlowMatchEulerDiscreteScheduler.
    """

    def __init__(self, shift: float = 1.0, *, mu: float | None = None, multiplier: float = 1000.0,
                 num_timesteps: int = 1000):
        self.shift = float(shift)
        self.mu = None if mu is None else float(mu)
        self.multiplier = float(multiplier)
        self.sigmas = np.asarray(self.shift_sigma(np.arange(1, num_timesteps + 1, dtype=np.float64) / num_timesteps))

    @classmethod
    def flux(cls, width: int, height: int, **mu_kw) -> "FlowSchedule":
        """Flux schedule for an image of ``width`` x ``height`` pixels (16 px per token),
        with ComfyUI's table of 10000 levels and model timestep = sigma."""
        seq_len = (int(height) // 16) * (int(width) // 16)
        return cls(mu=flux_mu(seq_len, **mu_kw), multiplier=1.0, num_timesteps=10000)

    def shift_sigma(self, t):
        """Apply this schedule's shift to an unshifted time ``t`` (scalar or array)."""
        t = np.asarray(t, dtype=np.float64)
        if self.mu is not None:
            with np.errstate(divide="ignore"):
                out = np.where(t > 0, math.exp(self.mu) / (math.exp(self.mu) + (1.0 / np.maximum(t, 1e-300) - 1.0)), 0.0)
        else:
            out = self.shift * t / (1.0 + (self.shift - 1.0) * t)
        return float(out) if out.ndim == 0 else out

    def timestep(self, sigma):
        """The model's conditioning timestep for ``sigma`` (``sigma * multiplier``)."""
        t = np.asarray(sigma, dtype=np.float64) * self.multiplier
        return float(t) if t.ndim == 0 else t

    def sigma(self, timestep):
        """Shifted sigma for an unshifted timestep in [0, multiplier]."""
        return self.shift_sigma(np.asarray(timestep, dtype=np.float64) / self.multiplier)

    def __repr__(self) -> str:
        what = f"mu={self.mu:.4g}" if self.mu is not None else f"shift={self.shift:g}"
        return f"FlowSchedule({what}, multiplier={self.multiplier:g}, n={len(self.sigmas)})"


class _LinearSigmas(SigmaTableBase):
    """Fallback model schedule when none is given: 1000 sigmas linear in [sigma_min, sigma_max],
    timestep = sigma."""

    def __init__(self, sigma_min: float, sigma_max: float, n: int = 1000):
        self.sigmas = np.linspace(sigma_min, sigma_max, n, dtype=np.float64)

    def timestep(self, sigma):
        return float(sigma)

    def sigma(self, timestep):
        return float(timestep)


# --------------------------------------------------------------------------- helpers
def _range(sigma_min, sigma_max, model_schedule) -> tuple[float, float]:
    if sigma_min is None:
        sigma_min = getattr(model_schedule, "sigma_min", None)
    if sigma_max is None:
        sigma_max = getattr(model_schedule, "sigma_max", None)
    if sigma_min is None or sigma_max is None:
        raise SpriteForgeError(BAD_INPUT, "A schedule needs sigma_min and sigma_max or a model_schedule. Pass them.")
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    if not 0 < sigma_min <= sigma_max:
        raise SpriteForgeError(BAD_INPUT, f"Invalid sigma range [{sigma_min}, {sigma_max}]. Need 0 < sigma_min <= sigma_max.")
    return sigma_min, sigma_max


def _model(sigma_min, sigma_max, model_schedule):
    if model_schedule is not None:
        return model_schedule
    return _LinearSigmas(*_range(sigma_min, sigma_max, None))


def _finish(values) -> list[float]:
    return [float(v) for v in values] + [0.0]


# --------------------------------------------------------------------------- schedules
def karras(n_steps: int, sigma_min=None, sigma_max=None, *, rho: float = 7.0, model_schedule=None) -> list[float]:
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
    if n_steps <= 0:
        return []
    lo, hi = _range(sigma_min, sigma_max, model_schedule)
    ramp = np.linspace(0.0, 1.0, n_steps)
    return _finish((hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho)


def exponential(n_steps: int, sigma_min=None, sigma_max=None, *, model_schedule=None) -> list[float]:
    """Sigmas evenly spaced in log-sigma from sigma_max down to sigma_min."""
    if n_steps <= 0:
        return []
    lo, hi = _range(sigma_min, sigma_max, model_schedule)
    return _finish(np.exp(np.linspace(math.log(hi), math.log(lo), n_steps)))


def normal(n_steps: int, sigma_min=None, sigma_max=None, *, model_schedule=None, sgm: bool = False) -> list[float]:
    """Evenly spaced in the model's timestep between t(sigma_max) and t(sigma_min).

    ``sgm=True`` (``sgm_uniform``) spaces ``n_steps + 1`` points and drops the last, as
    SGM/SDXL-turbo do.  If the last level is (numerically) zero no extra zero is appended.
    """
    if n_steps <= 0:
        return []
    ms = _model(sigma_min, sigma_max, model_schedule)
    lo, hi = _range(sigma_min, sigma_max, ms)
    start, end = ms.timestep(hi), ms.timestep(lo)
    if sgm:
        ts = np.linspace(start, end, n_steps + 1)[:-1]
    elif math.isclose(ms.sigma(end), 0.0, abs_tol=1e-5):
        return [float(ms.sigma(t)) for t in np.linspace(start, end, n_steps + 1)]
    else:
        ts = np.linspace(start, end, n_steps)
    return _finish(ms.sigma(t) for t in ts)


def sgm_uniform(n_steps: int, sigma_min=None, sigma_max=None, *, model_schedule=None) -> list[float]:
    """``normal`` with SGM's spacing (n+1 points, last dropped)."""
    return normal(n_steps, sigma_min, sigma_max, model_schedule=model_schedule, sgm=True)


def simple(n_steps: int, sigma_min=None, sigma_max=None, *, model_schedule=None) -> list[float]:
    """Every (len(table)/n)-th entry of the model's sigma table, from the top (ComfyUI "simple")."""
    if n_steps <= 0:
        return []
    table = _model(sigma_min, sigma_max, model_schedule).sigmas
    stride = len(table) / n_steps
    return _finish(table[-(1 + int(i * stride))] for i in range(n_steps))


def ddim_uniform(n_steps: int, sigma_min=None, sigma_max=None, *, model_schedule=None) -> list[float]:
    """DDIM's uniform timestep skipping (Song et al. 2021): table entries 1, 1+k, ..., 1+(n-1)k
    with k = len // n, from the top down.

    Equals diffusers' DDIMScheduler with ``timestep_spacing="leading", steps_offset=1`` (and
    ComfyUI's ``ddim_uniform`` whenever k n covers the table; ComfyUI may add one step otherwise).
    """
    if n_steps <= 0:
        return []
    table = _model(sigma_min, sigma_max, model_schedule).sigmas
    stride = max(len(table) // n_steps, 1)
    return _finish(table[1::stride][:n_steps][::-1])


def beta(n_steps: int, sigma_min=None, sigma_max=None, *, model_schedule=None,
         alpha: float = 0.6, beta: float = 0.6) -> list[float]:
    """Steps at quantiles of Beta(alpha, beta) (Lee et al. 2024, "Beta Sampling is All You Need").

    With a model schedule (ComfyUI): timesteps round(ppf(1 - i/n) * (len - 1)), i = 0..n-1,
    looked up in the sigma table, consecutive duplicates dropped.  Without one (diffusers'
    ``use_beta_sigmas``): sigma_min + ppf(1 - i/(n-1)) (sigma_max - sigma_min).
    """
    if n_steps <= 0:
        return []
    if not (alpha > 0 and beta > 0):
        raise SpriteForgeError(BAD_INPUT, f"The beta schedule needs alpha > 0 and beta > 0, not {alpha}, {beta}. Use e.g. 0.6, 0.6.")
    if model_schedule is None:
        lo, hi = _range(sigma_min, sigma_max, None)
        qs = 1.0 - np.linspace(0.0, 1.0, n_steps)
        return _finish(lo + beta_ppf(q, alpha, beta) * (hi - lo) for q in qs)
    table = model_schedule.sigmas
    last = len(table) - 1
    out, prev = [], None
    for q in 1.0 - np.linspace(0.0, 1.0, n_steps, endpoint=False):
        t = int(round(beta_ppf(float(q), alpha, beta) * last))
        if t != prev:
            out.append(float(table[t]))
        prev = t
    return _finish(out)


SCHEDULES: dict[str, Callable[..., list[float]]] = {
    "normal": normal,
    "karras": karras,
    "exponential": exponential,
    "sgm_uniform": sgm_uniform,
    "simple": simple,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
}


def get_sigmas(name: str, n_steps: int, model_schedule=None, *, denoise: float = 1.0, **kw) -> list[float]:
    """Sigmas of schedule ``name`` for ``n_steps`` (the range comes from ``model_schedule``
    unless ``sigma_min``/``sigma_max`` are in ``kw``), shortened for ``denoise`` < 1."""
    try:
        fn = SCHEDULES[name]
    except KeyError:
        raise SpriteForgeError(BAD_INPUT, f"Unknown schedule {name!r}. Choose one of: {', '.join(SCHEDULES)}.") from None
    return sigmas_for_denoise(lambda n: fn(n, model_schedule=model_schedule, **kw), n_steps, denoise)


def sigmas_for_denoise(full_sigmas_fn: Callable[[int], Sequence[float]], steps: int, denoise: float | None) -> list[float]:
    """Sigmas for a partial denoise (img2img), as ComfyUI does.

    A full schedule of ``int(steps / denoise)`` steps is made and only its last
    ``steps + 1`` sigmas are kept, so the run starts part-way down the noise levels.
    ``denoise`` >= 0.9999 (or None) gives the full schedule; ``denoise`` <= 0 gives ``[]``.
    """
    if denoise is None or denoise > 0.9999:
        return [float(s) for s in full_sigmas_fn(steps)]
    if denoise <= 0.0 or steps <= 0:
        return []
    full = [float(s) for s in full_sigmas_fn(int(steps / denoise))]
    return full[-(steps + 1):]
