"""Qwen2.5-VL's vision tower on torch: transformers' own ``Qwen2_5_VisionTransformerPretrainedModel`` built from the
detected ``vision_config`` and loaded from the ``visual.*`` tensors of ``qwen_2.5_vl_7b.safetensors`` (a transformers
folder's ``Qwen2_5_VLModel`` has it as ``.visual`` already), and the language model run on a prompt whose image
places hold the tower's features, at Qwen2.5-VL's 3-D rotary positions (``engines/vision_inputs.py``)."""

from __future__ import annotations

import numpy as np
import torch

from ...errors import MODEL_NOT_FOUND, SpriteForgeError
from .building import build_empty, load_into, prefixed


def build_vision(cfg: dict):
    """The transformers vision tower for ``cfg`` (a ``Qwen2_5_VLVisionConfig`` dict) on the meta device."""
    import transformers
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    conf = transformers.Qwen2_5_VLVisionConfig(**cfg)
    return build_empty(lambda: Qwen2_5_VisionTransformerPretrainedModel._from_config(conf))


def load_vision(engine, source, prefix: str, cfg: dict, dtype):
    """The vision tower under ``prefix + "visual."`` in the tensor source ``source``."""
    mapping = {k: v[len("visual."):] for k, v in prefixed(source, prefix).items() if v.startswith("visual.")}
    return load_into(build_vision(cfg), source, mapping, lambda sd: sd, dtype=dtype, device=engine.torch_device,
                     what="Qwen2.5-VL vision tower")


def vision_of(enc):
    """The vision tower a loaded text encoder carries; MODEL_NOT_FOUND when its file had none."""
    visual = getattr(enc, "visual", None)
    if visual is None:  # a folder's Qwen2_5_VLForConditionalGeneration: under its base model
        visual = getattr(getattr(enc, "model", None), "visual", None)
    if visual is None:
        raise SpriteForgeError(MODEL_NOT_FOUND, "the Qwen2.5-VL text encoder was loaded without its vision tower (no "
                               "visual.* tensors), which reads the reference images. Load the full qwen_2.5_vl_7b.safetensors.")
    return visual


def vision_config(enc) -> dict:
    return vision_of(enc).config.to_dict()


def vision_features(enc, patches: np.ndarray, grids) -> torch.Tensor:
    """``[tokens, D]``: the merged features of the images whose ``patches`` / ``grids`` (``vision_inputs``) are given."""
    visual = vision_of(enc)
    p = next(visual.parameters())
    out = visual(torch.from_numpy(patches).to(p.device, p.dtype), grid_thw=torch.tensor(np.asarray(grids), device=p.device))
    return out.pooler_output


def language_model(enc):
    """The language model of a Qwen2.5-VL text encoder (a file's ``Qwen2_5_VLTextModel``; a folder's
    ``Qwen2_5_VLModel`` or ``Qwen2_5_VLForConditionalGeneration``: its ``language_model``)."""
    base = enc.model if hasattr(enc, "lm_head") else enc
    return getattr(base, "language_model", None) or base


def decoder_with_images(enc, ids, mask, positions, feats, image_token: int, layers):
    """Hidden states (``output_hidden_states`` numbering) of ``layers`` for token ``ids`` [B, L] whose ``image_token``
    places take ``feats`` (one copy a row, in order) at the 3-D rotary ``positions`` [3, B, L]."""
    lm = language_model(enc)
    emb = lm.embed_tokens(ids)
    sel = ids == image_token
    emb = emb.masked_scatter(sel[..., None], feats.to(emb.dtype).repeat(ids.shape[0], 1))
    out = lm(inputs_embeds=emb, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    return [out.hidden_states[i] for i in layers]
