"""MLX port of diffusers' ``SanaTransformer2DModel`` (linear-attention DiT with GLUMBConv feed-forward).

Parameter paths are diffusers' own (``transformer_blocks.0.attn1.to_q.weight``, ``transformer_blocks.0.ff.conv_depth.weight``,
``time_embed.emb.timestep_embedder.linear_1.weight``, ``caption_norm.weight`` ...); :func:`map_weights` only turns
the conv kernels (patch embedding and the three GLUMBConv convolutions) from OIHW to OHWI.

``__call__`` takes NCHW latents and returns NCHW like the torch model; ``timestep`` is the model timestep already
multiplied by the config's ``timestep_scale`` (as the torch engine passes it to diffusers).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ...errors import BAD_INPUT, SpriteForgeError
from .layers import AttentionProjections, Conv2d, LayerNorm, RMSNorm, TimestepEmbedding, attention, block_done, gelu_tanh, layer_norm, map_names, sincos_2d, \
    timestep_embedding


def _unsupported(what: str):
    return SpriteForgeError(BAD_INPUT, f"this Sana variant ({what}) is not supported by the MLX port. "
                                       "Load the model with engine 'torch'.")


class _PatchEmbed(nn.Module):
    """diffusers' ``PatchEmbed`` as Sana builds it: sincos table when ``interpolation_scale`` is set, else none."""

    def __init__(self, sample_size: int, patch: int, in_channels: int, dim: int, interpolation_scale):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=True)
        self.dim = dim
        self.base_size = sample_size // patch
        self.interpolation_scale = None if interpolation_scale is None else float(interpolation_scale)
        self._tables: dict = {}

    def __call__(self, x_nhwc):
        y = self.proj(x_nhwc)
        b, gh, gw, d = y.shape
        y = y.reshape(b, gh * gw, d)
        if self.interpolation_scale is None:
            return y
        if (gh, gw) not in self._tables:
            self._tables[(gh, gw)] = mx.array(sincos_2d(self.dim, gh, gw, base_size=self.base_size,
                                                        interpolation_scale=self.interpolation_scale))
        return (y + self._tables[(gh, gw)].astype(y.dtype)[None]).astype(y.dtype)


def _sinusoid(t, dtype):
    return timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0).astype(dtype)


class _TimestepSizeEmbedding(nn.Module):
    """``PixArtAlphaCombinedTimestepSizeEmbeddings`` without micro-conditions (Sana never uses them)."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)

    def __call__(self, t, dtype):
        return self.timestep_embedder(_sinusoid(t, dtype))


class _AdaLayerNormSingle(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.emb = _TimestepSizeEmbedding(dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def __call__(self, t, dtype):
        e = self.emb(t, dtype)
        return self.linear(nn.silu(e)), e


class _TimestepGuidanceEmbedding(nn.Module):
    """``SanaCombinedTimestepGuidanceEmbeddings``: timestep and guidance embeddings summed, then the 6-way linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)
        self.guidance_embedder = TimestepEmbedding(256, dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def __call__(self, t, guidance, dtype):
        e = self.timestep_embedder(_sinusoid(t, dtype)) + self.guidance_embedder(_sinusoid(guidance, dtype))
        return self.linear(nn.silu(e)), e


class _CaptionProjection(nn.Module):
    """``PixArtAlphaTextProjection`` (linear, tanh-GELU, linear)."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, x):
        return self.linear_2(gelu_tanh(self.linear_1(x)))


def _qk_norms(module, qk_norm, heads: int, head_dim: int, kv_heads: int):
    """Sana's only workable qk norm: RMS norm over all heads (``rms_norm_across_heads``, eps 1e-5)."""
    if qk_norm is None:
        return
    if qk_norm != "rms_norm_across_heads":
        raise _unsupported(f"qk_norm {qk_norm!r}")
    module.norm_q = RMSNorm(head_dim * heads, eps=1e-5)
    module.norm_k = RMSNorm(head_dim * kv_heads, eps=1e-5)


def _apply_qk_norm(module, q, k):
    if "norm_q" not in module:
        return q, k
    return module.norm_q(q), module.norm_k(k)


class _LinearSelfAttention(AttentionProjections):
    """``Attention`` with ``SanaLinearAttnProcessor2_0``: ReLU-kernel linear attention, computed in float32."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool, qk_norm):
        super().__init__(dim, heads, head_dim, bias=bias)
        _qk_norms(self, qk_norm, heads, head_dim, heads)

    def __call__(self, x):
        dtype = x.dtype
        q, k = _apply_qk_norm(self, self.to_q(x), self.to_k(x))
        v = self.to_v(x)
        b, n, inner = q.shape
        h = self.heads
        q = nn.relu(q).astype(mx.float32).reshape(b, n, h, -1).transpose(0, 2, 1, 3)  # (B, H, N, D)
        k = nn.relu(k).astype(mx.float32).reshape(b, n, h, -1).transpose(0, 2, 1, 3)
        v = v.astype(mx.float32).reshape(b, n, h, -1).transpose(0, 2, 1, 3)
        kv = k.transpose(0, 1, 3, 2) @ v  # (B, H, Dk, Dv)
        num = q @ kv  # (B, H, N, Dv)
        den = q @ k.sum(axis=2)[..., None]  # (B, H, N, 1)
        out = (num / (den + 1e-15)).transpose(0, 2, 1, 3).reshape(b, n, inner).astype(dtype)
        out = self.to_out[0](out)
        if dtype == mx.float16:
            out = mx.clip(out, -65504, 65504)
        return out


class _CrossAttention(AttentionProjections):
    """``Attention`` with ``SanaAttnProcessor2_0`` (SDPA, optional qk norm, the caption mask)."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, out_bias: bool, qk_norm):
        super().__init__(dim, heads, head_dim, kv_dim=context_dim, out_bias=out_bias)
        _qk_norms(self, qk_norm, heads, head_dim, heads)

    def __call__(self, x, context, mask=None):
        q, k = _apply_qk_norm(self, self.to_q(x), self.to_k(context))
        return self.to_out[0](attention(q, k, self.to_v(context), self.heads, mask))


class _GLUMBConv(nn.Module):
    """Inverted 1x1 conv, SiLU, depthwise 3x3 conv, SiLU-gated halves, pointwise 1x1 conv (NHWC)."""

    def __init__(self, dim: int, out_dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(expand_ratio * dim)
        self.conv_inverted = Conv2d(dim, hidden * 2, kernel_size=1)
        self.conv_depth = Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2)
        self.conv_point = Conv2d(hidden, out_dim, kernel_size=1, bias=False)

    def __call__(self, x):
        h = self.conv_depth(nn.silu(self.conv_inverted(x)))
        h, gate = mx.split(h, 2, axis=-1)
        return self.conv_point(h * nn.silu(gate))


class _SanaBlock(nn.Module):
    def __init__(self, dim: int, cfg: dict):
        super().__init__()
        heads = int(cfg.get("num_attention_heads", 70))
        head_dim = int(cfg.get("attention_head_dim", 32))
        eps = float(cfg.get("norm_eps", 1e-6))
        qk_norm = cfg.get("qk_norm")
        self.norm_eps = eps
        self.attn1 = _LinearSelfAttention(dim, heads, head_dim, bool(cfg.get("attention_bias", False)), qk_norm)
        self.norm2 = LayerNorm(dim, eps, bool(cfg.get("norm_elementwise_affine", False)))
        self.attn2 = _CrossAttention(dim, int(cfg["cross_attention_dim"]), int(cfg.get("num_cross_attention_heads") or 20),
                                     int(cfg.get("cross_attention_head_dim") or 112), True, qk_norm)
        self.ff = _GLUMBConv(dim, dim, float(cfg.get("mlp_ratio", 2.5)))
        self.scale_shift_table = mx.zeros((6, dim))

    def __call__(self, x, context, mask, t6, gh: int, gw: int):
        b, n, d = x.shape
        mod = self.scale_shift_table[None] + t6.reshape(b, 6, d)
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = (mod[:, i:i + 1] for i in range(6))
        h = (layer_norm(x, self.norm_eps) * (1 + scale) + shift).astype(x.dtype)
        x = x + gate * self.attn1(h)
        x = x + self.attn2(x, context, mask)
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        h = self.ff(h.reshape(b, gh, gw, d)).reshape(b, n, d)
        return x + gate_mlp * h


class SanaTransformer2DModel(nn.Module):
    """diffusers ``SanaTransformer2DModel`` built from its config dict."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = dict(config)
        if cfg.get("cross_attention_dim", 2240) is None:
            raise _unsupported("no cross-attention")
        cfg.setdefault("cross_attention_dim", 2240)
        heads = int(cfg.get("num_attention_heads", 70))
        dim = heads * int(cfg.get("attention_head_dim", 32))
        self.inner_dim = dim
        self.in_channels = int(cfg.get("in_channels", 32))
        self.out_channels = int(cfg.get("out_channels") or self.in_channels)
        self.patch_size = int(cfg.get("patch_size", 1))
        self.guidance_embeds = bool(cfg.get("guidance_embeds", False))
        self.patch_embed = _PatchEmbed(int(cfg.get("sample_size", 32)), self.patch_size, self.in_channels, dim,
                                       cfg.get("interpolation_scale"))
        self.time_embed = _TimestepGuidanceEmbedding(dim) if self.guidance_embeds else _AdaLayerNormSingle(dim)
        self.caption_projection = _CaptionProjection(int(cfg.get("caption_channels", 2304)), dim)
        self.caption_norm = RMSNorm(dim, eps=1e-5)
        self.transformer_blocks = [_SanaBlock(dim, cfg) for _ in range(int(cfg.get("num_layers", 20)))]
        self.scale_shift_table = mx.zeros((2, dim))
        self.proj_out = nn.Linear(dim, self.patch_size * self.patch_size * self.out_channels)

    def __call__(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask=None, guidance=None):
        """``hidden_states`` (B, C, H, W), ``encoder_hidden_states`` (B, L, caption_channels), ``timestep`` (B,) or
        scalar, ``encoder_attention_mask`` (B, L) keep-mask (1 attend) or an additive (B, 1, L) bias,
        ``guidance`` (B,) or scalar for guidance-embedding models -> (B, out_channels, H, W)."""
        x = hidden_states
        b, _, H, W = x.shape
        p = self.patch_size
        gh, gw = H // p, W // p
        h = self.patch_embed(x.transpose(0, 2, 3, 1))
        t = _batch(timestep, b)
        if self.guidance_embeds:
            if guidance is None:
                raise SpriteForgeError(BAD_INPUT, "this Sana model embeds the guidance scale but none was given. "
                                                  "Pass a guidance value.")
            t6, emb = self.time_embed(t, _batch(guidance, b), h.dtype)
        else:
            t6, emb = self.time_embed(t, h.dtype)
        ctx = self.caption_projection(encoder_hidden_states.astype(h.dtype)).reshape(b, -1, self.inner_dim)
        ctx = self.caption_norm(ctx)
        mask = encoder_attention_mask
        if mask is not None:
            mask = mask if isinstance(mask, mx.array) else mx.array(mask)
            if mask.ndim == 2:  # keep-mask -> diffusers' additive bias, (B, 1, 1, L)
                mask = ((1.0 - mask.astype(mx.float32)) * -10000.0).astype(h.dtype)[:, None, None, :]
            elif mask.ndim == 3:  # already additive (B, 1, L)
                mask = mask.astype(h.dtype)[:, None]
        for blk in self.transformer_blocks:
            h = blk(h, ctx, mask, t6, gh, gw)
            block_done(h)
        mod = self.scale_shift_table[None] + emb[:, None]
        shift, scale = mod[:, 0:1], mod[:, 1:2]
        h = layer_norm(h, 1e-6) * (1 + scale) + shift
        h = self.proj_out(h)
        c = self.out_channels
        h = h.reshape(b, gh, gw, p, p, c).transpose(0, 5, 1, 3, 2, 4)
        return h.reshape(b, c, gh * p, gw * p)


def _batch(v, b: int):
    a = v if isinstance(v, mx.array) else mx.array(v)
    a = a.reshape(-1)
    return mx.broadcast_to(a, (b,)) if a.size == 1 else a


def map_weights(sd: dict) -> dict:
    """diffusers Sana names -> this port's names: every 4-D conv kernel to OHWI, nothing renamed."""
    return map_names(sd)
