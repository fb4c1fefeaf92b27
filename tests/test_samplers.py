"""Sampler math: analytic Gaussian cases, framework parity, seeded noise, ops, schedules, guidance."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from spriteforge.errors import SpriteForgeError
from spriteforge.samplers import (SAMPLERS, SCHEDULES, STOCHASTIC, DiscreteSchedule, FlowSchedule, NoiseSampler,
                                  cfg, cfg_rescale, dynamic_threshold, from_epsilon, from_velocity, get_sigmas,
                                  make_noise, sigmas_for_denoise)
from spriteforge.engines.ops import ops_for
from spriteforge.samplers.beta_dist import beta_ppf, betainc

SAMPLERS_DIR = Path(__file__).resolve().parents[1] / "samplers"

# --------------------------------------------------------------------------- analytic Gaussian case
# Data x0 ~ N(MU, S^2).  VE: x = x0 + sigma n, the ideal denoiser is the posterior mean
#   D(x, sigma) = MU + S^2/(S^2 + sigma^2) (x - MU).
# Flow: x = (1-t) x0 + t n ~ N((1-t) MU, (1-t)^2 S^2 + t^2) and Cov(x0, x) = (1-t) S^2, so
#   D(x, t) = MU + (1-t) S^2 / ((1-t)^2 S^2 + t^2) (x - (1-t) MU).
# The probability-flow ODE maps x = m(sigma) + v(sigma)^(1/2) z to MU + S z exactly, so a deterministic
# sampler started from z must return ~MU + S z.  LCM needs a *consistency* function (the ODE's
# endpoint, Song et al. 2023), which here is D_c(x, sigma) = MU + S (x - m(sigma)) / sqrt(v(sigma)).
MU, S = 0.5, 0.8


def ve_denoiser(x, s):
    return MU + (S * S / (S * S + s * s)) * (x - MU)


def flow_denoiser(x, t):
    return MU + ((1 - t) * S * S / ((1 - t) ** 2 * S * S + t * t)) * (x - (1 - t) * MU)


def ve_consistency(x, s):
    return MU + (S / math.sqrt(S * S + s * s)) * (x - MU)


def flow_consistency(x, t):
    return MU + (S / math.sqrt((1 - t) ** 2 * S * S + t * t)) * (x - (1 - t) * MU)


def _marginal(sigma0, flow):
    """Mean and std of x at the first level (for the usual sigma_max this is noise * sigma_max
    up to < 0.2% for VE, and exactly the noise for flow at t = 1)."""
    if flow:
        return (1 - sigma0) * MU, math.sqrt((1 - sigma0) ** 2 * S * S + sigma0 * sigma0)
    return MU, math.sqrt(S * S + sigma0 * sigma0)


# steps and relative-std tolerance per sampler, from its order of accuracy: 1st-order methods need
# more steps; ancestral Euler loses ~S^2 (dsigma)^2 / sigma^2 of variance per step (weak order 1);
# LCM with the exact consistency function is exact at any step count.
PLAN = {
    "euler": (300, 0.012), "flow_euler": (300, 0.012), "ddim": (300, 0.012),
    "euler_ancestral": (300, 0.02), "flow_euler_ancestral": (300, 0.02),
    "heun": (100, 0.008), "dpmpp_2m": (100, 0.008), "dpmpp_2m_sde": (200, 0.012), "lcm": (60, 1e-9),
}


def _case(name, flow):
    model = {(False, False): ve_denoiser, (True, False): flow_denoiser,
             (False, True): ve_consistency, (True, True): flow_consistency}[(flow, name == "lcm")]
    return model, (FlowSchedule(shift=3.0) if flow else DiscreteSchedule.scaled_linear())


def exact_output_moments(fn, model, sigmas, m0, s0, flow):
    """Exact mean and std of a sampler's output distribution for an affine denoiser.

    The output is affine in the start noise z and the step noises n_k: out = c + a z + sum_k b_k n_k,
    so with all inputs standard normal, mean = c and var = a^2 + sum b_k^2.  One batched run finds
    c, a and every b_k: item 0 starts at z = 1, item k+1 gets n_k = 1, the last item gets only zeros.
    """
    batch = len(sigmas) + 2  # at most one noise draw per step
    x = np.full(batch, m0, dtype=np.float64)
    x[0] += s0
    draws = []

    def one_hot(*_):
        e = np.zeros(batch)
        e[len(draws) + 1] = 1.0
        draws.append(e)
        return e

    out = fn(model, x, sigmas, noise_sampler=one_hot, flow=flow)
    c = out[-1]
    return float(c), float(np.sqrt(((out[:-1] - c) ** 2).sum()))


def test_plan_covers_every_sampler():
    assert set(PLAN) == set(SAMPLERS)


@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_every_sampler_reproduces_gaussian_data_exactly_computed(schedule, flow):
    """Every sampler x schedule: the *exact* output mean/std (no Monte-Carlo error) match the data."""
    failures = []
    for name, fn in SAMPLERS.items():
        steps, tol = PLAN[name]
        model, model_schedule = _case(name, flow)
        sigmas = SCHEDULES[schedule](steps, model_schedule=model_schedule)
        mean, std = exact_output_moments(fn, model, sigmas, *_marginal(sigmas[0], flow), flow)
        if abs(mean - MU) > max(tol, 1e-9) * S or abs(std / S - 1) > tol:
            failures.append(f"{name}: mean {mean - MU:+.2e} std {std / S - 1:+.3%}")
    assert not failures, failures


@pytest.mark.parametrize("flow,schedule", [(False, "karras"), (True, "simple")], ids=["ve", "flow"])
def test_every_sampler_on_20000_samples(schedule, flow):
    """The same on 20000 scalar samples with real noise (also checks the exact-moments shortcut)."""
    n = 20000
    failures = []
    for name, fn in SAMPLERS.items():
        steps, tol = PLAN[name]
        model, model_schedule = _case(name, flow)
        sigmas = SCHEDULES[schedule](steps, model_schedule=model_schedule)
        m0, s0 = _marginal(sigmas[0], flow)
        z = np.random.default_rng(0).standard_normal(n)
        rng = np.random.default_rng(1)
        out = fn(model, m0 + s0 * z, sigmas, noise_sampler=lambda *_: rng.standard_normal(n), flow=flow)
        if name in STOCHASTIC:  # against the data, allowing 4 standard errors
            ok = abs(out.mean() - MU) < tol * S + 4 * S / math.sqrt(n) and abs(out.std() / S - 1) < tol + 4 / math.sqrt(2 * n)
        else:  # against the exact ODE map of the same starting points
            ok = abs(out.mean() - (MU + S * z.mean())) < tol * S and abs(out.std() / (S * z.std()) - 1) < tol
        if not ok:
            failures.append(f"{name}: mean {out.mean() - MU:+.4f} std {out.std() / S - 1:+.3%}")
    assert not failures, failures


def test_deterministic_samplers_converge_to_the_ode_solution():
    """With a fine schedule ending near 0 the ODE samplers hit MU + S z per sample; error falls with the order."""
    z = np.random.default_rng(3).standard_normal(2000)
    errs = {}
    for name, order in [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)]:
        for n in (25, 100):
            sig = SCHEDULES["karras"](n, 0.0005, 20.0)
            out = SAMPLERS[name](ve_denoiser, MU + math.sqrt(S * S + 400.0) * z, sig)
            errs[name, n] = np.abs(out - (MU + S * z)).max()
        ratio = errs[name, 25] / errs[name, 100]
        assert ratio > (3.0 if order == 1 else 10.0), (name, errs)
    assert errs["heun", 100] < 4e-3 and errs["dpmpp_2m", 100] < 4e-3 and errs["euler", 100] < 0.08


# --------------------------------------------------------------------------- calling convention
def test_callback_sigma_types_and_sigma_containers():
    torch = pytest.importorskip("torch")
    seen, calls = [], []

    def model(x, sigma, **kw):
        calls.append((type(sigma), kw))
        return ve_denoiser(x, sigma)

    base = SCHEDULES["karras"](6, 0.03, 14.6)
    x0 = make_noise(1, (2, 4)).astype(np.float64) * base[0]
    outs = []
    for container in (base, tuple(base), np.array(base), torch.tensor(base, dtype=torch.float64)):
        seen.clear()
        outs.append(SAMPLERS["dpmpp_2m"](model, x0.copy(), container, extra_args={"cond": 1}, callback=seen.append))
    assert all(t is float and kw == {"cond": 1} for t, kw in calls)
    assert [d["i"] for d in seen] == list(range(6))
    assert seen[0]["sigma"] == base[0] and seen[-1]["sigma_next"] == 0.0 and "denoised" in seen[0] and "x" in seen[0]
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_numpy_and_torch_give_identical_results(name):
    torch = pytest.importorskip("torch")
    shape = (3, 2, 5, 5)
    sig = SCHEDULES["karras"](8, 0.03, 14.6)
    x_np = make_noise(11, shape) * np.float32(sig[0])

    def run(x, to_array):
        ns = NoiseSampler(5, shape, to_array)
        return SAMPLERS[name](ve_denoiser, x, sig, noise_sampler=ns)

    a = run(x_np.copy(), None)
    b = run(torch.from_numpy(x_np.copy()), torch.from_numpy)
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32 and a.dtype == np.float32
    np.testing.assert_allclose(b.numpy(), a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_mlx_gives_the_numpy_results(name):
    mx = pytest.importorskip("mlx.core")
    shape = (2, 2, 4, 4)
    sig = SCHEDULES["karras"](8, 0.03, 14.6)
    x = make_noise(11, shape) * np.float32(sig[0])
    a = SAMPLERS[name](ve_denoiser, x.copy(), sig, noise_sampler=NoiseSampler(5, shape))
    b = SAMPLERS[name](ve_denoiser, mx.array(x), mx.array(sig), noise_sampler=NoiseSampler(5, shape, mx.array))
    assert type(b).__module__.startswith("mlx")
    np.testing.assert_allclose(np.array(b), a, rtol=1e-5, atol=1e-5)


def test_default_noise_sampler_is_deterministic_and_follows_the_array_type():
    torch = pytest.importorskip("torch")
    sig = SCHEDULES["karras"](5, 0.03, 14.6)
    x = make_noise(2, (2, 3)) * np.float32(sig[0])
    a = SAMPLERS["euler_ancestral"](ve_denoiser, x.copy(), sig)
    b = SAMPLERS["euler_ancestral"](ve_denoiser, x.copy(), sig)
    c = SAMPLERS["euler_ancestral"](ve_denoiser, torch.from_numpy(x.copy()), sig, ops=ops_for(torch.zeros(1)))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(c.numpy(), a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
def test_repeated_and_zero_sigmas_are_safe(flow):
    sig = [1.0, 1.0, 0.8, 0.8, 0.3, 0.0, 0.0] if flow else [14.6, 5.0, 5.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    x = make_noise(3, (2, 5)).astype(np.float64) * sig[0]
    model = flow_denoiser if flow else ve_denoiser
    for name, fn in SAMPLERS.items():
        out = fn(model, x.copy(), sig, noise_sampler=NoiseSampler(1, x.shape), flow=flow)
        assert np.all(np.isfinite(out)), name
    assert SAMPLERS["euler"](model, x, []) is x and SAMPLERS["heun"](model, x, [0.0]) is x


def test_flow_ancestral_with_eta_zero_is_flow_euler_and_ddim_eta_zero_is_euler():
    sig = SCHEDULES["simple"](12, model_schedule=FlowSchedule(3.0))
    x = make_noise(4, (2, 8)).astype(np.float64)
    e = SAMPLERS["flow_euler"](flow_denoiser, x.copy(), sig)
    np.testing.assert_allclose(SAMPLERS["flow_euler_ancestral"](flow_denoiser, x.copy(), sig, eta=0.0), e, rtol=1e-12)
    np.testing.assert_allclose(SAMPLERS["euler"](flow_denoiser, x.copy(), sig), e, rtol=1e-12)
    np.testing.assert_allclose(SAMPLERS["ddim"](flow_denoiser, x.copy(), sig, flow=True), e, rtol=1e-12)


@pytest.mark.parametrize("name,eta", [("euler_ancestral", 1.0), ("euler_ancestral", 0.5), ("flow_euler_ancestral", 1.0),
                                      ("dpmpp_2m_sde", 1.0), ("dpmpp_2m_sde", 0.4), ("lcm", None), ("ddim", 0.7)])
@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
def test_one_noisy_step_with_an_oracle_lands_on_the_right_noise_level(name, eta, flow):
    """Given the true x0, one re-noising step from x = a x0 + s n must give a' x0 + s' n' with n' ~ N(0, 1)."""
    rng = np.random.default_rng(5)
    s, s1 = (0.7, 0.45) if flow else (3.0, 1.2)
    x0 = rng.standard_normal(200000) * S + MU
    x = (1 - s) * x0 + s * rng.standard_normal(x0.shape) if flow else x0 + s * rng.standard_normal(x0.shape)
    out = SAMPLERS[name](lambda *_: x0, x, [s, s1], noise_sampler=lambda *_: rng.standard_normal(x0.shape),
                         flow=flow, **({"eta": eta} if eta is not None else {}))
    resid = (out - ((1 - s1) if flow else 1.0) * x0) / s1
    assert abs(resid.mean()) < 0.01 and abs(resid.std() - 1) < 0.006
    assert abs(np.corrcoef(resid, x0)[0, 1]) < 0.01


def test_denoiser_wrappers():
    table = DiscreteSchedule.scaled_linear()
    x, sigma = np.linspace(-2, 2, 8), 3.0
    eps_true = (x - ve_denoiser(x, sigma)) / sigma
    c_in = 1 / math.sqrt(1 + sigma * sigma)
    seen = []

    def eps_net(x_in, t):
        seen.append(t)
        return eps_true * (x_in / (x * c_in))  # == eps_true when given the scaled input

    np.testing.assert_allclose(from_epsilon(eps_net, table)(x, sigma), ve_denoiser(x, sigma), rtol=1e-12)
    assert seen[0] == pytest.approx(table.timestep(sigma))
    v_net = lambda xt, t: (xt - flow_denoiser(xt, t)) / t  # noqa: E731  velocity of the flow
    np.testing.assert_allclose(from_velocity(v_net)(x, 0.6), flow_denoiser(x, 0.6), rtol=1e-12)


# --------------------------------------------------------------------------- seeded noise
def test_make_noise_is_seeded_float32_and_batch_independent():
    a = make_noise(42, (4, 3, 8, 8))
    assert a.dtype == np.float32 and a.shape == (4, 3, 8, 8)
    np.testing.assert_array_equal(a, make_noise(42, (4, 3, 8, 8)))
    np.testing.assert_array_equal(make_noise(42, (1, 3, 8, 8))[0], a[0])
    np.testing.assert_array_equal(make_noise(43, (1, 3, 8, 8))[0], a[1])
    np.testing.assert_array_equal(make_noise(42, (2, 3, 8, 8), batch_index_offset=2), a[2:])
    ref = np.random.Generator(np.random.PCG64(44)).standard_normal((3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(a[2], ref)
    assert not np.array_equal(a[0], a[1])
    assert abs(a.std() - 1) < 0.05
    make_noise(2 ** 64 - 1, (2, 3))  # largest ComfyUI seed, and beyond, work
    make_noise(-1, (1, 3))


def test_noise_sampler_is_deterministic_per_item_and_batch_independent():
    torch = pytest.importorskip("torch")
    big = NoiseSampler(9, (4, 2, 3))
    small = NoiseSampler(9, (1, 2, 3))
    shifted = NoiseSampler(9, (2, 2, 3), batch_index_offset=2)
    for _ in range(3):
        b, s, sh = big(1.0, 0.5), small(1.0, 0.5), shifted()
        np.testing.assert_array_equal(s[0], b[0])
        np.testing.assert_array_equal(sh, b[2:])
    fresh = NoiseSampler(9, (4, 2, 3))
    first = fresh()
    assert not np.array_equal(first, fresh())  # each call advances the stream
    assert not np.array_equal(first[0], make_noise(9, (1, 2, 3))[0])  # separate from the initial noise
    t = NoiseSampler(9, (4, 2, 3), to_array=lambda a: torch.from_numpy(a).to(torch.float64))()
    assert t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), first)


def test_stochastic_sampler_result_is_batch_size_independent():
    sig = SCHEDULES["karras"](10, 0.03, 14.6)
    shape4, shape1 = (4, 2, 3, 3), (1, 2, 3, 3)
    for name in sorted(STOCHASTIC):
        x4 = make_noise(100, shape4) * np.float32(sig[0])
        x1 = make_noise(100, shape1) * np.float32(sig[0])
        r4 = SAMPLERS[name](ve_denoiser, x4, sig, noise_sampler=NoiseSampler(100, shape4))
        r1 = SAMPLERS[name](ve_denoiser, x1, sig, noise_sampler=NoiseSampler(100, shape1))
        np.testing.assert_allclose(r1[0], r4[0], rtol=1e-6, err_msg=name)


# --------------------------------------------------------------------------- ops and guidance
def _frameworks():
    out = [("numpy", lambda a: a, lambda a: a)]
    try:
        import torch
        out.append(("torch", torch.from_numpy, lambda t: t.numpy()))
    except ImportError:  # pragma: no cover
        pass
    try:  # MLX (Apple silicon; also a CPU build on Linux): checked where installed
        import mlx.core as mx
        out.append(("mlx", mx.array, np.array))
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("fw", _frameworks(), ids=lambda f: f[0])
def test_ops_for(fw):
    name, to, back = fw
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4, 5)).astype(np.float32) * 3
    ops = ops_for(to(x))
    assert ops.name == name
    q = back(ops.quantile_per_sample(to(x), 0.9))
    assert q.shape == (3, 1, 1, 1)
    np.testing.assert_allclose(q.ravel(), np.quantile(x.reshape(3, -1), 0.9, axis=1), rtol=1e-6)
    np.testing.assert_allclose(back(ops.std_per_sample(to(x))).ravel(), x.reshape(3, -1).std(axis=1, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(back(ops.mean_per_sample(to(x))).ravel(), x.reshape(3, -1).mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(back(ops.clip(to(x), -1.0, 1.0)), np.clip(x, -1, 1))
    np.testing.assert_array_equal(back(ops.where(to(x > 0), to(x), to(-x))), np.abs(x))
    np.testing.assert_array_equal(back(ops.maximum(to(x), 0.5)), np.maximum(x, 0.5))
    np.testing.assert_allclose(back(ops.sqrt(ops.abs(to(x)))), np.sqrt(np.abs(x)), rtol=1e-6)
    back_np = ops.to_numpy(ops.from_numpy(x[:1] * 2, to(x)))
    np.testing.assert_array_equal(back_np, x[:1] * 2)
    np.testing.assert_allclose(back(dynamic_threshold(to(x), 0.9, ops=ops)), dynamic_threshold(x, 0.9), rtol=1e-5, atol=1e-6)
    c, u = x[:, :1] * 0.5, x[:, 1:]
    np.testing.assert_allclose(back(cfg_rescale(to(c), to(u), 4.0, 0.7, x=to(x[:, :1]), sigma=1.5, ops=ops)),
                               cfg_rescale(c, u, 4.0, 0.7, x=x[:, :1], sigma=1.5), rtol=1e-4, atol=1e-5)
    with pytest.raises(SpriteForgeError):
        ops_for([1.0, 2.0])


def test_guidance_cfg_rescale_and_dynamic_threshold():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    cond, uncond = rng.standard_normal((2, 4, 6, 6)), rng.standard_normal((2, 4, 6, 6))
    np.testing.assert_allclose(cfg(cond, uncond, 7.5), uncond + 7.5 * (cond - uncond))
    np.testing.assert_allclose(cfg(cond, uncond, 1.0), cond)
    # phi = 1: the guided prediction has exactly cond's per-sample std; phi = 0: plain cfg
    g = cfg_rescale(cond, uncond, 7.0, phi=1.0)
    np.testing.assert_allclose(g.reshape(2, -1).std(axis=1, ddof=1), cond.reshape(2, -1).std(axis=1, ddof=1))
    np.testing.assert_allclose(cfg_rescale(cond, uncond, 7.0, phi=0.0), cfg(cond, uncond, 7.0))
    # in v-space for denoised inputs: phi = 0 is still plain cfg; torch agrees with numpy
    x, sigma = rng.standard_normal((2, 4, 6, 6)) * 3, 2.5
    np.testing.assert_allclose(cfg_rescale(cond, uncond, 5.0, phi=0.0, x=x, sigma=sigma), cfg(cond, uncond, 5.0))
    a = cfg_rescale(cond, uncond, 5.0, phi=0.7, x=x, sigma=sigma)
    b = cfg_rescale(*(torch.from_numpy(v) for v in (cond, uncond)), 5.0, phi=0.7, x=torch.from_numpy(x), sigma=sigma,
                    ops=ops_for(torch.zeros(1)))
    np.testing.assert_allclose(b.numpy(), a, rtol=1e-10)
    alpha = 1 / math.sqrt(1 + sigma ** 2)
    v = lambda d: alpha * (x - d) / sigma - alpha * sigma * d  # noqa: E731  Salimans & Ho v for x0 = d
    va = v(a).reshape(2, -1).std(axis=1, ddof=1)
    vc, vg = v(cond).reshape(2, -1).std(axis=1, ddof=1), v(cfg(cond, uncond, 5.0)).reshape(2, -1).std(axis=1, ddof=1)
    assert np.all(va < vg) and np.all(va > vc * 0.99)
    flow_out = cfg_rescale(cond, uncond, 5.0, phi=1.0, x=x, sigma=0.4, flow=True)
    vf = ((x - flow_out) / 0.4).reshape(2, -1).std(axis=1, ddof=1)
    np.testing.assert_allclose(vf, ((x - cond) / 0.4).reshape(2, -1).std(axis=1, ddof=1))

    x0 = rng.standard_normal((3, 4, 8, 8)) * np.array([0.3, 2.0, 5.0])[:, None, None, None]
    out = dynamic_threshold(x0, 0.95)
    s = np.maximum(np.quantile(np.abs(x0).reshape(3, -1), 0.95, axis=1), 1.0)[:, None, None, None]
    np.testing.assert_allclose(out, np.clip(x0, -s, s) / s)
    np.testing.assert_array_equal(out[0], x0[0])  # quantile < 1: untouched
    assert np.abs(out).max() <= 1.0 + 1e-12
    np.testing.assert_allclose(dynamic_threshold(torch.from_numpy(x0), 0.95, ops=ops_for(torch.zeros(1))).numpy(), out, rtol=1e-12)


# --------------------------------------------------------------------------- schedules
def test_beta_ppf_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    grid = np.concatenate([[0.0, 1e-12, 1e-6], np.linspace(0, 1, 101)[1:-1], [1 - 1e-6, 1.0]])
    for a, b in [(0.6, 0.6), (0.5, 0.5), (1.0, 1.0), (2.0, 5.0), (0.3, 3.0), (5.0, 0.4), (12.0, 12.0)]:
        ours = np.array([beta_ppf(p, a, b) for p in grid])
        np.testing.assert_allclose(ours, stats.beta.ppf(grid, a, b), rtol=0, atol=1e-10, err_msg=f"{a},{b}")
        xs = np.linspace(0, 1, 51)
        np.testing.assert_allclose([betainc(a, b, v) for v in xs], stats.beta.cdf(xs, a, b), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("table", [DiscreteSchedule.scaled_linear(), DiscreteSchedule.linear(), FlowSchedule(3.0),
                                   FlowSchedule.flux(1024, 1024)], ids=["sd", "pixart", "sd3", "flux"])
def test_schedule_shape(name, table):
    for n in (1, 4, 20, 50):
        sig = SCHEDULES[name](n, model_schedule=table)
        assert all(type(s) is float for s in sig) and sig[-1] == 0.0
        assert len(sig) == n + 1 or (name == "beta" and len(sig) <= n + 1)
        assert all(a > b for a, b in zip(sig, sig[1:])), sig
        assert sig[0] <= table.sigma_max * (1 + 1e-9) and sig[-2] >= table.sigma_min * (1 - 1e-9)
    assert SCHEDULES[name](0, model_schedule=table) == []


def test_schedules_without_model_schedule_and_errors():
    for name in SCHEDULES:
        sig = SCHEDULES[name](10, 0.1, 10.0)
        assert sig[-1] == 0.0 and len(sig) == 11 and sig[0] <= 10.0 + 1e-12
        assert sig[0] == pytest.approx(10.0) or name == "ddim_uniform"  # DDIM's skipping never starts at the top
    assert SCHEDULES["normal"](4, 1.0, 4.0) == pytest.approx([4.0, 3.0, 2.0, 1.0, 0.0])
    with pytest.raises(SpriteForgeError):
        SCHEDULES["karras"](10)
    with pytest.raises(SpriteForgeError):
        get_sigmas("nope", 10, DiscreteSchedule())
    with pytest.raises(SpriteForgeError):
        SCHEDULES["beta"](10, 0.1, 10.0, alpha=0.0)
    with pytest.raises(SpriteForgeError):
        SAMPLERS["dpmpp_2m_sde"](ve_denoiser, np.zeros(2), [1.0, 0.0], solver_type="rk4")


def test_discrete_and_flow_schedule_conversions():
    d = DiscreteSchedule.linear()
    assert len(d) == 1000 and d.sigma_min == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)))
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    assert d.sigma(999) == pytest.approx(math.sqrt((1 - ac[-1]) / ac[-1]), rel=1e-12)
    for t in (0.0, 1.0, 250.5, 998.25, 999.0):
        assert d.timestep(d.sigma(t)) == pytest.approx(t, abs=1e-9)
    mid = d.sigma(10.5)
    assert math.log(mid) == pytest.approx(0.5 * (math.log(d.sigmas[10]) + math.log(d.sigmas[11])))
    assert d.timestep(float(d.sigmas[37]) * 1.001, quantize=True) == 37.0
    assert d.timestep(1e-9) == 0.0 and d.timestep(1e9) == 999.0

    f = FlowSchedule(shift=3.0)
    assert f.sigma_max == 1.0 and f.shift_sigma(0.5) == pytest.approx(0.75)
    assert f.timestep(0.25) == 250.0 and f.sigma(500.0) == pytest.approx(0.75)
    fx = FlowSchedule(mu=1.15)
    t = 0.3
    assert fx.shift_sigma(t) == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1 / t - 1))
    assert fx.shift_sigma(0.0) == 0.0 and fx.shift_sigma(1.0) == 1.0
    assert FlowSchedule.flux(1024, 1024).mu == pytest.approx(1.15)
    assert FlowSchedule.flux(256, 256).mu == pytest.approx(0.5)


def test_sigmas_for_denoise_takes_the_tail():
    table = DiscreteSchedule.scaled_linear()
    full = lambda n: SCHEDULES["karras"](n, model_schedule=table)  # noqa: E731
    assert sigmas_for_denoise(full, 20, 1.0) == full(20)
    assert sigmas_for_denoise(full, 20, None) == full(20)
    part = sigmas_for_denoise(full, 20, 0.5)
    assert part == full(40)[-21:] and len(part) == 21 and part[-1] == 0.0
    assert sigmas_for_denoise(full, 10, 0.3) == full(33)[-11:]
    assert sigmas_for_denoise(full, 10, 0.0) == []
    assert get_sigmas("karras", 20, table, denoise=0.5) == part


# --------------------------------------------------------------------------- house rules
def test_no_framework_import_at_module_top():
    for path in SAMPLERS_DIR.glob("*.py"):
        for line in path.read_text().splitlines():
            assert not re.match(r"^(import|from)\s+(torch|mlx)\b", line), f"{path.name}: {line}"
