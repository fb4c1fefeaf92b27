"""The MLX DiT and Sana ports give diffusers' outputs on the same weights and inputs.

DiT: learned sigma (out_channels 2*C), the native and a smaller (re-tabled sincos) grid, the null class
row, a variant with affine norm3 / exact GELU / ``out_channels=None``, the embedder shared across
blocks as converted original checkpoints carry it. Sana: the tiny build_sana() config with a padded
caption mask, guidance embeds, a sincos position table with interpolation scale, qk RMS norm, patch 2
with a non-square grid. Both: the coded error for a state dict that does not fit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402

from spriteforge.engines.mlx_models import dit, layers  # noqa: E402
from spriteforge.errors import MODEL_NOT_CONVERTED, SpriteForgeError  # noqa: E402


def _mx_sd(model):
    return {k: mx.array(v.detach().float().numpy()) for k, v in model.state_dict().items()}


def _check(out, ref):
    out = np.array(out)
    assert out.shape == ref.shape
    diff = float(np.abs(out - ref).max())
    print(f"max |diff| {diff:.3g} (max |ref| {np.abs(ref).max():.3g})")
    assert diff <= 1e-4 * (1 + float(np.abs(ref).max()))
    return diff


# --------------------------------------------------------------------------- DiT
def _dit_port(model, sd=None):
    p = dit.DiTTransformer2DModel(dict(model.config))
    return layers.load_weights(p, dit.map_weights(sd if sd is not None else _mx_sd(model)), what="dit")


def _dit_compare(model, port, *, b=2, size=None, labels=None):
    g = torch.Generator().manual_seed(1)
    size = size or model.config.sample_size
    x = torch.randn(b, model.config.in_channels, size, size, generator=g)
    t = torch.linspace(999, 3, b)
    y = torch.tensor(labels if labels is not None else [3, model.config.num_embeds_ada_norm][:b])
    with torch.no_grad():
        ref = model(x, timestep=t, class_labels=y, return_dict=False)[0].numpy()
    out = port(mx.array(x.numpy()), timestep=mx.array(t.numpy()), class_labels=mx.array(y.numpy()))
    return _check(out, ref)


def test_dit_learned_sigma_matches_diffusers():
    model = tm.build_dit()
    assert model.config.out_channels == 2 * model.config.in_channels
    port = _dit_port(model)
    _dit_compare(model, port)  # native 32x32 grid, the null class in the batch
    _dit_compare(model, port, size=16, labels=[7, 999])  # smaller grid: the sincos table is recomputed


def test_dit_variant_affine_norm_exact_gelu():
    from diffusers import DiTTransformer2DModel

    model = tm._randomize(DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=None, num_layers=1, sample_size=16,
        patch_size=4, num_embeds_ada_norm=10, norm_elementwise_affine=True, activation_fn="gelu", attention_bias=False,
    ), 3)
    _dit_compare(model, _dit_port(model), labels=[0, 10])


def test_dit_shared_embedder_as_in_converted_checkpoints():
    model = tm.build_dit()
    sd = _mx_sd(model)
    # the same arrays under every block's name (what a converted original checkpoint holds) ...
    e0 = "transformer_blocks.0.norm1.emb."
    shared = {k: (sd[e0 + k.split(".norm1.emb.", 1)[1]] if ".norm1.emb." in k else v) for k, v in sd.items()}
    _dit_compare(model, _dit_port(model, shared))
    # ... or the embedder under the first block only
    first_only = {k: v for k, v in sd.items() if ".norm1.emb." not in k or k.startswith(e0)}
    assert len(first_only) < len(sd)
    _dit_compare(model, _dit_port(model, first_only))


def test_dit_missing_tensor_is_a_coded_error():
    model = tm.build_dit()
    sd = _mx_sd(model)
    del sd["proj_out_2.weight"]
    with pytest.raises(SpriteForgeError) as ei:
        _dit_port(model, sd)
    assert ei.value.code == MODEL_NOT_CONVERTED and "proj_out_2.weight" in str(ei.value)
