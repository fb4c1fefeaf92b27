"""How original-layout names (BFL Flux, SD3 MMDiT, PixArt/Sana/DiT reference code, as ComfyUI and kohya
name them) become diffusers names: the :class:`Rule` each family's key map is made of (the tables are the
families' ``keymap``, :mod:`.families`), read by both the checkpoint converter
(``engines/torch_models/convert.py``) and the LoRA layouts (:mod:`spriteforge.lora.layouts`).

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

The converter uses the tables of the families whose ``original_converter`` is ``keymap`` (PixArt, DiT,
Flux: diffusers has no size-generic converter for them); SD3 and Sana files are converted by diffusers'
own single-file converters, and their tables serve the LoRA layouts. Detection (:mod:`.detect`) reads a file's shapes under diffusers' names and
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


def rule(orig, targets, swap=None, **kw) -> Rule:
    """A ``module`` rule: original module ``orig`` → diffusers ``targets`` (one name, or the row blocks of a fused weight)."""
    if isinstance(targets, str):
        targets = (targets,)
    return Rule(orig, tuple(targets), swap, **kw)


def tensor_rule(orig, target, **kw) -> Rule:
    """A ``tensor`` rule: one tensor renamed as it is."""
    return Rule(orig, (target,), kind="tensor", **kw)


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


def original_name(rules, name: str) -> str:
    """The original-layout name of the diffusers tensor ``name`` (``x_embedder.weight`` → Flux's ``img_in.weight``);
    ``name`` itself where both layouts agree. Only tensors one of ``rules`` (a family's key map) maps one to one
    (no row blocks of a fused weight)."""
    for r in rules:
        if len(r.targets) != 1:
            continue
        suffixes = ("",) if r.kind == "tensor" else (".weight", ".bias")
        for suffix in suffixes:
            m = _exact(r.targets[0] + suffix).match(name)
            if m:
                return fill(r.original, m.groupdict().get("i")) + suffix
    return name


def original_prefix(rules, prefix: str) -> str:
    """The original-layout name of diffusers' block list ``prefix`` in ``rules`` (Flux ``transformer_blocks.`` → ``double_blocks.``)."""
    for r in rules:
        if "{i}" in r.original and any(t.startswith(prefix + "{i}.") for t in r.targets):
            return block_prefix(r.original)
    return prefix


# --------------------------------------------------------------------------- text encoders


def decoder_unused(name: str) -> bool:
    """Whether tensor ``name`` of a decoder LM file is one a text encoder never uses (the ``lm_head``; a vision tower,
    ``visual.*``): the loaders leave it unread (Qwen2.5-VL-7B's are 2.4 GB of its 16.6)."""
    name = name[len("model."):] if name.startswith("model.") else name
    return name.startswith(("lm_head.", "visual.", "vision_tower.", "multi_modal_projector.")) or name == "tekken_model"


def gemma_model_keys(sd: dict) -> dict:
    """A decoder LM's state dict under its base model's names (``Gemma2Model``, ``Qwen3Model``, Qwen2.5-VL's language
    model): the ``model.`` (and a vision-language model's ``language_model.``) prefix stripped, the ``lm_head`` and a
    vision tower (``visual.*``) dropped (a text encoder has no use for them)."""
    out = {}
    for k, v in sd.items():
        if decoder_unused(k):
            continue
        for pre in ("model.", "language_model.", "model."):  # (a vision-language model's, either nesting)
            k = k[len(pre):] if k.startswith(pre) else k
        out[k] = v
    return out


__all__ = ["Rule", "Q3", "rule", "tensor_rule", "fill", "block_prefix", "compile_rules", "original_to_diffusers",
           "diffusers_to_original", "original_name", "original_prefix", "gemma_model_keys", "decoder_unused"]
