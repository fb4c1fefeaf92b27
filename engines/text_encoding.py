"""The engine-independent half of prompt encoding, shared by the torch and MLX engines.

:func:`text_encoder` finds a family's text encoder and tokenizer for a role (``t5``, ``clip_l``,
``clip_g``, ``gemma``, ``qwen3_4b``...) in a handle; :class:`TextEncoding` builds the
:class:`~spriteforge.engines.base.Conditioning` of a prompt: the parts every family shares (unknown words said,
the encoders' context), while how a family's encoder outputs combine is the family's own
(:meth:`spriteforge.models.families.Family.encode`, called with this object). A subclass supplies the encoder calls
and the array joins.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..errors import MODEL_NOT_FOUND, SpriteForgeError
from ..models.families import registry
from .tokenizers import warn_unknown_words

# role -> names to look for, per family (diffusers component names last): the family's text-encoder slots
ROLE_NAMES = {f.name: {te.key: te.names for te in f.text_encoders} for f in registry.families()}

_WHAT = {"t5": "a T5 text encoder", "clip_l": "a CLIP-L text encoder", "clip_g": "a CLIP-G (bigG) text encoder",
         "gemma": "a Gemma-2 text encoder", "qwen3_4b": "a Qwen3-4B text encoder (qwen_3_4b.safetensors)",
         "qwen3_8b": "a Qwen3-8B text encoder (qwen_3_8b.safetensors)",
         "mistral3": "a Mistral-3 text encoder (mistral_3_small_flux2_bf16.safetensors)",
         "qwen3_vl_8b": "a Qwen3-VL-8B text encoder"}


def _followed(ids, mask, suffix):
    """Token ``ids`` / ``mask`` [B, L] (right-padded) with the ``suffix`` tokens right after each row's real tokens."""
    b, n = ids.shape
    out, keep = np.zeros((b, n + len(suffix)), np.int64), np.zeros((b, n + len(suffix)), np.int64)
    for row in range(b):
        real = ids[row][mask[row] > 0]
        out[row, :len(real) + len(suffix)] = np.concatenate([real, suffix])
        keep[row, :len(real) + len(suffix)] = 1
    return out, keep


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
               complex_human_instruction=False, class_labels=None, negative: bool = False, images=None, **_opts):
        """Conditioning for ``prompts`` (a list of strings); ``negative`` marks an unconditional/negative
        encoding (DiT: the null class); ``images``: the run's reference images (a list of numpy float32
        ``[H,W,3]`` in 0..1, as given), handed to the family's ``encode`` (a text encoder that sees images reads them)."""
        from .base import Conditioning

        handle = self.handle
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p) for p in prompts]
        family = registry.rules(handle.family)
        cond = Conditioning(family=handle.family, prompts=list(prompts), guidance=guidance)
        how = dict(max_length=max_length, instruction=complex_human_instruction, class_labels=class_labels, negative=negative,
                   images=images)
        if family.class_conditional:  # prompts are class labels: no encoder runs
            family.encode(self, prompts, cond, **how)
            return cond
        for role in ROLE_NAMES.get(handle.family, {}):  # words the model cannot read are said, not dropped in silence
            tok = text_encoder(handle, role, required=False)[1]
            if tok is not None and not negative:
                warn_unknown_words(tok, prompts)
        with self._context():
            family.encode(self, prompts, cond, **how)
        return self._done(cond)

    # ------------------------------------------------------------------ what a family's encode() calls
    # (models/families: written once for both engines over these, ``ops`` and ``handle``)
    def encoder(self, role: str, required: bool = True):
        """``(encoder, tokenizer)`` of ``role`` (see :func:`text_encoder`)."""
        return text_encoder(self.handle, role, required)

    def t5(self, prompts, max_length: int, required: bool = True):
        """``(embeds float32, mask)`` from the T5 encoder; ``(None, None)`` when not ``required`` and absent."""
        return self._t5(prompts, max_length, required=required)

    def clip(self, role: str, prompts):
        """``(penultimate hidden states, pooled)`` of a CLIP encoder, float32."""
        return self._clip(role, prompts)

    def gemma(self, enc, tok, texts, total: int, keep):
        """``(embeds float32, mask)`` from Gemma for ``texts`` padded to ``total``, the ``keep`` positions only."""
        return self._gemma(enc, tok, texts, total, keep)

    def decoder(self, role: str, texts, *, layers=(-1,), max_length: int | None = None, pad_to_max: bool = False,
                suffix: str | None = None, prenorm: bool = False):
        """``([hidden states float32 [B, L, D] for each of layers], keep mask [B, L])`` of the decoder-only LM
        ``role`` (Qwen3, Mistral...) for ``texts``, already in the family's prompt template (its special tokens
        written out: the tokenizer adds none). ``layers`` index transformers' ``output_hidden_states`` (0 the
        embeddings, -1 the final norm's output, -2 the last layer's input). Padded on the right to the longest text
        (a causal model's real tokens never see the padding, so this equals padding to any length), cut at
        ``max_length`` tokens; ``pad_to_max``: padded to ``max_length`` (FLUX.2's transformer reads
        the padding positions' states too); ``suffix``: a text whose tokens follow each text's (cut) tokens (Krea 2's
        template end, never cut); ``prenorm``: the last index is the last layer's output before the final norm
        (Qwen-Image 2.1's pipeline reads it so)."""
        enc, tok = self.encoder(role)
        ti = tok(list(texts), padding="max_length" if pad_to_max else "longest", padding_side="right",
                 truncation=max_length is not None, max_length=max_length, add_special_tokens=False, return_tensors="np")
        ids = np.asarray(ti["input_ids"]).astype(np.int64)
        mask = np.asarray(ti["attention_mask"]).astype(np.int64)
        if suffix:
            ids, mask = _followed(ids, mask, np.asarray(tok([suffix], return_tensors="np")["input_ids"][0], np.int64))
        return self._decoder(enc, ids, mask, tuple(layers), prenorm) if prenorm else self._decoder(enc, ids, mask, tuple(layers))

    def vision_decoder(self, role: str, texts, images, *, layers=(-1,)):
        """``([hidden states float32 [B, L, D] for each of layers], keep mask [B, L])`` of the vision-language model
        ``role`` (Qwen2.5-VL) for ``texts`` (already in the family's template, each holding one ``<|image_pad|>`` an
        image, in order) with ``images`` (RGB ``[H, W, 3]``, uint8 or 0..1 floats, at the size the family gives its
        processor) in those places: the processor's pixels and placeholder expansion, the vision tower's merged
        features in place of the placeholders, the language model at the 3-D rotary positions (Qwen2.5-VL's
        ``get_rope_index``). Padded on the right to the longest text; never cut (the edit pipelines cut nothing)."""
        from . import vision_inputs as vi

        enc, tok = self.encoder(role)
        vc = self._vision_config(enc)
        merge = int(vc.get("spatial_merge_size", 2))
        pix = [vi.qwen_vl_pixels(im, patch=int(vc.get("patch_size", 14)), merge=merge,
                                 temporal=int(vc.get("temporal_patch_size", 2))) for im in images]
        grids = [g for _, g in pix]
        image_token = tok.convert_tokens_to_ids(vi.IMAGE_PAD)
        if image_token is None or image_token == getattr(tok, "unk_token_id", None):
            raise SpriteForgeError(MODEL_NOT_FOUND, f"the {role} tokenizer has no {vi.IMAGE_PAD} token, which reference images "
                                   "need. Use the tokenizer released with Qwen2.5-VL (qwen25_tokenizer).")
        texts = [vi.expand_image_pads(t, grids, merge) for t in texts]
        ti = tok(list(texts), padding="longest", padding_side="right", add_special_tokens=False, return_tensors="np")
        ids = np.asarray(ti["input_ids"]).astype(np.int64)
        mask = np.asarray(ti["attention_mask"]).astype(np.int64)
        positions = vi.rope_index(ids, mask, image_token, grids, merge)
        feats = self._vision(enc, np.concatenate([p for p, _ in pix]), grids)
        return self._decoder_images(enc, ids, mask, positions, feats, image_token, tuple(layers))

    def chat(self, role: str, conversations, fallback):
        """``conversations`` (lists of ``{"role", "content"}`` messages) as the texts ``decoder`` reads: rendered by
        the ``role`` tokenizer's own chat template (``add_generation_prompt=False``), or by ``fallback(tokenizer,
        conversation)`` when it has none (a bare ``tokenizer.json``)."""
        tok = self.encoder(role)[1]
        if getattr(tok, "chat_template", None):
            return [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=False) for c in conversations]
        return [fallback(tok, c) for c in conversations]

    def like(self, x, ref):
        """``x`` on ``ref``'s device."""
        return self._like(x, ref)

    def fit_width(self, x, n):
        """``x`` zero-padded or cut on its last axis to ``n`` (SD3's joined CLIP hidden states to T5's width).
        diffusers pads with ``F.pad(x, (0, n - width))``, whose negative pad cuts a wider CLIP; so does every engine."""
        if x.shape[-1] > n:
            return x[..., :n]
        return self._pad_last(x, n)

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

    def _decoder(self, enc, ids, mask, layers, prenorm=False):
        """``([hidden states float32 for each of layers], mask)`` from decoder LM ``enc`` for numpy ``ids`` / ``mask``
        (``prenorm``: the last index before the final norm)."""
        raise NotImplementedError

    def _vision_config(self, enc) -> dict:
        """The vision tower's config (``Qwen2_5_VLVisionConfig`` fields) of text encoder ``enc``."""
        raise NotImplementedError

    def _vision(self, enc, patches, grids):
        """``[tokens, D]``: the vision tower's merged features of ``patches`` (numpy) with ``grids``."""
        raise NotImplementedError

    def _decoder_images(self, enc, ids, mask, positions, feats, image_token, layers):
        """As :meth:`_decoder`, with ``feats`` in the ``image_token`` places, at 3-D rotary ``positions`` [3, B, L]."""
        raise NotImplementedError

    def _pad_last(self, x, n):
        """``x`` zero-padded on its last axis to ``n`` (never shorter than ``x``)."""
        raise NotImplementedError

    def _like(self, x, ref):
        """``x`` on ``ref``'s device."""
        return x

    def _done(self, cond):
        return cond
