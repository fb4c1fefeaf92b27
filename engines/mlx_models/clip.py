"""MLX port of transformers' ``CLIPTextModel`` and ``CLIPTextModelWithProjection``.

One class, :class:`CLIPTextModel`, covers both: the text tower always sits under
``text_model.`` (``text_model.embeddings.token_embedding.weight``,
``text_model.encoder.layers.0.self_attn.q_proj.weight``, ``text_model.final_layer_norm.weight``)
and, with a projection, ``text_projection.weight`` sits beside it, as in
``CLIPTextModelWithProjection``. transformers' own ``CLIPTextModel`` stores the tower without
the prefix; :func:`map_weights` adds it (and drops the ``position_ids`` buffer).

``__call__(input_ids)`` returns ``(hidden_states, pooled)``: ``hidden_states`` is the tuple
transformers gives for ``output_hidden_states=True`` (the embeddings first, then every encoder
layer's output; the last entry is *before* the final layer norm), ``pooled`` is
``text_embeds`` with a projection and ``pooler_output`` without. The pooled token is picked as
transformers does: with the legacy ``eos_token_id == 2`` the position of the largest id, else
the first position holding ``eos_token_id`` (position 0 where there is none).

Projection rule for ``projection=None``: :func:`wants_projection` -- the state dict's keys
when given (``text_projection.weight`` present), else the config's ``architectures`` naming a
``...WithProjection`` class; otherwise none. Loaders that know the role pass it explicitly.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .layers import block_done
from .t5 import activation


def wants_projection(config: dict, keys=None) -> bool:
    """Whether a model for ``config`` (and state-dict ``keys``, if known) has ``text_projection``."""
    if keys is not None:
        return "text_projection.weight" in set(keys)
    archs = config.get("architectures") or []
    return any("WithProjection" in str(a) for a in archs)


def _eos_id(config: dict):
    eos = config.get("eos_token_id", 2)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return None if eos is None else int(eos)


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        dim = int(config.get("hidden_size", 512))
        self.token_embedding = nn.Embedding(int(config.get("vocab_size", 49408)), dim)
        self.position_embedding = nn.Embedding(int(config.get("max_position_embeddings", 77)), dim)

    def __call__(self, input_ids):
        length = input_ids.shape[-1]
        n_pos = self.position_embedding.weight.shape[0]
        if length > n_pos:
            from ...errors import BAD_INPUT, SpriteForgeError

            raise SpriteForgeError(BAD_INPUT, f"the CLIP text encoder got {length} tokens but has {n_pos} positions. "
                                   f"Tokenize to at most {n_pos} tokens.")
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length]


class CLIPAttention(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        dim = int(config.get("hidden_size", 512))
        self.heads = int(config.get("num_attention_heads", 8))
        self.scale = (dim // self.heads) ** -0.5
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def __call__(self, x, mask):
        b, length, dim = x.shape
        h = self.heads
        d = dim // h

        def split(t):
            return t.reshape(b, length, h, d).transpose(0, 2, 1, 3)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, length, dim))


class CLIPMLP(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        dim, inner = int(config.get("hidden_size", 512)), int(config.get("intermediate_size", 2048))
        self.fc1 = nn.Linear(dim, inner)
        self.fc2 = nn.Linear(inner, dim)
        self._act = activation(config.get("hidden_act", "quick_gelu"))

    def __call__(self, x):
        return self.fc2(self._act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        dim, eps = int(config.get("hidden_size", 512)), float(config.get("layer_norm_eps", 1e-5))
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)

    def __call__(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.layers = [CLIPEncoderLayer(config) for _ in range(int(config.get("num_hidden_layers", 12)))]


class CLIPTextTransformer(nn.Module):
    """The text tower (transformers' ``CLIPTextModel`` body): embeddings, causal pre-LN encoder, final LN."""

    def __init__(self, config: dict):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(int(config.get("hidden_size", 512)),
                                             eps=float(config.get("layer_norm_eps", 1e-5)))
        self._eos = _eos_id(config)

    def __call__(self, input_ids, attention_mask=None):
        x = self.embeddings(input_ids)
        length = x.shape[1]
        idx = mx.arange(length)
        keep = (idx[None, :] <= idx[:, None])[None, None]  # (1, 1, L, L) causal
        if attention_mask is not None:
            keep = keep & attention_mask.astype(mx.bool_)[:, None, None, :]
        neg = mx.array(mx.finfo(x.dtype).min, dtype=x.dtype)
        mask = mx.where(keep, mx.array(0, dtype=x.dtype), neg)
        hidden = [x]
        for layer in self.encoder.layers:
            x = layer(x, mask)
            block_done(x)
            hidden.append(x)
        last = self.final_layer_norm(x)
        ids = input_ids.astype(mx.int32)
        pos = mx.arange(length, dtype=mx.int32)[None, :]
        if self._eos == 2:
            target = mx.max(ids, axis=-1, keepdims=True)  # legacy: the largest id (first one on ties)
        else:
            target = mx.full((ids.shape[0], 1), -1 if self._eos is None else self._eos, dtype=mx.int32)
        hit = ids == target
        first = mx.min(mx.where(hit, pos, length), axis=-1)
        first = mx.where(first == length, 0, first)  # no eos: argmax of all-zero is 0
        pooled = mx.take_along_axis(last, first[:, None, None].astype(mx.int32), axis=1)[:, 0]
        return tuple(hidden), pooled, last


class CLIPTextModel(nn.Module):
    """``CLIPTextModel`` / ``CLIPTextModelWithProjection``: ``model(input_ids)`` -> ``(hidden_states, pooled)``."""

    def __init__(self, config: dict, projection: bool | None = None):
        super().__init__()
        config = dict(config)
        if projection is None:
            projection = wants_projection(config)
        self.text_model = CLIPTextTransformer(config)
        if projection:
            dim = int(config.get("hidden_size", 512))
            self.text_projection = nn.Linear(dim, int(config.get("projection_dim", dim)), bias=False)

    @property
    def has_projection(self) -> bool:
        return "text_projection" in self

    def __call__(self, input_ids, attention_mask=None):
        ids = input_ids if isinstance(input_ids, mx.array) else mx.array(np.asarray(input_ids))
        if attention_mask is not None and not isinstance(attention_mask, mx.array):
            attention_mask = mx.array(np.asarray(attention_mask))
        hidden, pooled, _ = self.text_model(ids, attention_mask)
        if self.has_projection:
            pooled = self.text_projection(pooled)
        return hidden, pooled

    def last_hidden_state(self, input_ids, attention_mask=None):
        """The final-layer-normed last hidden state (transformers' ``last_hidden_state``)."""
        ids = input_ids if isinstance(input_ids, mx.array) else mx.array(np.asarray(input_ids))
        return self.text_model(ids, attention_mask)[2]


def map_weights(sd: dict) -> dict:
    """transformers names -> ours: the tower under ``text_model.`` (added where the state dict of a
    plain ``CLIPTextModel`` lacks it), ``text_projection.*`` as is, ``position_ids`` buffers dropped."""
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        if k.startswith(("text_model.", "text_projection")):
            out[k] = v
        else:
            out["text_model." + k] = v
    return out


__all__ = ["CLIPTextModel", "map_weights", "wants_projection"]
