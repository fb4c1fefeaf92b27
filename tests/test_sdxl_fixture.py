"""The SDXL fixture writer (tests/sdxl_fixture.py) writes the original layout: converting its UNet and VAE
keys back with diffusers' own single-file converters gives the very tensors of the diffusers models."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spriteforge.tests import sdxl_fixture as F  # noqa: E402


def test_unet_original_layout_round_trips_through_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    u = F.build_unet(0, channels=32, depths=(0, 1, 2), context_dim=64)
    ldm = F.unet_to_ldm(u.state_dict(), u.config)
    # ComfyUI's SDXL detection reads these: per-input-block transformer depth, linear proj_in, context, adm
    depth = [sum(1 for k in ldm if re.fullmatch(rf"input_blocks\.{i}\.1\.transformer_blocks\.\d+\.attn1\.to_q\.weight", k))
             for i in range(1, 9) if f"input_blocks.{i}.0.in_layers.0.weight" in ldm]
    assert depth == [0, 0, 1, 1, 2, 2]
    assert ldm["input_blocks.4.1.proj_in.weight"].ndim == 2 and ldm["label_emb.0.0.weight"].shape[1] == 2816
    assert ldm["input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"].shape[1] == 64
    back = convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in ldm.items()}, dict(u.config))
    sd = u.state_dict()
    assert set(back) == set(sd)
    assert all(torch.equal(sd[k], back[k]) for k in sd)


def test_full_size_unet_config_is_what_comfyui_detects_as_sdxl():
    cfg = F.unet_config()
    assert cfg["block_out_channels"][0] == 320 and cfg["cross_attention_dim"] == 2048
    assert cfg["projection_class_embeddings_input_dim"] == 2816 and cfg["use_linear_projection"]
    per_block = [d for d in F.SDXL_DEPTHS for _ in range(cfg["layers_per_block"])]
    assert per_block == [0, 0, 2, 2, 10, 10]


def test_vae_original_layout_round_trips_through_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    v = F.build_vae(0, (32, 32, 32, 32))
    ldm = F.vae_to_ldm(v.state_dict())
    assert "decoder.up.3.upsample.conv.weight" in ldm and ldm["encoder.mid.attn_1.q.weight"].ndim == 4
    back = convert_ldm_vae_checkpoint({"first_stage_model." + k: x for k, x in ldm.items()}, dict(v.config))
    sd = v.state_dict()
    assert set(back) == set(sd)
    assert all(torch.equal(sd[k].reshape(-1), back[k].reshape(-1)) and sd[k].shape == back[k].shape for k in sd)


def test_kohya_lora_names_point_at_checkpoint_layers(tmp_path):
    from safetensors.torch import load_file

    u = F.build_unet(0, channels=32, depths=(0, 1, 2), context_dim=64)
    keys = {"model.diffusion_model." + k: tuple(v.shape) for k, v in F.unet_to_ldm(u.state_dict(), u.config).items()}
    sd = load_file(str(F.make_sdxl_lora(tmp_path / "l.safetensors", keys, max_layers=5)))
    names = {k.split(".")[0] for k in sd}
    assert len(names) == 5
    flat = {"lora_unet_" + k[len("model.diffusion_model."):-len(".weight")].replace(".", "_"): s for k, s in keys.items()}
    for n in names:
        out_f, in_f = flat[n]
        assert sd[n + ".lora_down.weight"].shape == (4, in_f) and sd[n + ".lora_up.weight"].shape == (out_f, 4)


def test_text_encoder_layouts():
    rng = np.random.Generator(np.random.PCG64(0))
    g = F.clip_g_state(rng, layers=2, width=64)
    assert g["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"].shape == (192, 64)
    lstate = F.clip_l_state(rng, layers=1, width=32)
    assert lstate["conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"].shape == (128, 32)
