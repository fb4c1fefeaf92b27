"""Qwen-Image 2.1 on MLX, a port of diffusers' ``QwenImage21Transformer2DModel`` (text to image: no condition images).

Input is the unpatched latent ``(B, N, 64)`` (one token a latent pixel), the text encoder's hidden states
``(B, L, 4096)`` with their keep-mask, and ``img_mask`` (the vision-language sequence: False at the text's positions,
True at the image slots, one per 2x2 latent tokens), as the diffusers forward takes them. The joint sequence is the
text, then the image tokens. Each of ``num_layers`` single-stream blocks is modulated by one shared projection of the
timestep embedding (scale and tanh-gate for attention, then for the SwiGLU); with ``causal_condition`` the text tokens
take the row of timestep 0, the image tokens their sample's. Attention is block-causal: a text token sees the text up
to itself, an image token sees everything; padded text keys are never seen. Rotary positions (3 axes, interleaved
pairs): text token ``j`` at ``(j, j, j)``, the image at frame ``L`` with its grid centred on zero
(``r - ceil(h/2)``, ``c - ceil(w/2)``). The timestep is sigma (multiplied by 1000 inside, as diffusers does). The
output covers the whole joint sequence, as diffusers'.

Parameter paths are diffusers' own (``modulation.1`` is the Linear after the SiLU), so :func:`map_weights` is the
identity; ComfyUI's fused ``img_mlp.gate_up`` is split by diffusers' converter before it gets here.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from .layers import (AttentionProjections, RMSNorm, TimestepEmbedding, apply_rope, batch_vector, block_done, gelu_tanh, layer_norm,
                     merge_heads, rope_tables, sdpa_heads, split_heads, timestep_embedding)
from .sd3 import Identity

SLOT = 4  # latent tokens an image slot of the vision-language sequence stands for


@dataclass(frozen=True)
class QwenImage21Config:
    patch_size: int = 1
    in_channels: int = 64
    out_channels: int = 64
    num_layers: int = 32
    attention_head_dim: int = 128
    num_attention_heads: int = 32
    context_in_dim: int = 4096
    mlp_ratio: int = 3
    axes_dims_rope: tuple = (16, 56, 56)
    eps: float = 1e-6
    causal_condition: bool = True

    @classmethod
    def from_dict(cls, c: dict) -> "QwenImage21Config":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in c.items()
                      if k in cls.__dataclass_fields__ and v is not None})

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def positions(text: int, h: int, w: int) -> list:
    """The 3-axis positions of ``text`` prompt tokens then an ``h`` x ``w`` grid of image tokens (see the module note)."""
    return ([[j, j, j] for j in range(text)]
            + [[text, r - (h - h // 2), c - (w - w // 2)] for r in range(h) for c in range(w)])


class ZeroCenterRMSNorm(nn.Module):
    """RMSNorm whose stored weight is ``scale - 1`` (computed in float32)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.zeros((dim,))
        self.eps = eps

    def __call__(self, x):
        return mx.fast.rms_norm(x.astype(mx.float32), self.weight.astype(mx.float32) + 1.0, self.eps).astype(x.dtype)


class TextProjection(nn.Module):
    def __init__(self, context_in_dim: int, dim: int, eps: float):
        super().__init__()
        self.text_norm = ZeroCenterRMSNorm(context_in_dim, eps)
        self.in_layer = nn.Linear(context_in_dim, dim, bias=False)
        self.out_layer = nn.Linear(dim, dim, bias=False)

    def __call__(self, x):
        return self.out_layer(gelu_tanh(self.in_layer(self.text_norm(x))))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden, bias=False)
        self.gate_layer = nn.Linear(dim, hidden, bias=False)
        self.out = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x):
        return self.out(nn.silu(self.gate_layer(x)) * self.proj(x))


class Attention(AttentionProjections):
    def __init__(self, dim: int, heads: int, head_dim: int, eps: float):
        super().__init__(dim, heads, head_dim, bias=False, out_bias=False)
        self.norm_q = RMSNorm(head_dim, eps=eps)
        self.norm_k = RMSNorm(head_dim, eps=eps)

    def __call__(self, x, rope, mask):
        h = self.heads
        cos, sin = rope
        q = apply_rope(self.norm_q(split_heads(self.to_q(x), h)), cos, sin)
        k = apply_rope(self.norm_k(split_heads(self.to_k(x), h)), cos, sin)
        v = split_heads(self.to_v(x), h)
        return self.to_out[0](merge_heads(sdpa_heads(q, k, v, mask)).astype(x.dtype))


class QwenImage21TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: int, eps: float):
        super().__init__()
        self.eps = eps
        self.attn = Attention(dim, heads, head_dim, eps)
        self.img_mlp = SwiGLU(dim, dim * mlp_ratio)

    def __call__(self, x, mods, rope, mask):
        scale1, gate1, scale2, gate2 = mods
        x = x + mx.tanh(gate1) * self.attn(layer_norm(x, self.eps) * (1 + scale1), rope, mask)
        x = x + mx.tanh(gate2) * self.img_mlp(layer_norm(x, self.eps) * (1 + scale2))
        if x.dtype == mx.float16:
            x = mx.clip(x, -65504, 65504)
        return x


class TimeTextEmbed(nn.Module):
    """256 sinusoidal features of 1000 x sigma (cos first), then a bias-free MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim, bias=False)

    def __call__(self, t, dtype):
        return self.timestep_embedder(timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0.0, scale=1000.0).astype(dtype))


class NormOut(nn.Module):
    """Scale-only adaptive LayerNorm (no shift)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.eps = eps


def _rows(params, target, causal: bool):
    """Per-token rows ``(B, S, D)`` of ``params`` ``(B [+ 1], D)``: with ``causal`` the last row (timestep 0) for the
    tokens that are not ``target`` (``(S,)`` bool), each sample's own row for the target's."""
    if not causal:
        return params[:, None]
    return mx.where(target[None, :, None], params[:-1][:, None], params[-1:][:, None])


class QwenImage21Transformer2DModel(nn.Module):
    """``__call__(hidden_states (B,N,64), encoder_hidden_states (B,L,D), timestep (B,) sigma, img_shapes [[(1, h, w)]]
    per row, img_mask (B, L + N/4) bool, encoder_hidden_states_mask (B,L) or None)`` -> ``(B, L + N, out_channels)``."""

    def __init__(self, config: dict):
        super().__init__()
        object.__setattr__(self, "config", dict(config))
        c = QwenImage21Config.from_dict(config)
        object.__setattr__(self, "cfg", c)
        if sum(c.axes_dims_rope) != c.attention_head_dim or c.patch_size != 1:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"a Qwen-Image 2.1 config with rope axes {c.axes_dims_rope} for "
                                   f"{c.attention_head_dim}-wide heads and patch {c.patch_size}: the MLX port runs the release's "
                                   "layout (patch 1). Load it with engine 'torch'.")
        dim = c.dim
        self.time_text_embed = TimeTextEmbed(dim)
        self.txt_in = TextProjection(c.context_in_dim, dim, c.eps)
        self.img_in = nn.Linear(c.in_channels, dim, bias=False)
        self.modulation = [Identity(), nn.Linear(dim, 4 * dim, bias=False)]
        self.transformer_blocks = [QwenImage21TransformerBlock(dim, c.num_attention_heads, c.attention_head_dim, c.mlp_ratio, c.eps)
                                   for _ in range(c.num_layers)]
        self.norm_out = NormOut(dim, c.eps)
        self.proj_out = nn.Linear(dim, c.out_channels, bias=False)

    @property
    def dtype(self):
        return self.proj_out.weight.dtype

    def rope(self, text: int, h: int, w: int):
        key = (text, h, w)
        cached = getattr(self, "_rope_cache", None)
        if cached is None or cached[0] != key:  # the same every sampling step: built once
            cached = (key, rope_tables(positions(text, h, w), self.cfg.axes_dims_rope))
            object.__setattr__(self, "_rope_cache", cached)
        return cached[1]

    def __call__(self, hidden_states, encoder_hidden_states, timestep, img_shapes, img_mask, encoder_hidden_states_mask=None):
        dt = self.dtype
        b, n = hidden_states.shape[:2]
        text = encoder_hidden_states.shape[1]
        slots = img_mask[0] if isinstance(img_mask, mx.array) else mx.array(img_mask)[0]
        if int(slots[:text].astype(mx.int32).sum().item()) or int(slots.astype(mx.int32).sum().item()) * SLOT != n or len(img_shapes[0]) != 1:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, "condition images in a Qwen-Image 2.1 call: the MLX port draws "
                                   "from text only. Use engine 'torch'.")
        _, h, w = (int(v) for v in img_shapes[0][-1])
        x = mx.concatenate([self.txt_in(encoder_hidden_states.astype(dt)), self.img_in(hidden_states.astype(dt))], axis=1)
        s = text + n
        target = mx.arange(s) >= text
        t = batch_vector(timestep, b).astype(dt)
        if self.cfg.causal_condition:
            t = mx.concatenate([t, mx.zeros((1,), dtype=dt)])
        temb = self.time_text_embed(t, dt)
        mods = [_rows(p, target, self.cfg.causal_condition) for p in mx.split(self.modulation[1](nn.silu(temb)), 4, axis=-1)]
        # block-causal: text queries see the text up to themselves, image queries everything; padded text keys nothing
        qi, kj = mx.arange(s)[:, None], mx.arange(s)[None, :]
        allowed = (kj <= qi) | (qi >= text)
        if encoder_hidden_states_mask is not None:
            keep = mx.concatenate([encoder_hidden_states_mask.astype(mx.bool_), mx.ones((b, n), dtype=mx.bool_)], axis=1)
            allowed = allowed[None] & keep[:, None, :]
        else:
            allowed = allowed[None]
        mask = mx.where(allowed, 0.0, -1e9).astype(dt)[:, None]
        rope = self.rope(text, h, w)
        for block in self.transformer_blocks:
            x = block(x, mods, rope, mask)
            block_done(x)
        scale = _rows(self.norm_out.linear(nn.silu(temb)), target, self.cfg.causal_condition)
        return self.proj_out(layer_norm(x, self.cfg.eps) * (1 + scale))


def map_weights(sd: dict) -> dict:
    """diffusers ``QwenImage21Transformer2DModel`` names -> this port's: the same names (``modulation.1`` included)."""
    return dict(sd)


__all__ = ["QwenImage21Transformer2DModel", "QwenImage21Config", "map_weights", "positions"]
