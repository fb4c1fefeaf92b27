"""Original-layout names (BFL Flux, SD3 MMDiT, PixArt/Sana/DiT reference code, as ComfyUI and kohya
name them) and the diffusers names they become: the one table that both the checkpoint converter
(``engines/torch_models/convert.py``) and the LoRA layouts (:mod:`spriteforge.lora.layouts`) read.

A :class:`Rule` maps one original module to one or more diffusers modules whose weights are its row
blocks, in order (``qkv`` → ``to_q``, ``to_k``, ``to_v``; Flux ``linear1`` → q, k, v, mlp). ``{i}``
stands for a block index. ``swap`` marks weights whose two halves diffusers stores swapped (final
``adaLN_modulation`` (shift, scale) → ``norm_out.linear`` (scale, shift): ``"always"``; SD3's last
``context_block``, only when it has 2 chunks: ``"if2"``). ``kind``:

* ``module`` — ``.weight``/``.bias`` of a layer (what a LoRA can adapt too);
* ``tensor`` — one tensor renamed as it is (norm scales, ``scale_shift_table``);
* ``shared`` — one original module that diffusers repeats in every block (DiT's timestep and class
  embedders); ``per`` names the original blocks it is repeated for.

``split``: how a fused weight's rows divide among the targets: ``equal`` parts, or ``width`` (each
target the layer's input width, the last the rest: Flux's ``linear1``, whose MLP part is wider).
``optional``: some releases lack it (PixArt-α 1024's size embedders, Flux dev's guidance embedder).

Names are matched in any separator form: ``double_blocks.0.img_attn.qkv`` and
``double_blocks_0_img_attn_qkv`` are the same module (:func:`original_to_diffusers`,
:func:`diffusers_to_original`). Pure data and string functions: no framework here.

The converter uses the PixArt, DiT and Flux tables (diffusers has no size-generic converter for
them); SD3 and Sana files are converted by diffusers' own single-file converters, and their tables
serve the LoRA layouts. Detection (:mod:`.detect`) reads a file's shapes under diffusers' names and
finds them in an original-layout file through :func:`original_name`.
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
    kind: str = "module"  # module | tensor | shared
    optional: bool = False
    split: str = "equal"  # equal | width
    per: str = ""  # kind "shared": the original blocks (``blocks.{i}``) it is repeated for


def _r(orig, targets, swap=None, **kw):
    if isinstance(targets, str):
        targets = (targets,)
    return Rule(orig, tuple(targets), swap, **kw)


def _t(orig, target, **kw):
    return Rule(orig, (target,), kind="tensor", **kw)


_TB = "transformer_blocks.{i}"
_ST = "single_transformer_blocks.{i}"

KEYMAPS: dict[str, tuple[Rule, ...]] = {
    "flux": (
        _r("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        _r("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        _r("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
        _r("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
        _r("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1", optional=True),
        _r("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2", optional=True),
        _r("txt_in", "context_embedder"),
        _r("img_in", "x_embedder"),
        _r("double_blocks.{i}.img_mod.lin", f"{_TB}.norm1.linear"),
        _r("double_blocks.{i}.txt_mod.lin", f"{_TB}.norm1_context.linear"),
        _r("double_blocks.{i}.img_attn.qkv", [f"{_TB}.attn.{q}" for q in Q3]),
        _r("double_blocks.{i}.txt_attn.qkv", [f"{_TB}.attn.add_{c}_proj" for c in "qkv"]),
        _t("double_blocks.{i}.img_attn.norm.query_norm.scale", f"{_TB}.attn.norm_q.weight"),
        _t("double_blocks.{i}.img_attn.norm.key_norm.scale", f"{_TB}.attn.norm_k.weight"),
        _t("double_blocks.{i}.txt_attn.norm.query_norm.scale", f"{_TB}.attn.norm_added_q.weight"),
        _t("double_blocks.{i}.txt_attn.norm.key_norm.scale", f"{_TB}.attn.norm_added_k.weight"),
        _r("double_blocks.{i}.img_mlp.0", f"{_TB}.ff.net.0.proj"),
        _r("double_blocks.{i}.img_mlp.2", f"{_TB}.ff.net.2"),
        _r("double_blocks.{i}.txt_mlp.0", f"{_TB}.ff_context.net.0.proj"),
        _r("double_blocks.{i}.txt_mlp.2", f"{_TB}.ff_context.net.2"),
        _r("double_blocks.{i}.img_attn.proj", f"{_TB}.attn.to_out.0"),
        _r("double_blocks.{i}.txt_attn.proj", f"{_TB}.attn.to_add_out"),
        _r("single_blocks.{i}.modulation.lin", f"{_ST}.norm.linear"),
        _r("single_blocks.{i}.linear1", [f"{_ST}.attn.{q}" for q in Q3] + [f"{_ST}.proj_mlp"], split="width"),
        _t("single_blocks.{i}.norm.query_norm.scale", f"{_ST}.attn.norm_q.weight"),
        _t("single_blocks.{i}.norm.key_norm.scale", f"{_ST}.attn.norm_k.weight"),
        _r("single_blocks.{i}.linear2", f"{_ST}.proj_out"),
        _r("final_layer.linear", "proj_out"),
        _r("final_layer.adaLN_modulation.1", "norm_out.linear", "always"),
    ),
    "sd3": (
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
        # (SD3 files are converted by diffusers' converter; these renames tell detection where to look)
        _t("joint_blocks.{i}.x_block.attn.ln_q.weight", f"{_TB}.attn.norm_q.weight"),
        _t("joint_blocks.{i}.x_block.attn.ln_k.weight", f"{_TB}.attn.norm_k.weight"),
        _t("pos_embed", "pos_embed.pos_embed"),
    ),
    "pixart": (
        _r("x_embedder.proj", "pos_embed.proj"),
        _r("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1"),
        _r("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2"),
        _r("t_block.1", "adaln_single.linear"),
        # PixArt-α 1024's micro-conditions
        _r("csize_embedder.mlp.0", "adaln_single.emb.resolution_embedder.linear_1", optional=True),
        _r("csize_embedder.mlp.2", "adaln_single.emb.resolution_embedder.linear_2", optional=True),
        _r("ar_embedder.mlp.0", "adaln_single.emb.aspect_ratio_embedder.linear_1", optional=True),
        _r("ar_embedder.mlp.2", "adaln_single.emb.aspect_ratio_embedder.linear_2", optional=True),
        _r("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
        _r("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
        _t("blocks.{i}.scale_shift_table", f"{_TB}.scale_shift_table"),
        _r("blocks.{i}.attn.qkv", [f"{_TB}.attn1.{q}" for q in Q3]),
        _r("blocks.{i}.cross_attn.kv_linear", [f"{_TB}.attn2.to_k", f"{_TB}.attn2.to_v"]),
        _r("blocks.{i}.attn.proj", f"{_TB}.attn1.to_out.0"),
        _r("blocks.{i}.cross_attn.q_linear", f"{_TB}.attn2.to_q"),
        _r("blocks.{i}.cross_attn.proj", f"{_TB}.attn2.to_out.0"),
        _r("blocks.{i}.mlp.fc1", f"{_TB}.ff.net.0.proj"),
        _r("blocks.{i}.mlp.fc2", f"{_TB}.ff.net.2"),
        _t("final_layer.scale_shift_table", "scale_shift_table"),
        _r("final_layer.linear", "proj_out"),
    ),
    "sana": (
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
    ),
    "dit": (
        _r("x_embedder.proj", "pos_embed.proj"),
        # facebookresearch DiT has one timestep/class embedder; diffusers gives every block its own (the same tensors)
        _r("t_embedder.mlp.0", f"{_TB}.norm1.emb.timestep_embedder.linear_1", kind="shared", per="blocks.{i}"),
        _r("t_embedder.mlp.2", f"{_TB}.norm1.emb.timestep_embedder.linear_2", kind="shared", per="blocks.{i}"),
        _r("y_embedder.embedding_table", f"{_TB}.norm1.emb.class_embedder.embedding_table", kind="shared", per="blocks.{i}"),
        _r("blocks.{i}.adaLN_modulation.1", f"{_TB}.norm1.linear"),
        _r("blocks.{i}.attn.qkv", [f"{_TB}.attn1.{q}" for q in Q3]),
        _r("blocks.{i}.attn.proj", f"{_TB}.attn1.to_out.0"),
        _r("blocks.{i}.mlp.fc1", f"{_TB}.ff.net.0.proj"),
        _r("blocks.{i}.mlp.fc2", f"{_TB}.ff.net.2"),
        _r("final_layer.adaLN_modulation.1", "proj_out_1"),
        _r("final_layer.linear", "proj_out_2"),
    ),
}

# original tensors diffusers has no place for: fixed sin-cos position tables it recomputes, PixArt's learned
# null caption (diffusers encodes "" instead)
DROPPED: dict[str, tuple[str, ...]] = {
    "pixart": ("pos_embed", "y_embedder.y_embedding"),
    "dit": ("pos_embed",),
}


def fill(template: str, i) -> str:
    """``template`` with its ``{i}`` replaced by block index ``i`` (None: unchanged)."""
    return template.replace("{i}", str(i)) if i is not None else template


def block_prefix(template: str) -> str | None:
    """The block-name prefix of a ``{i}`` template (``double_blocks.{i}.img_mod.lin`` → ``double_blocks.``)."""
    return template.split("{i}")[0] if "{i}" in template else None


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\.", template)
    rx = "[._]".join(re.escape(p).replace(r"\{i\}", r"(?P<i>\d+)") for p in parts)
    return re.compile(rx + "$")


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    original: re.Pattern
    targets: tuple[re.Pattern, ...]


def compile_rules(rules) -> list[_Compiled]:
    """Name patterns (any separators) of ``rules``, for :func:`original_to_diffusers` / :func:`diffusers_to_original`."""
    return [_Compiled(r, _pattern(r.original), tuple(_pattern(t) for t in r.targets)) for r in rules]


def original_to_diffusers(flat: str, compiled) -> tuple[list[str], str | None] | None:
    """``(diffusers targets, swap)`` of the first of ``compiled`` that an original-layout name matches, or None."""
    for c in compiled:
        m = c.original.match(flat)
        if m:
            i = m.groupdict().get("i")
            return [fill(t, i) for t in c.rule.targets], c.rule.swap
    return None


def diffusers_to_original(flat: str, compiled) -> tuple[str, int, int, str | None] | None:
    """``(original fused name, part index, parts, swap)`` of the first of ``compiled`` a diffusers name matches, or None."""
    for c in compiled:
        for j, pat in enumerate(c.targets):
            m = pat.match(flat)
            if m:
                i = m.groupdict().get("i")
                return fill(c.rule.original, i), j, len(c.targets), c.rule.swap
    return None


def _exact(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def original_name(family: str, name: str) -> str:
    """The original-layout name of the diffusers tensor ``name`` (``x_embedder.weight`` → Flux's ``img_in.weight``);
    ``name`` itself where both layouts agree. Only tensors a rule maps one to one (no row blocks of a fused weight)."""
    for rule in KEYMAPS.get(family, ()):
        if len(rule.targets) != 1:
            continue
        suffixes = ("",) if rule.kind == "tensor" else (".weight", ".bias")
        for suffix in suffixes:
            m = _exact(rule.targets[0] + suffix).match(name)
            if m:
                return fill(rule.original, m.groupdict().get("i")) + suffix
    return name


def original_prefix(family: str, prefix: str) -> str:
    """The original-layout name of diffusers' block list ``prefix`` (Flux ``transformer_blocks.`` → ``double_blocks.``)."""
    for rule in KEYMAPS.get(family, ()):
        if "{i}" in rule.original and any(t.startswith(prefix + "{i}.") for t in rule.targets):
            return block_prefix(rule.original)
    return prefix


# --------------------------------------------------------------------------- text encoders


def gemma_model_keys(sd: dict) -> dict:
    """A Gemma 2 state dict under ``Gemma2Model``'s names: the ``model.`` prefix of a ``Gemma2ForCausalLM``
    file stripped, its ``lm_head`` dropped (a text encoder has no use for it)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("lm_head."):
            continue
        out[k[len("model."):] if k.startswith("model.") else k] = v
    return out


__all__ = ["Rule", "KEYMAPS", "DROPPED", "fill", "block_prefix", "compile_rules", "original_to_diffusers",
           "diffusers_to_original", "original_name", "original_prefix", "gemma_model_keys"]
