"""Our sampling loop against diffusers' PixArtSigmaPipeline, same model, sigmas, steps and initial latents.

  python -m spriteforge.benchmarks.bench_generate [--steps 20] [--size 256] [--repeat 3] [--device cpu]

A small random-weight PixArt-Σ transformer (real architecture) is sampled with Euler, CFG 4.5,
by (a) ``spriteforge.pipeline.sample`` (our samplers + the torch engine's denoiser) and (b) the
diffusers pipeline with an ``EulerDiscreteScheduler`` given the very same sigmas and initial
latents, with the text embeddings precomputed for both and no VAE decode. It prints the
median times, the ratio ours/diffusers (below 1 = we are faster) and the largest difference
of the two results (they should agree to float rounding).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def build(device: str, size: int, layers: int = 6):
    import torch
    from diffusers import AutoencoderKL, PixArtTransformer2DModel

    from spriteforge.engines import get_engine
    from spriteforge.engines.base import ModelHandle
    from spriteforge.engines.base import Conditioning

    torch.manual_seed(0)
    tr = PixArtTransformer2DModel(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=layers,
                                  cross_attention_dim=128, sample_size=size // 8, patch_size=2, caption_channels=64,
                                  norm_num_groups=8).eval()
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4, layers_per_block=1).eval()
    engine = get_engine("torch", device)
    tr.to(engine.torch_device)
    vae.to(engine.torch_device)
    h = ModelHandle(family="pixart", variant="sigma", engine=engine, transformer=tr, config=dict(tr.config), vae=vae,
                    prediction="eps", latent_channels=4, vae_scale_factor=8, patch_size=2, scaling_factor=0.13025)
    g = torch.Generator().manual_seed(1)
    L = 300
    emb = torch.randn(1, L, 64, generator=g)
    neg = torch.randn(1, L, 64, generator=g)
    mask = torch.zeros(1, L, dtype=torch.long)
    mask[:, :12] = 1
    nmask = torch.zeros(1, L, dtype=torch.long)
    nmask[:, :2] = 1
    dev = engine.torch_device
    cond = Conditioning(family="pixart", prompts=["bench"], embeds=emb.to(dev), mask=mask.to(dev),
                        negative=Conditioning(family="pixart", prompts=[""], embeds=neg.to(dev), mask=nmask.to(dev)))
    return engine, h, cond


def run_ours(engine, h, cond, steps, size, seed):
    from spriteforge.pipeline import GenerateParams, sample
    from spriteforge.progress import set_cli_bars

    set_cli_bars(False)
    p = GenerateParams(seed=seed, steps=steps, cfg=4.5, sampler="euler", schedule="normal", width=size, height=size, cond=cond)
    return sample(engine, h, p).latents


def run_diffusers(engine, h, cond, steps, size, seed):
    import torch
    from diffusers import EulerDiscreteScheduler, PixArtSigmaPipeline

    from spriteforge.pipeline import model_schedule
    from spriteforge.samplers import get_sigmas, make_noise

    ms = model_schedule(h, size, size)
    sigmas = get_sigmas("normal", steps, ms)
    sched = EulerDiscreteScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", timestep_spacing="linspace")
    pipe = PixArtSigmaPipeline(tokenizer=None, text_encoder=None, vae=h.vae, transformer=h.transformer, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    sched.set_timesteps(sigmas=sigmas, device=engine.torch_device)
    noise = torch.from_numpy(make_noise(seed, (1, 4, size // 8, size // 8))).to(engine.torch_device)
    # diffusers multiplies the given latents by init_noise_sigma; hand it noise * sigma_max / init_noise_sigma
    latents = noise * (sigmas[0] / float(sched.init_noise_sigma))
    with torch.no_grad():
        out = pipe(prompt=None, negative_prompt=None, num_inference_steps=steps, sigmas=sigmas, guidance_scale=4.5,
                   height=size, width=size, latents=latents, prompt_embeds=cond.embeds, prompt_attention_mask=cond.mask,
                   negative_prompt_embeds=cond.negative.embeds, negative_prompt_attention_mask=cond.negative.mask,
                   output_type="latent", use_resolution_binning=False, return_dict=False)[0]
    return out.float().cpu().numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    engine, h, cond = build(a.device, a.size)
    # warm up both
    ours = run_ours(engine, h, cond, 2, a.size, 0)
    ref = run_diffusers(engine, h, cond, 2, a.size, 0)
    t_ours, t_ref = [], []
    for r in range(a.repeat):
        order = ((run_ours, t_ours), (run_diffusers, t_ref))
        for fn, acc in (order if r % 2 == 0 else order[::-1]):  # alternate who goes first
            engine.sync()
            t0 = time.perf_counter()
            out = fn(engine, h, cond, a.steps, a.size, 7)
            engine.sync()
            acc.append(time.perf_counter() - t0)
            if fn is run_ours:
                ours = out
            else:
                ref = out
    diff = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    mo, md = statistics.median(t_ours), statistics.median(t_ref)
    print(f"device {engine.device.torch_device}, PixArt-Σ-like {sum(p.numel() for p in h.transformer.parameters()) / 1e6:.1f}M params, "
          f"{a.size}x{a.size}, {a.steps} Euler steps, CFG 4.5 (batched), {a.repeat} runs")
    print(f"ours (spriteforge.pipeline.sample): {mo * 1000:.1f} ms   diffusers PixArtSigmaPipeline: {md * 1000:.1f} ms")
    print(f"time ratio ours/diffusers: {mo / md:.3f} (median), {min(t_ours) / min(t_ref):.3f} (best of {a.repeat})")
    print(f"max |ours - diffusers| = {diff:.3g} (latent max {scale:.3g}, relative {diff / max(scale, 1e-12):.2g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
