"""MLX port of transformers' ``Gemma2Model`` (the decoder stack Sana uses as its text encoder).

Parameter paths are ``Gemma2Model``'s (no ``model.`` prefix): ``embed_tokens.weight``,
``layers.0.self_attn.q_proj.weight``, ``layers.0.mlp.gate_proj.weight``,
``layers.0.{input,post_attention,pre_feedforward,post_feedforward}_layernorm.weight``,
``norm.weight``. :func:`map_weights` strips a ``model.`` prefix and drops ``lm_head``.

Numerics follow transformers' eager path (the one Gemma-2 uses; SDPA has no soft-capping):
RMS norm in float32 scaled by ``1 + weight`` and cast back afterwards; token embeddings scaled
by ``sqrt(hidden_size)`` rounded to the weight dtype; rotary embeddings (``rope_theta``,
rotate-half, cos/sin in the activation dtype); grouped-query attention scaled by
``query_pre_attn_scalar ** -0.5``, logits soft-capped by ``attn_logit_softcapping`` *before*
the mask, softmax in float32; layers named ``sliding_attention`` in ``layer_types``
(alternating by default, the first one sliding) see only the last ``sliding_window`` keys;
causal plus padding mask, masked keys at the dtype's minimum. ``use_bidirectional_attention``
does not change Gemma-2's eager result (its mask is causal either way) and is ignored.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...models.keymaps import gemma_model_keys
from .layers import block_done
from .t5 import activation


def _rope_theta(config: dict) -> float:
    rp = config.get("rope_parameters") or {}
    kind = rp.get("rope_type", rp.get("type", "default")) if isinstance(rp, dict) else "default"
    if kind not in (None, "default"):
        from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError

        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"Gemma-2 rotary embedding type {kind!r} is not supported by the "
                               "MLX engine. Load this text encoder with engine 'torch'.")
    theta = rp.get("rope_theta") if isinstance(rp, dict) else None
    return float(theta if theta is not None else config.get("rope_theta", 10000.0))


def _layer_types(config: dict) -> list[str]:
    n = int(config.get("num_hidden_layers", 26))
    types = config.get("layer_types")
    if not types:
        types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    return list(types)


class Gemma2RMSNorm(nn.Module):
    """``x / rms(x) * (1 + weight)`` in float32, cast back to the input dtype."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = float(eps)

    def __call__(self, x):
        h = x.astype(mx.float32)
        h = h * mx.rsqrt(mx.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return (h * (1.0 + self.weight.astype(mx.float32))).astype(x.dtype)


class Gemma2MLP(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        dim, inner = int(config.get("hidden_size", 2304)), int(config.get("intermediate_size", 9216))
        self.gate_proj = nn.Linear(dim, inner, bias=False)
        self.up_proj = nn.Linear(dim, inner, bias=False)
        self.down_proj = nn.Linear(inner, dim, bias=False)
        self._act = activation(config.get("hidden_activation") or config.get("hidden_act") or "gelu_pytorch_tanh")

    def __call__(self, x):
        return self.down_proj(self._act(self.gate_proj(x)) * self.up_proj(x))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class Gemma2Attention(nn.Module):
    def __init__(self, config: dict, layer_idx: int):
        super().__init__()
        dim = int(config.get("hidden_size", 2304))
        self.heads = int(config.get("num_attention_heads", 8))
        self.kv_heads = int(config.get("num_key_value_heads", self.heads))
        self.head_dim = int(config.get("head_dim") or dim // self.heads)
        self.scaling = float(config.get("query_pre_attn_scalar", 256)) ** -0.5
        cap = config.get("attn_logit_softcapping", 50.0)
        self.softcap = None if cap is None else float(cap)
        bias = bool(config.get("attention_bias", False))
        self.q_proj = nn.Linear(dim, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, dim, bias=bias)

    def __call__(self, x, cos, sin, mask):
        b, length, _ = x.shape
        d = self.head_dim
        q = self.q_proj(x).reshape(b, length, self.heads, d).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, length, self.kv_heads, d).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, length, self.kv_heads, d).transpose(0, 2, 1, 3)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        if rep > 1:  # query head i uses key/value head i // rep, as transformers' repeat_kv
            k = mx.repeat(k, rep, axis=1)
            v = mx.repeat(v, rep, axis=1)
        scores = (q @ k.transpose(0, 1, 3, 2)) * self.scaling
        if self.softcap is not None:
            scores = mx.tanh(scores / self.softcap) * self.softcap
        scores = scores + mask
        probs = mx.softmax(scores.astype(mx.float32), axis=-1).astype(q.dtype)
        out = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, self.heads * d)
        return self.o_proj(out)


class Gemma2DecoderLayer(nn.Module):
    def __init__(self, config: dict, layer_idx: int):
        super().__init__()
        dim, eps = int(config.get("hidden_size", 2304)), float(config.get("rms_norm_eps", 1e-6))
        self.self_attn = Gemma2Attention(config, layer_idx)
        self.mlp = Gemma2MLP(config)
        self.input_layernorm = Gemma2RMSNorm(dim, eps)
        self.post_attention_layernorm = Gemma2RMSNorm(dim, eps)
        self.pre_feedforward_layernorm = Gemma2RMSNorm(dim, eps)
        self.post_feedforward_layernorm = Gemma2RMSNorm(dim, eps)

    def __call__(self, x, cos, sin, mask):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma2Model(nn.Module):
    """transformers' ``Gemma2Model``: ``model(input_ids, attention_mask)`` -> ``last_hidden_state``."""

    def __init__(self, config: dict):
        super().__init__()
        config = dict(config)
        dim = int(config.get("hidden_size", 2304))
        self.embed_tokens = nn.Embedding(int(config.get("vocab_size", 256000)), dim)
        self.layers = [Gemma2DecoderLayer(config, i) for i in range(int(config.get("num_hidden_layers", 26)))]
        self.norm = Gemma2RMSNorm(dim, float(config.get("rms_norm_eps", 1e-6)))
        self._embed_scale = dim ** 0.5
        self._types = _layer_types(config)
        win = config.get("sliding_window")
        self._window = None if win is None else int(win)
        head_dim = int(config.get("head_dim") or dim // int(config.get("num_attention_heads", 8)))
        theta = _rope_theta(config)
        self._inv_freq = (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))).astype(np.float32)

    def _masks(self, length: int, keep, dtype):
        idx = mx.arange(length)
        causal = idx[None, :] <= idx[:, None]
        neg = mx.array(mx.finfo(dtype).min, dtype=dtype)
        zero = mx.array(0, dtype=dtype)
        pad = None if keep is None else keep[:, None, None, :]

        def build(allowed):
            allowed = allowed[None, None]
            if pad is not None:
                allowed = allowed & pad
            return mx.where(allowed, zero, neg)

        out = {"full_attention": build(causal)}
        if self._window is not None:
            out["sliding_attention"] = build(causal & (idx[None, :] > idx[:, None] - self._window))
        else:
            out["sliding_attention"] = out["full_attention"]
        return out

    def __call__(self, input_ids, attention_mask=None):
        ids = input_ids if isinstance(input_ids, mx.array) else mx.array(np.asarray(input_ids))
        w = self.embed_tokens.weight
        x = self.embed_tokens(ids.astype(mx.int32)) * mx.array(self._embed_scale, dtype=w.dtype)
        length = x.shape[1]
        keep = None
        if attention_mask is not None:
            m = attention_mask if isinstance(attention_mask, mx.array) else mx.array(np.asarray(attention_mask))
            keep = m.astype(mx.bool_)
        masks = self._masks(length, keep, x.dtype)
        freqs = mx.arange(length, dtype=mx.float32)[:, None] * mx.array(self._inv_freq)[None, :]
        emb = mx.concatenate([freqs, freqs], axis=-1)
        cos, sin = mx.cos(emb).astype(x.dtype), mx.sin(emb).astype(x.dtype)
        for i, layer in enumerate(self.layers):
            kind = self._types[i] if i < len(self._types) else "full_attention"
            x = layer(x, cos, sin, masks.get(kind, masks["full_attention"]))
            block_done(x)
        return self.norm(x)


def map_weights(sd: dict) -> dict:
    """transformers names -> ours: ``model.`` prefix (a ``Gemma2ForCausalLM`` file) stripped, ``lm_head`` dropped."""
    return gemma_model_keys(sd)
