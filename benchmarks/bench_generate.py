"""Our sampling loop against each family's own diffusers pipeline: same model, sigmas, steps, noise and embeddings.

  python -m spriteforge.benchmarks.bench_generate [--families pixart,sd3,flux,sana,dit,zimage,qwenimage,krea2,flux2,flux2dev]
                                                  [--edits kontext,klein-2refs,qwenedit-2511] [--steps 20] [--pairs 15]
                                                  [--threads 1] [--json]

For every family a small random-weight transformer of the real class (a few million parameters: the per-step work
around the network shows) is written as a single ``.safetensors`` file and loaded by ``engine.load_model``, the path a
user's file takes. The same module is then sampled by (a) ``spriteforge.pipeline.sample`` (our samplers and the torch
engine's denoiser) and (b) the family's diffusers pipeline (PixArtSigmaPipeline, StableDiffusion3Pipeline,
FluxPipeline, SanaPipeline, DiTPipeline, ZImagePipeline, QwenImagePipeline, Krea2Pipeline, Flux2Pipeline for
``flux2dev`` and Flux2KleinPipeline for ``flux2``, the base [klein]) with an Euler scheduler given
the very same sigmas and initial latents, the text embeddings precomputed for both, no VAE decode.

``--edits``: editing with reference images, on the tests' tiny real-format models (tests/tiny_*.py: the files a
user holds, transformer + VAE + text encoder, loaded by ``engine.load_model``): FLUX.1 Kontext (one reference,
against FluxKontextPipeline), FLUX.2 [klein] base with two references (Flux2KleinPipeline, CFG 4) and
Qwen-Image-Edit-2511 (one reference, true CFG 4, QwenImageEditPlusPipeline; the pipelines' reference and vision
areas scaled down on both sides as tests/test_qwenimage_edit.py does). The prompt (with the reference images where
the text encoder reads them) is encoded once by us and handed to both sides; the references are VAE-encoded in every
timed run on both sides (the pipelines always encode their ``image``; ours calls ``pipeline.encode_references``).

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

SIZE = {"sana": 512, "flux2": 256, "flux2dev": 256}  # pixels: 64 image tokens or more for every family (Sana's VAE compresses 32x, FLUX.2's 16x)
# Flux dev: guidance 3.5, no CFG; Z-Image-Turbo: no CFG; FLUX.2 [klein] base: CFG 4 (two calls a step in its pipeline);
# FLUX.2 [dev]: guidance 4, no CFG; Qwen-Image: true CFG 4; Krea 2 (raw): CFG 4 (its pipeline's guidance 3)
CFG = {"flux": 1.0, "dit": 4.0, "zimage": 1.0, "flux2": 4.0, "flux2dev": 1.0, "qwenimage": 4.0, "krea2": 4.0}
FAMILY = {"flux2dev": "flux2"}  # a bench name that is a variant of a registered family


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
    elif family == "flux2dev":  # [dev]: the guidance input
        m = d.Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=2, num_single_layers=4, attention_head_dim=32,
                                      num_attention_heads=4, joint_attention_dim=96, timestep_guidance_channels=32, mlp_ratio=3.0,
                                      axes_dims_rope=(8, 8, 8, 8), rope_theta=2000, eps=1e-6, guidance_embeds=True)
    elif family == "qwenimage":  # rope axes as detection gives them for 32-wide heads (the file does not hold them)
        m = d.QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=6, attention_head_dim=32,
                                          num_attention_heads=4, joint_attention_dim=96, axes_dims_rope=(4, 14, 14))
    elif family == "krea2":
        m = d.Krea2Transformer2DModel(in_channels=64, num_layers=6, attention_head_dim=32, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=256, timestep_embed_dim=64, text_hidden_dim=64, num_text_layers=2,
                                      text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=128,
                                      num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(8, 12, 12))
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
    if family in ("flux2", "flux2dev"):  # Qwen3's layers 9/18/27 (Mistral-3's for [dev]) stacked (joint width), no mask
        e, ne = (torch.randn(1, 128, cfg["joint_attention_dim"], generator=g) for _ in range(2))
        fam = FAMILY.get(family, family)
        return Conditioning(family=fam, prompts=["bench"], embeds=e, guidance=4.0 if family == "flux2dev" else None,
                            negative=None if family == "flux2dev" else Conditioning(family=fam, prompts=[""], embeds=ne))
    if family == "qwenimage":  # Qwen2.5-VL's last hidden states of the real tokens, a prompt and a shorter negative
        e, ne = torch.randn(1, 40, cfg["joint_attention_dim"], generator=g), torch.randn(1, 12, cfg["joint_attention_dim"], generator=g)
        neg = Conditioning(family=family, prompts=[""], embeds=ne, mask=torch.ones(1, 12, dtype=torch.long))
        return Conditioning(family=family, prompts=["bench"], embeds=e, mask=torch.ones(1, 40, dtype=torch.long), negative=neg)
    if family == "krea2":  # the tapped Qwen3-VL states side by side per token, padding masked
        width = cfg["num_text_layers"] * cfg["text_hidden_dim"]
        (e, m), (ne, nm) = masked(width, 48, 20), masked(width, 48, 6)
        neg = Conditioning(family=family, prompts=[""], embeds=ne, mask=nm)
        return Conditioning(family=family, prompts=["bench"], embeds=e, mask=m, negative=neg)
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
    refs: list = None  # an edit's reference images ([H,W,3] in 0..1), VAE-encoded in every run
    resize: bool = True  # the family's reference size rule (False: as given)
    width: int = 0  # an edit's output size where it is not square
    height: int = 0
    compare: object = None  # ours (numpy) -> the space the reference's result is in, where they differ
    context: object = contextlib.nullcontext  # what both sides run inside (Qwen-Image-Edit: the scaled-down areas)


def load_case(family: str, engine, folder: Path, steps: int) -> Case:
    """The family's model written as a single file and loaded the way a user's file is."""
    from safetensors.torch import save_file

    path = folder / f"bench-{family}.safetensors"
    save_file({k: v.contiguous() for k, v in build_transformer(family).state_dict().items()}, str(path))
    h = engine.load_model(path, dtype="float32")
    c = Case(family, engine, h, conditioning(family, h), SIZE.get(family, 128), steps, CFG.get(family, 4.5))
    if family == "dit":  # DiTPipeline is right with DDIM only (= Euler, eta 0): DDIM's own steps
        c.sampler, c.schedule = "ddim", "ddim_uniform"
    if family in ("flux2", "flux2dev"):  # its pipelines' sigmas (linspace(1, 1/steps), shifted by the empirical mu)
        c.schedule = "simple"
    c.pipe = pipeline(family, h.transformer)
    return c


# --------------------------------------------------------------------------- the two sides
def run_ours(c: Case, seed: int):
    import dataclasses

    from spriteforge.pipeline import GenerateParams, encode_references, sample

    cond = c.cond
    if c.refs:  # the prompt is encoded already (as for the pipeline); the references' latents are made here
        refs = encode_references(c.engine, c.handle, c.refs, resize=c.resize)
        neg = dataclasses.replace(cond.negative, references=refs) if cond.negative is not None else None
        cond = dataclasses.replace(cond, references=refs, negative=neg)
    p = GenerateParams(seed=seed, steps=c.steps, cfg=c.cfg, sampler=c.sampler, schedule=c.schedule, width=c.width or c.size,
                       height=c.height or c.size, cond=cond)
    return np.asarray(sample(c.engine, c.handle, p).latents)


def _sigmas(c: Case):
    from spriteforge.pipeline import model_schedule
    from spriteforge.samplers import get_sigmas

    kw = {"steps": c.steps} if "steps" in inspect.signature(model_schedule).parameters else {}  # FLUX.2's mu needs them
    ms = model_schedule(c.handle, c.width or c.size, c.height or c.size, **kw)
    return [float(s) for s in get_sigmas(c.schedule, c.steps, ms)]


def _noise(c: Case, seed: int):
    import torch

    from spriteforge.samplers import make_noise

    h = c.handle
    f = int(h.vae_scale_factor)
    return torch.from_numpy(make_noise(seed, (1, int(h.latent_channels), (c.height or c.size) // f, (c.width or c.size) // f)))


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
    elif family == "flux2dev":
        pipe = d.Flux2Pipeline(transformer=transformer, scheduler=flow, **none)
    elif family in ("qwenimage", "krea2"):  # their VAE (the Qwen-Image one, tiny) only gives the scale factor here
        from spriteforge.tests.tiny_qwenimage import build_qwen_vae

        cls = d.QwenImagePipeline if family == "qwenimage" else d.Krea2Pipeline
        pipe = cls(transformer=transformer, scheduler=d.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
                   vae=build_qwen_vae(), text_encoder=None, tokenizer=None)
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
        elif fam == "flux2dev":  # guidance_scale is [dev]'s embedded guidance
            out = pipe(sigmas=sig[:-1], guidance_scale=cond.guidance, latents=noise, prompt_embeds=cond.embeds, **common)[0]
            out = out.transpose(1, 2).reshape(noise.shape)  # its latent output is the token sequence, row by row
        elif fam == "qwenimage":
            out = pipe(prompt_embeds=cond.embeds, prompt_embeds_mask=cond.mask, negative_prompt_embeds=neg.embeds,
                       negative_prompt_embeds_mask=neg.mask, true_cfg_scale=c.cfg, sigmas=sig[:-1], latents=_pack(noise), **common)[0]
            out = _unpack(out, noise.shape)
        elif fam == "krea2":  # its guidance g is our CFG g + 1; embeddings [B, L, layers, width]
            n = int(c.handle.config["num_text_layers"])

            def split(e):
                return e.reshape(e.shape[0], e.shape[1], n, e.shape[2] // n)

            out = pipe(prompt_embeds=split(cond.embeds), prompt_embeds_mask=cond.mask.bool(), negative_prompt_embeds=split(neg.embeds),
                       negative_prompt_embeds_mask=neg.mask.bool(), guidance_scale=c.cfg - 1.0, sigmas=sig[:-1], latents=_pack(noise),
                       **common)[0]
            out = _unpack(out, noise.shape)
        elif fam in EDITS:
            out = EDITS[fam].diffusers(c, pipe, sig, noise, common)
        else:  # dit: DDIM works in VP space, x / sqrt(1 + sigma^2)
            with _dit_inputs(pipe, noise * (sig[0] / (1.0 + sig[0] ** 2) ** 0.5)) as tap:
                pipe(class_labels=list(cond.class_labels), guidance_scale=c.cfg, num_inference_steps=c.steps, output_type="pt",
                     return_dict=False)
            out = tap.latents
    return out.float().cpu().numpy()


def _pack(x):
    """[B,C,H,W] -> 2x2 patches a token [B, H/2 * W/2, 4C] (Flux, Qwen-Image, Krea 2)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(x, shape):
    b, c, h, w = shape
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


# --------------------------------------------------------------------------- editing with reference images
def _picture(h: int, w: int, phase: float = 0.0):
    """A smooth RGB picture [H,W,3] in 0..1, exact in 8 bits (the pipelines read PIL images)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([x / w, y / h, 0.5 + 0.4 * np.sin(x / 3.0 + phase)], axis=-1)
    return np.rint(a * 255.0) / 255.0


def _pil(a):
    from PIL import Image

    return Image.fromarray(np.rint(a * 255.0).astype(np.uint8))


@dataclass
class Edit:
    """An editing case: ``load(engine, folder, steps) -> Case`` (files from the tests' builders, the prompt encoded
    once with the references) and ``diffusers(case, pipe, sigmas, noise, common) -> latents`` in our space."""
    load: object
    diffusers: object


def _kontext_load(engine, folder: Path, steps: int) -> Case:
    import diffusers as d

    from spriteforge import pipeline
    from spriteforge.tests import tiny_models as tm

    parts = folder / "kontext"
    h = engine.load_model(str(tm.make_flux(parts, layout="original", variant="dev")), vae=str(tm.make_vae(parts, 16, layout="original")),
                          text_encoders=[str(tm.make_clip(parts, "clip_l")), str(tm.make_t5(parts))], dtype="float32")
    refs = [_picture(128, 128)]
    cond = pipeline.encode(engine, h, "make it red", with_negative=False, references=refs, reference_resize=False)  # guidance 2.5
    c = Case("kontext", engine, h, cond, 128, steps, 1.0, refs=refs, resize=False)
    c.pipe = d.FluxKontextPipeline(transformer=h.transformer, vae=h.vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                   tokenizer_2=None, scheduler=d.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    return c


def _kontext_diffusers(c: Case, pipe, sig, noise, common):
    cond = c.cond
    out = pipe(image=_pil(c.refs[0]), prompt_embeds=cond.embeds, pooled_prompt_embeds=cond.pooled, guidance_scale=cond.guidance,
               sigmas=sig[:-1], latents=_pack(noise), max_area=c.size * c.size, _auto_resize=False, **common)[0]
    return _unpack(out, noise.shape)


def _klein_load(engine, folder: Path, steps: int) -> Case:
    """A Flux2KleinPipeline folder (base [klein]: CFG 4 with the empty negative), two references of their own sizes."""
    import diffusers as d
    import torch

    from spriteforge import pipeline
    from spriteforge.tests import tiny_flux2 as tf

    pipe_dir = tf.make_flux2(folder / "klein", layout="folder", distilled=False)
    h = engine.load_model(str(pipe_dir), dtype="float32")
    refs = [_picture(128, 128), _picture(128, 160, 2.0)]
    cond = pipeline.encode(engine, h, "a red knight", "", references=refs)
    c = Case("klein-2refs", engine, h, cond, 128, steps, 4.0, schedule="simple", refs=refs)
    c.compare = lambda a: h.vae._raw(torch.from_numpy(a)).numpy()  # ours, denormalised and unpatchified as the pipeline's
    c.pipe = d.Flux2KleinPipeline(transformer=h.transformer, vae=d.AutoencoderKLFlux2.from_pretrained(str(pipe_dir / "vae"),
                                                                                                     local_files_only=True),
                                  text_encoder=None, tokenizer=None, is_distilled=False,
                                  scheduler=d.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    return c


def _klein_diffusers(c: Case, pipe, sig, noise, common):
    """Its latents come back denormalised and unpatchified (for its VAE): our space is patched and normalised by the
    VAE's batch-norm statistics (the handle's VAE says how)."""
    cond = c.cond
    out = pipe(image=[_pil(r) for r in c.refs], prompt_embeds=cond.embeds, negative_prompt_embeds=cond.negative.embeds,
               guidance_scale=c.cfg, sigmas=sig[:-1], latents=noise, **common)[0]
    return out


QWEN_EDIT_AREAS = {"reference": 128 * 128, "condition": 112 * 112}  # pixels (the releases: 1024x1024 and 384x384)


@contextlib.contextmanager
def _qwen_edit_areas():
    """The edit pipelines' two areas scaled down alike on both sides (as tests/test_qwenimage_edit.py does), so the
    reference is 64 tokens as the output is: the rules are the same code at any area."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    from spriteforge.models.families import qwenimage

    pairs = ((qwenimage, "REFERENCE_AREA", QWEN_EDIT_AREAS["reference"]), (plus, "VAE_IMAGE_SIZE", QWEN_EDIT_AREAS["reference"]),
             (qwenimage, "CONDITION_AREA", QWEN_EDIT_AREAS["condition"]), (plus, "CONDITION_IMAGE_SIZE", QWEN_EDIT_AREAS["condition"]))
    old = [getattr(m, k) for m, k, _ in pairs]
    for m, k, v in pairs:
        setattr(m, k, v)
    try:
        yield
    finally:
        for (m, k, _), v in zip(pairs, old):
            setattr(m, k, v)


def _qwen_edit_load(engine, folder: Path, steps: int) -> Case:
    """Qwen-Image-Edit-2511 as ComfyUI users hold it (transformer file + its config beside it saying zero_cond_t,
    qwen_image_vae, Qwen2.5-VL with its vision tower): the prompt and the negative encoded once with the reference
    (the vision tower reads it), then handed to QwenImageEditPlusPipeline as embeddings (so its text encoder, and the
    ``mm_token_type_ids`` tests/test_qwenimage_edit.py passes it, are not needed here)."""
    import diffusers as d

    from spriteforge import pipeline
    from spriteforge.tests.test_qwenimage_edit import _said_2511
    from spriteforge.tests.tiny_qwenimage import build_qwen_vae, make_qwen_vae
    from spriteforge.tests.tiny_qwenimage_edit import make_qwen25_vl_edit, make_qwenimage_edit

    parts = folder / "qwenedit"
    parts.mkdir(parents=True, exist_ok=True)
    model = _said_2511(make_qwenimage_edit(parts, "2511"))
    h = engine.load_model(str(model), vae=str(make_qwen_vae(parts)), text_encoders=[str(make_qwen25_vl_edit(parts))], dtype="float32")
    refs = [_picture(128, 128)]
    with _qwen_edit_areas():
        cond = pipeline.encode(engine, h, "make the knight's armour red", "blurry", references=refs)
    c = Case("qwenedit-2511", engine, h, cond, 128, steps, 4.0, refs=refs, context=_qwen_edit_areas)
    c.pipe = d.QwenImageEditPlusPipeline(transformer=h.transformer, vae=build_qwen_vae(), text_encoder=None, tokenizer=None,
                                         processor=None,
                                         scheduler=d.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    return c


def _qwen_edit_diffusers(c: Case, pipe, sig, noise, common):
    cond, neg = c.cond, c.cond.negative
    out = pipe(image=[_pil(r) for r in c.refs], prompt_embeds=cond.embeds, prompt_embeds_mask=cond.mask, negative_prompt_embeds=neg.embeds,
               negative_prompt_embeds_mask=neg.mask, true_cfg_scale=c.cfg, sigmas=sig[:-1], latents=_pack(noise), **common)[0]
    return _unpack(out, noise.shape)


def _edit_load(load):
    def wrapped(engine, folder, steps):
        c = load(engine, folder, steps)
        c.pipe.set_progress_bar_config(disable=True)
        return c

    return wrapped


EDITS = {"kontext": Edit(_edit_load(_kontext_load), _kontext_diffusers), "klein-2refs": Edit(_edit_load(_klein_load), _klein_diffusers),
         "qwenedit-2511": Edit(_edit_load(_qwen_edit_load), _qwen_edit_diffusers)}


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
    with c.context():
        return _measure(c, pairs, seed)


def _measure(c: Case, pairs: int, seed: int) -> dict:
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
    if c.compare is not None:
        ours = c.compare(ours)
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
    ap.add_argument("--families", default="pixart,sd3,flux,sana,dit,zimage,qwenimage,krea2,flux2,flux2dev",
                    help="txt2img families ('flux2': FLUX.2 [klein] base, 'flux2dev': [dev]); '' for none")
    ap.add_argument("--edits", default=",".join(EDITS), help=f"editing cases ({', '.join(EDITS)}); '' for none")
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
        names = [f.strip() for f in a.families.split(",") if f.strip()] + [e.strip() for e in a.edits.split(",") if e.strip()]
        for fam in names:
            c = EDITS[fam].load(engine, Path(tmp), a.steps) if fam in EDITS else load_case(fam, engine, Path(tmp), a.steps)
            row = measure(c, a.pairs)
            row["references"] = len(c.refs or ())
            rows.append(row)
            refs = f" {row['references']} ref" if c.refs else ""
            print(f"{fam:13s} {row['params_m']:5.2f}M params {c.size}px{refs} {a.steps} {c.sampler} steps cfg {c.cfg:g}: "
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
