"""Samplers in the k-diffusion calling convention (Karras et al. 2022; Crowson's k-diffusion).

Every sampler is ``fn(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, *, ops=None, **options)``:

* ``model(x, sigma, **extra_args)`` returns the *denoised estimate* x0 for the noisy ``x``
  at noise level ``sigma`` (a Python float);
* ``x`` is the starting sample at ``sigmas[0]`` (usually ``noise * sigmas[0]``; for flow
  models ``noise`` at t = 1);
* ``sigmas`` is descending and normally ends with 0 (list, tuple, numpy array or 1-D tensor);
* ``callback({"i", "x", "sigma", "sigma_next", "denoised"})`` is called once per step;
* ``noise_sampler(sigma, sigma_next)`` gives fresh standard-normal noise like ``x`` for
  ancestral/SDE steps (see :class:`.noise.NoiseSampler`; default: seed 0, made into ``x``'s
  arrays with ``ops``);
* ``ops`` (keyword): the array operations of ``x``'s framework (:mod:`.ops`), needed only for
  that default noise on torch/MLX arrays; default: the model's ``.ops`` (an engine's denoiser
  carries its engine's), else numpy's.

Arrays are only combined with + - * / and Python scalars, so the same code runs on numpy,
torch and MLX.

Noise parametrisations (option ``flow``)
---------------------------------------
``flow=False`` (default): variance-exploding k-diffusion space, x = x0 + sigma n.
Discrete DDPM models (eps / v prediction) are presented this way by the engine's wrapper.

``flow=True``: rectified flow (Esser et al. 2024), sigma = t in [0, 1] and
x = (1 - t) x0 + t n.  The engine wraps the velocity model v(x, t) ~ n - x0 into a denoiser,
x0 = x - t v (:func:`.denoisers.from_velocity`).  The probability-flow ODE is then
dx/dt = v = (x - x0)/t, *the same equation* as in VE space, so ``euler``, ``heun`` and
``flow_euler`` need no flag.  Samplers that re-inject noise or use an exponential integrator
depend on the signal scale alpha(t) = 1 - t and honour ``flow=True``:
``euler_ancestral``/``ddim`` (re-noising x = (1 - t') x0 + t' n, as ComfyUI's CONST
model sampling), ``dpmpp_2m``, ``dpmpp_2m_sde`` (half-log-SNR lambda = log((1 - t)/t)) and
``lcm``.  ``flow_euler_ancestral`` is ``euler_ancestral`` with ``flow=True``.
"""

from __future__ import annotations

import math
from typing import Callable

from ..errors import BAD_INPUT, SpriteForgeError
from .noise import NoiseSampler
from .ops import default_ops


# --------------------------------------------------------------------------- helpers
def to_float_list(sigmas) -> list[float]:
    """Sigmas as a list of Python floats (accepts list, tuple, numpy array, tensor, MLX array)."""
    if hasattr(sigmas, "tolist"):
        sigmas = sigmas.tolist()
    return [float(s) for s in sigmas]


def _default_noise(x, ops=None):
    """Seed-0 noise like ``x``; ``ops`` (the model's ``.ops``) turn numpy noise into ``x``'s arrays."""
    ops = default_ops(x, ops)
    return NoiseSampler(0, tuple(x.shape), to_array=lambda a: ops.from_numpy(a, x))


class _Run:
    """The per-call bits every sampler shares: float sigmas, model call, callback, noise."""

    def __init__(self, model, x, sigmas, extra_args, callback, noise_sampler, ops=None):
        self.model = model
        self.ops = ops if ops is not None else getattr(model, "ops", None)
        self.sigmas = to_float_list(sigmas)
        self.extra = extra_args or {}
        self.callback = callback
        self._noise = noise_sampler
        self._x = x

    def steps(self):
        """(i, sigma, sigma_next) per step; steps starting at sigma <= 0 have nothing to do."""
        s = self.sigmas
        return [(i, s[i], s[i + 1]) for i in range(len(s) - 1) if s[i] > 0.0]

    def denoise(self, x, sigma):
        return self.model(x, sigma, **self.extra)

    def x0(self, i, x, sigma, sigma_next):
        """The model's denoised estimate at step ``i``, reported to the callback."""
        d0 = self.denoise(x, sigma)
        self.report(i, x, sigma, sigma_next, d0)
        return d0

    def report(self, i, x, sigma, sigma_next, denoised):
        if self.callback is not None:
            self.callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})

    def noise(self, sigma, sigma_next):
        if self._noise is None:
            self._noise = _default_noise(self._x, self.ops)
        return self._noise(sigma, sigma_next)


def _alpha_sigma(s: float, flow: bool) -> tuple[float, float]:
    """Signal scale and noise scale of x = alpha x0 + sigma n at level s."""
    return (1.0 - s, s) if flow else (1.0, s)


def _half_log_snr(s: float, flow: bool) -> float:
    """lambda = log(alpha / sigma) (Lu et al. 2022); -inf at pure noise, +inf at sigma 0."""
    a, sg = _alpha_sigma(s, flow)
    if a <= 0.0:
        return -math.inf
    if sg <= 0.0:
        return math.inf
    return math.log(a / sg)


def _exp_neg_h(s: float, s_next: float, flow: bool) -> float:
    """exp(-(lambda_next - lambda)) = (sigma'/alpha') / (sigma/alpha), computed without logs."""
    if s_next == s:
        return 1.0
    a, sg = _alpha_sigma(s, flow)
    a1, sg1 = _alpha_sigma(s_next, flow)
    return (sg1 * a) / (sg * a1)


# --------------------------------------------------------------------------- samplers
def euler(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, *, flow: bool = False, ops=None):
    """Euler's method on the probability-flow ODE dx/dsigma = (x - x0)/sigma
    (Karras et al. 2022, alg. 1 without the 2nd-order correction).

    Identical for flow models (dx/dt = (x - x0)/t), so ``flow`` is accepted and ignored.
    """
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, ops)
    for i, s, s1 in run.steps():
        d0 = run.x0(i, x, s, s1)
        x = x + (x - d0) * ((s1 - s) / s)
    return x


def flow_euler(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, *, flow: bool = True, ops=None):
    """Flow-matching Euler (Lipman et al. 2023; Esser et al. 2024): x_{t'} = x_t + (t' - t) v
    with the velocity recovered from the denoiser, v = (x - x0)/t."""
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, ops)
    for i, t, t1 in run.steps():
        d0 = run.x0(i, x, t, t1)
        v = (x - d0) * (1.0 / t)
        x = x + v * (t1 - t)
    return x


def _ancestral(run, x, eta: float, s_noise: float, flow: bool):
    for i, s, s1 in run.steps():
        d0 = run.x0(i, x, s, s1)
        if s1 <= 0.0:
            x = d0
            continue
        if flow:
            # Step deterministically down to t_d = t' (1 - eta + eta t'/t) <= t' along the ODE
            # (exact interpolation x_d = x0 + (t_d/t)(x - x0)), then rescale the signal to
            # (1 - t') and add fresh noise so the total noise std is t':
            #   x' = (1-t')/(1-t_d) x_d + sqrt(t'^2 - (t_d (1-t')/(1-t_d))^2) n.
            t_down = s1 * (1.0 - eta + eta * s1 / s)
            x = d0 + (x - d0) * (t_down / s)
            if eta > 0.0 and t_down < 1.0:
                scale = (1.0 - s1) / (1.0 - t_down)
                renoise = math.sqrt(max(s1 * s1 - (t_down * scale) ** 2, 0.0))
                x = x * scale + run.noise(s, s1) * (s_noise * renoise)
        else:
            # Karras et al. 2022 / k-diffusion ancestral split: sigma'^2 = sigma_down^2 + sigma_up^2,
            # sigma_up = eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2).
            s_up = min(s1, eta * math.sqrt(max(s1 * s1 * (s * s - s1 * s1) / (s * s), 0.0)))
            s_down = math.sqrt(s1 * s1 - s_up * s_up)
            x = x + (x - d0) * ((s_down - s) / s)
            if s_up > 0.0:
                x = x + run.noise(s, s1) * (s_noise * s_up)
    return x


def euler_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, *,
                    eta: float = 1.0, s_noise: float = 1.0, flow: bool = False, ops=None):
    """Ancestral Euler: an Euler step to sigma_down, then fresh noise of std sigma_up
    (Song et al. 2021 ancestral sampling in Karras et al.'s sigma form).

    ``flow=True`` re-noises in the rectified-flow way (see module doc), as ComfyUI's
    euler_ancestral does for CONST (flow) models.
    """
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, ops)
    return _ancestral(run, x, float(eta), float(s_noise), flow)


def flow_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, *,
                         eta: float = 1.0, s_noise: float = 1.0, flow: bool = True, ops=None):
    """:func:`euler_ancestral` with rectified-flow re-noising (for SD3, Flux, Sana)."""
    return euler_ancestral(model, x, sigmas, extra_args, callback, noise_sampler,
                           eta=eta, s_noise=s_noise, flow=flow, ops=ops)


def ddim(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, *,
         eta: float = 0.0, s_noise: float = 1.0, flow: bool = False, ops=None):
    """DDIM (Song et al. 2021, eq. 12) in sigma form.

    With eta = 0, x' = x0 + sigma' (x - x0)/sigma, which is exactly the Euler step; with
    eta > 0 DDIM's extra noise std, divided by sqrt(alpha_bar'), is
    sigma' sqrt((sigma^2 - sigma'^2)/sigma^2) * eta, i.e. the ancestral split above.
    Use ``ddim_uniform`` sigmas to reproduce DDIM's timestep skipping.
    """
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, ops)
    return _ancestral(run, x, float(eta), float(s_noise), flow)


def heun(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, *, flow: bool = False, ops=None):
    """Heun's 2nd-order method (Karras et al. 2022, alg. 1, deterministic): an Euler step,
    then the average of the slopes at both ends; plain Euler for the last step to sigma 0.
    Same ODE for flow models, so ``flow`` is ignored."""
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, ops)
    for i, s, s1 in run.steps():
        d0 = run.x0(i, x, s, s1)
        slope = (x - d0) * (1.0 / s)
        dt = s1 - s
        if s1 <= 0.0:
            x = x + slope * dt
            continue
        x_pred = x + slope * dt
        d1 = run.denoise(x_pred, s1)
        slope1 = (x_pred - d1) * (1.0 / s1)
        x = x + (slope + slope1) * (0.5 * dt)
    return x


def dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, *, flow: bool = False, ops=None):
    """DPM-Solver++(2M), the multistep 2nd-order data-prediction solver (Lu et al. 2022, alg. 2).

    With lambda = log(alpha/sigma), h = lambda' - lambda and r = h_prev / h:
      x' = (sigma'/sigma) x + alpha' (1 - e^-h) D,  D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev,
    first order (D = x0) on the first step and on the final step to sigma 0.
    """
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, ops)
    prev, h_prev = None, None
    for i, s, s1 in run.steps():
        d0 = run.x0(i, x, s, s1)
        if s1 <= 0.0:
            x = d0
            continue
        h = _half_log_snr(s1, flow) - _half_log_snr(s, flow)
        a1, sg1 = _alpha_sigma(s1, flow)
        coef = a1 * (1.0 - _exp_neg_h(s, s1, flow))
        d = d0
        if prev is not None and 0.0 < h_prev < math.inf:
            k = 0.5 * h / h_prev  # 1/(2r)
            d = d0 * (1.0 + k) - prev * k
        x = x * (sg1 / s) + d * coef  # sigma(s) = s in both parametrisations
        prev, h_prev = d0, h
    return x


def dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, *,
                 eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint", flow: bool = False, ops=None):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", sec. 5 / appendix; the
    ``sde-dpmsolver++`` of diffusers and ``dpmpp_2m_sde`` of k-diffusion).

    With h = lambda' - lambda, e = e^{-eta h} and E = 1 - e^{-(1+eta) h}:
      x' = (sigma'/sigma) e x + alpha' E x0 + correction + sigma' sqrt(1 - e^2) s_noise n,
    correction = alpha' E (x0 - x0_prev)/(2r) ("midpoint") or
    alpha' (1 - E/((1+eta) h))(x0 - x0_prev)/r ("heun"), r = h_prev/h.  eta = 0 gives the
    deterministic 2M ODE solver; the last step to sigma 0 returns x0.
    """
    if solver_type not in ("midpoint", "heun"):
        raise SpriteForgeError(BAD_INPUT, f"Unknown solver_type {solver_type!r} for dpmpp_2m_sde. Use 'midpoint' or 'heun'.")
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, ops)
    eta, s_noise = float(eta), float(s_noise)
    prev, h_prev = None, None
    for i, s, s1 in run.steps():
        d0 = run.x0(i, x, s, s1)
        if s1 <= 0.0:
            x = d0
            continue
        _, sg = _alpha_sigma(s, flow)
        a1, sg1 = _alpha_sigma(s1, flow)
        h = _half_log_snr(s1, flow) - _half_log_snr(s, flow)
        e_h = _exp_neg_h(s, s1, flow)
        e_eta = e_h ** eta  # exp(-eta h)
        big_e = 1.0 - e_h * e_eta  # 1 - exp(-(1 + eta) h)
        x = x * (sg1 / sg * e_eta) + d0 * (a1 * big_e)
        if prev is not None and 0.0 < h_prev < math.inf and h > 0.0:
            inv_r = h / h_prev
            if solver_type == "midpoint":
                x = x + (d0 - prev) * (0.5 * a1 * big_e * inv_r)
            else:
                x = x + (d0 - prev) * (a1 * (1.0 - big_e / ((1.0 + eta) * h)) * inv_r)
        if eta > 0.0:
            x = x + run.noise(s, s1) * (sg1 * math.sqrt(max(1.0 - e_eta * e_eta, 0.0)) * s_noise)
        prev, h_prev = d0, h
    return x


def lcm(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, *, flow: bool = False, ops=None):
    """Latent Consistency Model multistep sampling (Luo et al. 2023, alg. 1; Song et al. 2023):
    jump to the consistency estimate x0, then re-noise it to the next level,
    x' = x0 + sigma' n (VE) or x' = (1 - t') x0 + t' n (flow).  The c_skip/c_out boundary
    condition belongs to the model wrapper."""
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, ops)
    for i, s, s1 in run.steps():
        d0 = run.x0(i, x, s, s1)
        x = d0
        if s1 > 0.0:
            a1, sg1 = _alpha_sigma(s1, flow)
            x = d0 * a1 + run.noise(s, s1) * sg1 if flow else d0 + run.noise(s, s1) * sg1
    return x


SAMPLERS: dict[str, Callable] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "ddim": ddim,
    "lcm": lcm,
    "flow_euler": flow_euler,
    "flow_euler_ancestral": flow_euler_ancestral,
}

# Samplers whose result depends on the noise parametrisation; the rest accept ``flow`` and ignore it.
FLOW_AWARE = frozenset({"euler_ancestral", "flow_euler_ancestral", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "lcm"})
# Samplers that draw from ``noise_sampler`` with their default options (``ddim`` does too when eta > 0,
# ``dpmpp_2m_sde`` not when eta = 0).  Passing a NoiseSampler to any sampler is harmless.
STOCHASTIC = frozenset({"euler_ancestral", "flow_euler_ancestral", "dpmpp_2m_sde", "lcm"})
