"""Krea 2 on MLX, a port of diffusers' ``Krea2Transformer2DModel`` (the 12.8B single-stream DiT of Krea 2 Raw / Turbo).

Input is the 2x2-packed latent ``(B, N, 64)`` and a stack of tapped text-encoder hidden states per token
``(B, L, num_text_layers, text_dim)`` with its keep-mask, as the diffusers forward takes them. The text is fused
first: ``layerwise_blocks`` attend across the stack of each token, a bias-free ``projector`` collapses it, and
``refiner_blocks`` attend across the tokens (masked). Then one sequence ``[text, image]`` runs through
``num_layers`` blocks: zero-centred RMS norms (``1 + weight``, in float32), grouped-query attention with q/k norms,
rotary positions on (t, row, col) (text at the origin) and a sigmoid output gate, a SwiGLU MLP; every block is
modulated by one shared timestep vector plus its own learned ``scale_shift_table``. The timestep is sigma (its
sinusoid, cos first, of 1000 sigma).

Parameter paths are diffusers' own, so :func:`map_weights` is the identity (krea's original names are converted to
them by diffusers' single-file converter before they get here).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from .layers import apply_rope, batch_vector, block_done, gelu_tanh, keep_mask_to_bias, merge_heads, rope_tables, split_heads, timestep_embedding


@dataclass(frozen=True)
class Krea2Config:
    in_channels: int = 64
    num_layers: int = 28
    attention_head_dim: int = 128
    num_attention_heads: int = 48
    num_key_value_heads: int = 12
    intermediate_size: int = 16384
    timestep_embed_dim: int = 256
    text_hidden_dim: int = 2560
    num_text_layers: int = 12
    text_num_attention_heads: int = 20
    text_num_key_value_heads: int = 20
    text_intermediate_size: int = 6912
    num_layerwise_text_blocks: int = 2
    num_refiner_text_blocks: int = 2
    axes_dims_rope: tuple = (32, 48, 48)
    rope_theta: float = 1000.0
    norm_eps: float = 1e-5

    @classmethod
    def from_dict(cls, c: dict) -> "Krea2Config":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in c.items()
                      if k in cls.__dataclass_fields__ and v is not None})

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


class Norm(nn.Module):
    """``Krea2RMSNorm``: RMS norm with a zero-centred scale (``1 + weight``), in float32, cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dim,))
        self.eps = eps

    def __call__(self, x):
        return mx.fast.rms_norm(x.astype(mx.float32), 1.0 + self.weight.astype(mx.float32), self.eps).astype(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention, q/k norms, optional rotary positions, a sigmoid gate on the output."""

    def __init__(self, dim: int, heads: int, kv_heads: int, eps: float):
        super().__init__()
        head_dim = dim // heads
        self.heads, self.kv_heads = heads, kv_heads
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_k = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.to_v = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.to_gate = nn.Linear(dim, dim, bias=False)
        self.norm_q = Norm(head_dim, eps)
        self.norm_k = Norm(head_dim, eps)
        self.to_out = [nn.Linear(dim, dim, bias=False), nn.Identity()]

    def __call__(self, x, mask=None, rope=None):
        q = self.norm_q(split_heads(self.to_q(x), self.heads))
        k = self.norm_k(split_heads(self.to_k(x), self.kv_heads))
        v = split_heads(self.to_v(x), self.kv_heads)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask=mask)
        return self.to_out[0](merge_heads(out).astype(x.dtype) * mx.sigmoid(self.to_gate(x)))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x):
        return self.down(nn.silu(self.gate(x)) * self.up(x))


class TextFusionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int, eps: float):
        super().__init__()
        self.norm1, self.norm2 = Norm(dim, eps), Norm(dim, eps)
        self.attn = Attention(dim, heads, kv_heads, eps)
        self.ff = SwiGLU(dim, hidden)

    def __call__(self, x, mask=None):
        x = x + self.attn(self.norm1(x), mask)
        return x + self.ff(self.norm2(x))


class TextFusion(nn.Module):
    """The tapped hidden states ``(B, L, layers, D)`` -> one text sequence ``(B, L, D)``."""

    def __init__(self, c: Krea2Config):
        super().__init__()
        args = (c.text_hidden_dim, c.text_num_attention_heads, c.text_num_key_value_heads, c.text_intermediate_size, c.norm_eps)
        self.layerwise_blocks = [TextFusionBlock(*args) for _ in range(c.num_layerwise_text_blocks)]
        self.projector = nn.Linear(c.num_text_layers, 1, bias=False)
        self.refiner_blocks = [TextFusionBlock(*args) for _ in range(c.num_refiner_text_blocks)]

    def __call__(self, x, mask=None):
        b, n, layers, d = x.shape
        x = x.reshape(b * n, layers, d)
        for block in self.layerwise_blocks:
            x = block(x)
        x = self.projector(x.reshape(b, n, layers, d).transpose(0, 1, 3, 2))[..., 0]
        for block in self.refiner_blocks:
            x = block(x, mask)
        return x


class Krea2TransformerBlock(nn.Module):
    def __init__(self, c: Krea2Config):
        super().__init__()
        self.scale_shift_table = mx.zeros((6, c.dim))
        self.norm1, self.norm2 = Norm(c.dim, c.norm_eps), Norm(c.dim, c.norm_eps)
        self.attn = Attention(c.dim, c.num_attention_heads, c.num_key_value_heads, c.norm_eps)
        self.ff = SwiGLU(c.dim, c.intermediate_size)

    def __call__(self, x, temb, rope, mask):
        b = temb.shape[0]
        mod = temb.reshape(b, 1, 6, -1) + self.scale_shift_table
        prescale, preshift, pregate, postscale, postshift, postgate = (mod[:, :, i] for i in range(6))
        x = x + pregate * self.attn((1.0 + prescale) * self.norm1(x) + preshift, mask, rope)
        return x + postgate * self.ff((1.0 + postscale) * self.norm2(x) + postshift)


class TimeEmbed(nn.Module):
    """``Krea2TimestepEmbedding``: the sinusoid (cos first) of 1000 sigma, then Linear, tanh-GELU, Linear; ``(B, 1, D)``."""

    def __init__(self, embed_dim: int, dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.linear_1 = nn.Linear(embed_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, t, dtype):
        emb = timestep_embedding(t, self.embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0.0, scale=1000.0)
        return self.linear_2(gelu_tanh(self.linear_1(emb.astype(dtype))))[:, None]


class TextProjection(nn.Module):
    def __init__(self, text_dim: int, dim: int, eps: float):
        super().__init__()
        self.norm = Norm(text_dim, eps)
        self.linear_1 = nn.Linear(text_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, x):
        return self.linear_2(gelu_tanh(self.linear_1(self.norm(x))))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int, eps: float):
        super().__init__()
        self.scale_shift_table = mx.zeros((2, dim))
        self.norm = Norm(dim, eps)
        self.linear = nn.Linear(dim, out)

    def __call__(self, x, temb):
        mod = temb + self.scale_shift_table
        return self.linear((1.0 + mod[:, 0:1]) * self.norm(x) + mod[:, 1:2])


class Krea2Transformer2DModel(nn.Module):
    """``__call__(hidden_states (B,N,in) packed, encoder_hidden_states (B,L,layers,text_dim), timestep (B,) sigma,
    position_ids (L+N, 3), encoder_attention_mask (B,L) or None)`` -> ``(B, N, in)``."""

    def __init__(self, config: dict):
        super().__init__()
        object.__setattr__(self, "config", dict(config))
        c = Krea2Config.from_dict(config)
        object.__setattr__(self, "cfg", c)
        if sum(c.axes_dims_rope) != c.attention_head_dim:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"a Krea 2 config whose axes_dims_rope {c.axes_dims_rope} do not add up "
                                   f"to the head dimension {c.attention_head_dim}. Check the model file, or load it with engine 'torch'.")
        self.img_in = nn.Linear(c.in_channels, c.dim)
        self.time_embed = TimeEmbed(c.timestep_embed_dim, c.dim)
        self.time_mod_proj = nn.Linear(c.dim, 6 * c.dim)
        self.text_fusion = TextFusion(c)
        self.txt_in = TextProjection(c.text_hidden_dim, c.dim, c.norm_eps)
        self.transformer_blocks = [Krea2TransformerBlock(c) for _ in range(c.num_layers)]
        self.final_layer = FinalLayer(c.dim, c.in_channels, c.norm_eps)

    @property
    def dtype(self):
        return self.img_in.weight.dtype

    def rope(self, position_ids):
        ids = np.asarray(position_ids, dtype=np.float64)
        cached = getattr(self, "_rope_cache", None)
        if cached is None or cached[0].shape != ids.shape or not np.array_equal(cached[0], ids):  # the same every step
            cached = (ids, rope_tables(ids, self.cfg.axes_dims_rope, self.cfg.rope_theta))
            object.__setattr__(self, "_rope_cache", cached)
        return cached[1]

    def __call__(self, hidden_states, encoder_hidden_states, timestep, position_ids, encoder_attention_mask=None):
        dt = self.dtype
        b, n = hidden_states.shape[:2]
        text = encoder_hidden_states.shape[1]
        temb = self.time_embed(batch_vector(timestep, b), dt)
        temb_mod = self.time_mod_proj(gelu_tanh(temb))
        text_mask = mask = None
        if encoder_attention_mask is not None:
            keep = encoder_attention_mask.astype(mx.float32)
            text_mask = keep_mask_to_bias(keep, dt)
            mask = keep_mask_to_bias(mx.concatenate([keep, mx.ones((b, n))], axis=1), dt)
        context = self.txt_in(self.text_fusion(encoder_hidden_states.astype(dt), text_mask))
        x = mx.concatenate([context, self.img_in(hidden_states.astype(dt))], axis=1)
        rope = self.rope(position_ids)
        for block in self.transformer_blocks:
            x = block(x, temb_mod, rope, mask)
            block_done(x)
        return self.final_layer(x[:, text:], temb)


def map_weights(sd: dict) -> dict:
    """diffusers ``Krea2Transformer2DModel`` names -> this port's: the same names."""
    return dict(sd)


__all__ = ["Krea2Transformer2DModel", "Krea2Config", "map_weights"]
