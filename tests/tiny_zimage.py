"""A tiny Z-Image in the real formats: a real ``ZImageTransformer2DModel`` (64 wide, 2 heads, 2 layers, one noise and
one context refiner, rotary axes in the release's 1:1.5:1.5 split), the tiny Qwen3 text encoder (tests/tiny_qwen.py)
and the tiny 16-channel Flux VAE.

    build_zimage(seed=0) -> ZImageTransformer2DModel
    zimage_to_original(sd) -> ComfyUI's single-file names (fused ``attention.qkv``, ``attention.out``, ``q_norm``,
        top-level ``x_embedder`` / ``final_layer``), the inverse of diffusers' single-file converter
    make_zimage(root, layout="diffusers"|"original"|"folder", seed=0)
        "original": ``z_image_turbo_bf16.safetensors`` as ComfyUI users hold it (stored in bfloat16 like the release
        when ``bf16=True``); "diffusers": the transformer's own state dict; "folder": a ZImagePipeline folder
        (model_index.json, transformer/, vae/, text_encoder/ (Qwen3Model), tokenizer/ (Qwen2Tokenizer), scheduler/)
    make_zimage_parts(root) -> {"vae": ae.safetensors, "text_encoders": [qwen_3_4b.safetensors]} for the single files
"""

from __future__ import annotations

from pathlib import Path

import torch

ZIMAGE_CONFIG = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
                     n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32, rope_theta=256.0, t_scale=1000.0,
                     axes_dims=[8, 12, 12], axes_lens=[1536, 512, 512])


def build_zimage(seed: int = 0):
    from diffusers import ZImageTransformer2DModel

    from spriteforge.tests.tiny_models import _randomize

    return _randomize(ZImageTransformer2DModel(**ZIMAGE_CONFIG), seed)


def zimage_to_original(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if ".attention.to_k." in k or ".attention.to_v." in k:
            continue
        if ".attention.to_q." in k:
            out[k.replace(".to_q.", ".qkv.")] = torch.cat([v, sd[k.replace(".to_q.", ".to_k.")], sd[k.replace(".to_q.", ".to_v.")]])
            continue
        k = k.replace("all_x_embedder.2-1.", "x_embedder.").replace("all_final_layer.2-1.", "final_layer.")
        k = k.replace(".attention.to_out.0.", ".attention.out.").replace(".norm_q.", ".q_norm.").replace(".norm_k.", ".k_norm.")
        out[k] = v
    return out


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from spriteforge.models import configs

    cfg = configs.load("zimage-turbo")["scheduler"]
    cfg.pop("_class_name")
    return FlowMatchEulerDiscreteScheduler.from_config(cfg)


def make_zimage_parts(root) -> dict:
    """The files a single-file Z-Image needs, under the release names: ``ae.safetensors`` and ``qwen_3_4b.safetensors``."""
    from spriteforge.tests import tiny_models as tm
    from spriteforge.tests.tiny_qwen import make_qwen3

    d = Path(root) / "zimage_parts"
    vae = d / "ae.safetensors"
    if not vae.exists():
        tm._save_file(tm.vae_to_original(tm.build_vae(16, 2, family="flux").state_dict()), vae)
    return {"vae": vae, "text_encoders": [make_qwen3(d, seed=1)]}


def make_zimage(root, layout: str = "diffusers", seed: int = 0, bf16: bool = False) -> Path:
    import transformers

    from spriteforge.tests import tiny_models as tm
    from spriteforge.tests.tiny_qwen import build_qwen3, make_qwen_tokenizer, tokenizer_size

    root = Path(root)
    m = build_zimage(seed)
    if layout == "folder":
        d = root / "z-image-pipe"
        if tm._done(d):
            return d
        tok = transformers.Qwen2Tokenizer.from_pretrained(str(make_qwen_tokenizer(root)), local_files_only=True)
        return tm._write_pipeline(d, "ZImagePipeline", {
            "transformer": m, "vae": tm.build_vae(16, seed + 2, family="flux"),
            "text_encoder": build_qwen3(seed + 1, vocab_size=tokenizer_size(root)).model, "tokenizer": tok,
            "scheduler": _scheduler()})
    name = "z_image_turbo_bf16" if layout == "original" and bf16 else f"zimage-{layout}"
    path = root / f"{name}.safetensors"
    if tm._done(path):
        return path
    sd = zimage_to_original(m.state_dict()) if layout == "original" else m.state_dict()
    if bf16:
        sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    return tm._save_file(sd, path)
