"""Qwen-Image on both engines: its VAE (the Wan-2.1 causal 3-D VAE on single frames), from the files people hold.

Tiny real-format parts (tests/tiny_qwenimage.py) loaded through the code a user's file takes; the MLX port is held
to the real diffusers class (run as a one-frame video, latents normalised as QwenImagePipeline does).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spriteforge.engines import get_engine
from spriteforge.engines.base import ModelHandle
from spriteforge.tests.parity import assert_close
from spriteforge.tests.tiny_qwenimage import build_qwen_vae, make_qwen_vae, qwen_vae_to_original

VAE_LAYOUTS = ("original", "diffusers", "folder")


def _image(seed=0, size=(32, 48)):
    return np.random.default_rng(seed).random((1, *size, 3), dtype=np.float32)


def _reference(img):
    """The real class on a one-frame video, latents normalised and back as QwenImagePipeline does."""
    vae = build_qwen_vae()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    x = torch.from_numpy(img.transpose(0, 3, 1, 2))[:, :, None] * 2 - 1
    with torch.no_grad():
        z = (vae.encode(x).latent_dist.mode() - mean) / std
        out = vae.decode(z * std + mean).sample[:, :, 0]
    return z[:, :, 0].numpy(), (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _handle(eng, vae, cfg):
    return ModelHandle(family="qwenimage", variant="", engine=eng, transformer=None, vae=vae, vae_config=cfg,
                       latent_channels=16, vae_scale_factor=8, patch_size=2)


def _load_vae(eng, path):
    if eng.name == "torch":
        from spriteforge.engines.torch_models.vae import load_vae
    else:
        from spriteforge.engines.mlx_models.loading import load_vae
    return load_vae(eng, path, family="qwenimage", dtype="float32")


def test_vae_original_layout_is_the_released_files(shared_dir):
    """The tiny VAE has the released block structure: its original-layout names are qwen_image_vae.safetensors' own,
    and its diffusers names the diffusers release's (ranks alike, widths smaller)."""
    sd = build_qwen_vae().state_dict()
    for name, keys in (("qwen-image.vae.original", qwen_vae_to_original(sd)), ("qwen-image.vae.diffusers", sd)):
        want = json.loads((shared_dir / "checkpoints" / f"{name}.json").read_text())["tensors"]
        assert set(keys) == set(want), name
        assert all(keys[k].dim() == len(want[k]["shape"]) for k in want), name


@pytest.mark.parametrize("engine_name", ["torch", "mlx"])
@pytest.mark.parametrize("layout", VAE_LAYOUTS)
def test_vae_encodes_and_decodes_as_the_real_class(tmp_path, engine_name, layout):
    """Every layout a user holds loads on both engines and encodes/decodes one frame as diffusers' class does
    (the MLX port: 2-D convolutions from the last time tap, checked here against the 3-D causal original)."""
    if engine_name == "mlx":
        pytest.importorskip("mlx.core")
    eng = get_engine(engine_name, "cpu")
    vae, cfg = _load_vae(eng, make_qwen_vae(tmp_path, layout))
    h = _handle(eng, vae, cfg)
    img = _image()
    z_ref, img_ref = _reference(img)
    z = eng.to_numpy(eng.vae_encode(h, img))
    assert_close(z, z_ref, f"{engine_name} {layout} encode")
    assert_close(eng.vae_decode(h, z_ref), img_ref, f"{engine_name} {layout} decode")
