"""MLX port of transformers' ``T5EncoderModel`` (T5 v1.0 ``relu`` and v1.1 ``gated-gelu`` variants).

Parameter paths are transformers' own (``shared.weight``,
``encoder.block.0.layer.0.SelfAttention.q.weight``, ``...relative_attention_bias.weight``,
``encoder.block.0.layer.1.DenseReluDense.wi_0.weight``, ``encoder.final_layer_norm.weight``).
The token embedding lives once, at ``shared``; transformers' tied copy
``encoder.embed_tokens.weight`` is folded into it by :func:`map_weights`.

Numerics follow transformers: T5's RMS norm (no mean, no bias) is computed in float32 and cast
back to the weight's dtype before scaling; attention is *not* scaled by ``1/sqrt(d)``; the
relative position bias is bucketed as in Mesh-TensorFlow, computed by the first block and
reused by every later one; padded keys get the dtype's most negative value in place of the
bias (as transformers' SDPA path does, so an all-padding row stays finite); float16 hidden
states are clamped after each sub-layer like transformers does.
"""

from __future__ import annotations

import math
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .layers import block_done


# --------------------------------------------------------------------------- activations
def _quick_gelu(x):
    return x * mx.sigmoid(1.702 * x)


_ACTS = {
    "relu": nn.relu,
    "gelu": nn.gelu,  # exact erf GELU (torch default)
    "gelu_new": nn.gelu_approx,  # tanh approximation
    "gelu_pytorch_tanh": nn.gelu_approx,
    "gelu_fast": nn.gelu_approx,
    "gelu_accurate": nn.gelu_approx,
    "quick_gelu": _quick_gelu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": mx.tanh,
    "linear": lambda x: x,
}


def activation(name: str):
    """The MLX function for a transformers ``ACT2FN`` name (the ones the text encoders use)."""
    key = str(name).lower()
    if key not in _ACTS:
        from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError

        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"activation {name!r} is not supported by the MLX text encoders. "
                               "Load this text encoder with engine 'torch'.")
    return _ACTS[key]


def ff_config(config: dict) -> tuple[str, bool]:
    """``(dense_act_fn, is_gated_act)`` as ``T5Config`` derives them from ``feed_forward_proj``."""
    proj = str(config.get("feed_forward_proj") or "relu")
    parts = proj.split("-")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    gated = parts[0] == "gated"
    act = config.get("dense_act_fn") or act
    gated = bool(config["is_gated_act"]) if config.get("is_gated_act") is not None else gated
    return act, gated


# --------------------------------------------------------------------------- relative position buckets
def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
    """Mesh-TensorFlow's bucketing of ``memory - query`` offsets (int array -> int array), in
    the same float32 arithmetic as transformers' ``T5Attention._relative_position_bucket``."""
    rp = np.asarray(relative_position, dtype=np.int64)
    buckets = np.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        buckets += (rp > 0).astype(np.int64) * num_buckets
        rp = np.abs(rp)
    else:
        rp = -np.minimum(rp, 0)
    max_exact = num_buckets // 2
    is_small = rp < max_exact
    with np.errstate(divide="ignore"):
        scaled = (np.log(rp.astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
    # float -> int truncates toward zero as torch's .to(long); the small offsets (log(0) = -inf) are not used
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, rp, large)


@lru_cache(maxsize=64)
def _bucket_table(q_len: int, k_len: int, bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    ctx = np.arange(q_len, dtype=np.int64)[:, None]
    mem = np.arange(k_len, dtype=np.int64)[None, :]
    out = relative_position_bucket(mem - ctx, bidirectional, num_buckets, max_distance).astype(np.int32)
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------- layers
class T5LayerNorm(nn.Module):
    """RMS norm without mean or bias, variance in float32, cast to the weight dtype before scaling."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = float(eps)

    def __call__(self, x):
        h = x.astype(mx.float32)
        h = h * mx.rsqrt(mx.mean(h * h, axis=-1, keepdims=True) + self.eps)
        if self.weight.dtype in (mx.float16, mx.bfloat16):
            h = h.astype(self.weight.dtype)
        return self.weight * h


class T5Attention(nn.Module):
    def __init__(self, config: dict, has_relative_attention_bias: bool = False):
        super().__init__()
        d_model = int(config.get("d_model", 512))
        self.n_heads = int(config.get("num_heads", 8))
        self.d_kv = int(config.get("d_kv", 64))
        inner = self.n_heads * self.d_kv
        self.num_buckets = int(config.get("relative_attention_num_buckets", 32))
        self.max_distance = int(config.get("relative_attention_max_distance", 128))
        self.bidirectional = not bool(config.get("is_decoder", False))
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(self.num_buckets, self.n_heads)

    def compute_bias(self, q_len: int, k_len: int):
        """The ``(1, heads, q_len, k_len)`` relative position bias."""
        idx = mx.array(_bucket_table(int(q_len), int(k_len), self.bidirectional, self.num_buckets, self.max_distance))
        values = self.relative_attention_bias(idx)  # (q, k, heads)
        return values.transpose(2, 0, 1)[None]

    def __call__(self, x, keep=None, position_bias=None):
        b, length, _ = x.shape
        h, d = self.n_heads, self.d_kv
        q = self.q(x).reshape(b, length, h, d).transpose(0, 2, 1, 3)
        k = self.k(x).reshape(b, length, h, d).transpose(0, 2, 1, 3)
        v = self.v(x).reshape(b, length, h, d).transpose(0, 2, 1, 3)
        if position_bias is None:
            if "relative_attention_bias" in self:
                position_bias = self.compute_bias(length, length)
            else:
                position_bias = mx.zeros((1, h, length, length), dtype=q.dtype)
        bias = position_bias.astype(q.dtype)
        if keep is not None:
            # transformers' SDPA path: masked keys get the dtype's minimum instead of the bias
            bias = mx.where(keep[:, None, None, :], bias, mx.array(mx.finfo(q.dtype).min, dtype=q.dtype))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=bias)
        out = out.transpose(0, 2, 1, 3).reshape(b, length, h * d)
        return self.o(out), position_bias


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: dict, has_relative_attention_bias: bool = False):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(int(config.get("d_model", 512)), config.get("layer_norm_epsilon", 1e-6))

    def __call__(self, x, keep=None, position_bias=None):
        out, position_bias = self.SelfAttention(self.layer_norm(x), keep, position_bias)
        return x + out, position_bias


class T5DenseActDense(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        d_model, d_ff = int(config.get("d_model", 512)), int(config.get("d_ff", 2048))
        self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self._act = activation(ff_config(config)[0])

    def __call__(self, x):
        h = self._act(self.wi(x))
        return self.wo(h.astype(self.wo.weight.dtype))  # transformers may keep ``wo`` in float32


class T5DenseGatedActDense(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        d_model, d_ff = int(config.get("d_model", 512)), int(config.get("d_ff", 2048))
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self._act = activation(ff_config(config)[0])

    def __call__(self, x):
        h = self._act(self.wi_0(x)) * self.wi_1(x)
        return self.wo(h.astype(self.wo.weight.dtype))


class T5LayerFF(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        gated = ff_config(config)[1]
        self.DenseReluDense = T5DenseGatedActDense(config) if gated else T5DenseActDense(config)
        self.layer_norm = T5LayerNorm(int(config.get("d_model", 512)), config.get("layer_norm_epsilon", 1e-6))

    def __call__(self, x):
        return x + self.DenseReluDense(self.layer_norm(x))


def _clamp_fp16(x):
    if x.dtype != mx.float16:
        return x
    big = 65504.0
    lim = mx.where(mx.any(mx.isinf(x)), big - 1000.0, big)
    return mx.clip(x, -lim, lim)


class T5Block(nn.Module):
    def __init__(self, config: dict, has_relative_attention_bias: bool = False):
        super().__init__()
        self.layer = [T5LayerSelfAttention(config, has_relative_attention_bias), T5LayerFF(config)]

    def __call__(self, x, keep=None, position_bias=None):
        x, position_bias = self.layer[0](x, keep, position_bias)
        x = _clamp_fp16(x)
        x = _clamp_fp16(self.layer[-1](x))
        return x, position_bias


class T5Stack(nn.Module):
    """The encoder stack; its token embedding is the model's ``shared`` (not stored here)."""

    def __init__(self, config: dict):
        super().__init__()
        n = int(config.get("num_layers", config.get("num_hidden_layers", 6)))
        self.block = [T5Block(config, has_relative_attention_bias=(i == 0)) for i in range(n)]
        self.final_layer_norm = T5LayerNorm(int(config.get("d_model", 512)), config.get("layer_norm_epsilon", 1e-6))

    def __call__(self, x, keep=None):
        position_bias = None
        for blk in self.block:
            x, position_bias = blk(x, keep, position_bias)
            block_done(x, position_bias)
        return self.final_layer_norm(x)


class T5EncoderModel(nn.Module):
    """transformers' ``T5EncoderModel``: ``model(input_ids, attention_mask)`` -> ``last_hidden_state``."""

    def __init__(self, config: dict):
        super().__init__()
        config = dict(config)
        self.shared = nn.Embedding(int(config.get("vocab_size", 32128)), int(config.get("d_model", 512)))
        self.encoder = T5Stack(config)

    def __call__(self, input_ids, attention_mask=None):
        ids = input_ids if isinstance(input_ids, mx.array) else mx.array(np.asarray(input_ids))
        x = self.shared(ids.astype(mx.int32))
        keep = None
        if attention_mask is not None:
            m = attention_mask if isinstance(attention_mask, mx.array) else mx.array(np.asarray(attention_mask))
            keep = m.astype(mx.bool_) if m.dtype != mx.bool_ else m
        return self.encoder(x, keep)


def map_weights(sd: dict) -> dict:
    """transformers names -> ours: the one token embedding is ``shared.weight`` (taken from
    ``encoder.embed_tokens.weight`` when only that name is there); the tied copy is dropped."""
    out = dict(sd)
    tied = out.pop("encoder.embed_tokens.weight", None)
    if "shared.weight" not in out and tied is not None:
        out["shared.weight"] = tied
    return out
