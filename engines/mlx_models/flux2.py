"""FLUX.2 ([klein] 4B/9B, [dev]) on MLX, a port of diffusers' ``Flux2Transformer2DModel``.

Input is one token a latent pixel ``(B, N, in_channels)`` (the VAE's latents come patchified 2x2, 128 channels),
exactly what the diffusers forward takes. Positions are 4-axis rotary embeddings (time, row, column, sequence;
``axes_dims_rope``, theta 2000) built from ``img_ids`` / ``txt_ids``. Unlike Flux.1, the modulation is global:
one timestep (+ [dev]'s guidance) embedding drives three shared modulations (double-stream image, double-stream
text, single-stream), computed once per call and read by every block. ``num_layers`` double-stream blocks
(separate image/text weights, joint attention over ``[text, image]``, SwiGLU feed-forwards), then
``num_single_layers`` single-stream blocks (one fused projection ``to_qkv_mlp_proj`` feeding attention and a
SwiGLU side by side, one fused ``to_out``), then ``norm_out`` / ``proj_out``. No biases anywhere. Timestep and
guidance are multiplied by 1000 inside, as diffusers does.

Parameter paths are diffusers' own, so :func:`map_weights` is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...errors import BAD_INPUT, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from .layers import (RMSNorm, TimestepEmbedding, apply_rope, batch_vector, block_done, layer_norm, merge_heads, rope_tables,
                     sdpa_heads, split_heads, timestep_embedding)


@dataclass(frozen=True)
class Flux2Config:
    """The fields of diffusers' ``Flux2Transformer2DModel`` config this port reads."""

    in_channels: int = 128
    out_channels: int | None = None
    num_layers: int = 8
    num_single_layers: int = 48
    attention_head_dim: int = 128
    num_attention_heads: int = 48
    joint_attention_dim: int = 15360
    timestep_guidance_channels: int = 256
    mlp_ratio: float = 3.0
    axes_dims_rope: tuple = (32, 32, 32, 32)
    rope_theta: float = 2000.0
    eps: float = 1e-6
    guidance_embeds: bool = True
    patch_size: int = 1

    @classmethod
    def from_dict(cls, c: dict) -> "Flux2Config":
        fields = {k: c[k] for k in cls.__dataclass_fields__ if c.get(k) is not None}
        if "axes_dims_rope" in fields:
            fields["axes_dims_rope"] = tuple(int(a) for a in fields["axes_dims_rope"])
        return cls(**fields)

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)


def swiglu(x):
    """diffusers ``Flux2SwiGLU``: the first half gated by SiLU, times the second half."""
    a, b = mx.split(x, 2, axis=-1)
    return nn.silu(a) * b


def modulate(x, shift, scale, eps):
    """LayerNorm without affine, then ``(1 + scale) * x + shift`` (``shift``/``scale`` ``(B, D)``)."""
    return (1 + scale[:, None]) * layer_norm(x, eps) + shift[:, None]


class Modulation(nn.Module):
    """diffusers ``Flux2Modulation``: ``linear(silu(temb))`` cut into ``sets`` triples of (shift, scale, gate)."""

    def __init__(self, dim: int, sets: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim * 3 * sets, bias=False)
        self.sets = sets

    def __call__(self, temb):
        parts = mx.split(self.linear(nn.silu(temb)), 3 * self.sets, axis=-1)
        return [tuple(parts[3 * i: 3 * i + 3]) for i in range(self.sets)]


class FeedForward(nn.Module):
    """diffusers ``Flux2FeedForward``: ``linear_in`` (gate and value in one matrix), SwiGLU, ``linear_out``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x):
        return self.linear_out(swiglu(self.linear_in(x)))


class JointAttention(nn.Module):
    """diffusers ``Flux2Attention``: q/k/v for the image and ``add_*_proj`` for the text, RMS q/k norms per stream,
    one attention over ``[text, image]`` with rotary positions, ``to_out.0`` / ``to_add_out``."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, inner, bias=False) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, inner, bias=False) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(head_dim, eps), RMSNorm(head_dim, eps)
        self.norm_added_q, self.norm_added_k = RMSNorm(head_dim, eps), RMSNorm(head_dim, eps)
        self.to_out = [nn.Linear(inner, dim, bias=False), nn.Identity()]
        self.to_add_out = nn.Linear(inner, dim, bias=False)

    def __call__(self, x, context, rope):
        h, m = self.heads, context.shape[1]
        q = mx.concatenate([self.norm_added_q(split_heads(self.add_q_proj(context), h)), self.norm_q(split_heads(self.to_q(x), h))], axis=2)
        k = mx.concatenate([self.norm_added_k(split_heads(self.add_k_proj(context), h)), self.norm_k(split_heads(self.to_k(x), h))], axis=2)
        v = mx.concatenate([split_heads(self.add_v_proj(context), h), split_heads(self.to_v(x), h)], axis=2)
        cos, sin = rope
        out = merge_heads(sdpa_heads(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)).astype(x.dtype)
        return self.to_out[0](out[:, m:]), self.to_add_out(out[:, :m])


class ParallelSelfAttention(nn.Module):
    """diffusers ``Flux2ParallelSelfAttention``: one projection to q, k, v and the SwiGLU input; attention and
    SwiGLU side by side; one ``to_out`` over both."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_hidden: int, eps: float):
        super().__init__()
        self.heads, self.inner = heads, heads * head_dim
        self.to_qkv_mlp_proj = nn.Linear(dim, 3 * self.inner + 2 * mlp_hidden, bias=False)
        self.norm_q, self.norm_k = RMSNorm(head_dim, eps), RMSNorm(head_dim, eps)
        self.to_out = nn.Linear(self.inner + mlp_hidden, dim, bias=False)

    def __call__(self, x, rope):
        h, n = self.heads, self.inner
        proj = self.to_qkv_mlp_proj(x)
        q, k, v, mlp = proj[..., :n], proj[..., n:2 * n], proj[..., 2 * n:3 * n], proj[..., 3 * n:]
        cos, sin = rope
        q, k = apply_rope(self.norm_q(split_heads(q, h)), cos, sin), apply_rope(self.norm_k(split_heads(k, h)), cos, sin)
        out = merge_heads(sdpa_heads(q, k, split_heads(v, h))).astype(x.dtype)
        return self.to_out(mx.concatenate([out, swiglu(mlp)], axis=-1))


class TransformerBlock(nn.Module):
    """Double-stream block, modulated by the shared image and text modulations."""

    def __init__(self, c: Flux2Config):
        super().__init__()
        self.eps = c.eps
        self.attn = JointAttention(c.dim, c.num_attention_heads, c.attention_head_dim, c.eps)
        self.ff = FeedForward(c.dim, c.mlp_hidden)
        self.ff_context = FeedForward(c.dim, c.mlp_hidden)

    def __call__(self, x, context, mod_img, mod_txt, rope):
        (shift, scale, gate), (shift2, scale2, gate2) = mod_img
        (c_shift, c_scale, c_gate), (c_shift2, c_scale2, c_gate2) = mod_txt
        attn, cattn = self.attn(modulate(x, shift, scale, self.eps), modulate(context, c_shift, c_scale, self.eps), rope)
        x = x + gate[:, None] * attn
        x = x + gate2[:, None] * self.ff(modulate(x, shift2, scale2, self.eps))
        context = context + c_gate[:, None] * cattn
        context = context + c_gate2[:, None] * self.ff_context(modulate(context, c_shift2, c_scale2, self.eps))
        if context.dtype == mx.float16:
            context = mx.clip(context, -65504, 65504)
        return context, x


class SingleTransformerBlock(nn.Module):
    """Single-stream block on ``[text, image]``, modulated by the shared single-stream modulation."""

    def __init__(self, c: Flux2Config):
        super().__init__()
        self.eps = c.eps
        self.attn = ParallelSelfAttention(c.dim, c.num_attention_heads, c.attention_head_dim, c.mlp_hidden, c.eps)

    def __call__(self, hs, mod, rope):
        (shift, scale, gate), = mod
        hs = hs + gate[:, None] * self.attn(modulate(hs, shift, scale, self.eps), rope)
        if hs.dtype == mx.float16:
            hs = mx.clip(hs, -65504, 65504)
        return hs


class TimestepGuidanceEmbeddings(nn.Module):
    """diffusers ``Flux2TimestepGuidanceEmbeddings``: sinusoidal features (cos first), bias-free MLPs, summed."""

    def __init__(self, channels: int, dim: int, guidance: bool):
        super().__init__()
        self.channels = channels
        self.timestep_embedder = TimestepEmbedding(channels, dim, bias=False)
        if guidance:
            self.guidance_embedder = TimestepEmbedding(channels, dim, bias=False)

    def _proj(self, t):
        return timestep_embedding(t, self.channels, flip_sin_to_cos=True, downscale_freq_shift=0).astype(t.dtype)

    def __call__(self, t, g=None):
        emb = self.timestep_embedder(self._proj(t))
        if g is not None and "guidance_embedder" in self:
            emb = emb + self.guidance_embedder(self._proj(g))
        return emb


class NormOut(nn.Module):
    """diffusers ``AdaLayerNormContinuous`` as FLUX.2 has it (no affine, bias-free linear): *scale* first, then shift."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim, bias=False)
        self.eps = eps

    def __call__(self, x, temb):
        scale, shift = mx.split(self.linear(nn.silu(temb).astype(x.dtype)), 2, axis=1)
        return layer_norm(x, self.eps) * (1 + scale[:, None]) + shift[:, None]


def _host(ids):
    """Position ids (mx, numpy or a list; the batched 3-D form: its first item, as diffusers) as float64 numpy."""
    if isinstance(ids, mx.array):
        ids = np.array(ids.astype(mx.float32))
    a = np.asarray(ids, dtype=np.float64)
    return a[0] if a.ndim == 3 else a


class Flux2Transformer2DModel(nn.Module):
    """FLUX.2. ``__call__(hidden_states (B,N,C), encoder_hidden_states (B,M,joint), timestep (B,), img_ids (N,4),
    txt_ids (M,4), guidance=None)`` -> ``(B, N, out)``."""

    def __init__(self, config: dict):
        super().__init__()
        c = Flux2Config.from_dict(dict(config))
        object.__setattr__(self, "config", dict(config))  # plain attribute, not a parameter tree
        object.__setattr__(self, "cfg", c)
        if sum(c.axes_dims_rope) != c.attention_head_dim:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"a FLUX.2 config whose axes_dims_rope {c.axes_dims_rope} do not add "
                                   f"up to the head dimension {c.attention_head_dim}. Check the model file, or load it with engine 'torch'.")
        dim = c.dim
        self.time_guidance_embed = TimestepGuidanceEmbeddings(c.timestep_guidance_channels, dim, c.guidance_embeds)
        self.double_stream_modulation_img = Modulation(dim, 2)
        self.double_stream_modulation_txt = Modulation(dim, 2)
        self.single_stream_modulation = Modulation(dim, 1)
        self.x_embedder = nn.Linear(c.in_channels, dim, bias=False)
        self.context_embedder = nn.Linear(c.joint_attention_dim, dim, bias=False)
        self.transformer_blocks = [TransformerBlock(c) for _ in range(c.num_layers)]
        self.single_transformer_blocks = [SingleTransformerBlock(c) for _ in range(c.num_single_layers)]
        self.norm_out = NormOut(dim, c.eps)
        self.proj_out = nn.Linear(dim, c.patch_size ** 2 * (c.out_channels or c.in_channels), bias=False)

    @property
    def dtype(self):
        return self.proj_out.weight.dtype

    def rope(self, txt_ids, img_ids):
        """The rotary tables for the joint ``[text, image]`` sequence (built once for the same ids)."""
        ids = np.ascontiguousarray(np.concatenate([_host(txt_ids), _host(img_ids)], axis=0))
        key = (ids.shape, ids.tobytes())
        cached = getattr(self, "_rope_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, rope_tables(ids, self.cfg.axes_dims_rope, self.cfg.rope_theta))
            object.__setattr__(self, "_rope_cache", cached)
        return cached[1]

    def __call__(self, hidden_states, encoder_hidden_states, timestep, img_ids, txt_ids, guidance=None):
        dt = self.dtype
        b = hidden_states.shape[0]
        t = batch_vector(timestep, b).astype(dt) * 1000
        g = None
        if self.cfg.guidance_embeds:
            if guidance is None:
                raise SpriteForgeError(BAD_INPUT, "this FLUX.2 model embeds a guidance scale ([dev]) but none was given. Pass guidance (e.g. 4.0).")
            g = batch_vector(guidance, b).astype(dt) * 1000
        temb = self.time_guidance_embed(t, g)
        mod_img = self.double_stream_modulation_img(temb)
        mod_txt = self.double_stream_modulation_txt(temb)
        mod_single = self.single_stream_modulation(temb)
        x = self.x_embedder(hidden_states.astype(dt))
        context = self.context_embedder(encoder_hidden_states.astype(dt))
        rope = self.rope(txt_ids, img_ids)
        m = context.shape[1]
        if rope[0].shape[0] != m + x.shape[1]:
            raise SpriteForgeError(BAD_INPUT, f"FLUX.2 got {rope[0].shape[0]} position ids for {m} text + {x.shape[1]} image tokens. "
                                   "Build txt_ids/img_ids for the same prompt length and latent size.")
        for block in self.transformer_blocks:
            context, x = block(x, context, mod_img, mod_txt, rope)
            block_done(context, x)
        hs = mx.concatenate([context, x], axis=1)
        for block in self.single_transformer_blocks:
            hs = block(hs, mod_single, rope)
            block_done(hs)
        return self.proj_out(self.norm_out(hs[:, m:], temb))


def map_weights(sd: dict) -> dict:
    """diffusers ``Flux2Transformer2DModel`` names -> this port's: the same names."""
    return dict(sd)


__all__ = ["Flux2Config", "Flux2Transformer2DModel", "map_weights"]
