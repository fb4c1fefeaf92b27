"""Which family a LoRA was made for, from its module names: the families' declared LoRA names, read in one place by
:mod:`spriteforge.lora.family` (the LoRA layer) and :func:`spriteforge.models.detect` (``inspect``'s LoRA line).

Names are the flat (underscore) form of a module path (``transformer_blocks_0_attn_to_q``). A family's own names
(:attr:`~.base.Family.lora_names`) settle it; names several families share (:data:`SHARED`: joint, cross and self
attention) give all of them as candidates, narrowed by what only one of them has (``lora_tells``,
``lora_max_blocks``), by the model width (``lora_widths``) and by the training metadata (``lora_metadata``).
"""

from __future__ import annotations

import re

from . import registry

UNET = "unet"  # not a family SpriteForge runs: a Stable Diffusion 1.x/2.x/XL UNet
_UNET = re.compile(r"(^|_)(input_blocks|output_blocks|middle_block|down_blocks|up_blocks|mid_block)_\d")
BLOCK = re.compile(r"(^|_)(transformer_blocks|joint_blocks|double_blocks|single_blocks|single_transformer_blocks|blocks)_(\d+)")
# names shared by the families that list the group in ``lora_shared``: group -> (pattern, what they are, narrowed by
# the model width)
SHARED = {
    "joint": (re.compile(r"(^|_)(add_[qkv]_proj|to_add_out|ff_context|norm1_context|to_added_qkv)(_|$)"
                         r"|(^|_)transformer_blocks_\d+_attn_(to_|add_)"), "joint-attention names (add_q_proj/ff_context) of {}", True),
    "cross": (re.compile(r"(^|_)(attn2|cross_attn)_"), "cross-attention DiT names (attn2/cross_attn) of {}", True),
    "self": (re.compile(r"(^|_)(attn1|attn)_(to_[qkvo]|to_out|qkv|proj)|" + BLOCK.pattern), "self-attention block names only", False),
}
_ATTN = re.compile(r"(attn1?|attn2)_(to_q|to_k|qkv)$")


def _has(pattern, names) -> bool:
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    return any(rx.search(n) for n in names)


def metadata_family(metadata: dict | None) -> str | None:
    """The family a LoRA's training metadata names (kohya ``ss_base_model_version``, ``modelspec.architecture``)."""
    if not metadata:
        return None
    text = " ".join(str(metadata.get(k, "")) for k in ("ss_base_model_version", "modelspec.architecture", "ss_sd_model_name")).lower()
    for f in sorted(registry.families(), key=lambda f: f.detect_order):
        if any(needle in text for needle in f.lora_metadata):
            return f.name
    if re.search(r"sdxl|stable-diffusion-xl|sd_v1|sd_v2|stable-diffusion-v1|stable-diffusion-v2", text):
        return UNET
    return None


def candidates(names, widths: dict | None = None, metadata: dict | None = None) -> tuple[list[str], str]:
    """``(families, why)`` for a LoRA's transformer module ``names`` (flat form), best first (empty: unknown);
    ``widths`` maps a name to the ``in_features`` of its layer where known."""
    names = list(names)
    meta = metadata_family(metadata)
    if not names:
        return [], "no transformer layers (text encoders only)"
    if _has(_UNET, names):
        return [UNET], "UNet block names (input_blocks/down_blocks…)"
    fams = registry.families()
    # a family's own names settle it, one SpriteForge only recognises included: its LoRA is named, then refused; a
    # family whose LoRAs share another's names (FLUX.2's original layout: Flux.1's block names) claims them by shape
    maybe: list = []
    for f in sorted(registry.recognised(), key=lambda f: f.detect_order):
        claim = f.lora_claim(names, widths)
        if claim:
            return [f.name], f"{f.label} block widths"
        if claim is None:
            maybe.append(f)
        if f.lora_names and _has(f.lora_names[0], names) and not (f.lora_unless and _has(f.lora_unless, names)):
            also = [m for m in maybe if m is not f]
            why = f"{f.label} {f.lora_names[1]}" + (f" (or {', '.join(m.label for m in also)}: the widths do not tell)" if also else "")
            return [f.name, *(m.name for m in also)], why
    for group, (rx, why, by_width) in SHARED.items():
        if _has(rx, names):
            who = sorted((f for f in fams if group in f.lora_shared), key=lambda f: f.lora_rank)
            who = _narrow(who, names)
            if by_width:
                who = _by_width(who, names, widths)
            cands = [f.name for f in who]
            if meta in cands:
                cands = [meta] + [c for c in cands if c != meta]
            return cands, why.format(" or ".join(f.label for f in who))
    if meta:
        return [meta], "safetensors metadata"
    return [], "no names SpriteForge knows"


def _narrow(who: list, names) -> list:
    """``who`` less the families a LoRA on more ``transformer_blocks`` than they have cannot be for, or only those
    whose telling names it holds."""
    idx = [int(m.group(3)) for n in names for m in [BLOCK.search(n)] if m and m.group(2) == "transformer_blocks"]
    fit = [f for f in who if not (f.lora_max_blocks and idx and max(idx) >= f.lora_max_blocks)] or who
    told = [f for f in fit if f.lora_tells and _has(f.lora_tells, names)]
    return told or fit


def _by_width(who: list, names, widths: dict | None) -> list:
    """``who`` narrowed to the families whose known model widths (``lora_widths``) an attention layer has."""
    if not widths:
        return who
    for w in {int(widths[n]) for n in names if _ATTN.search(n) and n in widths}:
        narrowed = [f for f in who if w in f.lora_widths]
        if narrowed:
            return narrowed
    return who


__all__ = ["UNET", "BLOCK", "SHARED", "candidates", "metadata_family"]
