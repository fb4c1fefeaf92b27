"""Qwen-Image-Edit (2509, 2511) on both engines: the transformer with reference latents, detection of the releases'
files and folders, generation against QwenImageEditPlusPipeline and MLX against torch.

Tiny real-format parts (tests/tiny_qwenimage_edit.py, tests/tiny_qwenimage.py) loaded through the code a user's files
take; the prompt side (vision tower, processor, prompt embeddings) is tests/test_qwenimage_edit_prompt.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spriteforge.tests.parity import assert_close


# --------------------------------------------------------------------------- the transformer port
@pytest.mark.parametrize("zero_cond_t", [False, True], ids=["2509", "2511"])
@pytest.mark.parametrize("refs", [[(3, 5)], [(3, 5), (4, 2)]], ids=["1ref", "2refs"])
def test_mlx_transformer_port_matches_the_real_class_with_references(zero_cond_t, refs):
    """engines/mlx_models/qwenimage.py against QwenImageTransformer2DModel with reference tokens after the image's
    (``img_shapes`` listing every grid: frame positions 1, 2..., the text after the largest half side), a batch of two
    at different timesteps with a padded prompt; 2511's ``zero_cond_t`` (reference tokens modulated at timestep 0)."""
    mx = pytest.importorskip("mlx.core")
    from spriteforge.engines.mlx_models.layers import load_weights
    from spriteforge.engines.mlx_models.qwenimage import QwenImageTransformer2DModel, map_weights
    from spriteforge.tests.parity import mx_weights
    from spriteforge.tests.tiny_qwenimage_edit import build_qwenimage_edit

    tr = build_qwenimage_edit(3, zero_cond_t=zero_cond_t)
    port = load_weights(QwenImageTransformer2DModel(dict(tr.config)), map_weights(mx_weights(tr)))
    g = torch.Generator().manual_seed(0)
    b, h, w, n = 2, 2, 3, 7
    shapes = [(1, h, w)] + [(1, rh, rw) for rh, rw in refs]
    tokens = sum(s[1] * s[2] for s in shapes)
    x, c = torch.randn(b, tokens, 64, generator=g), torch.randn(b, n, tr.config.joint_attention_dim, generator=g)
    t = torch.tensor([0.9, 0.25])
    mask = torch.ones(b, n)
    mask[1, 4:] = 0
    with torch.no_grad():
        ref = tr(hidden_states=x, encoder_hidden_states=c, encoder_hidden_states_mask=mask, timestep=t,
                 img_shapes=[shapes] * b, return_dict=False)[0]
    out = port(mx.array(x.numpy()), mx.array(c.numpy()), mx.array(t.numpy()), [shapes] * b, mx.array(mask.numpy()))
    assert_close(np.array(out), ref.numpy(), f"transformer with {len(refs)} references (zero_cond_t {zero_cond_t})")
