"""Which model family a LoRA was made for, from its module names (and shapes, metadata).

:func:`family_of_modules` (a LoRA's parsed modules, with their shapes) and :func:`detect_family` (the
transformer module names alone) give a :class:`FamilyGuess`. (A *model* file's architecture is
:mod:`spriteforge.models.detect`'s business.)

Returns the *candidates*: usually one family; two or three when the names cannot tell
(a LoRA on only ``attn1``/``attn2`` of cross-attention DiTs fits PixArt and Sana alike,
``transformer_blocks.N.attn.add_q_proj`` fits Flux and SD3). A LoRA is refused only when
the loaded family is not among the candidates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..models.families import FAMILIES, registry

NAMES = {
    **{f.name: f.label for f in registry.families()},
    "unet": "a Stable Diffusion 1.x/2.x/XL UNet",
    "te-only": "text encoders only",
}

_UNET = re.compile(r"(^|_)(input_blocks|output_blocks|middle_block|down_blocks|up_blocks|mid_block)_\d")
_FLUX = re.compile(r"(^|_)(double_blocks|single_blocks|single_transformer_blocks)_\d|(^|_)(img_attn|txt_attn|txt_mlp|img_mlp|guidance_in|vector_in)(_|$)")
_SD3 = re.compile(r"(^|_)joint_blocks_\d|(^|_)(x_block|context_block)_")
_MMDIT = re.compile(r"(^|_)(add_[qkv]_proj|to_add_out|ff_context|norm1_context|to_added_qkv)(_|$)"
                    r"|(^|_)transformer_blocks_\d+_attn_(to_|add_)")
_SANA = re.compile(r"(^|_)(conv_inverted|conv_depth|conv_point|inverted_conv|depth_conv|point_conv|time_embed)(_|$)")
_PIXART = re.compile(r"(^|_)(adaln_single|t_block)(_|$)")
_CROSS = re.compile(r"(^|_)(attn2|cross_attn)_")
_SELF = re.compile(r"(^|_)(attn1|attn)_(to_[qkvo]|to_out|qkv|proj)")
_DIT = re.compile(r"(^|_)(proj_out_[12]|norm1_emb|adaLN_modulation)(_|$)")
_BLOCK = re.compile(r"(^|_)(transformer_blocks|joint_blocks|double_blocks|single_blocks|single_transformer_blocks|blocks)_(\d+)")

# known model widths (in_features of a block's attention projection) that settle ambiguities (the families' lora_widths)
_WIDTHS: dict[int, set] = {}
for _f in registry.families():
    for _w in _f.lora_widths:
        _WIDTHS.setdefault(_w, set()).add(_f.name)


@dataclass
class FamilyGuess:
    candidates: list[str] = field(default_factory=list)  # best first; empty = unknown
    reason: str = ""

    @property
    def family(self) -> str | None:
        return self.candidates[0] if self.candidates else None

    def name(self) -> str:
        if not self.candidates:
            return "an unknown model"
        return " or ".join(NAMES.get(c, c) for c in self.candidates)


def _meta_family(metadata: dict | None) -> str | None:
    if not metadata:
        return None
    text = " ".join(str(metadata.get(k, "")) for k in ("ss_base_model_version", "modelspec.architecture", "ss_sd_model_name")).lower()
    for f in sorted(registry.families(), key=lambda f: f.detect_order):
        if any(needle in text for needle in f.lora_metadata):
            return f.name
    if re.search(r"sdxl|stable-diffusion-xl|sd_v1|sd_v2|stable-diffusion-v1|stable-diffusion-v2", text):
        return "unet"
    return None


def detect_family(flat_names, *, widths: dict | None = None, metadata: dict | None = None) -> FamilyGuess:
    """Candidates for the family of a LoRA whose transformer modules are ``flat_names`` (underscore form).

    ``widths`` maps flat name → ``in_features`` of the adapted layer where known.
    """
    names = list(flat_names)
    meta = _meta_family(metadata)
    if not names:
        return FamilyGuess([], "no transformer layers (text encoders only)")
    joined = "\n".join(names)

    def has(rx):
        return any(rx.search(n) for n in names)

    if has(_UNET):
        return FamilyGuess(["unet"], "UNet block names (input_blocks/down_blocks…)")
    if has(_FLUX):
        return FamilyGuess(["flux"], "Flux block names (double_blocks/single_blocks…)")
    if has(_SD3):
        return FamilyGuess(["sd3"], "SD3 MMDiT block names (joint_blocks/x_block/context_block)")
    if has(_MMDIT):
        cands = ["flux", "sd3"]
        idx = [int(m.group(3)) for n in names for m in [_BLOCK.search(n)] if m and m.group(2) == "transformer_blocks"]
        if (idx and max(idx) >= 19) or re.search(r"(^|_)attn2_", joined) or re.search(r"(^|_)pos_embed_", joined):
            cands = ["sd3"]
        cands = _by_width(cands, names, widths)
        if meta in cands:
            cands = [meta] + [c for c in cands if c != meta]
        return FamilyGuess(cands, "joint-attention names (add_q_proj/ff_context) of Flux or SD3")
    if has(_SANA):
        return FamilyGuess(["sana"], "Sana names (GLUMBConv ff / time_embed)")
    if has(_PIXART):
        return FamilyGuess(["pixart"], "PixArt names (adaln_single/t_block)")
    if has(_DIT) and not has(_CROSS):
        return FamilyGuess(["dit"], "DiT names (adaLN in blocks, proj_out_1/2)")
    if has(_CROSS):
        cands = _by_width(["pixart", "sana"], names, widths)
        if meta in cands:
            cands = [meta] + [c for c in cands if c != meta]
        return FamilyGuess(cands, "cross-attention DiT names (attn2/cross_attn) of PixArt or Sana")
    if has(_SELF) or has(_BLOCK):
        cands = ["pixart", "sana", "dit"]
        if meta in cands:
            cands = [meta] + [c for c in cands if c != meta]
        return FamilyGuess(cands, "self-attention block names only")
    if meta:
        return FamilyGuess([meta], "safetensors metadata")
    return FamilyGuess([], "no names SpriteForge knows")


def _by_width(cands, names, widths):
    if not widths:
        return cands
    seen = set()
    for n in names:
        if re.search(r"(attn1?|attn2)_(to_q|to_k|qkv)$", n) and n in widths:
            seen.add(int(widths[n]))
    for w in seen:
        fams = _WIDTHS.get(w)
        if fams:
            narrowed = [c for c in cands if c in fams]
            if narrowed:
                return narrowed
    return cands


def _widths(modules, shape_of) -> dict:
    out = {}
    for m in modules:
        key = m.params.get("down") or m.params.get("w1b_h")
        if key:
            shp = shape_of(key)
            if len(shp) >= 2:
                out[m.flat] = int(shp[1])
    return out


def family_of_modules(modules, shape_of=None, metadata=None) -> FamilyGuess:
    """Family candidates of a LoRA's transformer modules (:class:`~.keys.LoRAModule`); ``shape_of(tensor name)``
    gives shapes, which settle some ambiguities by the model width."""
    tr = [m for m in modules if m.component == "transformer"]
    widths = _widths(tr, shape_of) if shape_of else None
    return detect_family([m.flat for m in tr], widths=widths, metadata=metadata)


assert set(NAMES) >= set(FAMILIES)
