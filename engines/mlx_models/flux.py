"""Flux.1 (dev, schnell, Fill) on MLX, a port of diffusers' ``FluxTransformer2DModel``.

Input is the *packed* latent ``(B, N, in_channels)`` (2x2 patches flattened by the engine, plus
the Fill mask/image channels), exactly what the diffusers forward takes. Positions are 3-axis
rotary embeddings built from ``txt_ids``/``img_ids`` (``axes_dims_rope`` split of the head
dimension, theta 10000, frequencies in float64 like diffusers, applied in float32). The
network is ``num_layers`` double-stream blocks (separate image/text weights, one joint attention
over ``[text, image]`` with RMS q/k norms) followed by ``num_single_layers`` single-stream blocks
(one fused attention + MLP branch on the concatenated sequence), then ``norm_out``/``proj_out``.
Timesteps and the guidance scale are multiplied by 1000 inside, as diffusers does.

Parameter paths are diffusers' own, so :func:`map_weights` is the identity.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...errors import BAD_INPUT, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from .layers import (AttentionProjections, RMSNorm, apply_rope, batch_vector, block_done, gelu_tanh, layer_norm, merge_heads,
                     rope_tables, sdpa_heads, split_heads)
from .sd3 import AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle, CombinedTimestepTextProjEmbeddings, FeedForward


# --------------------------------------------------------------------------- attention and blocks
class FluxAttention(AttentionProjections):
    """diffusers ``FluxAttention``: RMS q/k norms always; ``joint`` adds the text projections
    (``add_*_proj``, ``norm_added_*``, ``to_add_out``); ``pre_only`` (single blocks) has no ``to_out``."""

    def __init__(self, dim: int, heads: int, head_dim: int, joint: bool, pre_only: bool = False, eps: float = 1e-6):
        super().__init__(dim, heads, head_dim, out=not pre_only)
        inner = heads * head_dim
        self.norm_q = RMSNorm(head_dim, eps=eps)
        self.norm_k = RMSNorm(head_dim, eps=eps)
        self.pre_only = pre_only
        self.joint = joint
        if joint:
            self.norm_added_q = RMSNorm(head_dim, eps=eps)
            self.norm_added_k = RMSNorm(head_dim, eps=eps)
            self.add_q_proj = nn.Linear(dim, inner)
            self.add_k_proj = nn.Linear(dim, inner)
            self.add_v_proj = nn.Linear(dim, inner)
            self.to_add_out = nn.Linear(inner, dim)

    def __call__(self, x, rope, context=None):
        h = self.heads
        q = self.norm_q(split_heads(self.to_q(x), h))
        k = self.norm_k(split_heads(self.to_k(x), h))
        v = split_heads(self.to_v(x), h)
        m = 0
        if context is not None:
            m = context.shape[1]
            cq = self.norm_added_q(split_heads(self.add_q_proj(context), h))
            ck = self.norm_added_k(split_heads(self.add_k_proj(context), h))
            cv = split_heads(self.add_v_proj(context), h)
            q, k, v = (mx.concatenate([cq, q], axis=2), mx.concatenate([ck, k], axis=2), mx.concatenate([cv, v], axis=2))
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = merge_heads(sdpa_heads(q, k, v)).astype(x.dtype)
        if context is None:
            return out
        return self.to_out[0](out[:, m:]), self.to_add_out(out[:, :m])


def _ln(x):
    return layer_norm(x, 1e-6)


class FluxTransformerBlock(nn.Module):
    """Double-stream block: adaLN-Zero on both streams, joint attention, a feed-forward per stream."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = FluxAttention(dim, heads, head_dim, joint=True)
        self.ff = FeedForward(dim, dim)
        self.ff_context = FeedForward(dim, dim)

    def __call__(self, x, context, temb, rope):
        nx, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb)
        nc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(context, temb)
        attn, cattn = self.attn(nx, rope, nc)
        x = x + gate_msa[:, None] * attn
        x = x + gate_mlp[:, None] * self.ff(_ln(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])
        context = context + c_gate_msa[:, None] * cattn
        context = context + c_gate_mlp[:, None] * self.ff_context(_ln(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None])
        if context.dtype == mx.float16:
            context = mx.clip(context, -65504, 65504)
        return context, x


class FluxSingleTransformerBlock(nn.Module):
    """Single-stream block on ``[text, image]``: attention and a tanh-GELU MLP side by side, then ``proj_out``."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, hidden)
        self.proj_out = nn.Linear(dim + hidden, dim)
        self.attn = FluxAttention(dim, heads, head_dim, joint=False, pre_only=True)

    def __call__(self, x, context, temb, rope):
        m = context.shape[1]
        hs = mx.concatenate([context, x], axis=1)
        n, gate = self.norm(hs, temb)
        mlp = gelu_tanh(self.proj_mlp(n))
        attn = self.attn(n, rope)
        hs = hs + gate[:, None] * self.proj_out(mx.concatenate([attn, mlp], axis=2))
        if hs.dtype == mx.float16:
            hs = mx.clip(hs, -65504, 65504)
        return hs[:, :m], hs[:, m:]


# --------------------------------------------------------------------------- model
def _host(ids):
    """Position ids (mx of any float dtype, numpy or a list) as a float64 numpy array."""
    if isinstance(ids, mx.array):
        ids = np.array(ids.astype(mx.float32))
    return np.asarray(ids, dtype=np.float64)


class FluxTransformer2DModel(nn.Module):
    """Flux.1. ``__call__(hidden_states (B,N,C) packed, encoder_hidden_states, pooled_projections, timestep,
    img_ids (N,3), txt_ids (M,3), guidance=None)`` -> ``(B, N, out)``."""

    def __init__(self, config: dict):
        super().__init__()
        c = dict(config)
        object.__setattr__(self, "config", c)  # plain attribute, not a parameter tree
        heads = int(c.get("num_attention_heads", 24))
        head_dim = int(c.get("attention_head_dim", 128))
        dim = heads * head_dim
        patch = int(c.get("patch_size", 1))
        in_ch = int(c.get("in_channels", 64))
        self.out_channels = int(c.get("out_channels") or in_ch)
        self.guidance_embeds = bool(c.get("guidance_embeds", False))
        self.axes_dims_rope = tuple(int(a) for a in (c.get("axes_dims_rope") or (16, 56, 56)))
        if sum(self.axes_dims_rope) != head_dim:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"a Flux config whose axes_dims_rope {self.axes_dims_rope} do not add up "
                                   f"to the head dimension {head_dim}. Check the model file, or load it with engine 'torch'.")
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(dim, int(c.get("pooled_projection_dim", 768)),
                                                                  guidance=self.guidance_embeds)
        self.context_embedder = nn.Linear(int(c.get("joint_attention_dim", 4096)), dim)
        self.x_embedder = nn.Linear(in_ch, dim)
        self.transformer_blocks = [FluxTransformerBlock(dim, heads, head_dim) for _ in range(int(c.get("num_layers", 19)))]
        self.single_transformer_blocks = [FluxSingleTransformerBlock(dim, heads, head_dim)
                                          for _ in range(int(c.get("num_single_layers", 38)))]
        self.norm_out = AdaLayerNormContinuous(dim, dim)
        self.proj_out = nn.Linear(dim, patch * patch * self.out_channels)

    @property
    def dtype(self):
        return getattr(self.proj_out, "scales", self.proj_out.weight).dtype  # MLX-quantized: its scales

    def rope(self, txt_ids, img_ids):
        """The rotary tables for the joint ``[text, image]`` sequence."""
        t, i = _host(txt_ids), _host(img_ids)
        t = t[0] if t.ndim == 3 else t
        i = i[0] if i.ndim == 3 else i
        ids = np.ascontiguousarray(np.concatenate([t, i], axis=0))
        key = (ids.shape, ids.tobytes())
        cached = getattr(self, "_rope_cache", None)
        if cached is None or cached[0] != key:  # the same ids every sampling step: build the tables once
            cached = (key, rope_tables(ids, self.axes_dims_rope))
            object.__setattr__(self, "_rope_cache", cached)
        return cached[1]

    def __call__(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance=None):
        dt = self.dtype
        b = hidden_states.shape[0]
        x = self.x_embedder(hidden_states.astype(dt))
        t = batch_vector(timestep, b).astype(x.dtype) * 1000
        g = None
        if self.guidance_embeds:
            if guidance is None:
                raise SpriteForgeError(BAD_INPUT, "this Flux model embeds a guidance scale (Flux dev) but none was given. "
                                       "Pass guidance (e.g. 3.5).")
            g = batch_vector(guidance, b).astype(x.dtype) * 1000
        temb = self.time_text_embed(t, pooled_projections.astype(dt), g)
        context = self.context_embedder(encoder_hidden_states.astype(dt))
        rope = self.rope(txt_ids, img_ids)
        if rope[0].shape[0] != context.shape[1] + x.shape[1]:
            raise SpriteForgeError(BAD_INPUT, f"Flux got {rope[0].shape[0]} position ids for {context.shape[1]} text + {x.shape[1]} "
                                   "image tokens. Build txt_ids/img_ids for the same prompt length and latent size.")
        for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
            context, x = block(x, context, temb, rope)
            block_done(context, x)
        return self.proj_out(self.norm_out(x, temb))


def map_weights(sd: dict) -> dict:
    """diffusers ``FluxTransformer2DModel`` names -> this port's: the same names."""
    return dict(sd)
