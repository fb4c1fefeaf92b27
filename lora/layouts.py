"""The original-layout (BFL Flux, SD3 MMDiT, PixArt/Sana/DiT reference code, as ComfyUI and kohya
name them) and diffusers module names a LoRA may use: the layer rules (``kind == "module"``) of each
family's key map (:mod:`spriteforge.models.families`), which the checkpoint converter reads too.

They are used in both directions: an original-layout LoRA onto a diffusers model (split by rows),
and a diffusers LoRA onto a model that keeps the original fused layout (placed on rows of the
fused weight). Rules are matched on the underscore form, so ``double_blocks.0.img_attn.qkv`` and
``double_blocks_0_img_attn_qkv`` are the same module.
"""

from __future__ import annotations

from ..models import keymaps
from ..models.families import registry
from ..models.keymaps import Rule

# the layers a LoRA can adapt, per family (tensor renames and blocks' shared copies are the converter's alone)
RULES: dict[str, list[Rule]] = {f.name: [r for r in f.keymap if r.kind == "module"] for f in registry.families()}

# diffusers' own fused projections (`fuse_qkv_projections()`): part name -> (fused name, index, parts)
FUSED_ALIASES = {
    "to_q": ("to_qkv", 0, 3),
    "to_k": ("to_qkv", 1, 3),
    "to_v": ("to_qkv", 2, 3),
    "add_q_proj": ("to_added_qkv", 0, 3),
    "add_k_proj": ("to_added_qkv", 1, 3),
    "add_v_proj": ("to_added_qkv", 2, 3),
}

_COMPILED = {fam: keymaps.compile_rules(rules) for fam, rules in RULES.items()}


def original_to_diffusers(flat: str, family: str) -> tuple[list[str], str | None] | None:
    """``(diffusers targets, swap)`` for an original-layout module name (any separators), or None."""
    return keymaps.original_to_diffusers(flat, _COMPILED.get(family, ()))


def diffusers_to_original(flat: str, family: str) -> tuple[str, int, int, str | None] | None:
    """``(original fused module, part index, parts, swap)`` for a diffusers module name, or None."""
    return keymaps.diffusers_to_original(flat, _COMPILED.get(family, ()))


def is_original_layout(flat: str, family: str | None = None) -> bool:
    fams = [family] if family else list(RULES)
    return any(original_to_diffusers(flat, f) for f in fams)
