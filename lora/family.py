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

from dataclasses import dataclass, field

from ..models.families import FAMILIES, loras, registry

NAMES = {
    **{f.name: f.label for f in registry.recognised()},
    loras.UNET: "a Stable Diffusion 1.x/2.x/XL UNet",
    "te-only": "text encoders only",
}

_BLOCK = loras.BLOCK  # a block's index in a flat module name (lora/files.py groups modules by it)


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


def detect_family(flat_names, *, widths: dict | None = None, metadata: dict | None = None) -> FamilyGuess:
    """Candidates for the family of a LoRA whose transformer modules are ``flat_names`` (underscore form), from the
    names each family declares (:func:`spriteforge.models.families.loras.candidates`).

    ``widths`` maps flat name → ``in_features`` of the adapted layer where known.
    """
    return FamilyGuess(*loras.candidates(flat_names, widths, metadata))


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
