"""SD3-style prompt encoding when the joined CLIP width (CLIP-L + CLIP-G) is wider than T5's.

diffusers' StableDiffusion3Pipeline pads the joined CLIP hidden states to T5's width with
``F.pad(clip, (0, t5_width - clip_width))``: a negative pad, so a wider CLIP is cut to T5's width.
Every engine follows that one rule (``engines/text_encoding.py``). The tiny model here is real-format:
a diffusers SD3 transformer file whose ``joint_attention_dim`` is T5's 32, separate CLIP-L/CLIP-G
(32 + 32 = 64 wide) and T5 files with their tokenizers, loaded through each engine's own loader.
"""

from __future__ import annotations

import numpy as np
import pytest

import spriteforge.tests.tiny_models as tm
from spriteforge import pipeline
from spriteforge.engines import get_engine

T5_WIDTH = tm.T5_DIM  # 32, narrower than CLIP-L + CLIP-G (2 * CLIP_DIM = 64)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    from diffusers import SD3Transformer2DModel

    root = tmp_path_factory.mktemp("sd3_wide_clip")
    m = tm._randomize(SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64, num_attention_heads=1,
        joint_attention_dim=T5_WIDTH, caption_projection_dim=64, pooled_projection_dim=2 * tm.CLIP_DIM,
        out_channels=16, pos_embed_max_size=16), 3)
    path = tm._save_file(m.state_dict(), root / "sd3-narrow-t5.safetensors")
    parts = {"vae": tm.make_vae(root, 16, layout="original"),
             "text_encoders": [tm.make_clip(root, "clip_l"), tm.make_clip(root, "clip_g"), tm.make_t5(root, d_model=T5_WIDTH)]}
    return path, parts


@pytest.fixture(scope="module")
def handles(model_files):
    path, parts = model_files
    return {name: get_engine(name, "cpu").load_model(str(path), **parts) for name in ("torch", "mlx")}


def _np(a):  # a torch tensor or an mx array
    return np.array(a, dtype=np.float32)


def test_wide_clip_is_cut_to_t5_width_on_every_engine(handles):
    ht = handles["torch"]
    conds = {name: h.engine.encode_text(h, ["a red knight", "a blue slime"]) for name, h in handles.items()}
    emb = {name: _np(c.embeds) for name, c in conds.items()}
    assert emb["torch"].shape == emb["mlx"].shape == (2, 77 + 256, T5_WIDTH)
    assert np.abs(emb["torch"] - emb["mlx"]).max() <= 1e-4 * (1 + np.abs(emb["torch"]).max())
    # the CLIP part is CLIP-L's penultimate hidden state (the first 32 of CLIP-L + CLIP-G's 64 columns)
    from spriteforge.engines.torch_models.generation import TorchTextEncoding

    clip_l, _ = TorchTextEncoding(ht.engine, ht)._clip("clip_l", ["a red knight", "a blue slime"])
    np.testing.assert_allclose(emb["torch"][:, :77], clip_l.numpy(), rtol=0, atol=1e-6)
    pooled = {name: _np(c.pooled) for name, c in conds.items()}
    assert pooled["torch"].shape == (2, 2 * tm.CLIP_DIM)
    assert np.abs(pooled["torch"] - pooled["mlx"]).max() <= 1e-4 * (1 + np.abs(pooled["torch"]).max())


def test_same_as_diffusers_stable_diffusion_3_pipeline(handles):
    import diffusers
    import torch

    h = handles["torch"]
    te, tk = h.text_encoders, h.tokenizers
    for role in ("clip_l", "clip_g"):  # the tiny tokenizers say no length; ours caps CLIP at 77 tokens, as the release's
        tk[role].model_max_length = 77
    pipe = diffusers.StableDiffusion3Pipeline(transformer=None, scheduler=None, vae=None,
                                              text_encoder=te["clip_l"], tokenizer=tk["clip_l"],
                                              text_encoder_2=te["clip_g"], tokenizer_2=tk["clip_g"],
                                              text_encoder_3=te["t5"], tokenizer_3=tk["t5"])
    with torch.no_grad():
        ref, _, pooled, _ = pipe.encode_prompt("a red knight", None, None, do_classifier_free_guidance=False,
                                               max_sequence_length=256)
    ours = h.engine.encode_text(h, ["a red knight"])
    assert ours.embeds.shape == ref.shape
    # the CLIP tokens (diffusers runs SD3's T5 without its attention mask, we with it: only those differ)
    np.testing.assert_allclose(ours.embeds[:, :77].numpy(), ref[:, :77].float().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.pooled.numpy(), pooled.float().numpy(), rtol=0, atol=1e-5)


def test_generation_gives_the_same_picture_on_both_engines(handles):
    params = pipeline.GenerateParams(prompt="a red knight", negative="blurry", seed=5, steps=2, width=64, height=64)
    a = pipeline.generate(handles["torch"].engine, handles["torch"], params)
    b = pipeline.generate(handles["mlx"].engine, handles["mlx"], params)
    assert a.shape == b.shape == (1, 64, 64, 3)
    assert np.abs(a - b).max() <= 2.0 / 255.0
