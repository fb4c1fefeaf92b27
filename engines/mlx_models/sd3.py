"""Stable Diffusion 3 / 3.5 MMDiT on MLX, a port of diffusers' ``SD3Transformer2DModel``.

The image tokens (patchified latents plus a centre crop of a learned sin-cos table) and the
caption tokens run through joint blocks: each stream has its own adaLN-Zero modulation,
projections and MLP, and both attend together in one attention over ``[image, caption]``.
SD3.5 adds RMS q/k norms (``qk_norm="rms_norm"``); SD3.5 Medium adds, in its first
``dual_attention_layers``, a second self-attention on the image stream only (``attn2``,
modulated by the extra three chunks of ``SD35AdaLayerNormZeroX``). The last block is
"context pre-only": the caption stream only feeds keys/values there and is then dropped.

Parameter paths are diffusers' own (``transformer_blocks.0.attn.add_q_proj.weight``), so
:func:`map_weights` only turns the patch-embedding kernel into MLX's OHWI layout.

The building blocks shared with Flux (adaLN variants, the feed-forward, the combined
timestep + pooled-text embedding) live here too; ``flux.py`` imports them.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...errors import DIMENSION_LIMIT, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from .layers import (AttentionProjections, Conv2d, RMSNorm, TimestepEmbedding, batch_vector, block_done, gelu_tanh, layer_norm, map_names,
                     merge_heads, sdpa_heads, sincos_2d, split_heads, timestep_embedding)


# --------------------------------------------------------------------------- shared blocks
class Identity(nn.Module):
    """A parameterless slot (diffusers' Dropout), so list indices read like the torch module."""

    def __call__(self, x):
        return x


class GeluProj(nn.Module):
    """diffusers ``GELU(approximate="tanh")``: ``proj`` then tanh-GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def __call__(self, x):
        return gelu_tanh(self.proj(x))


class FeedForward(nn.Module):
    """diffusers ``FeedForward(activation_fn="gelu-approximate")``: ``net.0.proj`` -> GELU -> ``net.2``."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4):
        super().__init__()
        inner = int(dim * mult)
        self.net = [GeluProj(dim, inner), Identity(), nn.Linear(inner, dim_out or dim)]

    def __call__(self, x):
        for layer in self.net:
            x = layer(x)
        return x


def _ln(x, eps: float = 1e-6):
    return layer_norm(x, eps)


class AdaLayerNormZero(nn.Module):
    """adaLN-Zero: ``linear(silu(emb))`` -> shift, scale, gate (attention) and shift, scale, gate (MLP)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)

    def __call__(self, x, emb):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mx.split(self.linear(nn.silu(emb)), 6, axis=1)
        x = _ln(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class SD35AdaLayerNormZeroX(nn.Module):
    """SD3.5's adaLN-Zero with nine chunks: the usual six plus shift, scale, gate for ``attn2``."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 9 * dim)

    def __call__(self, x, emb):
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
         shift_msa2, scale_msa2, gate_msa2) = mx.split(self.linear(nn.silu(emb)), 9, axis=1)
        n = _ln(x)
        x1 = n * (1 + scale_msa[:, None]) + shift_msa[:, None]
        x2 = n * (1 + scale_msa2[:, None]) + shift_msa2[:, None]
        return x1, gate_msa, shift_mlp, scale_mlp, gate_mlp, x2, gate_msa2


class AdaLayerNormZeroSingle(nn.Module):
    """Flux single-stream adaLN-Zero: shift, scale, gate."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 3 * dim)

    def __call__(self, x, emb):
        shift, scale, gate = mx.split(self.linear(nn.silu(emb)), 3, axis=1)
        return _ln(x) * (1 + scale[:, None]) + shift[:, None], gate


class AdaLayerNormContinuous(nn.Module):
    """diffusers ``AdaLayerNormContinuous`` (no affine, eps 1e-6). Note the order: *scale* first, then shift."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim)
        self.eps = eps

    def __call__(self, x, cond):
        scale, shift = mx.split(self.linear(nn.silu(cond).astype(x.dtype)), 2, axis=1)
        return _ln(x, self.eps) * (1 + scale[:, None]) + shift[:, None]


class CombinedTimestepTextProjEmbeddings(nn.Module):
    """Sinusoidal timestep (256 features, cos first, no shift) -> MLP, plus an MLP of the pooled text embedding.

    With ``guidance=True`` (Flux dev) a third MLP embeds the guidance scale the same way
    (diffusers' ``CombinedTimestepGuidanceTextProjEmbeddings``).
    """

    def __init__(self, dim: int, pooled_dim: int, guidance: bool = False):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)
        if guidance:
            self.guidance_embedder = TimestepEmbedding(256, dim)
        self.text_embedder = TimestepEmbedding(pooled_dim, dim)  # PixArtAlphaTextProjection(act_fn="silu"): same shape

    @staticmethod
    def _proj(t, dtype):
        return timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0).astype(dtype)

    def __call__(self, timestep, pooled, guidance=None):
        emb = self.timestep_embedder(self._proj(timestep, pooled.dtype))
        if guidance is not None and "guidance_embedder" in self:
            emb = emb + self.guidance_embedder(self._proj(guidance, pooled.dtype))
        return emb + self.text_embedder(pooled)


# --------------------------------------------------------------------------- SD3 attention and block
class JointAttention(AttentionProjections):
    """diffusers ``Attention`` with ``JointAttnProcessor2_0``: image (``to_*``) and optional caption
    (``add_*_proj``) projections, optional per-head RMS q/k norms, one attention over ``[image, caption]``.

    ``joint=False`` is the plain self-attention of SD3.5's ``attn2``; ``context_pre_only`` drops
    ``to_add_out`` (the caption output is not used after the last block).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, qk_norm: str | None, joint: bool, context_pre_only: bool = False):
        super().__init__(dim, heads, head_dim)
        inner = heads * head_dim
        self.qk = qk_norm is not None
        if qk_norm is not None and qk_norm != "rms_norm":
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE,
                                   f"the SD3 qk_norm {qk_norm!r} has no MLX port. Load the model with engine 'torch'.")
        if self.qk:
            self.norm_q = RMSNorm(head_dim, eps=1e-6)
            self.norm_k = RMSNorm(head_dim, eps=1e-6)
        self.joint = joint
        self.context_pre_only = context_pre_only
        if joint:
            self.add_q_proj = nn.Linear(dim, inner)
            self.add_k_proj = nn.Linear(dim, inner)
            self.add_v_proj = nn.Linear(dim, inner)
            if not context_pre_only:
                self.to_add_out = nn.Linear(inner, dim)
            if self.qk:
                self.norm_added_q = RMSNorm(head_dim, eps=1e-6)
                self.norm_added_k = RMSNorm(head_dim, eps=1e-6)

    def __call__(self, x, context=None):
        h = self.heads
        q, k, v = split_heads(self.to_q(x), h), split_heads(self.to_k(x), h), split_heads(self.to_v(x), h)
        if self.qk:
            q, k = self.norm_q(q), self.norm_k(k)
        n = x.shape[1]
        if context is not None:
            cq, ck, cv = (split_heads(self.add_q_proj(context), h), split_heads(self.add_k_proj(context), h),
                          split_heads(self.add_v_proj(context), h))
            if self.qk:
                cq, ck = self.norm_added_q(cq), self.norm_added_k(ck)
            q, k, v = (mx.concatenate([q, cq], axis=2), mx.concatenate([k, ck], axis=2), mx.concatenate([v, cv], axis=2))
        out = merge_heads(sdpa_heads(q, k, v)).astype(x.dtype)
        img = self.to_out[0](out[:, :n])
        if context is None:
            return img
        ctx = out[:, n:]
        return img, (None if self.context_pre_only else self.to_add_out(ctx))


class JointTransformerBlock(nn.Module):
    """diffusers ``JointTransformerBlock`` (MMDiT block), with SD3.5's dual attention when asked."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_pre_only: bool, qk_norm: str | None, dual: bool):
        super().__init__()
        self.dual = dual
        self.context_pre_only = context_pre_only
        self.norm1 = SD35AdaLayerNormZeroX(dim) if dual else AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormContinuous(dim, dim) if context_pre_only else AdaLayerNormZero(dim)
        self.attn = JointAttention(dim, heads, head_dim, qk_norm, joint=True, context_pre_only=context_pre_only)
        if dual:
            self.attn2 = JointAttention(dim, heads, head_dim, qk_norm, joint=False)
        self.ff = FeedForward(dim, dim)
        if not context_pre_only:
            self.ff_context = FeedForward(dim, dim)

    def __call__(self, x, context, temb):
        if self.dual:
            nx, gate_msa, shift_mlp, scale_mlp, gate_mlp, nx2, gate_msa2 = self.norm1(x, temb)
        else:
            nx, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb)
        if self.context_pre_only:
            nc = self.norm1_context(context, temb)
        else:
            nc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(context, temb)

        attn, cattn = self.attn(nx, nc)
        x = x + gate_msa[:, None] * attn
        if self.dual:
            x = x + gate_msa2[:, None] * self.attn2(nx2)
        x = x + gate_mlp[:, None] * self.ff(_ln(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])

        if self.context_pre_only:
            return None, x
        context = context + c_gate_msa[:, None] * cattn
        context = context + c_gate_mlp[:, None] * self.ff_context(_ln(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None])
        return context, x


class PatchEmbed(nn.Module):
    """Patchify conv plus the SD3 position table: a ``pos_embed_max_size``² sin-cos grid (saved with the
    weights) of which the centred ``h x w`` window is added; without a max size, a table of the input size."""

    def __init__(self, sample_size: int, patch_size: int, in_channels: int, dim: int, pos_embed_max_size: int | None):
        super().__init__()
        self.patch_size = patch_size
        self.proj = Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.max_size = pos_embed_max_size
        self._base = sample_size // patch_size
        self._dim = dim
        if pos_embed_max_size:
            m = int(pos_embed_max_size)
            self.pos_embed = mx.array(sincos_2d(dim, m, m, base_size=self._base))[None]

    def table(self, h: int, w: int):
        """The position embedding ``(1, h*w, dim)`` for an ``h x w`` patch grid."""
        if not self.max_size:
            return mx.array(sincos_2d(self._dim, h, w, base_size=self._base))[None]
        m = int(self.max_size)
        if h > m or w > m:
            p = self.patch_size
            raise SpriteForgeError(DIMENSION_LIMIT, f"a latent of {h * p}x{w * p} is beyond the SD3 position table "
                                   f"({m * p}x{m * p} latent pixels, {m * p * 8}px images). Lower the width/height.")
        top, left = (m - h) // 2, (m - w) // 2
        t = self.pos_embed.reshape(1, m, m, -1)[:, top:top + h, left:left + w, :]
        return t.reshape(1, h * w, -1)

    def __call__(self, x_nchw):
        x = self.proj(x_nchw.transpose(0, 2, 3, 1))  # (B, h, w, D)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        return (x + self.table(h, w)).astype(x.dtype)


# --------------------------------------------------------------------------- model
class SD3Transformer2DModel(nn.Module):
    """The SD3 / SD3.5 MMDiT. ``__call__(hidden_states NCHW, encoder_hidden_states, pooled_projections, timestep)``."""

    def __init__(self, config: dict):
        super().__init__()
        c = dict(config)
        object.__setattr__(self, "config", c)  # plain attribute, not a parameter tree
        heads = int(c.get("num_attention_heads", 18))
        head_dim = int(c.get("attention_head_dim", 64))
        dim = heads * head_dim
        self.patch_size = int(c.get("patch_size", 2))
        in_ch = int(c.get("in_channels", 16))
        self.out_channels = int(c.get("out_channels") or in_ch)
        n_layers = int(c.get("num_layers", 18))
        dual = {int(i) for i in (c.get("dual_attention_layers") or ())}
        qk_norm = c.get("qk_norm")
        cap = int(c.get("caption_projection_dim", 1152))
        if cap != dim:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"an SD3 config with caption_projection_dim {cap} != width {dim} "
                                   "has no MLX port. Load the model with engine 'torch'.")
        self.pos_embed = PatchEmbed(int(c.get("sample_size", 128)), self.patch_size, in_ch, dim,
                                    c.get("pos_embed_max_size", 96))
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(dim, int(c.get("pooled_projection_dim", 2048)))
        self.context_embedder = nn.Linear(int(c.get("joint_attention_dim", 4096)), cap)
        self.transformer_blocks = [
            JointTransformerBlock(dim, heads, head_dim, context_pre_only=i == n_layers - 1, qk_norm=qk_norm, dual=i in dual)
            for i in range(n_layers)
        ]
        self.norm_out = AdaLayerNormContinuous(dim, dim)
        self.proj_out = nn.Linear(dim, self.patch_size * self.patch_size * self.out_channels)

    @property
    def dtype(self):
        return getattr(self.proj_out, "scales", self.proj_out.weight).dtype  # MLX-quantized: its scales

    def __call__(self, hidden_states, encoder_hidden_states, pooled_projections, timestep):
        dt = self.dtype
        b, _, height, width = hidden_states.shape
        p = self.patch_size
        x = self.pos_embed(hidden_states.astype(dt))
        temb = self.time_text_embed(batch_vector(timestep, b), pooled_projections.astype(dt))
        context = self.context_embedder(encoder_hidden_states.astype(dt))
        for block in self.transformer_blocks:
            context, x = block(x, context, temb)
            block_done(context, x)
        x = self.proj_out(self.norm_out(x, temb))
        h, w = height // p, width // p
        x = x.reshape(b, h, w, p, p, self.out_channels).transpose(0, 5, 1, 3, 2, 4)
        return x.reshape(b, self.out_channels, h * p, w * p)


def map_weights(sd: dict) -> dict:
    """diffusers ``SD3Transformer2DModel`` names -> this port's: the same names, the patch kernel as OHWI."""
    return map_names(sd, conv={"pos_embed.proj.weight"})
