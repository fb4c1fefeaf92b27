"""Tiny Qwen-Image parts built with the REAL classes and saved in the REAL layouts (see tests/tiny_models.py).

    build_qwen_vae(seed=0)            -> AutoencoderKLQwenImage (base_dim 8; the released block structure, so the
                                          original layout's key names are exactly the released file's)
    make_qwen_vae(root, layout="original"|"diffusers"|"folder")
        "original" = ComfyUI's qwen_image_vae.safetensors layout (Wan-2.1 names, 5-D convs, ``gamma`` norms)
"""

from __future__ import annotations

import re
from pathlib import Path

from .tiny_models import _randomize, _save_file


# --------------------------------------------------------------------------- the VAE


def build_qwen_vae(seed: int = 0):
    from diffusers import AutoencoderKLQwenImage

    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                 temperal_downsample=[False, True, True])
    return _randomize(vae, seed)


_RES = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma", "conv2": "residual.6",
        "conv_shortcut": "shortcut"}


def _res(rest: str) -> str:
    for new, old in _RES.items():
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest


def qwen_vae_to_original(sd: dict, res_blocks: int = 2) -> dict:
    """diffusers ``AutoencoderKLQwenImage`` keys -> the original Wan-2.1 keys (the inverse of diffusers'
    ``convert_wan_vae_to_diffusers``; loading goes back through that converter, so a round trip checks this)."""
    per_up = res_blocks + 2  # decoder.upsamples: the up block's resnets, then its resample
    out = {}
    for k, v in sd.items():
        n = {"quant_conv.weight": "conv1.weight", "quant_conv.bias": "conv1.bias",
             "post_quant_conv.weight": "conv2.weight", "post_quant_conv.bias": "conv2.bias"}.get(k, k)
        n = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", n)
        n = re.sub(r"^(encoder|decoder)\.norm_out\.gamma", r"\1.head.0.gamma", n)
        n = re.sub(r"^(encoder|decoder)\.conv_out\.", r"\1.head.2.", n)
        n = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.middle.1.", n)
        m = re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)$", n)
        if m:
            n = f"{m.group(1)}.middle.{2 * int(m.group(2))}.{_res(m.group(3))}"
        m = re.match(r"^encoder\.down_blocks\.(\d+)\.(.*)$", n)
        if m:
            n = f"encoder.downsamples.{m.group(1)}.{_res(m.group(2))}"
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", n)
        if m:
            n = f"decoder.upsamples.{per_up * int(m.group(1)) + int(m.group(2))}.{_res(m.group(3))}"
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", n)
        if m:
            n = f"decoder.upsamples.{per_up * int(m.group(1)) + per_up - 1}.{m.group(2)}"
        out[n] = v
    return out


def make_qwen_vae(root, layout: str = "original", seed: int = 0, name: str | None = None) -> Path:
    root = Path(root)
    vae = build_qwen_vae(seed)
    if layout == "folder":
        d = root / (name or "qwen_vae")
        if not (d / "config.json").exists():
            vae.save_pretrained(str(d))
        return d
    path = root / (name or f"qwen_image_vae_{layout}.safetensors")
    if path.exists():
        return path
    sd = vae.state_dict()
    return _save_file(qwen_vae_to_original(sd) if layout == "original" else sd, path)
