"""Tiny FLUX.2 models built with the REAL classes (diffusers' ``Flux2Transformer2DModel``, ``AutoencoderKLFlux2``)
and saved in the REAL layouts: BFL's single files (``flux-2-klein-4b.safetensors`` keys, the VAE's
``ae.safetensors`` / ``flux2-vae.safetensors`` with the quant convs inside ``encoder.`` / ``decoder.``) and diffusers'.

    build_flux2_vae(seed=0)                      -> AutoencoderKLFlux2 (4 blocks: scale factor 8; 2x2 patch)
    make_flux2_vae(root, layout="original"|"diffusers"|"folder", name=None)
    flux2_vae_to_original(sd)                    -> BFL key names (inverse of diffusers' converter + quant renames)
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from spriteforge.tests.tiny_models import _randomize, _save_file, vae_to_original


# --------------------------------------------------------------------------- the VAE


def build_flux2_vae(seed: int = 0):
    """A tiny ``AutoencoderKLFlux2`` with random weights and random (but valid) batch-norm statistics."""
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=32, norm_num_groups=32, sample_size=64)
    vae = _randomize(vae, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.3 * torch.randn(vae.bn.running_mean.shape, generator=g))
        vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape, generator=g))
        vae.bn.num_batches_tracked.fill_(1234)
    return vae.eval()


_QUANT = {"quant_conv.": "encoder.quant_conv.", "post_quant_conv.": "decoder.post_quant_conv."}


def flux2_vae_to_original(sd: dict) -> dict:
    """diffusers ``AutoencoderKLFlux2`` keys -> BFL's (``flux2/autoencoder.py``): the LDM names, the quant convs
    inside the encoder/decoder, the mid attention's q/k/v/proj_out as 1x1 convs; ``bn.*`` as it is."""
    out = {}
    for k, v in vae_to_original({k: v for k, v in sd.items() if not k.startswith("bn.")}).items():
        for old, new in _QUANT.items():
            if k.startswith(old):
                k = new + k[len(old):]
        out[k] = v
    out.update({k: v for k, v in sd.items() if k.startswith("bn.")})
    return out


def make_flux2_vae(root, layout: str = "original", seed: int = 0, name: str | None = None) -> Path:
    """``layout``: ``original`` (BFL names), ``diffusers`` (single file, diffusers names; both published as
    ``flux2-vae.safetensors``), ``folder`` (a diffusers ``vae`` folder)."""
    root = Path(root)
    vae = build_flux2_vae(seed)
    if layout == "folder":
        d = root / (name or "flux2-vae")
        if not (d / "config.json").exists():
            vae.save_pretrained(str(d))
        return d
    path = root / (name or f"flux2-vae-{layout}.safetensors")
    if path.exists():
        return path
    sd = vae.state_dict()
    return _save_file(flux2_vae_to_original(sd) if layout == "original" else sd, path)


def original_names_like_the_release(names) -> set:
    """BFL VAE names with block indices replaced by ``N`` (to compare a tiny file's names with the real manifest's)."""
    return {re.sub(r"\.\d+\.", ".N.", re.sub(r"\.\d+\.", ".N.", n)) for n in names}


# --------------------------------------------------------------------------- the transformer

QWEN3_LAYERS = 28  # the pipelines stack hidden states 9, 18 and 27 (of Qwen3's 36 layers): the tiny one has them all


def build_flux2(variant: str = "klein", seed: int = 0, joint: int | None = None):
    """A tiny ``Flux2Transformer2DModel``: [klein] (no guidance input) or [dev] (``guidance_embeds``); its joint width
    three tiny Qwen3 hidden states side by side, as the pipelines stack them."""
    from diffusers import Flux2Transformer2DModel

    from spriteforge.tests.tiny_qwen import QWEN3_DIM

    m = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=joint or 3 * QWEN3_DIM, timestep_guidance_channels=32, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4),
        rope_theta=2000, eps=1e-6, guidance_embeds=variant == "dev")
    return _randomize(m, seed)


def flux2_to_original(sd: dict) -> dict:
    """diffusers ``Flux2Transformer2DModel`` keys -> BFL's (flux2/model.py, as the released single files): q/k/v
    fused into ``qkv``, norm weights as ``scale``, the final modulation's halves as (shift, scale)."""
    out = {}
    top = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
           "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer", "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
           "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer", "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
           "double_stream_modulation_img.linear": "double_stream_modulation_img.lin", "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
           "single_stream_modulation.linear": "single_stream_modulation.lin"}
    double = {"attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
              "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale", "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
              "attn.to_out.0.weight": "img_attn.proj.weight", "attn.to_add_out.weight": "txt_attn.proj.weight",
              "ff.linear_in.weight": "img_mlp.0.weight", "ff.linear_out.weight": "img_mlp.2.weight",
              "ff_context.linear_in.weight": "txt_mlp.0.weight", "ff_context.linear_out.weight": "txt_mlp.2.weight"}
    single = {"attn.to_qkv_mlp_proj.weight": "linear1.weight", "attn.to_out.weight": "linear2.weight",
              "attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
    for k, v in sd.items():
        base, part = k.rsplit(".", 1)
        if base in top:
            out[f"{top[base]}.{part}"] = v
        elif base == "norm_out.linear":
            scale, shift = v.chunk(2, dim=0)
            out[f"final_layer.adaLN_modulation.1.{part}"] = torch.cat([shift, scale])
        elif m := re.match(r"transformer_blocks\.(\d+)\.(.*)$", k):
            i, rest = m.groups()
            if rest in double:
                out[f"double_blocks.{i}.{double[rest]}"] = v
            elif rest in ("attn.to_q.weight", "attn.add_q_proj.weight"):
                add = "add_" if "add_" in rest else ""
                names = [f"transformer_blocks.{i}.attn.{add}{c}" + ("_proj.weight" if add else ".weight")
                         for c in (("q", "k", "v") if add else ("to_q", "to_k", "to_v"))]
                out[f"double_blocks.{i}.{'txt' if add else 'img'}_attn.qkv.weight"] = torch.cat([sd[n] for n in names])
        elif m := re.match(r"single_transformer_blocks\.(\d+)\.(.*)$", k):
            out[f"single_blocks.{m.group(1)}.{single[m.group(2)]}"] = v
    return out


def make_flux2_text_encoder(root, size: str = "4b", seed: int = 7) -> Path:
    """``qwen_3_<size>.safetensors`` (a tiny real Qwen3 with the layers the pipelines read, the 4B's head tied and
    absent) with ``qwen_3_<size>_tokenizer/`` beside it, as ComfyUI users hold them."""
    from spriteforge.tests.tiny_qwen import build_qwen3, make_qwen_tokenizer, tokenizer_size

    root = Path(root)
    path = root / f"qwen_3_{size}.safetensors"
    if path.exists():
        return path
    tok = make_qwen_tokenizer(root)
    sd = dict(build_qwen3(seed, vocab_size=tokenizer_size(root), layers=QWEN3_LAYERS, tied=size != "8b").state_dict())
    if size != "8b":
        sd.pop("lm_head.weight", None)
    _save_file(sd, path)
    side = root / f"qwen_3_{size}_tokenizer"
    side.mkdir(parents=True, exist_ok=True)
    for f in tok.iterdir():
        (side / f.name).write_bytes(f.read_bytes())
    return path


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from spriteforge.models import configs

    cfg = configs.load("flux2-klein-4b")["scheduler"]
    cfg.pop("_class_name")
    return FlowMatchEulerDiscreteScheduler.from_config(cfg)


def make_flux2(root, layout: str = "diffusers", variant: str = "klein", seed: int = 0, distilled: bool | None = None) -> Path:
    """``layout``: ``diffusers`` / ``original`` (a single transformer file: diffusers' names or BFL's, as
    ``flux-2-klein-4b.safetensors``), ``folder`` (a ``Flux2KleinPipeline`` folder with its Qwen3, tokenizer, VAE and
    scheduler; ``distilled``: its ``is_distilled``). ``variant``: ``klein`` or ``dev`` (single files only)."""
    import transformers

    from spriteforge.tests.tiny_models import _done, _single_file, _write_pipeline
    from spriteforge.tests.tiny_qwen import build_qwen3, make_qwen_tokenizer, tokenizer_size

    root = Path(root)
    m = build_flux2(variant, seed)
    if layout == "folder":
        d = root / f"flux2-{variant}-pipe{'' if distilled is None else '-distilled' if distilled else '-base'}"
        if _done(d):
            return d
        te = build_qwen3(seed + 7, vocab_size=tokenizer_size(root), layers=QWEN3_LAYERS).model
        tok = transformers.AutoTokenizer.from_pretrained(str(make_qwen_tokenizer(root)), local_files_only=True)
        d = _write_pipeline(d, "Flux2KleinPipeline", {"transformer": m, "vae": build_flux2_vae(seed + 2), "text_encoder": te,
                                                       "tokenizer": tok, "scheduler": _scheduler()})
        if distilled is not None:
            import json

            index = json.loads((d / "model_index.json").read_text())
            (d / "model_index.json").write_text(json.dumps({**index, "is_distilled": distilled}, indent=2))
        return d
    return _single_file(root / f"flux2-{variant}-{layout}.safetensors", m, layout, flux2_to_original)
