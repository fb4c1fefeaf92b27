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

from spriteforge.engines.mlx_models import dit, layers, sana  # noqa: E402
from spriteforge.errors import BAD_INPUT, MODEL_NOT_CONVERTED, SpriteForgeError  # noqa: E402
from spriteforge.tests.parity import assert_close, mx_weights


# --------------------------------------------------------------------------- DiT
def _dit_port(model, sd=None):
    p = dit.DiTTransformer2DModel(dict(model.config))
    return layers.load_weights(p, dit.map_weights(sd if sd is not None else mx_weights(model)), what="dit")


def _dit_compare(model, port, *, b=2, size=None, labels=None):
    g = torch.Generator().manual_seed(1)
    size = size or model.config.sample_size
    x = torch.randn(b, model.config.in_channels, size, size, generator=g)
    t = torch.linspace(999, 3, b)
    y = torch.tensor(labels if labels is not None else [3, model.config.num_embeds_ada_norm][:b])
    with torch.no_grad():
        ref = model(x, timestep=t, class_labels=y, return_dict=False)[0].numpy()
    out = port(mx.array(x.numpy()), timestep=mx.array(t.numpy()), class_labels=mx.array(y.numpy()))
    return assert_close(out, ref)


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
    sd = mx_weights(model)
    # the same arrays under every block's name (what a converted original checkpoint holds) ...
    e0 = "transformer_blocks.0.norm1.emb."
    shared = {k: (sd[e0 + k.split(".norm1.emb.", 1)[1]] if ".norm1.emb." in k else v) for k, v in sd.items()}
    _dit_compare(model, _dit_port(model, shared))
    # ... or the embedder under the first block only
    first_only = {k: v for k, v in sd.items() if ".norm1.emb." not in k or k.startswith(e0)}
    assert len(first_only) < len(sd)
    _dit_compare(model, _dit_port(model, first_only))


# --------------------------------------------------------------------------- Sana
def _sana_port(model, sd=None):
    p = sana.SanaTransformer2DModel(dict(model.config))
    return layers.load_weights(p, sana.map_weights(sd if sd is not None else mx_weights(model)), what="sana")


def _sana_compare(model, port, *, b=2, h=8, w=8, seq=7, mask=True, guidance=None, t=None):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(b, model.config.in_channels, h, w, generator=g)
    enc = torch.randn(b, seq, model.config.caption_channels, generator=g)
    keep = torch.ones(b, seq)
    keep[1, seq // 2:] = 0  # the second prompt is padded
    t = torch.linspace(999, 3, b) if t is None else torch.tensor(t)
    t = t * float(model.config.timestep_scale)  # as the torch engine passes it
    gd = None if guidance is None else torch.full((b,), float(guidance))
    with torch.no_grad():
        ref = model(x, encoder_hidden_states=enc, timestep=t, guidance=gd,
                    encoder_attention_mask=keep if mask else None, return_dict=False)[0].numpy()
    out = port(mx.array(x.numpy()), mx.array(enc.numpy()), mx.array(t.numpy()),
               encoder_attention_mask=mx.array(keep.numpy()) if mask else None,
               guidance=None if gd is None else mx.array(gd.numpy()))
    return assert_close(out, ref)


def _build_sana(seed=4, **kw):
    from diffusers import SanaTransformer2DModel

    cfg = dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=2,
               num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
               caption_channels=tm.GEMMA_DIM, mlp_ratio=2.5, sample_size=8, patch_size=1)
    cfg.update(kw)
    return tm._randomize(SanaTransformer2DModel(**cfg), seed)


def test_sana_tiny_matches_diffusers_with_padded_caption():
    model = tm.build_sana()
    port = _sana_port(model)
    _sana_compare(model, port)
    _sana_compare(model, port, h=6, w=10)  # another, non-square grid
    _sana_compare(model, port, mask=False)
    # the mask matters: without it the padded prompt gives another output
    g = torch.Generator().manual_seed(2)
    x = mx.array(torch.randn(2, 32, 8, 8, generator=g).numpy())
    enc = mx.array(torch.randn(2, 7, tm.GEMMA_DIM, generator=g).numpy())
    keep = np.ones((2, 7), np.float32)
    keep[1, 3:] = 0
    a = np.array(port(x, enc, mx.array([999.0, 3.0]), encoder_attention_mask=mx.array(keep)))
    bb = np.array(port(x, enc, mx.array([999.0, 3.0])))
    assert np.abs(a[1] - bb[1]).max() > 1e-3 and np.abs(a[0] - bb[0]).max() < 1e-5


def test_sana_guidance_embeds_and_qk_norm():
    # Sana-Sprint-like: guidance embedding, RMS qk norm across heads, a timestep scale
    model = _build_sana(guidance_embeds=True, qk_norm="rms_norm_across_heads", timestep_scale=1000.0)
    port = _sana_port(model)
    assert "time_embed.guidance_embedder.linear_1.weight" in model.state_dict()
    _sana_compare(model, port, guidance=4.5, t=[1.3, 0.2])  # Sprint's trigflow times, scaled by 1000
    with pytest.raises(SpriteForgeError) as ei:
        port(mx.zeros((1, 8, 8, 8)), mx.zeros((1, 3, tm.GEMMA_DIM)), mx.array([1.0]))
    assert ei.value.code == BAD_INPUT


def test_sana_sincos_patch2_affine_norm():
    model = _build_sana(interpolation_scale=2, patch_size=2, sample_size=8, norm_elementwise_affine=True,
                        attention_bias=True, out_channels=None)
    assert model.patch_embed.pos_embed is not None
    port = _sana_port(model)
    _sana_compare(model, port)  # the native grid
    _sana_compare(model, port, h=8, w=12)  # a re-tabled non-square grid


@pytest.mark.parametrize("family, missing", [("dit", "proj_out_2.weight"),
                                             ("sana", "transformer_blocks.1.ff.conv_depth.weight")])
def test_missing_tensor_is_a_coded_error(family, missing):
    build, port = {"dit": (tm.build_dit, _dit_port), "sana": (tm.build_sana, _sana_port)}[family]
    model = build()
    sd = mx_weights(model)
    del sd[missing]
    with pytest.raises(SpriteForgeError) as ei:
        port(model, sd)
    assert ei.value.code == MODEL_NOT_CONVERTED and missing in str(ei.value)


# --------------------------------------------------------------------------- half precision
def test_half_precision_keeps_dtype_and_stays_close():
    """Cast to float16 (as the engine does on Apple GPUs) both ports stay in float16 and near the float32 output."""
    cases = []
    m = tm.build_dit()
    x = mx.array(np.random.default_rng(0).standard_normal((2, 4, 16, 16), dtype=np.float32))
    cases.append((_dit_port(m), lambda p, dt: p(x.astype(dt), mx.array([500, 20]), mx.array([1, 1000]))))
    m = tm.build_sana()
    r = np.random.default_rng(1)
    xs = mx.array(r.standard_normal((2, 32, 8, 8), dtype=np.float32))
    enc = mx.array(r.standard_normal((2, 5, tm.GEMMA_DIM), dtype=np.float32))
    keep = mx.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    cases.append((_sana_port(m), lambda p, dt: p(xs.astype(dt), enc.astype(dt), mx.array([500.0, 20.0]), keep)))
    for port, run in cases:
        ref = np.array(run(port, mx.float32))
        layers.cast_module(port, mx.float16)
        out = run(port, mx.float16)
        assert out.dtype == mx.float16
        diff = float(np.abs(np.array(out.astype(mx.float32)) - ref).max())
        print(f"float16 max |diff| {diff:.3g} (max |ref| {np.abs(ref).max():.3g})")
        assert diff <= 1e-2 * (1 + float(np.abs(ref).max()))


# --------------------------------------------------------------------------- real files
@pytest.mark.parametrize("family", ["dit", "sana"])
def test_original_checkpoint_file_through_the_converter(tmp_path, family):
    """An original-layout .safetensors (facebookresearch DiT / NVlabs Sana keys), converted to diffusers names by
    the project's converter, runs in the MLX port like diffusers does (DiT's embedder shared by every block)."""
    from safetensors.torch import load_file

    from spriteforge.engines.torch_models.convert import convert_transformer

    path = (tm.make_dit if family == "dit" else tm.make_sana)(tmp_path, layout="original")
    conv = convert_transformer(family, load_file(str(path)), "original")
    arrays: dict = {}
    sd = {k: arrays.setdefault(id(v), mx.array(v.float().numpy())) for k, v in conv.items()}
    if family == "dit":
        assert sd["transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight"] is \
            sd["transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"]
        model = tm.build_dit()
        _dit_compare(model, _dit_port(model, sd))
    else:
        model = tm.build_sana()
        _sana_compare(model, _sana_port(model, sd))
