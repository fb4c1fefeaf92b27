"""The MLX SD3/SD3.5 and Flux.1 ports give diffusers' outputs on the same weights and inputs.

SD3: SD3.0, SD3.5 Large (RMS q/k norms) and SD3.5 Medium (q/k norms plus the dual attention
block), batch 2 with per-item timesteps on a non-square latent, the centre crop of the position
table off-centre in both axes, and the coded DIMENSION_LIMIT beyond the table.
Flux: dev (guidance embedding), schnell (none) and Fill (384 input channels), batch 2, a
non-square packed latent with the engine's img_ids/txt_ids. Both: a state dict with a missing or
misshapen tensor gives MODEL_NOT_CONVERTED from the strict loader.
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

from spriteforge.engines.mlx_models import layers  # noqa: E402
from spriteforge.errors import BAD_INPUT, DIMENSION_LIMIT, MODEL_NOT_CONVERTED, SpriteForgeError  # noqa: E402
from spriteforge.tests.parity import assert_close, mx_weights

from spriteforge.engines.mlx_models import sd3  # noqa: E402


# --------------------------------------------------------------------------- SD3 / SD3.5
def _sd3_port(model):
    p = sd3.SD3Transformer2DModel(dict(model.config))
    return layers.load_weights(p, sd3.map_weights(mx_weights(model)), what="sd3")


@pytest.mark.parametrize("variant", ["sd3", "sd3.5-large", "sd3.5-medium"])
def test_sd3_matches_diffusers(variant):
    model = tm.build_sd3(variant)
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    b, h, w, seq = 2, 10, 6, 9  # 5x3 patches: the crop of the 16x16 table is off-centre by half a cell
    x = torch.randn(b, cfg.in_channels, h, w, generator=g)
    enc = torch.randn(b, seq, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(b, cfg.pooled_projection_dim, generator=g)
    t = torch.tensor([937.5, 120.25])
    with torch.no_grad():
        ref = model(hidden_states=x, encoder_hidden_states=enc, pooled_projections=pooled, timestep=t, return_dict=False)[0].numpy()
    port = _sd3_port(model)
    if variant == "sd3.5-medium":
        assert "attn2" in port.transformer_blocks[0] and "attn2" not in port.transformer_blocks[1]
    if variant != "sd3":
        assert "norm_added_q" in port.transformer_blocks[0].attn
    out = port(mx.array(x.numpy()), mx.array(enc.numpy()), mx.array(pooled.numpy()), mx.array(t.numpy()))
    assert_close(out, ref, f"sd3 {variant}")


def test_sd3_without_position_table_size_matches_diffusers():
    """``pos_embed_max_size=None``: no saved table, a sin-cos grid of the input's own size (diffusers' fallback)."""
    from diffusers import SD3Transformer2DModel

    cfg = {k: v for k, v in dict(tm.build_sd3("sd3").config).items() if not k.startswith("_")}
    cfg["pos_embed_max_size"] = None
    model = tm._randomize(SD3Transformer2DModel(**cfg), 3)
    assert not any(k == "pos_embed.pos_embed" for k in model.state_dict())
    port = _sd3_port(model)
    g = torch.Generator().manual_seed(4)
    x, enc = torch.randn(2, 16, 10, 6, generator=g), torch.randn(2, 5, cfg["joint_attention_dim"], generator=g)
    pooled, t = torch.randn(2, cfg["pooled_projection_dim"], generator=g), torch.tensor([900.0, 10.0])
    with torch.no_grad():
        ref = model(x, enc, pooled, t, return_dict=False)[0].numpy()
    assert_close(port(mx.array(x.numpy()), mx.array(enc.numpy()), mx.array(pooled.numpy()), mx.array(t.numpy())), ref, "sd3 no table")


def test_sd3_size_beyond_table_is_coded():
    model = tm.build_sd3("sd3")
    port = _sd3_port(model)
    cfg = model.config
    x = mx.zeros((1, cfg.in_channels, 2 * (cfg.pos_embed_max_size + 1), 8))
    with pytest.raises(SpriteForgeError) as e:
        port(x, mx.zeros((1, 3, cfg.joint_attention_dim)), mx.zeros((1, cfg.pooled_projection_dim)), mx.array([1.0]))
    assert e.value.code == DIMENSION_LIMIT


def test_sd3_missing_or_bad_tensor_is_coded():
    model = tm.build_sd3("sd3.5-medium")
    sd = sd3.map_weights(mx_weights(model))
    missing = dict(sd)
    missing.pop("transformer_blocks.0.attn2.norm_q.weight")
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(sd3.SD3Transformer2DModel(dict(model.config)), missing, what="sd3")
    assert e.value.code == MODEL_NOT_CONVERTED and "attn2.norm_q" in str(e.value)
    bad = dict(sd)
    bad["pos_embed.proj.weight"] = mx_weights(model)["pos_embed.proj.weight"]  # left in torch's OIHW layout
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(sd3.SD3Transformer2DModel(dict(model.config)), bad, what="sd3")
    assert e.value.code == MODEL_NOT_CONVERTED


# --------------------------------------------------------------------------- Flux.1
from spriteforge.engines.mlx_models import flux  # noqa: E402


def _flux_port(model):
    p = flux.FluxTransformer2DModel(dict(model.config))
    return layers.load_weights(p, flux.map_weights(mx_weights(model)), what="flux")


def _img_ids(h2, w2):
    """The engine's ids (generation._flux_img_ids): (0, row, col) per packed token."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(-1, 3)


@pytest.mark.parametrize("variant", ["dev", "schnell", "fill"])
def test_flux_matches_diffusers(variant):
    model = tm.build_flux(variant)
    cfg = model.config
    g = torch.Generator().manual_seed(2)
    b, h2, w2, seq = 2, 3, 5, 6  # a 6x10 latent packed into 3x5 tokens
    x = torch.randn(b, h2 * w2, cfg.in_channels, generator=g)
    enc = torch.randn(b, seq, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(b, cfg.pooled_projection_dim, generator=g)
    t = torch.tensor([0.875, 0.3125])
    img_ids = _img_ids(h2, w2)
    txt_ids = torch.zeros(seq, 3)
    txt_ids[:, 0] = torch.arange(seq) * 0.5  # non-zero text positions exercise the first rope axis too
    guidance = torch.tensor([3.5, 5.0]) if cfg.guidance_embeds else None
    with torch.no_grad():
        ref = model(hidden_states=x, encoder_hidden_states=enc, pooled_projections=pooled, timestep=t, img_ids=img_ids,
                    txt_ids=txt_ids, guidance=guidance, return_dict=False)[0].numpy()
    port = _flux_port(model)
    assert ("guidance_embedder" in port.time_text_embed) == (variant != "schnell")
    args = (mx.array(x.numpy()), mx.array(enc.numpy()), mx.array(pooled.numpy()), mx.array(t.numpy()))
    mg = None if guidance is None else mx.array(guidance.numpy())
    # a first call with other ids: the port's rotary-table cache must follow the ids, not the first call
    stale = port(*args, img_ids=mx.zeros((h2 * w2, 3)), txt_ids=mx.zeros((seq, 3)), guidance=mg)
    out = port(*args, img_ids=mx.array(img_ids.numpy()), txt_ids=mx.array(txt_ids.numpy()), guidance=mg)
    assert float(mx.abs(out - stale).max()) > 1e-3
    assert ref.shape == (b, h2 * w2, 64)
    assert_close(out, ref, f"flux {variant}")


def test_flux_dev_without_guidance_is_coded():
    model = tm.build_flux("dev")
    port = _flux_port(model)
    cfg = model.config
    with pytest.raises(SpriteForgeError) as e:
        port(mx.zeros((1, 4, cfg.in_channels)), mx.zeros((1, 2, cfg.joint_attention_dim)), mx.zeros((1, cfg.pooled_projection_dim)),
             mx.array([0.5]), img_ids=mx.zeros((4, 3)), txt_ids=mx.zeros((2, 3)))
    assert e.value.code == BAD_INPUT


def test_flux_missing_or_bad_tensor_is_coded():
    model = tm.build_flux("fill")
    sd = flux.map_weights(mx_weights(model))
    missing = dict(sd)
    missing.pop("single_transformer_blocks.0.attn.norm_k.weight")
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(flux.FluxTransformer2DModel(dict(model.config)), missing, what="flux")
    assert e.value.code == MODEL_NOT_CONVERTED and "norm_k" in str(e.value)
    # Fill weights into a dev-shaped port (64 input channels): a shape mismatch, coded
    dev_cfg = dict(tm.build_flux("dev").config)
    with pytest.raises(SpriteForgeError) as e:
        layers.load_weights(flux.FluxTransformer2DModel(dev_cfg), sd, what="flux")
    assert e.value.code == MODEL_NOT_CONVERTED and "x_embedder.weight" in str(e.value)


@pytest.mark.parametrize("which", ["sd3.5-medium", "sd3", "dev", "fill"])
def test_linear_layers_sit_at_the_diffusers_paths(which):
    """LoRA on MLX wraps layers by path: every torch nn.Linear has an mlx nn.Linear at the same name, and no other."""
    import mlx.nn as nn

    if which.startswith("sd3"):
        model = tm.build_sd3(which)
        port = _sd3_port(model)
    else:
        model = tm.build_flux(which)
        port = _flux_port(model)
    ref = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    own = {n for n, m in port.named_modules() if isinstance(m, nn.Linear)}
    assert own == ref
