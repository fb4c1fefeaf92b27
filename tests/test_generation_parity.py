"""Our loop (samplers + the torch denoiser) against diffusers' own pipelines for the flow families.

Same tiny model, same precomputed text embeddings, same sigmas (Euler) and initial latents:
the results must agree to float rounding. This pins the timestep scaling, packing, guidance
embedding and CFG batching of each family to diffusers' reference code.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from spriteforge.pipeline import GenerateParams, encode, model_schedule, sample  # noqa: E402
from spriteforge.samplers import get_sigmas, make_noise  # noqa: E402
from spriteforge.tests.test_generation_tiny import engine, make_flux, make_sana, make_sd3  # noqa: E402,F401

STEPS, SIZE, SEED = 3, 64, 5


def _flow_scheduler():
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)


def _ours(engine, h, cond, cfg):  # noqa: F811
    p = GenerateParams(seed=SEED, steps=STEPS, cfg=cfg, sampler="euler", schedule="normal", width=SIZE, height=SIZE, cond=cond)
    return sample(engine, h, p).latents


def _setup(h):
    sigmas = get_sigmas("normal", STEPS, model_schedule(h, SIZE, SIZE))
    f = h.vae_scale_factor
    noise = torch.from_numpy(make_noise(SEED, (1, h.latent_channels, SIZE // f, SIZE // f)))
    return sigmas, noise


def _close(ours, ref):
    assert np.abs(ours - ref).max() <= 1e-4 * max(np.abs(ref).max(), 1.0), np.abs(ours - ref).max()


def test_sd3_matches_stable_diffusion_3_pipeline(engine):  # noqa: F811
    h = make_sd3(engine)
    cond = encode(engine, h, "a knight", "blurry")
    ours = _ours(engine, h, cond, 5.0)
    sigmas, noise = _setup(h)
    pipe = diffusers.StableDiffusion3Pipeline(transformer=h.transformer, scheduler=_flow_scheduler(), vae=h.vae,
                                              text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                              text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(prompt_embeds=cond.embeds, pooled_prompt_embeds=cond.pooled, negative_prompt_embeds=cond.negative.embeds,
                   negative_pooled_prompt_embeds=cond.negative.pooled, guidance_scale=5.0, num_inference_steps=STEPS,
                   sigmas=sigmas[:-1], latents=noise, height=SIZE, width=SIZE, output_type="latent", return_dict=False)[0]
    _close(ours, ref.numpy())


def test_flux_dev_matches_flux_pipeline(engine):  # noqa: F811
    h = make_flux(engine, "dev")
    cond = encode(engine, h, "a knight", with_negative=False, guidance=3.5)
    ours = _ours(engine, h, cond, 1.0)
    sigmas, noise = _setup(h)
    pipe = diffusers.FluxPipeline(transformer=h.transformer, scheduler=_flow_scheduler(), vae=h.vae, text_encoder=None,
                                  tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    b, c, hh, ww = noise.shape
    packed = noise.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (hh // 2) * (ww // 2), c * 4)
    with torch.no_grad():
        ref = pipe(prompt_embeds=cond.embeds, pooled_prompt_embeds=cond.pooled, guidance_scale=3.5, num_inference_steps=STEPS,
                   sigmas=sigmas[:-1], latents=packed, height=SIZE, width=SIZE, output_type="latent", return_dict=False)[0]
    ref = ref.view(b, hh // 2, ww // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)
    _close(ours, ref.numpy())


def test_sana_matches_sana_pipeline(engine):  # noqa: F811
    h = make_sana(engine)
    cond = encode(engine, h, "a knight", "blurry")
    ours = _ours(engine, h, cond, 4.5)
    sigmas, noise = _setup(h)
    pipe = diffusers.SanaPipeline(tokenizer=None, text_encoder=None, vae=h.vae, transformer=h.transformer,
                                  scheduler=_flow_scheduler())
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(prompt_embeds=cond.embeds, prompt_attention_mask=cond.mask, negative_prompt=None,
                   negative_prompt_embeds=cond.negative.embeds,
                   negative_prompt_attention_mask=cond.negative.mask, guidance_scale=4.5, num_inference_steps=STEPS,
                   sigmas=sigmas[:-1], latents=noise, height=SIZE, width=SIZE, output_type="latent",
                   use_resolution_binning=False, return_dict=False)[0]
    _close(ours, ref.numpy())
