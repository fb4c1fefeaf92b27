"""Our Qwen-Image sampling loop against diffusers' QwenImagePipeline, same model, sigmas, steps and initial latents.

  python -m spriteforge.benchmarks.bench_qwenimage [--steps 20] [--size 256] [--layers 6] [--repeat 3] [--device cpu]

A small random-weight Qwen-Image transformer (the real class: ``--layers`` double-stream blocks, 4 heads of 64) is
sampled with Euler and true CFG 4 (a prompt and a shorter negative, both precomputed) by (a)
``spriteforge.pipeline.sample`` (our samplers + the torch engine's denoiser: one batched call for both prompts) and
(b) diffusers' pipeline (``FlowMatchEulerDiscreteScheduler`` given the very same sigmas; two calls a step), no VAE
decode. Prints the median times, the ratio ours/diffusers (below 1 = we are faster) and the largest difference of the
two results (they agree to float rounding).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

CFG = 4.0


def build(device: str, layers: int):
    import torch
    from diffusers import QwenImageTransformer2DModel

    from spriteforge.engines import get_engine
    from spriteforge.engines.base import Conditioning, ModelHandle
    from spriteforge.models import configs

    torch.manual_seed(0)
    tr = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=layers, attention_head_dim=64,
                                     num_attention_heads=4, joint_attention_dim=256, axes_dims_rope=(8, 28, 28)).eval()
    engine = get_engine("torch", device)
    tr.to(engine.torch_device)
    h = ModelHandle(family="qwenimage", variant="20B", engine=engine, transformer=tr, config=dict(tr.config), prediction="flow",
                    latent_channels=16, vae_scale_factor=8, patch_size=2, extras={"scheduler": configs.load("qwen-image")["scheduler"]})
    g = torch.Generator().manual_seed(1)
    dev = engine.torch_device
    emb, neg = torch.randn(1, 40, 256, generator=g), torch.randn(1, 12, 256, generator=g)
    cond = Conditioning(family="qwenimage", prompts=["bench"], embeds=emb.to(dev), mask=torch.ones(1, 40, dtype=torch.long, device=dev),
                        negative=Conditioning(family="qwenimage", prompts=[""], embeds=neg.to(dev),
                                              mask=torch.ones(1, 12, dtype=torch.long, device=dev)))
    return engine, h, cond


def run_ours(engine, h, cond, steps, size, seed):
    from spriteforge.pipeline import GenerateParams, sample
    from spriteforge.progress import set_cli_bars

    set_cli_bars(False)
    p = GenerateParams(seed=seed, steps=steps, cfg=CFG, sampler="euler", schedule="normal", width=size, height=size, cond=cond)
    return np.asarray(sample(engine, h, p).latents)


def run_diffusers(engine, h, cond, steps, size, seed):
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    from spriteforge.pipeline import model_schedule
    from spriteforge.samplers import get_sigmas, make_noise

    sigmas = get_sigmas("normal", steps, model_schedule(h, size, size))
    pipe = QwenImagePipeline(transformer=h.transformer, vae=AutoencoderKLQwenImage(base_dim=8), text_encoder=None, tokenizer=None,
                             scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    pipe.set_progress_bar_config(disable=True)
    f = size // 8
    noise = torch.from_numpy(make_noise(seed, (1, 16, f, f))).to(engine.torch_device)
    packed = noise.view(1, 16, f // 2, 2, f // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, (f // 2) ** 2, 64)
    with torch.no_grad():
        out = pipe(prompt_embeds=cond.embeds, prompt_embeds_mask=cond.mask, negative_prompt_embeds=cond.negative.embeds,
                   negative_prompt_embeds_mask=cond.negative.mask, true_cfg_scale=CFG, num_inference_steps=steps,
                   sigmas=list(sigmas[:-1]), latents=packed, height=size, width=size, output_type="latent", return_dict=False)[0]
    return out.view(1, f // 2, f // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, f, f).float().cpu().numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    engine, h, cond = build(a.device, a.layers)
    ours = run_ours(engine, h, cond, 2, a.size, 0)  # warm up both
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
    diff, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
    mo, md = statistics.median(t_ours), statistics.median(t_ref)
    print(f"device {engine.device.torch_device}, Qwen-Image-like {sum(p.numel() for p in h.transformer.parameters()) / 1e6:.1f}M params, "
          f"{a.size}x{a.size}, {a.steps} Euler steps, true CFG {CFG} (ours batched), {a.repeat} runs")
    print(f"ours (spriteforge.pipeline.sample): {mo * 1000:.1f} ms   diffusers QwenImagePipeline: {md * 1000:.1f} ms")
    print(f"time ratio ours/diffusers: {mo / md:.3f} (median), {min(t_ours) / min(t_ref):.3f} (best of {a.repeat})")
    print(f"max |ours - diffusers| = {diff:.3g} (latent max {scale:.3g}, relative {diff / max(scale, 1e-12):.2g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
