"""The MLX PixArt port gives diffusers' PixArtTransformer2DModel outputs on the same weights and inputs.

Covers PixArt-Σ (learned sigma, interpolation scale 2), PixArt-α (resolution / aspect-ratio
micro-conditions), the caption keep-mask, a non-square grid, a model without caption projection
and ``out_channels=None``, the built-in demo model (a real diffusers folder), and the coded error
for a state dict that does not fit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402

from spriteforge.engines.mlx_models import layers, pixart  # noqa: E402
from spriteforge.errors import MODEL_NOT_CONVERTED, SpriteForgeError  # noqa: E402
from spriteforge.tests.parity import assert_close, mx_weights

DEMO = Path(__file__).resolve().parents[1] / "demo_model"


def _port(model):
    p = pixart.PixArtTransformer2DModel(dict(model.config))
    sd = mx_weights(model)
    return layers.load_weights(p, pixart.map_weights(sd), what="pixart")


def _compare(model, *, b=2, h=8, w=12, seq=7, alpha=False, mask=True, caption=None):
    g = torch.Generator().manual_seed(0)
    cin = model.config.in_channels
    caption = caption or model.config.caption_channels or model.config.cross_attention_dim
    x = torch.randn(b, cin, h, w, generator=g)
    enc = torch.randn(b, seq, caption, generator=g)
    keep = torch.ones(b, seq)
    if mask and b > 1:
        keep[1, seq // 2:] = 0
    t = torch.linspace(999, 3, b)
    add = None
    if alpha:
        add = {"resolution": torch.tensor([[h * 8.0, w * 8.0]]).repeat(b, 1), "aspect_ratio": torch.tensor([[h / w]]).repeat(b, 1)}
    with torch.no_grad():
        ref = model(x, encoder_hidden_states=enc, timestep=t, added_cond_kwargs=add,
                    encoder_attention_mask=keep if mask else None, return_dict=False)[0].numpy()
    port = _port(model)
    madd = {k: mx.array(v.numpy()) for k, v in add.items()} if add else None
    out = port(mx.array(x.numpy()), encoder_hidden_states=mx.array(enc.numpy()), timestep=mx.array(t.numpy()),
               added_cond_kwargs=madd, encoder_attention_mask=mx.array(keep.numpy()) if mask else None)
    return assert_close(out, ref)


def test_sigma_learned_sigma_with_mask():
    m = tm.build_pixart("sigma")
    assert m.config.out_channels == 2 * m.config.in_channels
    _compare(m)


def test_alpha_micro_conditions():
    m = tm.build_pixart("alpha")
    assert m.use_additional_conditions
    _compare(m, alpha=True)


def test_alpha_without_sizes_is_refused():
    port = _port(tm.build_pixart("alpha"))
    with pytest.raises(ValueError):
        port(mx.zeros((1, 4, 8, 8)), encoder_hidden_states=mx.zeros((1, 3, tm.T5_DIM)), timestep=mx.array([1.0]))


def test_no_caption_projection_and_default_out_channels():
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(3)
    m = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=None, num_layers=1,
                                 cross_attention_dim=24, sample_size=16, patch_size=2, caption_channels=None,
                                 norm_num_groups=4, use_additional_conditions=False)
    tm._randomize(m, 5)
    _compare(m, b=1, h=6, w=6, mask=False, caption=24)


def test_demo_model_transformer():
    from diffusers import PixArtTransformer2DModel

    if not (DEMO / "transformer" / "config.json").exists():
        pytest.skip("demo_model is not present")
    m = PixArtTransformer2DModel.from_pretrained(DEMO / "transformer", local_files_only=True).eval()
    _compare(m, b=2, h=8, w=8, seq=12)


def test_wrong_or_missing_tensor_is_a_coded_error():
    m = tm.build_pixart("sigma")
    sd = mx_weights(m)
    mapped = pixart.map_weights(sd)
    missing = dict(mapped)
    missing.pop("transformer_blocks.0.attn2.to_k.weight")
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(pixart.PixArtTransformer2DModel(dict(m.config)), missing)
    assert e.value.code == MODEL_NOT_CONVERTED and "missing" in str(e.value)
    wrong = dict(mapped)
    wrong["proj_out.weight"] = mx.zeros((3, 3))
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(pixart.PixArtTransformer2DModel(dict(m.config)), wrong)
    assert e.value.code == MODEL_NOT_CONVERTED and "shape" in str(e.value)
