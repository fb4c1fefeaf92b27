"""Our samplers in ComfyUI's calling convention (spriteforge.comfy_bridge), without ComfyUI.

ComfyUI calls a sampler function as ``fn(model, x, sigmas, extra_args, callback, disable)`` and the
model as ``model(x, sigma * s_in, **extra_args)`` (sigma a tensor per batch item, extra_args
``model_options``/``seed``/``denoise_mask``).  The denoisers here are a tiny real-format SD-style
``UNet2DConditionModel`` (built with the real diffusers class, presented as ComfyUI's EPS
parametrisation: x0 = x - sigma eps(x / sqrt(1 + sigma^2), t(sigma))) and an analytic Gaussian
denoiser whose probability-flow ODE has a closed-form solution.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spriteforge import comfy_bridge as B  # noqa: E402
from spriteforge.engines.ops import ops_for  # noqa: E402
from spriteforge.samplers import (SAMPLERS, SCHEDULES, DiscreteSchedule, FlowSchedule, NoiseSampler,  # noqa: E402
                                  cfg_rescale, from_epsilon, get_sigmas, make_noise)

SD = DiscreteSchedule.scaled_linear()


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    m = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                             block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                             attention_head_dim=8, norm_num_groups=8)
    return m.eval()


@pytest.fixture(scope="module")
def context():
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 5, 32, generator=g)


class ComfyEps:
    """The tiny UNet as ComfyUI presents an EPS model to a sampler function: model(x, sigma*s_in, **extra_args)."""

    def __init__(self, unet, ctx):
        self.unet, self.ctx, self.seen = unet, ctx, []

    def __call__(self, x, sigma, denoise_mask=None, model_options=None, seed=None):
        assert torch.is_tensor(sigma) and sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype
        self.seen.append({"seed": seed, "model_options": model_options, "denoise_mask": denoise_mask})
        s = sigma.reshape(-1, 1, 1, 1)
        t = torch.from_numpy(np.asarray(SD.timestep(sigma.double().numpy()))).float()
        with torch.no_grad():
            eps = self.unet(x / (s * s + 1).sqrt(), t, encoder_hidden_states=self.ctx.expand(x.shape[0], -1, -1)).sample
        return x - eps * s


def _ours_direct(unet, ctx, name, x, sigmas, seed, **opts):
    """Reference: our own sampler loop on our own eps wrapper (float sigma), as SpriteForge's Sampler runs it."""
    def eps(xin, t, **kw):
        with torch.no_grad():
            return unet(xin, torch.full((xin.shape[0],), float(t)), encoder_hidden_states=ctx.expand(xin.shape[0], -1, -1)).sample

    ns = NoiseSampler(seed, tuple(x.shape), to_array=lambda a: torch.from_numpy(a))
    return SAMPLERS[name](from_epsilon(eps, SD), x, sigmas, noise_sampler=ns, **opts)


EXTRA = {"model_options": {"transformer_options": {}}, "seed": 11, "denoise_mask": None}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_in_comfy_convention_equals_our_loop_on_a_real_unet(unet, context, name):
    sigmas = torch.tensor(get_sigmas("karras", 4, SD), dtype=torch.float32)
    x = torch.from_numpy(make_noise(1, (2, 4, 8, 8))) * sigmas[0]
    model = ComfyEps(unet, context)
    got = B.sampler_function(name, flow=False)(model, x.clone(), sigmas, extra_args=dict(EXTRA), callback=None, disable=True)
    # the model is an eps (VE-space) model, so every sampler runs with flow=False (flow_* ones too)
    want = _ours_direct(unet, context, name, x.clone(), sigmas, seed=EXTRA["seed"], flow=False)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # every call carried ComfyUI's extra_args through
    assert model.seen and all(s["seed"] == 11 and s["model_options"] == EXTRA["model_options"] for s in model.seen)


def test_euler_matches_diffusers_scheduler_on_the_same_unet(unet, context):
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sched.set_timesteps(6)
    sigmas = sched.sigmas.float()  # diffusers' own sigmas (ending with 0)
    x = torch.from_numpy(make_noise(4, (1, 4, 8, 8))) * sigmas[0]
    ref = x.clone()
    for t in sched.timesteps:
        with torch.no_grad():
            eps = unet(sched.scale_model_input(ref, t), t, encoder_hidden_states=context).sample
        ref = sched.step(eps, t, ref).prev_sample
    got = B.sampler_function("euler", flow=False)(ComfyEps(unet, context), x.clone(), sigmas, extra_args=dict(EXTRA),
                                                  callback=None, disable=True)
    torch.testing.assert_close(got, ref, rtol=2e-4, atol=2e-4)


# --------------------------------------------------------------------------- analytic Gaussian data
MU, SDEV = 0.3, 0.5


def gauss_ve(x, sigma, **extra):
    """E[x0 | x] for x0 ~ N(MU, SDEV^2), x = x0 + sigma n (ComfyUI convention: sigma a tensor per item)."""
    s2 = (sigma.reshape(-1, 1, 1, 1) if torch.is_tensor(sigma) else sigma) ** 2
    return (x * SDEV ** 2 + MU * s2) / (SDEV ** 2 + s2)


def gauss_flow(x, t, **extra):
    """E[x0 | x_t] for x0 ~ N(MU, SDEV^2), x_t = (1 - t) x0 + t n."""
    t = t.reshape(-1, 1, 1, 1)
    a = 1.0 - t
    return MU + a * SDEV ** 2 / (a * a * SDEV ** 2 + t * t) * (x - a * MU)


@pytest.mark.parametrize("name,order", [("euler", 1), ("ddim", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_ode_samplers_converge_to_the_closed_form_solution_at_their_order(name, order):
    # PF-ODE of Gaussian data: x(sigma) = MU + (x_T - MU) sqrt(SDEV^2 + sigma^2) / sqrt(SDEV^2 + sigma_T^2)
    errs = []
    for n in (60, 120):
        sigmas = torch.tensor(get_sigmas("karras", n, None, sigma_min=0.002, sigma_max=20.0), dtype=torch.float64)
        xT = torch.from_numpy(make_noise(0, (1, 1, 4, 4))).double() * sigmas[0]
        exact = MU + (xT - MU) * SDEV / math.sqrt(SDEV ** 2 + float(sigmas[0]) ** 2)
        got = B.sampler_function(name, flow=False)(gauss_ve, xT.clone(), sigmas, extra_args={}, callback=None, disable=True)
        errs.append(float((got - exact).abs().max()))
    assert errs[1] < 0.02
    assert 0.6 * 0.5 ** order < errs[1] / errs[0] < 1.4 * 0.5 ** order  # halving the step divides the error by 2^order


def test_flow_parametrisation_converges_to_the_closed_form_solution():
    # x_1 ~ N(0, 1) maps to x_0 = MU + SDEV x_1 along the flow ODE
    x1 = torch.from_numpy(make_noise(2, (1, 1, 4, 4))).double()
    exact = MU + SDEV * x1
    for name in ("euler", "heun", "dpmpp_2m", "flow_euler"):
        errs = []
        for n in (60, 120):
            ts = torch.tensor(get_sigmas("normal", n, FlowSchedule(3.0)), dtype=torch.float64)
            got = B.sampler_function(name, flow=True)(gauss_flow, x1.clone(), ts, extra_args={}, callback=None, disable=True)
            errs.append(float((got - exact).abs().max()))
        assert errs[1] < 0.025 and errs[1] < 0.65 * errs[0], (name, errs)


# --------------------------------------------------------------------------- noise
@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "lcm"])
def test_seed_noise_is_the_same_at_every_batch_size(name):
    sigmas = torch.tensor(get_sigmas("karras", 5, SD), dtype=torch.float32)
    fn = B.sampler_function(name, seed=5)
    x3 = torch.from_numpy(B.initial_noise(5, (3, 4, 4, 4))) * sigmas[0]
    out3 = fn(gauss_ve, x3, sigmas, extra_args={}, callback=None, disable=True)
    for i in range(3):  # item i of a batch at seed 5 == a batch of 1 at seed 5 + i
        x1 = torch.from_numpy(B.initial_noise(5 + i, (1, 4, 4, 4))) * sigmas[0]
        torch.testing.assert_close(x1[0], x3[i])
        out1 = B.sampler_function(name, seed=5 + i)(gauss_ve, x1, sigmas, extra_args={}, callback=None, disable=True)
        torch.testing.assert_close(out1[0], out3[i], rtol=1e-6, atol=1e-6)


def test_batch_index_offset_gives_the_items_own_step_noise():
    sigmas = torch.tensor(get_sigmas("karras", 4, SD), dtype=torch.float32)
    x3 = torch.from_numpy(B.initial_noise(5, (3, 4, 4, 4))) * sigmas[0]
    out3 = B.sampler_function("euler_ancestral", seed=5)(gauss_ve, x3, sigmas, extra_args={}, callback=None, disable=True)
    x1 = torch.from_numpy(B.initial_noise(5, (1, 4, 4, 4), batch_index=[2])) * sigmas[0]  # Latent From Batch index 2
    out1 = B.sampler_function("euler_ancestral", seed=5, batch_index_offset=2)(gauss_ve, x1, sigmas, extra_args={},
                                                                                  callback=None, disable=True)
    torch.testing.assert_close(out1[0], out3[2], rtol=1e-6, atol=1e-6)


def test_step_noise_seed_defaults_to_comfys_extra_args_seed():
    sigmas = torch.tensor(get_sigmas("karras", 4, SD), dtype=torch.float32)
    x = torch.from_numpy(make_noise(0, (1, 4, 4, 4))) * sigmas[0]
    fn = B.sampler_function("euler_ancestral")
    a = fn(gauss_ve, x.clone(), sigmas, extra_args={"seed": 9}, callback=None, disable=True)
    b = B.sampler_function("euler_ancestral", seed=9)(gauss_ve, x.clone(), sigmas, extra_args={}, callback=None, disable=True)
    c = fn(gauss_ve, x.clone(), sigmas, extra_args={"seed": 10}, callback=None, disable=True)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_initial_noise_follows_batch_index():
    n = B.initial_noise(3, (2, 4, 2, 2), batch_index=[4, 1])
    np.testing.assert_array_equal(n[0], make_noise(7, (1, 4, 2, 2))[0])
    np.testing.assert_array_equal(n[1], make_noise(4, (1, 4, 2, 2))[0])
    np.testing.assert_array_equal(B.initial_noise(3, (2, 4, 2, 2)), make_noise(3, (2, 4, 2, 2)))


# --------------------------------------------------------------------------- callback, thresholding
def test_callback_gets_comfys_keys_once_per_step():
    sigmas = torch.tensor(get_sigmas("karras", 3, SD), dtype=torch.float32)
    x = torch.from_numpy(make_noise(0, (1, 4, 4, 4))) * sigmas[0]
    seen = []
    B.sampler_function("heun")(gauss_ve, x, sigmas, extra_args={}, callback=seen.append, disable=True)
    assert [s["i"] for s in seen] == [0, 1, 2]
    for s in seen:
        assert {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(s)
        assert float(s["sigma"]) == float(sigmas[s["i"]])


def test_dynamic_threshold_clamps_the_denoised_estimate():
    def loud(x, sigma, **kw):
        return x * 0 + torch.linspace(-4, 4, x[0].numel()).reshape(x.shape[1:])[None]

    sigmas = torch.tensor([1.0, 0.0])
    x = torch.zeros(1, 1, 4, 4)
    out = B.sampler_function("euler", dynamic_threshold=0.9)(loud, x, sigmas, extra_args={}, callback=None, disable=True)
    d = torch.linspace(-4, 4, 16).reshape(1, 1, 4, 4)
    s = float(torch.quantile(d.abs().flatten(), 0.9))
    torch.testing.assert_close(out, d.clamp(-s, s) / s)  # Imagen: clamp to the percentile, divide by it
    assert float(out.abs().max()) <= 1.0 + 1e-6


def test_unknown_sampler_and_bad_threshold_are_coded_errors():
    from spriteforge.errors import SpriteForgeError

    with pytest.raises(SpriteForgeError):
        B.sampler_function("nope")
    with pytest.raises(SpriteForgeError):
        B.sampler_function("euler", dynamic_threshold=1.5)


# --------------------------------------------------------------------------- CFG-rescale, schedules, tiles
def test_rescale_cfg_function_in_comfys_cfg_form():
    g = torch.Generator().manual_seed(0)
    x, c, u = (torch.randn(2, 4, 4, 4, generator=g) for _ in range(3))
    sigma = torch.full((2,), 2.5)
    args = {"input": x, "sigma": sigma, "cond_denoised": c, "uncond_denoised": u, "cond_scale": 6.0,
            "cond": x - c, "uncond": x - u}
    x0 = x - B.rescale_cfg_function(0.7, flow=False)(args)
    # Lin et al. 2023 eq. 15-16 by hand, in v-space (alpha = 1/sqrt(1+s^2)): v = alpha (x - x0)/s - alpha s x0
    a, s = 1 / math.sqrt(1 + 2.5 ** 2), 2.5
    vc, vu = a * (x - c) / s - a * s * c, a * (x - u) / s - a * s * u
    vg = vu + 6.0 * (vc - vu)
    std = lambda t: t.reshape(2, -1).std(1).reshape(2, 1, 1, 1)  # noqa: E731
    v = 0.7 * vg * std(vc) / std(vg) + 0.3 * vg
    torch.testing.assert_close(x0, x * a * a - v * a * s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x0, cfg_rescale(c, u, 6.0, 0.7, x=x, sigma=2.5, ops=ops_for(x)))


def test_sigma_table_schedule_equals_the_ddpm_schedule():
    table = B.SigmaTable(SD.sigmas[::-1].copy())  # any order in, ascending inside
    for name in SCHEDULES:
        np.testing.assert_allclose(get_sigmas(name, 9, table), get_sigmas(name, 9, SD), rtol=1e-9, atol=1e-12, err_msg=name)


def test_seamless_wrapper_rolls_input_and_concat_and_back():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(0))
    seen = {}

    def apply_model(x, t, c_concat=None, c_crossattn=None):
        seen["x"], seen["cc"] = x, c_concat
        with torch.no_grad():
            return conv(x)

    x = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    cc = torch.arange(2 * 5 * 6 * 8, dtype=torch.float32).reshape(2, 5, 6, 8)
    w = B.SeamlessWrapper(seed=3, patch=2)
    out = w(apply_model, {"input": x, "timestep": torch.ones(2), "c": {"c_concat": cc, "c_crossattn": torch.ones(2, 3, 6)},
                          "cond_or_uncond": [0, 1]})
    dy, dx = next((dy, dx) for dy in range(6) for dx in range(8) if torch.equal(seen["x"], x.roll((dy, dx), (-2, -1))))
    assert dy % 2 == 0 and dx % 2 == 0 and (dy, dx) != (0, 0)
    assert torch.equal(seen["cc"], cc.roll((dy, dx), (-2, -1)))
    with torch.no_grad():
        torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)  # circular conv is roll-equivariant


def test_circular_padding_makes_a_real_vae_decoder_roll_equivariant():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()
    z = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(1))

    def dec(latent):
        with torch.no_grad():
            return vae.decode(latent).sample

    f = 2  # two levels: one 2x upsample
    with B.circular_padding(vae):
        a, b = dec(z).roll((f, 3 * f), (-2, -1)), dec(z.roll((1, 3), (-2, -1)))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # a rolled latent decodes to the rolled image: no seam
    assert all(m.padding_mode == "zeros" for m in vae.modules() if isinstance(m, torch.nn.Conv2d))  # restored
    assert not torch.allclose(dec(z).roll((f, 3 * f), (-2, -1)), dec(z.roll((1, 3), (-2, -1))), atol=1e-3)
