"""LoRAs on the MLX engine, against the torch engine on the same weights and the same LoRA files.

Two levels:

* every family, every LoRA format: the tiny torch model of the family is mirrored as an MLX
  module tree (an ``mlx.nn.Linear`` / ``mlx.nn.Conv2d`` at every diffusers path, as the MLX ports
  have them, with the same weights); the torch engine and the MLX engine apply the same file
  and every patched weight must agree (and every other one stay the base array);
* the real MLX PixArt port (``engines/mlx_models/pixart.py``): whole-model outputs with a LoRA
  on torch and on MLX within 1e-4 relative (kohya, peft, ComfyUI, LoHa, LoKr, DoRA), strength 0,
  stacking, merge, base untouched;
* the built-in demo model and its shipped ``night`` LoRA through :mod:`spriteforge.pipeline` on
  both engines, same seed: images within 2/255.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

from spriteforge.engines.mlx_models import lora as ML  # noqa: E402
from spriteforge.errors import LORA_KEY_MISMATCH, SpriteForgeError  # noqa: E402
from spriteforge.lora import LoRASpec, apply_loras as apply_any  # noqa: E402
from spriteforge.tests import test_lora_util as U  # noqa: E402
from spriteforge.tests.test_lora_torch import FORMATS, ORIGINAL, _shapes, _write  # noqa: E402

FAMILIES = U.FAMILY_BUILDERS


# -- an MLX tree at the diffusers paths of a torch model -------------------------------------


def _put(root, path: str, layer) -> None:
    parts = path.split(".")
    node = root
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        nxt_list = not last and parts[i + 1].isdigit()
        if isinstance(node, list):
            j = int(p)
            while len(node) <= j:
                node.append(nn.Module())
            if last:
                node[j] = layer
            elif not isinstance(node[j], list) and nxt_list:
                node[j] = []
            node = node[j]
        else:
            if last:
                setattr(node, p, layer)
            else:
                if p not in node:
                    setattr(node, p, [] if nxt_list else nn.Module())
                node = node[p]


def _arr(t):
    return mx.array(t.detach().float().numpy())


def mirror(model: torch.nn.Module):
    """An MLX module tree with a Linear / Conv2d (OHWI weights) at every path ``model`` has one."""
    root = nn.Module()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            layer = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            layer.weight = _arr(m.weight)
        elif isinstance(m, torch.nn.Conv2d):
            layer = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                              groups=m.groups, bias=m.bias is not None)
            layer.weight = _arr(m.weight.permute(0, 2, 3, 1))
        else:
            continue
        if m.bias is not None:
            layer.bias = _arr(m.bias)
        _put(root, name, layer)
    return root


_MIRRORS: dict = {}


def mlx_handle(torch_handle):
    key = id(torch_handle)
    if key not in _MIRRORS:
        _MIRRORS[key] = dataclasses.replace(
            torch_handle, engine=U.engine("mlx"), transformer=mirror(torch_handle.transformer),
            text_encoders={k: mirror(v) for k, v in torch_handle.text_encoders.items()})
    return _MIRRORS[key]


def as_torch_layout(name, a):
    a = np.array(a.astype(mx.float32), dtype=np.float64)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def mlx_state(model) -> dict:
    return {k: as_torch_layout(k, v) for k, v in ML.merged_weights(model).items()}


def assert_same_weights(torch_model, mlx_model, rtol=1e-5, atol=1e-6):
    """Every weight the torch model has (patched or not) equals the MLX one; returns the max |diff|."""
    from spriteforge.engines.torch_models.lora import merged_state_dict

    t = {k: v.detach().double().numpy() for k, v in merged_state_dict(torch_model).items()
         if k.endswith(".weight") or k.endswith(".bias")}
    m = mlx_state(mlx_model)
    worst = 0.0
    for k, v in m.items():
        assert k in t, k
        np.testing.assert_allclose(v, t[k], rtol=rtol, atol=atol, err_msg=k)
        worst = max(worst, float(np.abs(v - t[k]).max()))
    return worst


def _params(model) -> dict:
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.parameters()))


def _untouched(before: dict, model) -> None:
    after = _params(model)
    assert set(after) == set(before)
    for k, v in after.items():
        assert v is before[k] or np.array_equal(np.array(v), np.array(before[k])), k


# -- every format on every family: the same weights as the torch engine ----------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_format_on_family_matches_torch_engine(tmp_path, family, fmt):
    h = U.handle(family)
    hm = mlx_handle(h)
    base = _params(hm.transformer)
    path, w, keys = _write(tmp_path, fmt, family, h.transformer)
    t_new = apply_any(h, [LoRASpec(path, 0.7)])
    m_new = ML.apply_loras(hm, [LoRASpec(path, 0.7)])
    rt, rm = t_new.loras[-1], m_new.loras[-1]
    assert (rm.matched, rm.unmatched, rm.skipped, rm.family, rm.format, rm.layers) == \
        (rt.matched, rt.unmatched, rt.skipped, rt.family, rt.format, rt.layers)
    assert rm.matched == len(keys)
    assert_same_weights(t_new.transformer, m_new.transformer)
    _untouched(base, hm.transformer)
    patched = [n for n, m in m_new.transformer.named_modules() if ML.is_patched(m)]
    assert sorted(patched) == sorted(keys)
    for n in patched:  # patched copies keep their class and parameter paths; the base layers are not patched
        new_layer, old_layer = ML._get(m_new.transformer, n), ML._get(hm.transformer, n)
        assert isinstance(new_layer, type(old_layer)) and not ML.is_patched(old_layer)
        assert new_layer["weight"] is old_layer["weight"]


@pytest.mark.parametrize("family", sorted(ORIGINAL))  # (the families with an original layout)
def test_original_layouts_split_like_torch(tmp_path, family):
    from spriteforge.tests.test_lora_torch import _original_case

    h, _, path, exp = _original_case(tmp_path, family, "kohya")
    m_new = ML.apply_loras(mlx_handle(h), [LoRASpec(path, 0.8)])
    assert m_new.loras[-1].matched == len(ORIGINAL[family])
    got = mlx_state(m_new.transformer)
    for k, v in exp.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("tokens", [3, 400])
@pytest.mark.parametrize("fmt", ["kohya", "loha", "lokr", "dora_peft"])
def test_layer_outputs_match_torch(tmp_path, tokens, fmt):
    """The patched layers' forward (low-rank path for few tokens, patched weight otherwise) equals torch's."""
    h = U.handle("pixart")
    path, _, keys = _write(tmp_path, fmt, "pixart", h.transformer)
    t_new, m_new = apply_any(h, [(path, 0.6)]), ML.apply_loras(mlx_handle(h), [LoRASpec(path, 0.6)])
    tmods = dict(t_new.transformer.named_modules())
    rng = np.random.default_rng(1)
    checked = 0
    for n in keys:
        tm = tmods[n]
        if not isinstance(tm, torch.nn.Linear):
            continue
        x = rng.standard_normal((1, tokens, tm.in_features)).astype(np.float32)
        with torch.no_grad():
            ref = tm(torch.from_numpy(x)).double().numpy()
        got = np.array(ML._get(m_new.transformer, n)(mx.array(x)), dtype=np.float64)
        assert np.abs(got - ref).max() <= 1e-4 * (1 + np.abs(ref).max()), n
        checked += 1
    assert checked >= 2


def test_strength_zero_stacking_merge_and_base_kept(tmp_path):
    h = U.handle("pixart")
    hm = mlx_handle(h)
    base = _params(hm.transformer)
    shapes = _shapes(h.transformer)
    la, lb = "transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.2"
    wa, wb = U.Writer(1), U.Writer(2)
    wa.lora("kohya", la, shapes[la], rank=4, alpha=2.0)
    wa.lora("kohya", lb, shapes[lb], rank=2, alpha=1.0)
    wb.lora("diffusers", la, shapes[la], rank=2)
    pa, pb = wa.save(tmp_path / "a.safetensors"), wb.save(tmp_path / "b.safetensors")
    # strength 0: nothing patched, the very same arrays
    zero = ML.apply_loras(hm, [LoRASpec(pa, 0.0)])
    assert not [n for n, m in zero.transformer.named_modules() if ML.is_patched(m)]
    assert all(v is base[k] for k, v in _params(zero.transformer).items())
    # stacked, one call or two, equals torch stacked
    t_ab = apply_any(apply_any(h, [(pa, 0.5)]), [(pb, 1.0)])
    m_ab = ML.apply_loras(ML.apply_loras(hm, [LoRASpec(pa, 0.5)]), [LoRASpec(pb, 1.0)])
    m_ab1 = ML.apply_loras(hm, [LoRASpec(pa, 0.5), LoRASpec(pb, 1.0)])
    assert [r.name for r in m_ab.loras] == ["a.safetensors", "b.safetensors"]
    assert len(ML._get(m_ab.transformer, la).__dict__["_sf_patches"]) == 2
    assert_same_weights(t_ab.transformer, m_ab.transformer)
    assert_same_weights(t_ab.transformer, m_ab1.transformer)
    # merge=True holds the merged weight as the layer's weight, same outputs as the lazy path
    merged = ML.apply_loras(hm, [LoRASpec(pa, 0.5), LoRASpec(pb, 1.0)], merge=True)
    assert_same_weights(t_ab.transformer, merged.transformer)
    x = mx.array(np.random.default_rng(0).standard_normal((1, 7, shapes[la][1])).astype(np.float32))
    lazy_y, merged_y = ML._get(m_ab.transformer, la)(x), ML._get(merged.transformer, la)(x)
    assert np.allclose(np.array(lazy_y), np.array(merged_y), atol=1e-5)
    assert _params(merged.transformer)[la + ".weight"] is not base[la + ".weight"]
    # a stack on a merged layer starts from the base weight, not from the merged one
    again = ML.apply_loras(merged, [LoRASpec(pa, 0.0), LoRASpec(pb, 0.0)])
    assert_same_weights(t_ab.transformer, again.transformer)
    _untouched(base, hm.transformer)


def test_text_encoder_lora_with_its_own_strength(tmp_path):
    h = U.handle("flux", te=("clip_l", "t5"))
    hm = mlx_handle(h)
    te_base = {k: _params(v) for k, v in hm.text_encoders.items()}
    clip_shapes, t5_shapes = _shapes(h.text_encoders["clip_l"]), _shapes(h.text_encoders["t5"])
    shapes = _shapes(h.transformer)
    w = U.Writer(7)
    w.lora("kohya", "transformer_blocks.0.attn.to_q", shapes["transformer_blocks.0.attn.to_q"], rank=2, alpha=1.0)
    cl = next(n for n in clip_shapes if n.endswith("self_attn.q_proj"))
    t5 = next(n for n in t5_shapes if n.endswith("SelfAttention.q"))
    w.lora("kohya", cl, clip_shapes[cl], rank=2, alpha=1.0, component="te1")
    w.lora("kohya", t5, t5_shapes[t5], rank=2, alpha=1.0, component="te2")
    path = w.save(tmp_path / "te.safetensors")
    t_new = apply_any(h, [LoRASpec(path, 0.8, 0.3)])
    m_new = ML.apply_loras(hm, [LoRASpec(path, 0.8, 0.3)])
    assert m_new.loras[-1].layers == t_new.loras[-1].layers == {"transformer": 1, "clip_l": 1, "t5": 1}
    assert m_new.loras[-1].strength_text == 0.3
    assert_same_weights(t_new.transformer, m_new.transformer)
    for k in ("clip_l", "t5"):
        assert_same_weights(t_new.text_encoders[k], m_new.text_encoders[k])
        _untouched(te_base[k], hm.text_encoders[k])
    off = ML.apply_loras(hm, [LoRASpec(path, 0.8, 0.0)])
    assert off.text_encoders["t5"] is hm.text_encoders["t5"]


def test_fused_qkv_layer_gets_the_rows(tmp_path):
    """An MLX attention with a fused ``to_qkv`` (``fused_projections``): q/k/v LoRAs land on its rows."""
    h = U.handle("flux")
    shapes = _shapes(h.transformer)
    tree = mirror(h.transformer)
    attn = tree["transformer_blocks"][0]["attn"]
    q, k, v = (attn[n] for n in ("to_q", "to_k", "to_v"))
    fused = nn.Linear(q.weight.shape[1], 3 * q.weight.shape[0])
    fused.weight = mx.concatenate([q.weight, k.weight, v.weight], axis=0)
    fused.bias = mx.concatenate([q.bias, k.bias, v.bias], axis=0)
    attn.to_qkv = fused
    attn.__dict__["fused_projections"] = True
    assert "transformer_blocks.0.attn.to_q" not in ML.layer_shapes(tree)
    hm = dataclasses.replace(mlx_handle(h), transformer=tree)
    w = U.Writer(5)
    for layer in ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_v"]:
        w.lora("diffusers", layer, shapes[layer], rank=2)
    path = w.save(tmp_path / "qkv.safetensors")
    new = ML.apply_loras(hm, [LoRASpec(path, 1.0)])
    assert new.loras[-1].matched == 2 and new.loras[-1].layers == {"transformer": 1}
    d = shapes["transformer_blocks.0.attn.to_q"][0]
    W = np.array(fused.weight, dtype=np.float64)
    W[:d] += w.delta["transformer.transformer_blocks.0.attn.to_q"]
    W[2 * d:] += w.delta["transformer.transformer_blocks.0.attn.to_v"]
    got = mlx_state(new.transformer)["transformer_blocks.0.attn.to_qkv.weight"]
    np.testing.assert_allclose(got, W, rtol=1e-5, atol=1e-5)
    x = mx.array(np.random.default_rng(2).standard_normal((1, 3, fused.weight.shape[1])).astype(np.float32))
    y = np.array(ML._get(new.transformer, "transformer_blocks.0.attn.to_qkv")(x), dtype=np.float64)
    ref = np.array(x, dtype=np.float64) @ W.T + np.array(fused.bias, dtype=np.float64)
    assert np.abs(y - ref).max() < 1e-4


def test_other_family_lora_and_partial_matches_are_reported(tmp_path):
    hm = mlx_handle(U.handle("pixart"))
    w = U.Writer()
    w.lora("kohya", "double_blocks.0.img_attn.qkv", (192, 64), rank=4, alpha=4)
    with pytest.raises(SpriteForgeError) as ei:
        ML.apply_loras(hm, [LoRASpec(w.save(tmp_path / "flux_style.safetensors"))])
    assert ei.value.code == LORA_KEY_MISMATCH and "Flux" in ei.value.message
    w = U.Writer()
    w.lora("diffusers", "transformer_blocks.0.attn1.to_q", (144, 144), rank=4)
    w.lora("diffusers", "transformer_blocks.7.attn1.to_q", (144, 144), rank=4)
    w.lora("diffusers", "transformer_blocks.0.attn1.to_k", (288, 144), rank=4)
    w.sd["transformer.transformer_blocks.0.attn1.to_q.lora_B.bias"] = torch.zeros(144)
    rec = ML.apply_loras(hm, [LoRASpec(w.save(tmp_path / "partial.safetensors"))]).loras[-1]
    assert rec.matched == 1 and rec.unmatched == ("transformer.transformer_blocks.7.attn1.to_q",)
    assert rec.skipped[0][0] == "transformer.transformer_blocks.0.attn1.to_k"
    assert rec.ignored == ("transformer.transformer_blocks.0.attn1.to_q.lora_B.bias",)


def test_in_memory_and_half_precision_loras(tmp_path):
    h = U.handle("pixart")
    hm = mlx_handle(h)
    shapes = _shapes(h.transformer)
    layer = "transformer_blocks.0.attn1.to_q"
    w = U.Writer(4)
    w.lora("kohya", layer, shapes[layer], rank=4, alpha=2.0)
    half = {k: v.to(torch.bfloat16) for k, v in w.sd.items()}
    t_new = apply_any(h, [LoRASpec(dict(half), 1.0)])
    m_mem = ML.apply_loras(hm, [LoRASpec(dict(half), 1.0)])
    from safetensors.torch import save_file

    save_file(half, str(tmp_path / "bf16.safetensors"))
    m_file = ML.apply_loras(hm, [LoRASpec(tmp_path / "bf16.safetensors", 1.0)])
    assert_same_weights(t_new.transformer, m_mem.transformer)
    assert_same_weights(t_new.transformer, m_file.transformer)


def test_a_torch_model_in_an_mlx_handle_is_refused(tmp_path):
    from spriteforge.errors import BAD_INPUT

    path, _, _ = _write(tmp_path, "kohya", "pixart", U.handle("pixart").transformer)
    with pytest.raises(SpriteForgeError) as ei:
        apply_any(U.handle("pixart", engine_name="mlx"), [path])
    assert ei.value.code == BAD_INPUT and "engine 'mlx'" in ei.value.message


# -- the real MLX PixArt port: whole-model outputs with a LoRA, torch engine vs MLX engine -----

try:
    from spriteforge.engines.mlx_models import pixart as pixart_port
except ImportError:  # the port not written (yet): only these tests skip
    pixart_port = None
from spriteforge.engines.mlx_models import layers as L  # noqa: E402


@pytest.fixture(scope="module")
def pixart_pair():
    if pixart_port is None:
        pytest.skip("engines/mlx_models/pixart.py is not there")
    h = U.handle("pixart")
    port = pixart_port.PixArtTransformer2DModel(dict(h.transformer.config))
    sd = {k: _arr(v) for k, v in h.transformer.state_dict().items()}
    L.load_weights(port, pixart_port.map_weights(sd), what="pixart")
    return h, dataclasses.replace(h, engine=U.engine("mlx"), transformer=port)


def _run_mlx(model, torch_model):
    kw = U.inputs("pixart", torch_model)
    return np.array(model(mx.array(kw["hidden_states"].numpy()), encoder_hidden_states=mx.array(kw["encoder_hidden_states"].numpy()),
                          timestep=mx.array(kw["timestep"].numpy())), dtype=np.float64)


def _rel(a, ref) -> float:
    return float(np.abs(a - ref).max() / (1 + np.abs(ref).max()))


@pytest.mark.parametrize("fmt", ["kohya", "peft", "comfyui", "loha", "lokr", "dora_lycoris"])
def test_pixart_port_with_lora_matches_torch_engine(tmp_path, pixart_pair, fmt):
    h, hm = pixart_pair
    base = _params(hm.transformer)
    y0 = U.run("pixart", h.transformer).double().numpy()
    assert _rel(_run_mlx(hm.transformer, h.transformer), y0) <= 1e-4
    path, _, keys = _write(tmp_path, fmt, "pixart", h.transformer)
    assert hm.engine.capabilities.lora
    t_new, m_new = apply_any(h, [LoRASpec(path, 0.8)]), apply_any(hm, [LoRASpec(path, 0.8)])
    assert m_new.loras[-1].matched == len(keys) == t_new.loras[-1].matched
    ref = U.run("pixart", t_new.transformer).double().numpy()
    got = _run_mlx(m_new.transformer, h.transformer)
    assert np.abs(ref - y0).max() > 1e-3  # the LoRA moves the output
    assert _rel(got, ref) <= 1e-4, _rel(got, ref)
    print(f"{fmt}: max |mlx - torch| / (1 + max|ref|) = {_rel(got, ref):.2e}")
    merged = apply_any(hm, [LoRASpec(path, 0.8)], merge=True)
    assert _rel(_run_mlx(merged.transformer, h.transformer), ref) <= 1e-4
    _untouched(base, hm.transformer)


def test_pixart_port_strength_zero_and_two_stacked(tmp_path, pixart_pair):
    h, hm = pixart_pair
    base = _params(hm.transformer)
    y0 = _run_mlx(hm.transformer, h.transformer)
    pa, _, _ = _write(tmp_path, "kohya", "pixart", h.transformer, seed=1)
    pb, _, _ = _write(tmp_path, "loha", "pixart", h.transformer, seed=2)
    assert np.array_equal(_run_mlx(apply_any(hm, [(pa, 0.0)]).transformer, h.transformer), y0)
    t_ab = apply_any(apply_any(h, [(pa, 0.5)]), [(pb, 0.7)])
    m_ab = apply_any(apply_any(hm, [(pa, 0.5)]), [(pb, 0.7)])
    ref = U.run("pixart", t_ab.transformer).double().numpy()
    assert _rel(_run_mlx(m_ab.transformer, h.transformer), ref) <= 1e-4
    assert np.array_equal(_run_mlx(hm.transformer, h.transformer), y0)
    _untouched(base, hm.transformer)


PORTS = {**{f: (f, lambda f=f: U.build(f), False) for f in FAMILIES},
         "t5": ("t5", lambda: U.tiny().build_t5(), True), "clip_l": ("clip", lambda: U.tiny().build_clip("clip_l", projection=False), True),
         "gemma": ("gemma", lambda: U.tiny().build_gemma(), True)}


@pytest.mark.parametrize("part", sorted(PORTS))
def test_every_mlx_port_exposes_the_torch_lora_targets(part):
    """Each MLX port (transformers and text encoders) has a patchable layer at every path, with every shape, the
    torch model has one: so a LoRA plans onto both the same way."""
    from spriteforge.engines.mlx_models import loading
    from spriteforge.engines.torch_models.lora import layer_shapes as torch_layer_shapes

    key, make, te = PORTS[part]
    tmodel = make()
    cfg = tmodel.config.to_dict() if te else dict(tmodel.config)
    port = loading.build(key, cfg, {k: v.detach().clone() for k, v in tmodel.state_dict().items()}, mx.float32, part)
    want = {k: tuple(v) for k, v in torch_layer_shapes(tmodel).items()}
    got = ML.layer_shapes(port)
    if te:  # "text_model." may sit on either side (transformers' CLIP modules vs its state dict); the planner accepts both
        want = {k.removeprefix("text_model."): v for k, v in want.items()}
        got = {k.removeprefix("text_model."): v for k, v in got.items()}
    assert got == want


def test_text_encoder_ports_with_lora_match_torch(tmp_path):
    """kohya te1 (CLIP-L) + te2 (T5) parts on the real MLX text-encoder ports of a Flux handle: same outputs as torch."""
    from spriteforge.engines.mlx_models import loading

    tm = U.tiny()
    clip, t5 = tm.build_clip("clip_l", projection=False).eval(), tm.build_t5().eval()
    h = dataclasses.replace(U.handle("flux"), text_encoders={"clip_l": clip, "t5": t5})

    def ported(key, m, cfg):
        return loading.build(key, cfg, {k: v.detach().clone() for k, v in m.state_dict().items()}, mx.float32, key)

    hm = dataclasses.replace(h, engine=U.engine("mlx"), transformer=ported("flux", h.transformer, dict(h.transformer.config)),
                             text_encoders={"clip_l": ported("clip", clip, clip.config.to_dict()),
                                            "t5": ported("t5", t5, t5.config.to_dict())})
    w = U.Writer(11)
    cs, ts = _shapes(clip), _shapes(t5)
    for n in [k for k in cs if k.endswith(("self_attn.q_proj", "mlp.fc2"))]:
        w.lora("kohya", n, cs[n], rank=2, alpha=1.0, component="te1")
    for n in [k for k in ts if k.endswith(("SelfAttention.q", "DenseReluDense.wo", "DenseReluDense.wi"))]:
        w.lora("kohya", n, ts[n], rank=2, alpha=1.0, component="te2")
    path = w.save(tmp_path / "te.safetensors")
    t_new, m_new = apply_any(h, [LoRASpec(path, 1.0, 0.9)]), apply_any(hm, [LoRASpec(path, 1.0, 0.9)])
    assert m_new.loras[-1].layers == t_new.loras[-1].layers and m_new.loras[-1].matched == t_new.loras[-1].matched > 2
    ids = np.array([[3, 17, 5, 9, 1]])
    with torch.no_grad():
        ref_t5 = t_new.text_encoders["t5"](torch.from_numpy(ids)).last_hidden_state.double().numpy()
        base_t5 = t5(torch.from_numpy(ids)).last_hidden_state.double().numpy()
        ref_clip = t_new.text_encoders["clip_l"](torch.from_numpy(ids)).last_hidden_state.double().numpy()
    got_t5 = np.array(m_new.text_encoders["t5"](mx.array(ids)), dtype=np.float64)
    got_clip = np.array(m_new.text_encoders["clip_l"].last_hidden_state(mx.array(ids)), dtype=np.float64)
    assert np.abs(ref_t5 - base_t5).max() > 1e-3
    print(f"te LoRA: T5 {_rel(got_t5, ref_t5):.2e}, CLIP {_rel(got_clip, ref_clip):.2e}")
    assert _rel(got_t5, ref_t5) <= 1e-4 and _rel(got_clip, ref_clip) <= 1e-4


# -- the built-in demo model and its shipped LoRA through the pipeline, both engines -----------

DEMO = Path(__file__).resolve().parents[1] / "demo_model"


@pytest.mark.skipif(not (DEMO / "model_index.json").exists(), reason="demo_model/ is not present")
def test_demo_model_night_lora_same_image_on_both_engines():
    from spriteforge import pipeline as P
    from spriteforge.engines import get_engine

    params = P.GenerateParams(prompt="red potion", seed=3, steps=4, width=32, height=32)
    images = {}
    for name in ("torch", "mlx"):
        eng = get_engine(name, "cpu")
        h = eng.load_model(str(DEMO))
        lo = apply_any(h, [LoRASpec(DEMO / "loras" / "night.safetensors", 1.0)])
        assert lo.loras[-1].matched == 48 and not lo.loras[-1].unmatched and lo.loras[-1].layers == {"transformer": 48}
        images[name] = P.generate(eng, lo, params)
        if name == "torch":
            base = P.generate(eng, h, params)
    diff = float(np.abs(images["torch"] - images["mlx"]).max()) * 255
    print(f"demo + night LoRA: max |torch - mlx| = {diff:.3f}/255")
    assert diff <= 2.0
    assert float(np.abs(images["torch"] - base).max()) * 255 > 20  # the LoRA does something


@pytest.mark.parametrize("fmt", ["kohya", "loha"])
def test_half_precision_mlx_model_keeps_its_dtype(tmp_path, fmt):
    """On Metal the weights may be float16: patched layers compute in float32 and answer in the model's dtype."""
    from spriteforge.engines.mlx_models.layers import cast_module

    h = U.handle("pixart")
    hm = dataclasses.replace(mlx_handle(h), transformer=cast_module(mirror(h.transformer), mx.float16))
    path, _, keys = _write(tmp_path, fmt, "pixart", h.transformer)
    t_new, m_new = apply_any(h, [(path, 0.5)]), ML.apply_loras(hm, [LoRASpec(path, 0.5)])
    tmods = dict(t_new.transformer.named_modules())
    for n in keys:
        if not isinstance(tmods[n], torch.nn.Linear):
            continue
        layer = ML._get(m_new.transformer, n)
        for tokens in (2, 300):
            x = np.random.default_rng(tokens).standard_normal((1, tokens, tmods[n].in_features)).astype(np.float32)
            y = layer(mx.array(x).astype(mx.float16))
            assert y.dtype == mx.float16
            with torch.no_grad():
                ref = tmods[n](torch.from_numpy(x)).numpy()
            assert np.abs(np.array(y.astype(mx.float32)) - ref).max() <= 2e-2 * (1 + np.abs(ref).max()), n
