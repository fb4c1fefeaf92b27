"""Original-layout module names (BFL Flux, SD3 MMDiT, PixArt/Sana/DiT reference code, as
ComfyUI and kohya name them) and the diffusers modules they become.

A rule maps one original module to one or more diffusers modules whose weights are its
row blocks, in order (``qkv`` → ``to_q``, ``to_k``, ``to_v``; Flux ``linear1`` → q, k, v,
mlp). ``swap`` marks weights whose two halves diffusers stores swapped (final
``adaLN_modulation`` (shift, scale) → ``norm_out.linear`` (scale, shift); SD3's last
``context_block``, only when it has 2 chunks: ``"if2"``).

Rules are matched on the underscore form, so ``double_blocks.0.img_attn.qkv`` and
``double_blocks_0_img_attn_qkv`` are the same module. They are used in both directions:
an original-layout LoRA onto a diffusers model (split by rows), and a diffusers LoRA onto a
model that keeps the original fused layout (placed on rows of the fused weight).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Q3 = ("to_q", "to_k", "to_v")


@dataclass(frozen=True)
class Rule:
    original: str
    targets: tuple[str, ...]
    swap: str | None = None


def _r(orig, targets, swap=None):
    if isinstance(targets, str):
        targets = (targets,)
    return Rule(orig, tuple(targets), swap)


_TB = "transformer_blocks.{i}"
_ST = "single_transformer_blocks.{i}"

RULES: dict[str, list[Rule]] = {
    "flux": [
        _r("double_blocks.{i}.img_attn.qkv", [f"{_TB}.attn.{q}" for q in Q3]),
        _r("double_blocks.{i}.txt_attn.qkv", [f"{_TB}.attn.add_{c}_proj" for c in "qkv"]),
        _r("double_blocks.{i}.img_attn.proj", f"{_TB}.attn.to_out.0"),
        _r("double_blocks.{i}.txt_attn.proj", f"{_TB}.attn.to_add_out"),
        _r("double_blocks.{i}.img_mlp.0", f"{_TB}.ff.net.0.proj"),
        _r("double_blocks.{i}.img_mlp.2", f"{_TB}.ff.net.2"),
        _r("double_blocks.{i}.txt_mlp.0", f"{_TB}.ff_context.net.0.proj"),
        _r("double_blocks.{i}.txt_mlp.2", f"{_TB}.ff_context.net.2"),
        _r("double_blocks.{i}.img_mod.lin", f"{_TB}.norm1.linear"),
        _r("double_blocks.{i}.txt_mod.lin", f"{_TB}.norm1_context.linear"),
        _r("single_blocks.{i}.linear1", [f"{_ST}.attn.{q}" for q in Q3] + [f"{_ST}.proj_mlp"]),
        _r("single_blocks.{i}.linear2", f"{_ST}.proj_out"),
        _r("single_blocks.{i}.modulation.lin", f"{_ST}.norm.linear"),
        _r("img_in", "x_embedder"),
        _r("txt_in", "context_embedder"),
        _r("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        _r("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        _r("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
        _r("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
        _r("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
        _r("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
        _r("final_layer.linear", "proj_out"),
        _r("final_layer.adaLN_modulation.1", "norm_out.linear", "always"),
    ],
    "sd3": [
        _r("joint_blocks.{i}.x_block.attn.qkv", [f"{_TB}.attn.{q}" for q in Q3]),
        _r("joint_blocks.{i}.x_block.attn.proj", f"{_TB}.attn.to_out.0"),
        _r("joint_blocks.{i}.x_block.attn2.qkv", [f"{_TB}.attn2.{q}" for q in Q3]),
        _r("joint_blocks.{i}.x_block.attn2.proj", f"{_TB}.attn2.to_out.0"),
        _r("joint_blocks.{i}.context_block.attn.qkv", [f"{_TB}.attn.add_{c}_proj" for c in "qkv"]),
        _r("joint_blocks.{i}.context_block.attn.proj", f"{_TB}.attn.to_add_out"),
        _r("joint_blocks.{i}.x_block.mlp.fc1", f"{_TB}.ff.net.0.proj"),
        _r("joint_blocks.{i}.x_block.mlp.fc2", f"{_TB}.ff.net.2"),
        _r("joint_blocks.{i}.context_block.mlp.fc1", f"{_TB}.ff_context.net.0.proj"),
        _r("joint_blocks.{i}.context_block.mlp.fc2", f"{_TB}.ff_context.net.2"),
        _r("joint_blocks.{i}.x_block.adaLN_modulation.1", f"{_TB}.norm1.linear"),
        _r("joint_blocks.{i}.context_block.adaLN_modulation.1", f"{_TB}.norm1_context.linear", "if2"),
        _r("x_embedder.proj", "pos_embed.proj"),
        _r("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
        _r("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
        _r("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
        _r("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
        _r("final_layer.linear", "proj_out"),
        _r("final_layer.adaLN_modulation.1", "norm_out.linear", "always"),
    ],
    "pixart": [
        _r("blocks.{i}.attn.qkv", [f"{_TB}.attn1.{q}" for q in Q3]),
        _r("blocks.{i}.attn.proj", f"{_TB}.attn1.to_out.0"),
        _r("blocks.{i}.cross_attn.q_linear", f"{_TB}.attn2.to_q"),
        _r("blocks.{i}.cross_attn.kv_linear", [f"{_TB}.attn2.to_k", f"{_TB}.attn2.to_v"]),
        _r("blocks.{i}.cross_attn.proj", f"{_TB}.attn2.to_out.0"),
        _r("blocks.{i}.mlp.fc1", f"{_TB}.ff.net.0.proj"),
        _r("blocks.{i}.mlp.fc2", f"{_TB}.ff.net.2"),
        _r("x_embedder.proj", "pos_embed.proj"),
        _r("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1"),
        _r("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2"),
        _r("t_block.1", "adaln_single.linear"),
        _r("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
        _r("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
        _r("final_layer.linear", "proj_out"),
    ],
    "sana": [
        _r("blocks.{i}.attn.qkv", [f"{_TB}.attn1.{q}" for q in Q3]),
        _r("blocks.{i}.attn.proj", f"{_TB}.attn1.to_out.0"),
        _r("blocks.{i}.cross_attn.q_linear", f"{_TB}.attn2.to_q"),
        _r("blocks.{i}.cross_attn.kv_linear", [f"{_TB}.attn2.to_k", f"{_TB}.attn2.to_v"]),
        _r("blocks.{i}.cross_attn.proj", f"{_TB}.attn2.to_out.0"),
        _r("blocks.{i}.mlp.inverted_conv.conv", f"{_TB}.ff.conv_inverted"),
        _r("blocks.{i}.mlp.depth_conv.conv", f"{_TB}.ff.conv_depth"),
        _r("blocks.{i}.mlp.point_conv.conv", f"{_TB}.ff.conv_point"),
        _r("x_embedder.proj", "patch_embed.proj"),
        _r("t_embedder.mlp.0", "time_embed.emb.timestep_embedder.linear_1"),
        _r("t_embedder.mlp.2", "time_embed.emb.timestep_embedder.linear_2"),
        _r("t_block.1", "time_embed.linear"),
        _r("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
        _r("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
        _r("final_layer.linear", "proj_out"),
    ],
    "dit": [
        _r("blocks.{i}.attn.qkv", [f"{_TB}.attn1.{q}" for q in Q3]),
        _r("blocks.{i}.attn.proj", f"{_TB}.attn1.to_out.0"),
        _r("blocks.{i}.mlp.fc1", f"{_TB}.ff.net.0.proj"),
        _r("blocks.{i}.mlp.fc2", f"{_TB}.ff.net.2"),
        _r("blocks.{i}.adaLN_modulation.1", f"{_TB}.norm1.linear"),
        _r("x_embedder.proj", "pos_embed.proj"),
        _r("final_layer.linear", "proj_out_2"),
        _r("final_layer.adaLN_modulation.1", "proj_out_1"),
    ],
}

# diffusers' own fused projections (`fuse_qkv_projections()`): part name -> (fused name, index, parts)
FUSED_ALIASES = {
    "to_q": ("to_qkv", 0, 3),
    "to_k": ("to_qkv", 1, 3),
    "to_v": ("to_qkv", 2, 3),
    "add_q_proj": ("to_added_qkv", 0, 3),
    "add_k_proj": ("to_added_qkv", 1, 3),
    "add_v_proj": ("to_added_qkv", 2, 3),
}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\.", template)
    rx = "[._]".join(re.escape(p).replace(r"\{i\}", r"(?P<i>\d+)") for p in parts)
    return re.compile(rx + "$")


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    original: re.Pattern
    targets: tuple[re.Pattern, ...]


_COMPILED: dict[str, list[_Compiled]] = {
    fam: [_Compiled(r, _pattern(r.original), tuple(_pattern(t) for t in r.targets)) for r in rules]
    for fam, rules in RULES.items()
}


def _fmt(template: str, i: str | None) -> str:
    return template.replace("{i}", i) if i is not None else template


def original_to_diffusers(flat: str, family: str) -> tuple[list[str], str | None] | None:
    """``(diffusers targets, swap)`` for an original-layout module name (any separators), or None."""
    for c in _COMPILED.get(family, ()):
        m = c.original.match(flat)
        if m:
            i = m.groupdict().get("i")
            return [_fmt(t, i) for t in c.rule.targets], c.rule.swap
    return None


def diffusers_to_original(flat: str, family: str) -> tuple[str, int, int, str | None] | None:
    """``(original fused module, part index, parts, swap)`` for a diffusers module name, or None."""
    for c in _COMPILED.get(family, ()):
        for j, pat in enumerate(c.targets):
            m = pat.match(flat)
            if m:
                i = m.groupdict().get("i")
                return _fmt(c.rule.original, i), j, len(c.targets), c.rule.swap
    return None


def is_original_layout(flat: str, family: str | None = None) -> bool:
    fams = [family] if family else list(RULES)
    return any(original_to_diffusers(flat, f) for f in fams)
