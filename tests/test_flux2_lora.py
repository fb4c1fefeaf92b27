"""FLUX.2 LoRAs in the layouts they ship in: diffusers/peft names (ai-toolkit), and ComfyUI/kohya names in BFL's
layout (``double_blocks_N_img_attn_qkv``: q/k/v rows split onto diffusers' separate projections;
``single_blocks_N_linear1`` onto the fused ``to_qkv_mlp_proj``). BFL's block names are Flux.1's too: the widths tell
the two apart (and where they cannot, both are named), a LoRA of one is refused on the other with LORA_KEY_MISMATCH,
and a LoRA'd FLUX.2 draws the same picture on both engines."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_flux2 as tf  # noqa: E402

from spriteforge import pipeline  # noqa: E402
from spriteforge.errors import LORA_KEY_MISMATCH, SpriteForgeError  # noqa: E402
from spriteforge.lora import LoRASpec, apply_loras, inspect_lora  # noqa: E402
from spriteforge.tests import test_lora_util as U  # noqa: E402
from spriteforge.tests.test_lora_torch import _original_case  # noqa: E402


def _kohya(tmp_path, name, layers: dict) -> Path:
    """A kohya LoRA (``lora_unet_`` + BFL names) on ``layers`` {original module: (out, in)}."""
    w = U.Writer(3)
    for layer, shape in layers.items():
        w.lora("kohya", layer, shape, rank=4, alpha=2.0)
    return w.save(tmp_path / name)


# the released widths: [klein] 4B (3072 wide, feed-forward 9216, single block 27648 -> 3072 from 12288),
# Flux.1 (3072 wide, feed-forward 12288, single block 21504 -> 3072 from 15360), [klein] 9B (4096 wide)
KLEIN_4B = {"double_blocks.0.img_attn.qkv": (9216, 3072), "double_blocks.0.img_mlp.2": (3072, 9216),
            "single_blocks.0.linear1": (27648, 3072), "single_blocks.0.linear2": (3072, 12288)}
FLUX1 = {"double_blocks.0.img_attn.qkv": (9216, 3072), "double_blocks.0.img_mlp.2": (3072, 12288),
         "single_blocks.0.linear1": (21504, 3072), "single_blocks.0.linear2": (3072, 15360)}


@pytest.mark.parametrize("layers, want", [
    (KLEIN_4B, ["flux2"]),
    (FLUX1, ["flux"]),
    ({"double_blocks.3.txt_attn.qkv": (12288, 4096)}, ["flux2"]),  # [klein] 9B: no Flux.1 is 4096 wide
    ({"double_blocks.0.img_attn.qkv": (9216, 3072)}, ["flux", "flux2"]),  # 3072-wide attention alone: either
    ({**KLEIN_4B, "double_blocks.0.img_mod.lin": (18432, 3072)}, ["flux"]),  # per-block modulation: Flux.1's only
], ids=["klein-4b", "flux1", "klein-9b", "either", "flux1-modulation"])
def test_bfl_layout_lora_is_told_by_its_widths(tmp_path, layers, want):
    info = inspect_lora(_kohya(tmp_path, "l.safetensors", layers))
    assert info["layout"] == "original" and info["family_candidates"] == want


def test_flux2_lora_is_refused_on_flux1_and_back(tmp_path):
    _, _, path2, _ = _original_case(tmp_path, "flux2", "kohya")
    _, _, path1, _ = _original_case(tmp_path, "flux", "kohya")
    for handle, path, other in ((U.handle("flux"), path2, "FLUX.2"), (U.handle("flux2"), path1, "Flux")):
        with pytest.raises(SpriteForgeError) as e:
            apply_loras(handle, [LoRASpec(path, 1.0)])
        assert e.value.code == LORA_KEY_MISMATCH and other in e.value.message


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from spriteforge.engines import get_engine

    root = tmp_path_factory.mktemp("flux2_lora")
    vae = tf.make_flux2_vae(root, layout="original", name="flux2-vae.safetensors")
    te = tf.make_flux2_text_encoder(root / "te")
    model = tf.make_flux2(root, layout="original")
    return [(eng, eng.load_model(str(model), vae=str(vae), text_encoders=[str(te)]))
            for eng in (get_engine("torch", "cpu"), get_engine("mlx", "cpu"))]


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_lora_d_flux2_draws_the_same_picture_on_both_engines(tmp_path, pair, fmt):
    """BFL-layout kohya LoRA (fused qkv split, linear1 onto the fused projection) and a diffusers/peft one."""
    pytest.importorskip("mlx.core")
    if fmt == "kohya":
        _, _, path, _ = _original_case(tmp_path, "flux2", "kohya")
    else:
        from spriteforge.tests.test_lora_torch import _write

        path, _, _ = _write(tmp_path, "peft", "flux2", pair[0][1].transformer)
    p = pipeline.GenerateParams(prompt="a red knight", negative="", seed=4, steps=2, width=64, height=48, cfg=3.0)
    imgs = []
    for eng, h in pair:
        base = pipeline.generate(eng, h, p)
        lora = pipeline.generate(eng, eng.apply_loras(h, [LoRASpec(path, 0.8)]), p)
        assert np.abs(lora - base).max() > 0.01  # it does something
        imgs.append(lora)
    diff = float(np.abs(imgs[0] - imgs[1]).max())
    print(f"FLUX.2 + {fmt} LoRA: max |torch - mlx| = {diff * 255:.4f}/255")
    assert diff <= 2 / 255
