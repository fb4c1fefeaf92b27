"""Our sampling loop against each family's own diffusers pipeline: same model, sigmas, steps, noise and embeddings.

  python -m spriteforge.benchmarks.bench_generate [--families pixart,sd3,flux,sana,dit,zimage] [--steps 20] [--pairs 15]
                                                  [--threads 1] [--json]

For every family a small random-weight transformer of the real class (a few million parameters: the per-step work
around the network shows) is written as a single ``.safetensors`` file and loaded by ``engine.load_model``, the path a
user's file takes. The same module is then sampled by (a) ``spriteforge.pipeline.sample`` (our samplers and the torch
engine's denoiser) and (b) the family's diffusers pipeline (PixArtSigmaPipeline, StableDiffusion3Pipeline,
FluxPipeline, SanaPipeline, DiTPipeline, ZImagePipeline and, where the family is
registered, Flux2KleinPipeline) with an Euler scheduler given the very same sigmas and initial latents, the
text embeddings precomputed for both, no VAE decode.

The runs are interleaved, ours then diffusers' then diffusers' then ours (the order alternates pair by pair, so
neither side always runs on a warmer cache or a quieter machine), after one warm-up run of each. The figure is the
ratio ours/diffusers of each pair: its median, its quartiles and its range over ``--pairs`` pairs (below 1 = we are
faster). ``max |ours - diffusers|`` says the two computed the same thing (float rounding only).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = {"sana": 512, "flux2": 256}  # pixels: 64 image tokens or more for every family (Sana's VAE compresses 32x, FLUX.2's 16x)
# Flux dev: guidance 3.5, no CFG; Z-Image-Turbo: no CFG; FLUX.2 [klein] base: CFG 4 (two calls a step in its pipeline)
CFG = {"flux": 1.0, "dit": 4.0, "zimage": 1.0, "flux2": 4.0}


def _seeded(model, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1.0, p.shape[-1] ** 0.5) if p.ndim > 1 else 0.05))
    return model.eval()


def build_transformer(family: str):
    """A small transformer of the family's real diffusers class, seeded random weights."""
    import diffusers as d

    if family == "pixart":
        m = d.PixArtTransformer2DModel(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=6,
                                       cross_attention_dim=128, sample_size=16, patch_size=2, caption_channels=64,
                                       interpolation_scale=2, norm_num_groups=8)
    elif family == "sd3":
        m = d.SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=6, attention_head_dim=32,
                                    num_attention_heads=4, joint_attention_dim=96, caption_projection_dim=128,
                                    pooled_projection_dim=64, out_channels=16, pos_embed_max_size=32)
    elif family == "flux":
        m = d.FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=32,
                                     num_attention_heads=4, joint_attention_dim=96, pooled_projection_dim=64,
                                     guidance_embeds=True, axes_dims_rope=(4, 14, 14))
    elif family == "sana":
        m = d.SanaTransformer2DModel(in_channels=32, out_channels=32, num_attention_heads=4, attention_head_dim=32, num_layers=6,
                                     num_cross_attention_heads=4, cross_attention_head_dim=32, cross_attention_dim=128,
                                     caption_channels=64, mlp_ratio=2.5, sample_size=16, patch_size=1)
    elif family == "dit":
        m = d.DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=6,
                                    sample_size=16, patch_size=2, num_embeds_ada_norm=1000)
    elif family == "zimage":
        m = d.ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=128, n_layers=6,
                                       n_refiner_layers=1, n_heads=4, n_kv_heads=4, norm_eps=1e-5, qk_norm=True, cap_feat_dim=64,
                                       rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 12, 12], axes_lens=[1536, 512, 512])
    elif family == "flux2":
        m = d.Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=2, num_single_layers=4, attention_head_dim=32,
                                      num_attention_heads=4, joint_attention_dim=96, timestep_guidance_channels=32, mlp_ratio=3.0,
                                      axes_dims_rope=(8, 8, 8, 8), rope_theta=2000, eps=1e-6, guidance_embeds=False)
    else:
        raise SystemExit(f"unknown family {family!r}")
    return _seeded(m)


def conditioning(family: str, h):
    """Precomputed prompt embeddings of the widths the model takes (the same tensors for both sides)."""
    import torch

    from spriteforge.engines.base import Conditioning

    g = torch.Generator().manual_seed(1)
    cfg = h.config

    def masked(width, n_tokens, valid):
        emb = torch.randn(1, n_tokens, width, generator=g)
        mask = torch.zeros(1, n_tokens, dtype=torch.long)
        mask[:, :valid] = 1
        return emb, mask

    if family == "zimage":  # Qwen3's hidden states of the real tokens (the pipeline takes them unpadded)
        (e, m), (ne, nm) = masked(cfg["cap_feat_dim"], 32, 12), masked(cfg["cap_feat_dim"], 32, 2)
        neg = Conditioning(family=family, prompts=[""], embeds=ne, mask=nm)
        return Conditioning(family=family, prompts=["bench"], embeds=e, mask=m, negative=neg)
    if family in ("pixart", "sana"):
        (e, m), (ne, nm) = masked(cfg["caption_channels"], 300, 12), masked(cfg["caption_channels"], 300, 2)
        neg = Conditioning(family=family, prompts=[""], embeds=ne, mask=nm)
        return Conditioning(family=family, prompts=["bench"], embeds=e, mask=m, negative=neg)
    if family == "flux2":  # Qwen3's layers 9/18/27 stacked (joint width), no mask
        e, ne = (torch.randn(1, 128, cfg["joint_attention_dim"], generator=g) for _ in range(2))
        return Conditioning(family=family, prompts=["bench"], embeds=e, negative=Conditioning(family=family, prompts=[""], embeds=ne))
    if family in ("sd3", "flux"):
        n = 333 if family == "sd3" else 256  # SD3: 77 CLIP + 256 T5 tokens; Flux: T5 only
        e, ne = (torch.randn(1, n, cfg["joint_attention_dim"], generator=g) for _ in range(2))
        p, np_ = (torch.randn(1, cfg["pooled_projection_dim"], generator=g) for _ in range(2))
        neg = Conditioning(family=family, prompts=[""], embeds=ne, pooled=np_)
        return Conditioning(family=family, prompts=["bench"], embeds=e, pooled=p, guidance=3.5 if family == "flux" else None,
                            negative=None if family == "flux" else neg)
    return Conditioning(family=family, prompts=["207"], class_labels=[207])


@dataclass
class Case:
    family: str
    engine: object
    handle: object
    cond: object
    size: int
    steps: int
    cfg: float
    sampler: str = "euler"
    schedule: str = "normal"
    pipe: object = None


def load_case(family: str, engine, folder: Path, steps: int) -> Case:
    """The family's model written as a single file and loaded the way a user's file is."""
    from safetensors.torch import save_file

    path = folder / f"bench-{family}.safetensors"
    save_file({k: v.contiguous() for k, v in build_transformer(family).state_dict().items()}, str(path))
    h = engine.load_model(path, dtype="float32")
    c = Case(family, engine, h, conditioning(family, h), SIZE.get(family, 128), steps, CFG.get(family, 4.5))
    if family == "dit":  # DiTPipeline is right with DDIM only (= Euler, eta 0): DDIM's own steps
        c.sampler, c.schedule = "ddim", "ddim_uniform"
    if family == "flux2":  # its pipelines' sigmas (linspace(1, 1/steps), shifted by the empirical mu)
        c.schedule = "simple"
    c.pipe = pipeline(family, h.transformer)
    return c


# --------------------------------------------------------------------------- the two sides
def run_ours(c: Case, seed: int):
    from spriteforge.pipeline import GenerateParams, sample

    p = GenerateParams(seed=seed, steps=c.steps, cfg=c.cfg, sampler=c.sampler, schedule=c.schedule, width=c.size, height=c.size,
                       cond=c.cond)
    return sample(c.engine, c.handle, p).latents


def _sigmas(c: Case):
    from spriteforge.pipeline import model_schedule
    from spriteforge.samplers import get_sigmas

    kw = {"steps": c.steps} if "steps" in inspect.signature(model_schedule).parameters else {}  # FLUX.2's mu needs them
    ms = model_schedule(c.handle, c.size, c.size, **kw)
    return [float(s) for s in get_sigmas(c.schedule, c.steps, ms)]


def _noise(c: Case, seed: int):
    import torch

    from spriteforge.samplers import make_noise

    h = c.handle
    f = int(h.vae_scale_factor)
    return torch.from_numpy(make_noise(seed, (1, int(h.latent_channels), c.size // f, c.size // f)))


def pipeline(family: str, transformer):
    """The family's own diffusers pipeline around ``transformer`` (no text encoders, no VAE: embeddings are given and
    latents come back), with an Euler scheduler; built once, as a user of diffusers would."""
    import diffusers as d

    flow = d.FlowMatchEulerDiscreteScheduler(shift=1.0)  # the sigmas it is given are shifted already
    euler = d.EulerDiscreteScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", timestep_spacing="linspace")
    none = dict(vae=None, text_encoder=None, tokenizer=None)
    if family == "pixart":
        pipe = d.PixArtSigmaPipeline(transformer=transformer, scheduler=euler, **none)
    elif family == "sd3":
        pipe = d.StableDiffusion3Pipeline(transformer=transformer, scheduler=flow, text_encoder_2=None, tokenizer_2=None,
                                          text_encoder_3=None, tokenizer_3=None, **none)
    elif family == "flux":
        pipe = d.FluxPipeline(transformer=transformer, scheduler=flow, text_encoder_2=None, tokenizer_2=None, **none)
    elif family == "sana":
        pipe = d.SanaPipeline(transformer=transformer, scheduler=flow, **none)
    elif family == "zimage":
        pipe = d.ZImagePipeline(transformer=transformer, scheduler=flow, **none)
    elif family == "flux2":  # the base [klein]: CFG; it denormalises the latents by the VAE's batch-norm statistics
        pipe = d.Flux2KleinPipeline(transformer=transformer, scheduler=flow, is_distilled=False, **none)
        object.__setattr__(pipe, "vae", _IdentityBatchNorm())
    elif family == "dit":
        # DDIM, "leading" spacing with offset 1: our ddim_uniform sigmas (DiTPipeline steps with the input it scaled,
        # which is right only where scaling is the identity)
        ddim = d.DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False,
                               timestep_spacing="leading", steps_offset=1, set_alpha_to_one=True)
        pipe = d.DiTPipeline(transformer=transformer, vae=None, scheduler=ddim)
    else:
        raise SystemExit(f"no diffusers pipeline for {family}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _IdentityBatchNorm:
    """Flux2KleinPipeline always denormalises its latents by the VAE's batch-norm statistics: mean 0, std 1 here, so
    it returns the latents it sampled (the space our sampler works in)."""

    def __init__(self):
        import torch

        self.bn = type("BN", (), {"running_mean": torch.zeros(128), "running_var": torch.zeros(128)})()
        self.config = type("Config", (), {"batch_norm_eps": 1.0, "block_out_channels": (1, 1, 1, 1)})()


class _LatentTap:
    """DiTPipeline always decodes: this stand-in VAE keeps the latents it is given (and decodes nothing)."""

    config = type("Config", (), {"scaling_factor": 1.0})()
    latents = None

    def decode(self, z):
        self.latents = z
        return type("Decoded", (), {"sample": z[:, :3]})()


@contextlib.contextmanager
def _dit_inputs(pipe, latents):
    """DiTPipeline draws its own latents and always decodes: for this run give it ours and keep its final latents."""
    import diffusers.pipelines.dit.pipeline_dit as dit

    orig = dit.randn_tensor
    dit.randn_tensor = lambda *a, **k: latents.clone()
    tap = _LatentTap()
    object.__setattr__(pipe, "vae", tap)
    try:
        yield tap
    finally:
        dit.randn_tensor = orig


def run_diffusers(c: Case, seed: int):
    import torch
    from diffusers import FluxPipeline

    cond, fam, pipe = c.cond, c.family, c.pipe
    sig = _sigmas(c)
    noise = _noise(c, seed)
    common = dict(num_inference_steps=c.steps, height=c.size, width=c.size, output_type="latent", return_dict=False)
    neg = cond.negative
    with torch.no_grad():
        if fam == "pixart":  # EulerDiscreteScheduler takes the sigmas with the final 0 (the flow one without)
            pipe.scheduler.set_timesteps(sigmas=sig)
            # it multiplies given latents by init_noise_sigma: hand it noise * sigma_max / init_noise_sigma
            out = pipe(prompt=None, negative_prompt=None, sigmas=sig, guidance_scale=c.cfg,
                       latents=noise * (sig[0] / float(pipe.scheduler.init_noise_sigma)), prompt_embeds=cond.embeds,
                       prompt_attention_mask=cond.mask, negative_prompt_embeds=neg.embeds, negative_prompt_attention_mask=neg.mask,
                       use_resolution_binning=False, **common)[0]
        elif fam == "sd3":
            out = pipe(sigmas=sig[:-1], guidance_scale=c.cfg, latents=noise, prompt_embeds=cond.embeds, pooled_prompt_embeds=cond.pooled,
                       negative_prompt_embeds=neg.embeds, negative_pooled_prompt_embeds=neg.pooled, **common)[0]
        elif fam == "flux":
            lat = FluxPipeline._pack_latents(noise, 1, noise.shape[1], noise.shape[2], noise.shape[3])
            out = pipe(sigmas=sig[:-1], guidance_scale=cond.guidance, latents=lat, prompt_embeds=cond.embeds,
                       pooled_prompt_embeds=cond.pooled, **common)[0]
            out = FluxPipeline._unpack_latents(out, c.size, c.size, 8)
        elif fam == "sana":
            out = pipe(prompt=None, negative_prompt=None, sigmas=sig[:-1], guidance_scale=c.cfg, latents=noise, prompt_embeds=cond.embeds,
                       prompt_attention_mask=cond.mask, negative_prompt_embeds=neg.embeds, negative_prompt_attention_mask=neg.mask,
                       use_resolution_binning=False, **common)[0]
        elif fam == "zimage":  # its guidance g is our CFG g + 1; Turbo samples without (0 = our 1)
            real = [e[m.bool()] for e, m in zip(cond.embeds, cond.mask)]
            nreal = [e[m.bool()] for e, m in zip(neg.embeds, neg.mask)]
            out = pipe(sigmas=sig[:-1], guidance_scale=c.cfg - 1.0, latents=noise, prompt_embeds=real, negative_prompt_embeds=nreal,
                       **common)[0]
        elif fam == "flux2":
            out = pipe(sigmas=sig[:-1], guidance_scale=c.cfg, latents=noise, prompt_embeds=cond.embeds,
                       negative_prompt_embeds=neg.embeds, **common)[0]
            out = pipe._patchify_latents(out)  # it hands the latents back unpatchified, for its VAE
        else:  # dit: DDIM works in VP space, x / sqrt(1 + sigma^2)
            with _dit_inputs(pipe, noise * (sig[0] / (1.0 + sig[0] ** 2) ** 0.5)) as tap:
                pipe(class_labels=list(cond.class_labels), guidance_scale=c.cfg, num_inference_steps=c.steps, output_type="pt",
                     return_dict=False)
            out = tap.latents
    return out.float().cpu().numpy()


# --------------------------------------------------------------------------- measuring
def _timed(c: Case, fn, seed: int):
    gc.collect()
    c.engine.sync()
    t0 = time.perf_counter()
    out = fn(c, seed)
    c.engine.sync()
    return time.perf_counter() - t0, out


def _quantile(values, q):
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def measure(c: Case, pairs: int, seed: int = 7) -> dict:
    """Interleaved pairs (ours, diffusers), the order alternating pair by pair; the per-pair ratio's statistics."""
    _timed(c, run_ours, 0)  # warm-up: first calls allocate, import and fill caches
    _timed(c, run_diffusers, 0)
    t_ours, t_ref, ratios = [], [], []
    ours = ref = None
    for r in range(pairs):
        sides = (run_ours, run_diffusers) if r % 2 == 0 else (run_diffusers, run_ours)
        got = {}
        for fn in sides:
            got[fn] = _timed(c, fn, seed)
        (to, ours), (td, ref) = got[run_ours], got[run_diffusers]
        t_ours.append(to)
        t_ref.append(td)
        ratios.append(to / td)
    diff = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    return {
        "family": c.family, "params_m": round(sum(p.numel() for p in c.handle.transformer.parameters()) / 1e6, 2),
        "size": c.size, "steps": c.steps, "cfg": c.cfg, "pairs": pairs,
        "ours_ms": round(1000 * statistics.median(t_ours), 1), "diffusers_ms": round(1000 * statistics.median(t_ref), 1),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_q1": round(_quantile(ratios, 0.25), 3), "ratio_q3": round(_quantile(ratios, 0.75), 3),
        "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
        "max_abs_diff": diff, "relative_diff": diff / max(scale, 1e-12),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="pixart,sd3,flux,sana,dit,zimage")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=15, help="interleaved (ours, diffusers) pairs per family")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default; 1 is steadier on a shared machine)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    a = ap.parse_args(argv)
    import torch

    from spriteforge.engines import get_engine
    from spriteforge.progress import set_cli_bars

    if a.threads:
        torch.set_num_threads(a.threads)
    set_cli_bars(False)
    engine = get_engine("torch", a.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sf-bench-gen-") as tmp:
        for fam in [f.strip() for f in a.families.split(",") if f.strip()]:
            c = load_case(fam, engine, Path(tmp), a.steps)
            row = measure(c, a.pairs)
            rows.append(row)
            print(f"{fam:7s} {row['params_m']:5.2f}M params {c.size}px {a.steps} {c.sampler} steps cfg {c.cfg:g}: "
                  f"ours {row['ours_ms']:7.1f} ms  diffusers {row['diffusers_ms']:7.1f} ms  "
                  f"ratio median {row['ratio_median']:.3f} (quartiles {row['ratio_q1']:.3f}-{row['ratio_q3']:.3f}, "
                  f"range {row['ratio_min']:.3f}-{row['ratio_max']:.3f}, {a.pairs} pairs)  "
                  f"max|diff| {row['max_abs_diff']:.2g} (relative {row['relative_diff']:.2g})", flush=True)
    print(f"device {engine.device.torch_device}, torch threads {torch.get_num_threads()}")
    if a.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
