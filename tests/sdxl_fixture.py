"""Small real-format SDXL files for ComfyUI's core loaders (Load Checkpoint, LoraLoader).

``make_sdxl_checkpoint(path)`` writes a single-file SDXL checkpoint in the original SGM key layout
(``model.diffusion_model.`` UNet, ``first_stage_model.`` VAE, ``conditioner.embedders.0.transformer.``
CLIP-L in transformers' layout, ``conditioner.embedders.1.model.`` OpenCLIP-bigG), float16.
``make_sdxl_lora(path, ckpt_keys)`` writes a kohya LoRA (``lora_unet_input_blocks_..._to_q.lora_down``)
for its attention layers.

How small it can be is set by ComfyUI's model detection (comfy/model_detection.py +
comfy/supported_models.py): SDXL is recognised from ``model_channels == 320``,
``transformer_depth == [0, 0, 2, 2, 10, 10]``, ``context_dim == 2048``, ``adm_in_channels == 2816``
and linear proj_in, while the channel multipliers, the output and middle blocks are free.  The
UNet here is therefore SDXL's down path at 320 channels on every level (channel_mult 1,1,1) with
attention-free up blocks and a one-block middle: ~115M parameters instead of 2.6B.  ComfyUI builds
the VAE and both text encoders from fixed configs, so those are full size (random weights).
``channels``/``depths`` make narrower variants for the ComfyUI-free round-trip tests.

The UNet and VAE are built with the real diffusers classes and their keys mapped to the original
layout by :func:`unet_to_ldm` / :func:`vae_to_ldm`; the tests check the mapping by converting back
with diffusers' own single-file converters.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

SDXL_CHANNELS = 320
SDXL_DEPTHS = (0, 2, 10)  # transformer depth per level (2 res blocks each) -> [0, 0, 2, 2, 10, 10]


def unet_config(channels: int = SDXL_CHANNELS, depths=SDXL_DEPTHS, context_dim: int = 2048, adm: int | None = 2816,
                linear: bool = True, layers_per_block: int = 2) -> dict:
    """A diffusers UNet2DConditionModel config with SDXL's down path (and ``channels`` per level); with
    ``adm=None, linear=False, context_dim=768`` an SD1.x-style one."""
    head = 64 if channels % 64 == 0 else channels // 4
    cfg = dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
        block_out_channels=(channels,) * len(depths),
        down_block_types=tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
        up_block_types=("UpBlock2D",) * len(depths),
        mid_block_type="UNetMidBlock2DCrossAttn",
        transformer_layers_per_block=tuple(max(d, 1) for d in depths),
        attention_head_dim=tuple(channels // head for _ in depths), cross_attention_dim=context_dim,
        use_linear_projection=linear, norm_num_groups=32 if channels % 32 == 0 else 8,
    )
    if adm:
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=adm)
    return cfg


def build_unet(seed: int = 0, **cfg):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**unet_config(**cfg)).eval()


_RES = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
        ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def _res(rest: str) -> str:
    for a, b in _RES:
        if rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


def unet_to_ldm(sd: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel keys -> the original (LDM/SGM) UNet keys."""
    L = config["layers_per_block"]
    out = {}
    for k, v in sd.items():
        nk = None
        for a, b in (("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
                     ("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2"),
                     ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2")):
            if k.startswith(a + "."):
                nk = b + k[len(a):]
        if (m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k)):
            slot = f"input_blocks.{(L + 1) * int(m[1]) + int(m[3]) + 1}"
            nk = f"{slot}.0.{_res(m[4])}" if m[2] == "resnets" else f"{slot}.1.{m[4]}"
        elif (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k)):
            nk = f"input_blocks.{(L + 1) * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif (m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", k)):
            nk = f"middle_block.1.{m[3]}" if m[1] == "attentions" else f"middle_block.{2 * int(m[2])}.{_res(m[3])}"
        elif (m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k)):
            slot = f"output_blocks.{(L + 1) * int(m[1]) + int(m[3])}"
            nk = f"{slot}.0.{_res(m[4])}" if m[2] == "resnets" else f"{slot}.1.{m[4]}"
        elif (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k)):
            i = int(m[1])
            has_attn = any(x.startswith(f"up_blocks.{i}.attentions.") for x in sd)
            nk = f"output_blocks.{(L + 1) * i + L}.{2 if has_attn else 1}.conv.{m[2]}"
        if nk is None:
            raise KeyError(f"no original-layout name for UNet key {k}")
        out[nk] = v
    return out


_VAE_RES = [("conv_shortcut", "nin_shortcut")]


def vae_to_ldm(sd: dict, n_levels: int = 4) -> dict:
    """diffusers AutoencoderKL keys -> the original (LDM) VAE keys (attention projections as 1x1 convs)."""
    out = {}
    for k, v in sd.items():
        nk = k
        m = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k)
        if m:
            nk = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k)
        if m:
            nk = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k)
        if m:
            nk = f"decoder.up.{n_levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k)
        if m:
            nk = f"decoder.up.{n_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", k)
        if m:
            nk = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", k)
        if m:
            tail = m[2]
            for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
                if tail.startswith(a + "."):
                    tail = b + tail[len(a):]
            nk = f"{m[1]}.mid.attn_1.{tail}"
            if v.ndim == 2:
                v = v[:, :, None, None]
        nk = nk.replace("conv_norm_out", "norm_out")
        for a, b in _VAE_RES:
            nk = nk.replace(f".{a}.", f".{b}.")
        out[nk] = v
    return out


def build_vae(seed: int = 0, block_out_channels=(128, 256, 512, 512)):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=tuple(block_out_channels), layers_per_block=2, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
                         up_block_types=("UpDecoderBlock2D",) * len(block_out_channels), scaling_factor=0.13025).eval()


def _rand(rng, shape, std=0.02):
    return torch.from_numpy((rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16))


def clip_l_state(rng, layers: int = 12, width: int = 768, prefix: str = "conditioner.embedders.0.transformer.") -> dict:
    """CLIP ViT-L/14 text encoder in transformers' layout (what SDXL and SD1.x checkpoints hold), random weights."""
    p = prefix + "text_model."
    sd = {p + "embeddings.token_embedding.weight": _rand(rng, (49408, width)),
          p + "embeddings.position_embedding.weight": _rand(rng, (77, width)),
          p + "final_layer_norm.weight": torch.ones(width, dtype=torch.float16),
          p + "final_layer_norm.bias": torch.zeros(width, dtype=torch.float16)}
    for i in range(layers):
        q = f"{p}encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[q + f"self_attn.{n}.weight"] = _rand(rng, (width, width))
            sd[q + f"self_attn.{n}.bias"] = torch.zeros(width, dtype=torch.float16)
        for n in ("layer_norm1", "layer_norm2"):
            sd[q + f"{n}.weight"] = torch.ones(width, dtype=torch.float16)
            sd[q + f"{n}.bias"] = torch.zeros(width, dtype=torch.float16)
        sd[q + "mlp.fc1.weight"] = _rand(rng, (4 * width, width))
        sd[q + "mlp.fc1.bias"] = torch.zeros(4 * width, dtype=torch.float16)
        sd[q + "mlp.fc2.weight"] = _rand(rng, (width, 4 * width))
        sd[q + "mlp.fc2.bias"] = torch.zeros(width, dtype=torch.float16)
    return sd


def clip_g_state(rng, layers: int = 32, width: int = 1280) -> dict:
    """OpenCLIP ViT-bigG/14 text tower in open_clip's layout (SDXL's ``conditioner.embedders.1.model.``)."""
    p = "conditioner.embedders.1.model."
    sd = {p + "token_embedding.weight": _rand(rng, (49408, width)), p + "positional_embedding": _rand(rng, (77, width)),
          p + "text_projection": _rand(rng, (width, width)), p + "logit_scale": torch.tensor(4.6052, dtype=torch.float16),
          p + "ln_final.weight": torch.ones(width, dtype=torch.float16),
          p + "ln_final.bias": torch.zeros(width, dtype=torch.float16)}
    for i in range(layers):
        q = f"{p}transformer.resblocks.{i}."
        sd[q + "attn.in_proj_weight"] = _rand(rng, (3 * width, width))
        sd[q + "attn.in_proj_bias"] = torch.zeros(3 * width, dtype=torch.float16)
        sd[q + "attn.out_proj.weight"] = _rand(rng, (width, width))
        sd[q + "attn.out_proj.bias"] = torch.zeros(width, dtype=torch.float16)
        for n in ("ln_1", "ln_2"):
            sd[q + f"{n}.weight"] = torch.ones(width, dtype=torch.float16)
            sd[q + f"{n}.bias"] = torch.zeros(width, dtype=torch.float16)
        sd[q + "mlp.c_fc.weight"] = _rand(rng, (4 * width, width))
        sd[q + "mlp.c_fc.bias"] = torch.zeros(4 * width, dtype=torch.float16)
        sd[q + "mlp.c_proj.weight"] = _rand(rng, (width, 4 * width))
        sd[q + "mlp.c_proj.bias"] = torch.zeros(width, dtype=torch.float16)
    return sd


def make_sdxl_checkpoint(path, seed: int = 0) -> Path:
    """Write the SDXL checkpoint (see the module doc) to ``path``; returns it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unet = build_unet(seed)
    sd = {"model.diffusion_model." + k: v.half().contiguous() for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()}
    del unet
    vae = build_vae(seed + 1)
    sd.update({"first_stage_model." + k: v.half().contiguous() for k, v in vae_to_ldm(vae.state_dict()).items()})
    del vae
    rng = np.random.Generator(np.random.PCG64(seed + 2))
    sd.update(clip_l_state(rng))
    sd.update(clip_g_state(rng))
    save_file(sd, str(path), metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base"})
    return path


SD15_CONFIG = dict(channels=320, depths=(1, 0), context_dim=768, adm=None, linear=False, layers_per_block=1)


def make_sd15_checkpoint(path, seed: int = 0) -> Path:
    """An SD1.x single-file checkpoint (``model.diffusion_model.``, ``first_stage_model.``,
    ``cond_stage_model.transformer.``), float16.  ComfyUI recognises SD1.x from model_channels 320,
    context_dim 768, conv proj_in and no adm; the depth is free, so the UNet here is two 320-channel levels
    with one res block each (~30M parameters).  The CLIP-L and the VAE are full size (ComfyUI's fixed configs)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unet = build_unet(seed, **SD15_CONFIG)
    sd = {"model.diffusion_model." + k: v.half().contiguous() for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()}
    del unet
    vae = build_vae(seed + 1)
    sd.update({"first_stage_model." + k: v.half().contiguous() for k, v in vae_to_ldm(vae.state_dict()).items()})
    del vae
    sd.update(clip_l_state(np.random.Generator(np.random.PCG64(seed + 2)), prefix="cond_stage_model.transformer."))
    save_file(sd, str(path))
    return path


def make_sdxl_lora(path, ckpt_keys, rank: int = 4, seed: int = 0, max_layers: int = 12) -> Path:
    """A kohya-format SDXL LoRA (``lora_unet_<ldm path>`` with lora_down/lora_up/alpha) on the checkpoint's
    attention q/k/v/out layers (``ckpt_keys``: the checkpoint's tensor names and shapes)."""
    from safetensors.torch import save_file

    rng = np.random.Generator(np.random.PCG64(seed))
    sd = {}
    n = 0
    for k, shape in ckpt_keys.items():
        m = re.match(r"model\.diffusion_model\.(.*attn[12]\.to_(?:q|k|v|out\.0))\.weight$", k)
        if not m or n >= max_layers:
            continue
        name = "lora_unet_" + m[1].replace(".", "_")
        out_f, in_f = shape
        sd[name + ".lora_down.weight"] = torch.from_numpy(rng.standard_normal((rank, in_f), dtype=np.float32) * 0.1).half()
        sd[name + ".lora_up.weight"] = torch.from_numpy(rng.standard_normal((out_f, rank), dtype=np.float32) * 0.1).half()
        sd[name + ".alpha"] = torch.tensor(float(rank)).half()
        n += 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"})
    return path


if __name__ == "__main__":  # python -m spriteforge.tests.sdxl_fixture MODELS_DIR
    import sys

    from safetensors import safe_open

    root = Path(sys.argv[1])
    ck = make_sdxl_checkpoint(root / "checkpoints" / "sd_xl_base_1.0.safetensors")
    with safe_open(str(ck), "pt") as f:
        keys = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    make_sdxl_lora(root / "loras" / "pixel-art-xl.safetensors", keys)
    print(ck, make_sd15_checkpoint(root / "checkpoints" / "v1-5-pruned-emaonly.safetensors"))
