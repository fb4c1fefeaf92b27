"""The engine-agnostic LoRA core: the update formulas, once, on numpy, torch and MLX arrays; names and families."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spriteforge.errors import LORA_KEY_MISMATCH, SpriteForgeError
from spriteforge.lora import Patch, delta_weight, detect_family, fuse_lora_parts, group_modules, parse_lora_arg, patched_weight, take_rows
from spriteforge.lora.keys import file_format
from spriteforge.lora.plan import plan
from spriteforge.engines.ops import mlx_ops, torch_ops

RNG = np.random.default_rng(0)


def rnd(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def lora(out=6, inn=5, r=3, alpha=1.5, strength=1.0, **kw):
    return Patch("lora", {"down": rnd(r, inn), "up": rnd(out, r)}, alpha=alpha, strength=strength, **kw)


# -- the formulas -----------------------------------------------------------------


def test_lora_formula():
    W = rnd(6, 5)
    p = lora(strength=0.7)
    d, u = p.tensors["down"].astype(np.float64), p.tensors["up"].astype(np.float64)
    np.testing.assert_allclose(patched_weight(W, [p]), W + 0.7 * (1.5 / 3) * u @ d, rtol=1e-6, atol=1e-6)
    assert patched_weight(W, [p]).dtype == np.float32


def test_no_alpha_means_scale_one_and_strength_zero_is_identity():
    W = rnd(6, 5)
    p = lora(alpha=None)
    np.testing.assert_allclose(delta_weight(p, (6, 5)), p.tensors["up"] @ p.tensors["down"], rtol=1e-6)
    assert np.array_equal(patched_weight(W, [p.with_strength(0.0)]), W)


def test_conv_lora_formula():
    W = rnd(8, 4, 3, 3)
    p = Patch("lora", {"down": rnd(2, 4, 3, 3), "up": rnd(8, 2, 1, 1)}, alpha=1.0)
    want = (p.tensors["up"].reshape(8, 2) @ p.tensors["down"].reshape(2, -1)).reshape(8, 4, 3, 3) * 0.5
    np.testing.assert_allclose(patched_weight(W, [p]) - W, want, rtol=1e-5, atol=1e-6)


def test_loha_formula():
    t = {"w1a": rnd(6, 2), "w1b": rnd(2, 5), "w2a": rnd(6, 2), "w2b": rnd(2, 5)}
    p = Patch("loha", t, alpha=1.0)
    want = (t["w1a"] @ t["w1b"]) * (t["w2a"] @ t["w2b"]) * 0.5
    np.testing.assert_allclose(delta_weight(p, (6, 5)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factorised", [True, False])
def test_lokr_formula(factorised):
    w1 = rnd(2, 3)
    if factorised:
        t = {"w1": w1, "w2a": rnd(4, 2), "w2b": rnd(2, 5)}
        w2, s = t["w2a"] @ t["w2b"], 3.0 / 2
    else:
        t = {"w1": w1, "w2": rnd(4, 5)}
        w2, s = t["w2"], 1.0
    p = Patch("lokr", t, alpha=3.0)
    np.testing.assert_allclose(delta_weight(p, (8, 15)), np.kron(w1, w2) * s, rtol=1e-5, atol=1e-6)


def test_lokr_conv():
    t = {"w1": rnd(2, 2), "w2": rnd(3, 2, 3, 3)}
    p = Patch("lokr", t)
    want = np.kron(t["w1"].reshape(2, 2, 1, 1), t["w2"])
    np.testing.assert_allclose(delta_weight(p, (6, 4, 3, 3)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", ["row", "column"])
@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_dora(axis, strength):
    W = rnd(6, 5)
    m = (np.abs(rnd(6)) + 0.5) if axis == "row" else (np.abs(rnd(1, 5)) + 0.5)
    p = lora(dora_scale=m, strength=strength)
    V = W.astype(np.float64) + delta_weight(p, (6, 5))
    if axis == "row":  # peft: one magnitude per output row, norm over the input axis
        Wd = m[:, None] * V / np.linalg.norm(V, axis=1, keepdims=True)
    else:  # LyCORIS: one per input column, norm over the output axis
        Wd = m * V / np.linalg.norm(V, axis=0, keepdims=True)
    np.testing.assert_allclose(patched_weight(W, [p]), W + strength * (Wd - W), rtol=1e-5, atol=1e-5)


def test_rows_patch_touches_only_its_rows():
    W = rnd(9, 5)
    p = lora(out=3, inn=5, rows=(3, 6))
    out = patched_weight(W, [p])
    assert np.array_equal(out[:3], W[:3]) and np.array_equal(out[6:], W[6:])
    np.testing.assert_allclose(out[3:6], W[3:6] + delta_weight(lora_no_rows(p), (3, 5)), rtol=1e-6)


def lora_no_rows(p):
    from dataclasses import replace

    return replace(p, rows=None)


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr", "full"])
def test_take_rows_is_exact(kind):
    if kind == "lora":
        p = lora(out=8)
    elif kind == "loha":
        p = Patch("loha", {"w1a": rnd(8, 2), "w1b": rnd(2, 5), "w2a": rnd(8, 2), "w2b": rnd(2, 5)}, alpha=1.0)
    elif kind == "lokr":
        p = Patch("lokr", {"w1": rnd(2, 1), "w2a": rnd(4, 2), "w2b": rnd(2, 5)}, alpha=1.0)
    else:
        p = Patch("full", {"diff": rnd(8, 5)})
    full = delta_weight(p, (8, 5))
    for pieces in ([(0, 3)], [(3, 8)], [(4, 8), (0, 4)]):
        sub = take_rows(p, pieces, target_shape=(8, 5))
        want = np.concatenate([full[a:b] for a, b in pieces])
        np.testing.assert_allclose(delta_weight(sub, want.shape), want, rtol=1e-5, atol=1e-6)


def test_fuse_lora_parts_equals_stacked_updates():
    q, v = lora(out=4, inn=5, r=2, alpha=1.0), lora(out=4, inn=5, r=3, alpha=6.0)
    fused = fuse_lora_parts([q, None, v], [4, 4, 4], 5)
    want = np.concatenate([delta_weight(q, (4, 5)), np.zeros((4, 5)), delta_weight(v, (4, 5))])
    np.testing.assert_allclose(delta_weight(fused, (12, 5)), want, rtol=1e-5, atol=1e-6)
    assert fused.rank == 5


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 12), inn=st.integers(1, 12), r=st.integers(1, 6), alpha=st.floats(0.1, 64),
       strength=st.floats(-2, 2), seed=st.integers(0, 2**16))
def test_lora_formula_property(out, inn, r, alpha, strength, seed):
    g = np.random.default_rng(seed)
    W, down, up = (g.standard_normal(s).astype(np.float32) for s in ((out, inn), (r, inn), (out, r)))
    got = patched_weight(W, [Patch("lora", {"down": down, "up": up}, alpha=alpha, strength=strength)])
    want = W.astype(np.float64) + strength * (alpha / r) * (up.astype(np.float64) @ down.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, abs(strength) * alpha / r * 10))


# -- one function, three array libraries ---------------------------------------------


def _patch_set(conv=False):
    if conv:
        return rnd(6, 4, 3, 3), [Patch("lora", {"down": rnd(2, 4, 3, 3), "up": rnd(6, 2, 1, 1)}, alpha=1.0, strength=0.8)]
    W = rnd(8, 6)
    return W, [
        lora(out=8, inn=6, strength=0.5),
        Patch("loha", {"w1a": rnd(8, 2), "w1b": rnd(2, 6), "w2a": rnd(8, 2), "w2b": rnd(2, 6)}, alpha=1.0, strength=0.3),
        Patch("lokr", {"w1": rnd(2, 2), "w2a": rnd(4, 2), "w2b": rnd(2, 3)}, alpha=1.0, strength=-0.7),
        Patch("full", {"diff": rnd(4, 6)}, rows=(2, 6)),
        lora(out=8, inn=6, dora_scale=np.abs(rnd(8)) + 0.5, strength=0.6),
        lora(out=8, inn=6, dora_scale=np.abs(rnd(1, 6)) + 0.5, strength=1.0),
    ]


def _convert(patches, fn):
    from dataclasses import replace

    return [replace(p, tensors={k: fn(v) for k, v in p.tensors.items()},
                    dora_scale=fn(p.dora_scale) if p.dora_scale is not None else None) for p in patches]


@pytest.mark.parametrize("conv", [False, True])
def test_numpy_torch_mlx_agree(conv):
    torch = pytest.importorskip("torch")
    W, patches = _patch_set(conv)
    ref = patched_weight(W, patches)
    got_t = patched_weight(torch.from_numpy(W), _convert(patches, torch.from_numpy), ops=torch_ops())
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float32
    np.testing.assert_allclose(got_t.numpy(), ref, rtol=1e-5, atol=1e-5)
    bf = patched_weight(torch.from_numpy(W).to(torch.bfloat16), _convert(patches, torch.from_numpy), ops=torch_ops())
    assert bf.dtype == torch.bfloat16
    mx = pytest.importorskip("mlx.core")  # an optional engine
    got_m = patched_weight(mx.array(W), _convert(patches, mx.array), ops=mlx_ops())
    assert isinstance(got_m, mx.array)
    np.testing.assert_allclose(np.array(got_m), ref, rtol=1e-5, atol=1e-5)


def test_lora_package_imports_no_framework():
    code = "import sys, spriteforge.lora; print(any(m in sys.modules for m in ('torch', 'mlx', 'mlx.core')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# -- names -------------------------------------------------------------------------

KEYS = {
    "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": ("transformer", "double_blocks_0_img_attn_qkv", "kohya", "down"),
    "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha": ("te1", "text_model_encoder_layers_0_mlp_fc1", "kohya", "alpha"),
    "lora_transformer_single_transformer_blocks_0_attn_to_q.lora_up.weight":
        ("transformer", "single_transformer_blocks_0_attn_to_q", "onetrainer", "up"),
    "diffusion_model.joint_blocks.3.x_block.attn.qkv.lora_A.weight": ("transformer", "joint_blocks.3.x_block.attn.qkv", "comfyui", "down"),
    "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": ("transformer", "transformer_blocks.0.attn1.to_q", "diffusers", "up"),
    "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight":
        ("te2", "encoder.block.0.layer.0.SelfAttention.q", "diffusers", "down"),
    "transformer_blocks.0.attn1.to_k.lora_A.default.weight": ("transformer", "transformer_blocks.0.attn1.to_k", "peft", "down"),
    "lycoris_transformer_blocks_0_attn1_to_q.lokr_w2_b": ("transformer", "transformer_blocks_0_attn1_to_q", "lycoris", "w2b_k"),
    "lora_unet_blocks_0_attn_qkv.hada_w1_a": ("transformer", "blocks_0_attn_qkv", "kohya", "w1a_h"),
    "transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector": ("transformer", "transformer_blocks.0.attn.to_q", "diffusers", "dora"),
    "lora_unet_x.dora_scale": ("transformer", "x", "kohya", "dora"),
}


@pytest.mark.parametrize("key", list(KEYS))
def test_key_parsing(key):
    mods, stray = group_modules([key])
    assert not stray
    m = mods[0]
    comp, body, naming, role = KEYS[key]
    assert (m.component, m.body, m.naming) == (comp, body, naming)
    assert m.params == {role: key}


def test_grouping_and_format_summary():
    keys = [f"lora_unet_a_{i}.{p}" for i in range(3) for p in ("lora_down.weight", "lora_up.weight", "alpha")]
    keys += ["lora_unet_b.hada_w1_a", "lora_unet_b.hada_w1_b", "lora_unet_b.hada_w2_a", "lora_unet_b.hada_w2_b", "something_else"]
    mods, stray = group_modules(keys)
    assert stray == ["something_else"] and len(mods) == 4
    f = file_format(mods)
    assert f["algorithms"] == {"lora": 3, "loha": 1} and f["format"].startswith("lycoris")


# -- families ------------------------------------------------------------------------

DETECT = [
    (["double_blocks_0_img_attn_qkv"], ["flux", "flux2"]),  # BFL's block names: Flux.1's and FLUX.2's (no widths to tell)
    (["single_transformer_blocks_3_attn_to_q", "transformer_blocks_0_attn_to_q"], ["flux"]),
    (["joint_blocks_0_x_block_attn_qkv"], ["sd3"]),
    (["transformer_blocks_23_attn_add_q_proj"], ["sd3", "qwenimage"]),  # past Flux's 19 blocks
    (["transformer_blocks_0_attn_add_q_proj"], ["flux", "sd3", "flux2", "qwenimage"]),
    (["transformer_blocks_59_attn_to_add_out"], ["qwenimage"]),  # past SD3.5 large's 38
    (["transformer_blocks_0_attn2_to_q", "transformer_blocks_0_attn_to_q"], ["sd3"]),
    (["transformer_blocks_0_ff_conv_inverted"], ["sana"]),
    (["adaln_single_linear"], ["pixart"]),
    (["transformer_blocks_0_attn2_to_k", "transformer_blocks_0_attn1_to_q"], ["pixart", "sana"]),
    (["blocks_0_attn_qkv", "blocks_0_adaLN_modulation_1"], ["dit"]),
    (["transformer_blocks_0_attn1_to_q"], ["pixart", "sana", "dit"]),
    (["single_transformer_blocks_0_attn_to_qkv_mlp_proj"], ["flux2"]),
    (["transformer_blocks_0_attn_to_q", "transformer_blocks_0_ff_linear_in"], ["flux2"]),
    (["double_blocks_0_img_attn_qkv", "double_stream_modulation_img_lin"], ["flux2"]),
    (["double_blocks_0_img_attn_qkv", "single_blocks_0_linear1"], ["flux", "flux2"]),  # FLUX.2's original names are Flux.1's too
    (["double_blocks_0_img_attn_qkv", "single_blocks_0_modulation_lin"], ["flux"]),  # per-block modulation: Flux.1's only
    (["input_blocks_4_1_proj_in"], ["unet"]),
    (["down_blocks_1_attentions_0_proj_in"], ["unet"]),
    (["something_else"], []),
]


@pytest.mark.parametrize("names,want", DETECT)
def test_family_detection(names, want):
    assert detect_family(names).candidates == want


def test_width_and_metadata_settle_ambiguity():
    names = ["transformer_blocks_0_attn_to_q", "transformer_blocks_0_attn_add_q_proj"]
    # 3072 wide: Flux.1, FLUX.2 [klein] 4B or Qwen-Image (all that wide), not SD3; 4096: FLUX.2 [klein] 9B
    assert detect_family(names, widths={"transformer_blocks_0_attn_to_q": 3072}).candidates == ["flux", "flux2", "qwenimage"]
    assert detect_family(names, widths={"transformer_blocks_0_attn_to_q": 4096}).candidates == ["flux2"]
    assert detect_family(names, metadata={"ss_base_model_version": "sd3"}).candidates[0] == "sd3"


# -- matching onto a model's layers, framework-free ------------------------------------


def _mods(keys):
    return group_modules(keys)[0]


def test_diffusers_qkv_lora_onto_original_fused_layout():
    """The "and back" direction: separate q/k/v LoRAs on a model that keeps Flux/SD3's fused qkv."""
    d = 4
    tensors = {}
    for part in ("to_q", "to_v", "add_k_proj"):
        tensors[f"transformer.transformer_blocks.0.attn.{part}.lora_A.weight"] = rnd(2, d)
        tensors[f"transformer.transformer_blocks.0.attn.{part}.lora_B.weight"] = rnd(d, 2)
    tensors["transformer.single_transformer_blocks.1.proj_mlp.lora_A.weight"] = rnd(2, d)
    tensors["transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight"] = rnd(4 * d, 2)
    targets = {"double_blocks.0.img_attn.qkv": (3 * d, d), "double_blocks.0.txt_attn.qkv": (3 * d, d),
               "single_blocks.1.linear1": (7 * d, d)}
    pl = plan(_mods(tensors), tensors.__getitem__, family="flux", transformer=targets, text_encoders={})
    cp = pl.components["transformer"]
    assert not cp.unmatched and len(cp.matched) == 4
    rows = {(t, p.rows) for t, ps in cp.patches.items() for p in ps}
    assert rows == {("double_blocks.0.img_attn.qkv", (0, d)), ("double_blocks.0.img_attn.qkv", (2 * d, 3 * d)),
                    ("double_blocks.0.txt_attn.qkv", (d, 2 * d)), ("single_blocks.1.linear1", (3 * d, 7 * d))}
    W = rnd(3 * d, d)
    got = patched_weight(W, cp.patches["double_blocks.0.img_attn.qkv"])
    dq = tensors["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"] @ tensors["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"]
    dv = tensors["transformer.transformer_blocks.0.attn.to_v.lora_B.weight"] @ tensors["transformer.transformer_blocks.0.attn.to_v.lora_A.weight"]
    np.testing.assert_allclose(got, W + np.concatenate([dq, np.zeros((d, d)), dv]), rtol=1e-5, atol=1e-6)


def test_sd3_adaln_swap_only_for_two_chunks():
    d = 4
    t = {}
    for blk, chunks in ((0, 6), (1, 2)):
        t[f"lora_unet_joint_blocks_{blk}_context_block_adaLN_modulation_1.lora_down.weight"] = rnd(2, d)
        t[f"lora_unet_joint_blocks_{blk}_context_block_adaLN_modulation_1.lora_up.weight"] = rnd(chunks * d, 2)
    targets = {"transformer_blocks.0.norm1_context.linear": (6 * d, d), "transformer_blocks.1.norm1_context.linear": (2 * d, d)}
    cp = plan(_mods(t), t.__getitem__, family="sd3", transformer=targets, text_encoders={}).components["transformer"]
    for blk, chunks in ((0, 6), (1, 2)):
        up = t[f"lora_unet_joint_blocks_{blk}_context_block_adaLN_modulation_1.lora_up.weight"]
        down = t[f"lora_unet_joint_blocks_{blk}_context_block_adaLN_modulation_1.lora_down.weight"]
        full = up @ down
        if chunks == 2:
            full = np.concatenate([full[d:], full[:d]])
        (p,) = cp.patches[f"transformer_blocks.{blk}.norm1_context.linear"]
        np.testing.assert_allclose(delta_weight(p, full.shape), full, rtol=1e-5, atol=1e-6)


def test_plan_refuses_other_family_by_name():
    t = {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": rnd(2, 4),
         "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": rnd(12, 2)}
    with pytest.raises(SpriteForgeError) as ei:
        plan(_mods(t), t.__getitem__, family="flux", transformer={"x": (4, 4)}, text_encoders={}, lora_name="sd3_style.safetensors")
    assert ei.value.code == LORA_KEY_MISMATCH
    assert "sd3_style.safetensors is for SD3; the loaded model is Flux" in ei.value.message


@pytest.mark.parametrize("text,want", [
    ("a.safetensors", ("a.safetensors", 1.0, None)),
    ("a.safetensors:0.6", ("a.safetensors", 0.6, None)),
    ("dir/a b.safetensors:-1.5:0.25", ("dir/a b.safetensors", -1.5, 0.25)),
    ("C:\\loras\\x.safetensors:.5", ("C:\\loras\\x.safetensors", 0.5, None)),
    ("C:\\loras\\x.safetensors", ("C:\\loras\\x.safetensors", 1.0, None)),
])
def test_parse_lora_arg(text, want):
    s = parse_lora_arg(text)
    assert (s.source, s.strength_model, s.strength_text) == want


def test_cli_arguments():
    import argparse

    from spriteforge.lora import add_cli_arguments, specs_from_args

    p = argparse.ArgumentParser()
    add_cli_arguments(p)
    specs = specs_from_args(p.parse_args(["--lora", "a.safetensors:0.5", "--lora", "b.safetensors"]))
    assert [(s.source, s.strength_model, s.text_strength) for s in specs] == [("a.safetensors", 0.5, 0.5), ("b.safetensors", 1.0, 1.0)]


def test_original_qkv_lora_onto_diffusers_fused_to_qkv():
    d = 4
    t = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": rnd(2, d),
         "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": rnd(3 * d, 2),
         "lora_unet_double_blocks_0_img_attn_qkv.alpha": np.float32(1.0)}
    targets = {"transformer_blocks.0.attn.to_qkv": (3 * d, d)}
    cp = plan(_mods(t), t.__getitem__, family="flux", transformer=targets, text_encoders={}).components["transformer"]
    ps = cp.patches["transformer_blocks.0.attn.to_qkv"]
    assert sorted(p.rows for p in ps) == [(0, d), (d, 2 * d), (2 * d, 3 * d)]
    W = rnd(3 * d, d)
    want = W + 0.5 * t["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] @ t["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]
    np.testing.assert_allclose(patched_weight(W, ps), want, rtol=1e-5, atol=1e-6)
