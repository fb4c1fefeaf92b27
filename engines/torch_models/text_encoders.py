"""Text encoders on torch (CLIP-L/G, T5, Gemma 2, and the decoder-only LMs: Qwen3...): from a single file (or the
ones inside an all-in-one checkpoint) or a transformers folder, with their tokenizers; :func:`decoder_hidden_states`
runs a decoder LM for the hidden states of chosen layers."""

from __future__ import annotations

import torch

from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ...models import keymaps
from ...models.families import registry
from ...models.families.base import TEXT_ENCODER_PORTS, VISION_TOWERS
from ..model_files import clip_with_projection, folder_config, resolve, text_encoder_in, text_encoder_key
from ..tokenizers import find_tokenizer
from . import convert
from .building import build_empty, load_into, prefixed
from .tensors import open_tensors, torch_dtype


def is_decoder(key: str) -> bool:
    """Whether text encoder ``key`` is a decoder-only LM (its hidden states are the prompt's features)."""
    return TEXT_ENCODER_PORTS.get(key) == "decoder_lm"


def decoder_config(cfg: dict):
    """The transformers config of a decoder LM from a detected config (``model_type`` names the class)."""
    import transformers

    rest = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    return transformers.AutoConfig.for_model(cfg["model_type"], **rest)


def decoder_hidden_states(enc, ids, mask, layers, prenorm: bool = False):
    """The hidden states (transformers' ``output_hidden_states`` numbering) of ``layers`` for token ``ids`` [B, L]
    with keep-``mask`` [B, L], from a decoder LM (a ``...ForCausalLM`` runs its base model: no logits); ``prenorm``:
    the last index is the last layer's output before the final norm."""
    base = enc.model if hasattr(enc, "lm_head") else enc
    if prenorm or getattr(base.config, "final_norm", True) is False:  # a pruned file's last state is its last layer's output
        return _unnormed_last(base, ids, mask, layers)
    out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return [out.hidden_states[i] for i in layers]


def _unnormed_last(base, ids, mask, layers):
    """As :func:`decoder_hidden_states`, the last index being the last layer's output before the final norm (a model
    cut after the layers a family reads: ComfyUI's 30-layer Mistral-3, whose state 30 is the full model's)."""
    seen = []
    lm = getattr(base, "language_model", base)  # (a vision-language model from a folder: its language model's layers)
    handle = lm.layers[-1].register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    finally:
        handle.remove()
    states = list(out.hidden_states)
    states[-1] = seen[-1]
    return [states[i] for i in layers]


def build_text_encoder(variant: str, cfg: dict, family: str | None):
    """The transformers class for text encoder ``variant`` built from ``cfg`` on the meta device."""
    import transformers

    if is_decoder(variant):
        conf = decoder_config(cfg)
        return build_empty(lambda: transformers.AutoModel.from_config(conf))
    cfg = {k: v for k, v in cfg.items() if k != "model_type"}
    if variant in ("clip_l", "clip_g"):
        conf = transformers.CLIPTextConfig(**cfg)
        cls = transformers.CLIPTextModelWithProjection if clip_with_projection(variant, family) else transformers.CLIPTextModel
    elif variant == "t5":
        conf = transformers.T5Config(**cfg)
        cls = transformers.T5EncoderModel
    elif variant == "gemma":
        conf = transformers.Gemma2Config(**cfg)
        cls = transformers.Gemma2Model
    else:
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"text encoder {variant!r} is not supported.")
    return build_empty(lambda: cls(conf))


def text_encoder_from(engine, source, det, prefix: str, family, dtype):
    """The text encoder under ``prefix`` in the tensor source ``source`` (detected as ``det``)."""
    variant = det.variant
    model = build_text_encoder(variant, det.config, family)
    # tokenizer data some files carry (ComfyUI's "spiece_model", "tekken_model") is not a weight
    mapping = prefixed(source, prefix, skip=("spiece_model", "tekken_model"))
    if is_decoder(variant):  # its head and a vision tower are never read
        mapping = {k: v for k, v in mapping.items() if not keymaps.decoder_unused(v)}
    expected = set(model.state_dict())

    def conv(sd):
        out = convert.convert_text_encoder(variant, sd, expected)
        if variant in ("clip_l", "clip_g") and "text_projection.weight" not in expected:
            out.pop("text_projection.weight", None)
        return out

    fill = {}
    if variant in ("clip_l", "clip_g"):
        # published clip_l has no projection; ComfyUI then uses the identity, so do we
        fill["text_projection.weight"] = lambda ref: torch.eye(ref.shape[0], ref.shape[1])
    model = load_into(model, source, mapping, conv, dtype=dtype, device=engine.torch_device, what=f"{variant} text encoder", fill=fill)
    if variant == "t5":
        model.encoder.embed_tokens = model.shared
    if variant in VISION_TOWERS and isinstance(det.config.get("vision_config"), dict):
        # the vision tower (reference images: Qwen-Image-Edit) rides on the text encoder as ``.visual``, as a
        # transformers folder's Qwen2_5_VLModel holds it
        from .qwen_vision import load_vision

        model.visual = load_vision(engine, source, prefix, det.config["vision_config"], dtype)
    return model


def load_text_encoder(engine, path, *, family: str | None = None, hint: str | None = None, dtype=None):
    """One text encoder from a single file or a transformers folder -> (key, model, tokenizer)."""
    p = resolve(path, ("text_encoders",))
    dt = torch_dtype(dtype or engine.policy.text_encoder_dtype)
    if p.is_dir():
        return _from_folder(engine, p, family, hint, dt)
    source = open_tensors(p)
    try:
        det, prefix = text_encoder_in(source.tensors, p.name, hint)
        model = text_encoder_from(engine, source, det, prefix, family, dt)
        tok = find_tokenizer(det.variant, p, source=source)
        return det.variant, model, tok
    finally:
        source.close()


def _from_folder(engine, p, family, hint, dt):
    import transformers

    cfg = folder_config(p)
    key = text_encoder_key(cfg, p.name, hint)
    if key == "t5":
        cls = transformers.T5EncoderModel
    elif is_decoder(key):
        cls = transformers.AutoModel  # the base model; a ...ForCausalLM folder's lm_head is not loaded
    elif key == "gemma":
        cls = transformers.Gemma2Model
    else:
        archs = cfg.get("architectures") or []
        with_proj = any("WithProjection" in a for a in archs) or registry.rules(family).projected_clip
        cls = transformers.CLIPTextModelWithProjection if with_proj else transformers.CLIPTextModel
    model = cls.from_pretrained(p, local_files_only=True, dtype=dt).to(engine.torch_device).eval().requires_grad_(False)
    tok = find_tokenizer(key, p)
    return key, model, tok
