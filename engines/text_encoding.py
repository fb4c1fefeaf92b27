"""The engine-independent half of prompt encoding, shared by the torch and MLX engines.

:func:`text_encoder` finds a family's text encoder and tokenizer for a role (``t5``, ``clip_l``,
``clip_g``, ``gemma``) in a handle; :class:`TextEncoding` builds the
:class:`~spriteforge.engines.base.Conditioning` of each family from those encoders (PixArt: T5;
Sana: Gemma with its instruction; SD3: CLIP-L + CLIP-G padded to T5's width, then T5; Flux:
CLIP-L pooled + T5; DiT: class labels). A subclass supplies the encoder calls and the array joins.
"""

from __future__ import annotations

import contextlib

from ..errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError
from ..models.families import registry
from .model_inputs import dit_labels, pixart_max_length, sana_texts
from .tokenizers import warn_unknown_words

# role -> names to look for, per family (diffusers component names last): the family's text-encoder slots
ROLE_NAMES = {f.name: {te.key: te.names for te in f.text_encoders} for f in registry.families()}

_WHAT = {"t5": "a T5 text encoder", "clip_l": "a CLIP-L text encoder", "clip_g": "a CLIP-G (bigG) text encoder",
         "gemma": "a Gemma-2 text encoder"}


def _lookup(d: dict, names):
    for n in names:
        if d.get(n) is not None:
            return d[n]
    return None


def text_encoder(handle, role, required=True):
    """``(encoder, tokenizer)`` of ``role`` in ``handle``; MODEL_NOT_FOUND when ``required`` and either is missing."""
    names = ROLE_NAMES.get(handle.family, {}).get(role, (role,))
    enc = _lookup(handle.text_encoders or {}, names)
    tok = _lookup(handle.tokenizers or {}, names)
    if (enc is None or tok is None) and required:
        raise SpriteForgeError(
            MODEL_NOT_FOUND,
            f"{handle.family} needs {_WHAT.get(role, role)} (with its tokenizer) to encode prompts, and the loaded model has none. "
            "Choose it in the loader's text encoder inputs (or --text-encoder), or load a diffusers folder that contains it.",
            details={"family": handle.family, "role": role},
        )
    return enc, tok


class TextEncoding:
    """Conditioning for prompts with a handle's text encoders; the engine's subclass runs the encoders."""

    engine_name = "base"

    def __init__(self, engine, handle):
        self.engine = engine
        self.ops = engine.ops
        self.handle = handle

    def encode(self, prompts, *, max_length: int | None = None, guidance: float | None = None,
               complex_human_instruction=False, class_labels=None, negative: bool = False, **_opts):
        """Conditioning for ``prompts`` (a list of strings); ``negative`` marks an unconditional/negative
        encoding (DiT: the null class)."""
        from .base import Conditioning

        handle = self.handle
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p) for p in prompts]
        fam = handle.family
        cond = Conditioning(family=fam, prompts=list(prompts), guidance=guidance)
        if fam == "dit":
            cond.class_labels = dit_labels(handle, prompts, negative=negative, given=class_labels)
            return cond
        for role in ROLE_NAMES.get(fam, {}):  # words the model cannot read are said, not dropped in silence
            tok = text_encoder(handle, role, required=False)[1]
            if tok is not None and not negative:
                warn_unknown_words(tok, prompts)
        with self._context():
            if fam == "pixart":
                cond.embeds, cond.mask = self._t5(prompts, pixart_max_length(handle, max_length))
            elif fam == "sana":
                enc, tok = text_encoder(handle, "gemma")
                texts, total, keep = sana_texts(tok, prompts, max_length or 300, complex_human_instruction, negative)
                if hasattr(tok, "padding_side"):
                    tok.padding_side = "right"
                cond.embeds, cond.mask = self._gemma(enc, tok, texts, total, keep)
            elif fam == "sd3":
                joint = int((handle.config or {}).get("joint_attention_dim")
                            or getattr(getattr(handle.transformer, "config", None), "joint_attention_dim", 4096))
                l_h, l_p = self._clip("clip_l", prompts)
                g_h, g_p = self._clip("clip_g", prompts)
                clip_h = self.ops.concat([l_h, g_h], -1)
                t5, _ = self._t5(prompts, max_length or 256, required=False)
                if t5 is None:
                    t5 = self.ops.zeros((len(prompts), max_length or 256, joint), clip_h)
                clip_h = self._pad_last(clip_h, t5.shape[-1])
                cond.embeds = self.ops.concat([clip_h, self._like(t5, clip_h)], -2)
                cond.pooled = self.ops.concat([l_p, g_p], -1)
            elif fam == "flux":
                _, pooled = self._clip("clip_l", prompts)
                schnell = "schnell" in (handle.variant or "").lower()
                t5, _ = self._t5(prompts, max_length or (256 if schnell else 512))
                cond.embeds, cond.pooled = t5, self._like(pooled, t5)
                if cond.guidance is None:
                    cond.guidance = 3.5
            else:
                raise SpriteForgeError(BAD_INPUT, f"family {fam!r} has no text encoding in the {self.engine_name} engine.")
        return self._done(cond)

    # ------------------------------------------------------------------ hooks (the framework's calls)
    def _context(self):
        """Around the encoder calls (torch: no autograd, ComfyUI loads the encoders)."""
        return contextlib.nullcontext()

    def _t5(self, prompts, max_length, required=True):
        """``(embeds float32, mask)`` from the T5 encoder; ``(None, None)`` when not ``required`` and absent."""
        raise NotImplementedError

    def _clip(self, role, prompts):
        """``(penultimate hidden states, pooled)`` of a CLIP encoder, float32."""
        raise NotImplementedError

    def _gemma(self, enc, tok, texts, total, keep):
        """``(embeds float32, mask)`` from Gemma for ``texts`` padded to ``total``, the ``keep`` positions only."""
        raise NotImplementedError

    def _pad_last(self, x, n):
        """``x`` zero-padded on its last axis to ``n``."""
        raise NotImplementedError

    def _like(self, x, ref):
        """``x`` on ``ref``'s device."""
        return x

    def _done(self, cond):
        return cond
