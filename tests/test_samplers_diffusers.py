"""Samplers and schedules against diffusers' schedulers on the same toy denoiser.

Each diffusers scheduler is driven by hand with a "network" derived from the same smooth
deterministic denoiser that our sampler calls, with identical sigmas and identical pre-drawn
noise for the stochastic ones; the final samples must agree to ~1e-5 relative (diffusers
computes in float32, ours in float64).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from spriteforge.samplers import (SAMPLERS, DiscreteSchedule, FlowSchedule, beta, ddim_uniform,  # noqa: E402
                                  exponential, flux_mu, karras, make_noise, normal, simple)

SHAPE = (2, 3, 6, 6)
RTOL = 1e-5
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)

_rng = np.random.default_rng(1234)
MU = _rng.normal(0.0, 0.5, SHAPE[1:])
STD = _rng.uniform(0.3, 1.2, SHAPE[1:])


def _sin(x):
    return torch.sin(x) if torch.is_tensor(x) else np.sin(x)


def _as(x, a):
    return torch.as_tensor(a, dtype=x.dtype) if torch.is_tensor(x) else a


def denoiser(x, sigma):
    """Gaussian-data denoiser plus a small smooth nonlinearity (VE space)."""
    mu, std = _as(x, MU), _as(x, STD)
    k = std * std / (std * std + sigma * sigma)
    return mu + k * (x - mu) + 0.05 * _sin(x) / (1.0 + sigma * sigma)


def flow_denoiser(x, t):
    """Gaussian-data denoiser for x_t = (1-t) x0 + t n, plus a small smooth term."""
    mu, std = _as(x, MU), _as(x, STD)
    var = (1 - t) ** 2 * std * std + t * t
    return mu + (1 - t) * std * std / var * (x - (1 - t) * mu) + 0.05 * t * (1 - t) * _sin(x)


def rel(a, b) -> float:  # relative L2 error
    a = a.detach().double().numpy() if torch.is_tensor(a) else np.asarray(a, dtype=np.float64)
    b = b.detach().double().numpy() if torch.is_tensor(b) else np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class Predrawn:
    """The same noise, step by step, for diffusers (patched randn_tensor / variance_noise) and us."""

    def __init__(self, n):
        self.arrays = [make_noise(100 + k, SHAPE).astype(np.float64) for k in range(n)]
        self.k = 0

    def __call__(self, *_a, **_kw):
        a = self.arrays[self.k]
        self.k += 1
        return a

    def torch(self, *_a, **_kw):
        return torch.from_numpy(self(*_a)).float()


def _start(sigma0):
    return make_noise(7, SHAPE).astype(np.float64) * sigma0


def _run_ve_discrete(sched, x0):
    """Drive Euler/EulerAncestral/Heun (k-diffusion-space samples, epsilon prediction)."""
    sample = torch.from_numpy(x0).float()
    for t in sched.timesteps:
        sched.scale_model_input(sample, t)  # sets step_index
        sigma = float(sched.sigmas[sched.step_index])
        eps = (sample - denoiser(sample, sigma)) / sigma
        sample = sched.step(eps, t, sample).prev_sample
    return sample


def _ours(name, x0, sigmas, **kw):
    return SAMPLERS[name](denoiser, x0.copy(), sigmas, **kw)


@pytest.mark.parametrize("kind", ["default", "karras", "exponential", "beta"])
def test_euler_matches_diffusers(kind):
    flags = {f"use_{kind}_sigmas": True} if kind != "default" else {}
    sched = diffusers.EulerDiscreteScheduler(**SD, **flags)
    sched.set_timesteps(12)
    sigmas = sched.sigmas.tolist()
    x0 = _start(sigmas[0])
    assert rel(_ours("euler", x0, sigmas), _run_ve_discrete(sched, x0)) < RTOL


def test_euler_ancestral_matches_diffusers(monkeypatch):
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as mod

    sched = diffusers.EulerAncestralDiscreteScheduler(**SD)
    sched.set_timesteps(15)
    sigmas = sched.sigmas.tolist()
    x0 = _start(sigmas[0])
    theirs_noise = Predrawn(15)
    monkeypatch.setattr(mod, "randn_tensor", theirs_noise.torch)
    theirs = _run_ve_discrete(sched, x0)
    ours = _ours("euler_ancestral", x0, sigmas, noise_sampler=Predrawn(15))
    assert theirs_noise.k == 15
    assert rel(ours, theirs) < RTOL


def test_heun_matches_diffusers():
    sched = diffusers.HeunDiscreteScheduler(**SD, use_karras_sigmas=True)
    sched.set_timesteps(10)
    # diffusers repeats interior sigmas for the two stages; ours takes the plain schedule
    sigmas = torch.unique_consecutive(sched.sigmas).tolist()
    assert len(sigmas) == 11
    x0 = _start(sigmas[0])
    assert rel(_ours("heun", x0, sigmas), _run_ve_discrete(sched, x0)) < RTOL


def _run_dpm(sched, x0, noise=None, flow=False):
    """Drive DPMSolverMultistepScheduler: VP samples (or flow samples) with x0 ("sample") prediction."""
    sigmas = sched.sigmas.tolist()
    if flow:
        sample = torch.from_numpy(x0).float()
    else:
        sample = torch.from_numpy(x0 / math.sqrt(1 + sigmas[0] ** 2)).float()
    for i, t in enumerate(sched.timesteps):
        s = sigmas[i]
        if flow:
            out = (sample - flow_denoiser(sample, s)) / s  # velocity
        else:
            out = denoiser(sample * math.sqrt(1 + s * s), s)
        vn = noise.torch() if noise is not None else None
        sample = sched.step(out, t, sample, variance_noise=vn).prev_sample
    return sample


@pytest.mark.parametrize("algo,solver", [("dpmsolver++", "midpoint"), ("sde-dpmsolver++", "midpoint"),
                                         ("sde-dpmsolver++", "heun")])
@pytest.mark.parametrize("karras_sigmas", [False, True])
def test_dpmpp_2m_matches_diffusers(algo, solver, karras_sigmas):
    sched = diffusers.DPMSolverMultistepScheduler(**SD, algorithm_type=algo, solver_order=2, prediction_type="sample",
                                                  solver_type=solver, final_sigmas_type="zero",
                                                  use_karras_sigmas=karras_sigmas)
    sched.set_timesteps(20)
    sigmas = sched.sigmas.tolist()
    x0 = _start(sigmas[0])
    if algo == "dpmsolver++":
        theirs, ours = _run_dpm(sched, x0), _ours("dpmpp_2m", x0, sigmas)
    else:
        theirs = _run_dpm(sched, x0, noise=Predrawn(20))
        ours = _ours("dpmpp_2m_sde", x0, sigmas, noise_sampler=Predrawn(20), solver_type=solver)
    assert rel(ours, theirs) < RTOL


def test_dpmpp_2m_sde_with_eta_zero_is_the_ode_solver():
    sigmas = karras(15, 0.03, 14.6)
    x0 = _start(sigmas[0])
    a = _ours("dpmpp_2m_sde", x0, sigmas, eta=0.0)
    np.testing.assert_allclose(a, _ours("dpmpp_2m", x0, sigmas), rtol=1e-10)


@pytest.mark.parametrize("algo,solver", [("dpmsolver++", "midpoint"), ("sde-dpmsolver++", "midpoint"),
                                         ("sde-dpmsolver++", "heun")])
def test_dpmpp_2m_flow_matches_diffusers(algo, solver):
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type=algo, solver_order=2,
                                                  prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=3.0, final_sigmas_type="zero", solver_type=solver)
    sched.set_timesteps(20)
    sigmas = sched.sigmas.tolist()
    x0 = make_noise(7, SHAPE).astype(np.float64)
    name = "dpmpp_2m" if algo == "dpmsolver++" else "dpmpp_2m_sde"
    noise = (Predrawn(20), Predrawn(20)) if name == "dpmpp_2m_sde" else (None, None)
    theirs = _run_dpm(sched, x0, noise=noise[0], flow=True)
    opts = {"solver_type": solver} if name == "dpmpp_2m_sde" else {}
    ours = SAMPLERS[name](flow_denoiser, x0.copy(), sigmas, noise_sampler=noise[1], flow=True, **opts)
    assert rel(ours, theirs) < RTOL


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers(eta):
    sched = diffusers.DDIMScheduler(**SD, steps_offset=1, timestep_spacing="leading", set_alpha_to_one=True,
                                    clip_sample=False)
    sched.set_timesteps(25)
    ac = sched.alphas_cumprod.double()
    table = DiscreteSchedule.scaled_linear()
    sigmas = ddim_uniform(25, model_schedule=table)
    expect = [math.sqrt((1 - ac[t]) / ac[t]) for t in sched.timesteps.tolist()] + [0.0]
    np.testing.assert_allclose(sigmas, expect, rtol=1e-5)

    x0 = _start(sigmas[0])
    sample = torch.from_numpy(x0 * math.sqrt(ac[sched.timesteps[0]])).float()
    noise = Predrawn(25)
    for i, t in enumerate(sched.timesteps):
        a = float(ac[t])
        s = math.sqrt((1 - a) / a)
        x_ve = sample / math.sqrt(a)
        eps = (x_ve - denoiser(x_ve, s)) / s
        sample = sched.step(eps, t, sample, eta=eta, variance_noise=noise.torch()).prev_sample
    ours = _ours("ddim", x0, sigmas, eta=eta, noise_sampler=Predrawn(25))
    assert rel(ours, sample) < RTOL


@pytest.mark.parametrize("n", [1, 7, 33, 50])
def test_ddim_uniform_matches_diffusers_leading_spacing(n):
    sched = diffusers.DDIMScheduler(**SD, steps_offset=1, timestep_spacing="leading")
    sched.set_timesteps(n)
    ac = sched.alphas_cumprod.double().numpy()
    table = DiscreteSchedule(alphas_cumprod=ac)
    expect = [math.sqrt((1 - ac[t]) / ac[t]) for t in sched.timesteps.tolist()] + [0.0]
    np.testing.assert_allclose(ddim_uniform(n, model_schedule=table), expect, rtol=1e-12)


def test_lcm_matches_diffusers(monkeypatch):
    from diffusers.schedulers import scheduling_lcm as mod

    sched = diffusers.LCMScheduler(**SD, original_inference_steps=50, timestep_scaling=10.0)
    sched.set_timesteps(6)
    table = DiscreteSchedule.scaled_linear()
    sigmas = [table.sigmas[t] for t in sched.timesteps.tolist()] + [0.0]
    ac = sched.alphas_cumprod.double()

    def c_skip_out(t):  # LCM boundary condition (Luo et al. 2023, eq. 9), part of the model wrapper
        st = t * 10.0
        return 0.25 / (st * st + 0.25), st / math.sqrt(st * st + 0.25)

    def lcm_model(x, sigma):  # what an engine's LCM wrapper presents (k-diffusion space)
        t = round(table.timestep(sigma))
        skip, out = c_skip_out(t)
        return out * denoiser(x, sigma) + skip * x / math.sqrt(1 + sigma * sigma)

    x0 = _start(sigmas[0])
    theirs_noise = Predrawn(6)
    monkeypatch.setattr(mod, "randn_tensor", theirs_noise.torch)
    sample = torch.from_numpy(x0 * math.sqrt(ac[sched.timesteps[0]])).float()
    for t in sched.timesteps:
        a = float(ac[t])
        s = math.sqrt((1 - a) / a)
        x_ve = sample / math.sqrt(a)
        eps = (x_ve - denoiser(x_ve, s)) / s
        sample = sched.step(eps, t, sample).prev_sample
    ours = SAMPLERS["lcm"](lcm_model, x0.copy(), sigmas, noise_sampler=Predrawn(6))
    assert theirs_noise.k == 5
    assert rel(ours, sample) < RTOL


@pytest.mark.parametrize("name", ["flow_euler", "euler"])
def test_flow_euler_matches_diffusers(name):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(16)
    sigmas = sched.sigmas.tolist()
    np.testing.assert_allclose(normal(16, model_schedule=FlowSchedule(shift=3.0)), sigmas, rtol=1e-5, atol=1e-7)
    x0 = make_noise(7, SHAPE).astype(np.float64)
    sample = torch.from_numpy(x0).float()
    for i, t in enumerate(sched.timesteps):
        s = sigmas[i]
        v = (sample - flow_denoiser(sample, s)) / s
        sample = sched.step(v, t, sample).prev_sample
    ours = SAMPLERS[name](flow_denoiser, x0.copy(), sigmas)
    assert rel(ours, sample) < RTOL


# --------------------------------------------------------------------------- schedules
@pytest.fixture(scope="module")
def sd_range():
    """diffusers' own (float32-computed) sigma range, so the formulas are compared exactly."""
    ac = diffusers.EulerDiscreteScheduler(**SD).alphas_cumprod.double()
    sig = ((1 - ac) / ac) ** 0.5
    return float(sig[0]), float(sig[-1])


@pytest.mark.parametrize("n", [2, 7, 30])
def test_karras_exponential_beta_match_diffusers(n, sd_range):
    lo, hi = sd_range
    for fn, flag in [(karras, "use_karras_sigmas"), (exponential, "use_exponential_sigmas"), (beta, "use_beta_sigmas")]:
        sched = diffusers.EulerDiscreteScheduler(**SD, **{flag: True})
        sched.set_timesteps(n)
        np.testing.assert_allclose(fn(n, lo, hi), sched.sigmas.numpy(), rtol=2e-6, atol=1e-7, err_msg=flag)


@pytest.mark.parametrize("n", [10, 28])
def test_normal_and_simple_match_diffusers_spacings(n):
    sched = diffusers.EulerDiscreteScheduler(**SD, timestep_spacing="linspace")
    table = DiscreteSchedule(alphas_cumprod=sched.alphas_cumprod.double().numpy())  # diffusers' float32 table
    sched.set_timesteps(n)  # integer timesteps for these n, where linear == log-linear interpolation
    np.testing.assert_allclose(normal(n, model_schedule=table), sched.sigmas.numpy(), rtol=2e-6)
    if 1000 % n == 0:
        sched = diffusers.EulerDiscreteScheduler(**SD, timestep_spacing="trailing")
        sched.set_timesteps(n)
        np.testing.assert_allclose(simple(n, model_schedule=table), sched.sigmas.numpy(), rtol=2e-6)


def test_discrete_schedule_matches_diffusers_tables():
    for kind, kw in [("scaled_linear", SD), ("linear", dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02))]:
        sched = diffusers.DDPMScheduler(**kw)
        ac = sched.alphas_cumprod.double().numpy()
        ours = DiscreteSchedule.scaled_linear() if kind == "scaled_linear" else DiscreteSchedule.linear()
        np.testing.assert_allclose(ours.alphas_cumprod, ac, rtol=2e-6)
        np.testing.assert_allclose(ours.sigmas, np.sqrt((1 - ac) / ac), rtol=1e-4)  # diffusers: float32 (ours float64, exact)
        # sigma <-> timestep interpolation agrees with diffusers' _sigma_to_t (log-sigma interpolation)
        euler = diffusers.EulerDiscreteScheduler(**kw)
        log_sigmas = np.log(ours.sigmas)
        for s in [0.05, 0.3, 1.0, 4.2, 11.0]:
            assert abs(ours.timestep(s) - float(euler._sigma_to_t(np.array(s), log_sigmas))) < 1e-6
            assert ours.sigma(ours.timestep(s)) == pytest.approx(s, rel=1e-12)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_static_shift_matches_diffusers(shift):
    for n in [4, 20, 33]:
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
        sched.set_timesteps(n)
        np.testing.assert_allclose(normal(n, model_schedule=FlowSchedule(shift=shift)), sched.sigmas.numpy(),
                                   rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("seq_len", [256, 1024, 4096, 6000])
def test_flow_dynamic_shift_matches_diffusers(seq_len):
    cfg = dict(base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, **cfg)
    m = (cfg["max_shift"] - cfg["base_shift"]) / (cfg["max_image_seq_len"] - cfg["base_image_seq_len"])
    mu_ref = seq_len * m + (cfg["base_shift"] - m * cfg["base_image_seq_len"])  # diffusers' calculate_shift
    mu = flux_mu(seq_len)
    assert mu == pytest.approx(mu_ref, rel=1e-12)
    n = 20
    sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / n, n), mu=mu)  # what the Flux pipeline passes
    fs = FlowSchedule(mu=mu, multiplier=1.0, num_timesteps=10000)  # ComfyUI's Flux table
    np.testing.assert_allclose(simple(n, model_schedule=fs), sched.sigmas.numpy(), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(fs.shift_sigma(np.linspace(1.0, 1.0 / n, n)), sched.sigmas.numpy()[:-1], rtol=2e-6)
