"""PixArt-α / PixArt-Σ on MLX: a port of diffusers' ``PixArtTransformer2DModel``.

The network, as in the paper: latents are cut into ``patch_size`` patches and embedded
with a fixed 2-D sin-cos position table; the timestep (plus, for PixArt-α at 1024, the
image resolution and aspect ratio) becomes one conditioning vector that ``adaln_single``
turns into six modulation vectors shared by every block (each block adds its own learned
``scale_shift_table``); the T5 caption is projected to the model width; every block is
self-attention -> cross-attention on the caption (with its keep-mask) -> GELU MLP; a
final modulated LayerNorm and linear layer give ``out_channels`` per pixel (twice the
input channels when the model also learned the variance: "learned sigma").

Parameter names are diffusers' own, so :func:`map_weights` only turns the patch
embedding's conv kernel into MLX's layout.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from . import layers


def _gelu_tanh(x):
    return layers.gelu_tanh(x)


class _Norm(nn.Module):
    """LayerNorm over the last axis, with or without affine parameters (diffusers' ``elementwise_affine``)."""

    def __init__(self, dims: int, eps: float, affine: bool):
        super().__init__()
        self.eps = eps
        if affine:
            self.weight = mx.ones((dims,))
            self.bias = mx.zeros((dims,))

    def __call__(self, x):
        if "weight" in self:
            return layers.layer_norm(x, self.eps, self.weight, self.bias)
        return layers.layer_norm(x, self.eps)


class _Tables:
    """Position tables per grid size, kept outside the module's parameter tree."""

    def __init__(self):
        self.tables = {}

    def get(self, key, make):
        if key not in self.tables:
            self.tables[key] = mx.array(make())
        return self.tables[key]


class PatchEmbed(nn.Module):
    """Patchify conv (``proj``) + the sin-cos position table for the grid actually used."""

    def __init__(self, in_channels: int, dim: int, patch: int, sample_size: int, interpolation_scale: float):
        super().__init__()
        self.proj = layers.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, padding=0)
        self.patch = patch
        self.dim = dim
        self.base_size = sample_size // patch
        self.interpolation_scale = interpolation_scale
        self._cache = _Tables()

    def __call__(self, x_nchw):
        x = self.proj(layers.nchw_to_nhwc(x_nchw))  # (B, h, w, D)
        b, h, w, d = x.shape
        table = self._cache.get((h, w), lambda: layers.sincos_2d(d, h, w, base_size=self.base_size,
                                                                 interpolation_scale=self.interpolation_scale))
        return x.reshape(b, h * w, d) + table.astype(x.dtype)[None]


class Attention(layers.AttentionProjections):
    """diffusers ``Attention`` as PixArt uses it: q/k/v projections, SDPA, ``to_out.0``."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool, kv_dim: int | None = None):
        super().__init__(dim, heads, head_dim, kv_dim=kv_dim, bias=bias, dropout_slot=False)

    def __call__(self, x, context=None, bias=None):
        c = x if context is None else context
        out = layers.attention(self.to_q(x), self.to_k(c), self.to_v(c), self.heads, mask=bias)
        return self.to_out[0](out)


class _Proj(nn.Module):
    def __init__(self, din: int, dout: int):
        super().__init__()
        self.proj = nn.Linear(din, dout)

    def __call__(self, x):
        return _gelu_tanh(self.proj(x))


class FeedForward(nn.Module):
    """``ff.net.0.proj`` (GELU-tanh) -> ``ff.net.2``; ``net.1`` is dropout and holds nothing."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = [_Proj(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)]

    def __call__(self, x):
        return self.net[2](self.net[0](x))


class PixArtBlock(nn.Module):
    """diffusers' ``BasicTransformerBlock`` with ``norm_type="ada_norm_single"``."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_dim: int | None, bias: bool, eps: float, affine: bool):
        super().__init__()
        self.norm1 = _Norm(dim, eps, affine)
        self.attn1 = Attention(dim, heads, head_dim, bias)
        self.norm2 = _Norm(dim, eps, affine)
        self.has_cross = cross_dim is not None
        if self.has_cross:
            self.attn2 = Attention(dim, heads, head_dim, bias, kv_dim=cross_dim)
        self.ff = FeedForward(dim)
        self.scale_shift_table = mx.zeros((6, dim))

    def __call__(self, x, context, context_bias, t6):
        b, _, d = x.shape
        mods = self.scale_shift_table[None] + t6.reshape(b, 6, d)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (mods[:, i:i + 1] for i in range(6))
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn1(h)
        if self.has_cross:
            x = x + self.attn2(x, context, context_bias)
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.ff(h)


class CombinedEmbedding(nn.Module):
    """``adaln_single.emb``: timestep MLP, plus resolution / aspect-ratio MLPs for PixArt-α micro-conditions."""

    def __init__(self, dim: int, extra: bool):
        super().__init__()
        self.timestep_embedder = layers.TimestepEmbedding(256, dim)
        self.extra = extra
        if extra:
            self.resolution_embedder = layers.TimestepEmbedding(256, dim // 3)
            self.aspect_ratio_embedder = layers.TimestepEmbedding(256, dim // 3)

    def __call__(self, timestep, resolution, aspect_ratio, batch, dtype):
        proj = lambda v: layers.timestep_embedding(v, 256, flip_sin_to_cos=True, downscale_freq_shift=0).astype(dtype)  # noqa: E731
        emb = self.timestep_embedder(proj(timestep))
        if self.extra:
            res = self.resolution_embedder(proj(resolution.reshape(-1))).reshape(batch, -1)
            ar = self.aspect_ratio_embedder(proj(aspect_ratio.reshape(-1))).reshape(batch, -1)
            emb = emb + mx.concatenate([res, ar], axis=1)
        return emb


class AdaLayerNormSingle(nn.Module):
    def __init__(self, dim: int, extra: bool):
        super().__init__()
        self.emb = CombinedEmbedding(dim, extra)
        self.linear = nn.Linear(dim, 6 * dim)

    def __call__(self, timestep, resolution, aspect_ratio, batch, dtype):
        e = self.emb(timestep, resolution, aspect_ratio, batch, dtype)
        return self.linear(nn.silu(e)), e


class CaptionProjection(nn.Module):
    """diffusers' ``PixArtAlphaTextProjection``: linear -> GELU-tanh -> linear."""

    def __init__(self, din: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(din, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, x):
        return self.linear_2(_gelu_tanh(self.linear_1(x)))


class PixArtTransformer2DModel(nn.Module):
    """``PixArtTransformer2DModel(config)`` with ``config`` = ``dict(diffusers_model.config)``."""

    def __init__(self, config: dict):
        super().__init__()
        c = dict(config)
        if (c.get("norm_type") or "ada_norm_single") != "ada_norm_single":
            raise ValueError(f"PixArt norm_type {c.get('norm_type')!r} is not supported (only ada_norm_single)")
        heads = int(c.get("num_attention_heads", 16))
        head_dim = int(c.get("attention_head_dim", 72))
        dim = heads * head_dim
        self._config = c
        self.inner_dim = dim
        self.in_channels = int(c.get("in_channels", 4))
        out = c.get("out_channels", 8)
        self.out_channels = self.in_channels if out is None else int(out)
        self.patch_size = int(c.get("patch_size", 2))
        sample = int(c.get("sample_size", 128))
        extra = c.get("use_additional_conditions")
        if extra is None:
            extra = sample == 128
        self.use_additional_conditions = bool(extra)
        interp = c.get("interpolation_scale")
        interp = interp if interp is not None else max(sample // 64, 1)
        if (c.get("activation_fn") or "gelu-approximate") != "gelu-approximate":
            raise ValueError(f"PixArt activation {c.get('activation_fn')!r} is not supported")
        self.pos_embed = PatchEmbed(self.in_channels, dim, self.patch_size, sample, float(interp))
        cross = c.get("cross_attention_dim", 1152)
        bias = bool(c.get("attention_bias", True))
        eps = float(c.get("norm_eps", 1e-6))
        affine = bool(c.get("norm_elementwise_affine", False))
        self.transformer_blocks = [PixArtBlock(dim, heads, head_dim, cross, bias, eps, affine)
                                   for _ in range(int(c.get("num_layers", 28)))]
        self.scale_shift_table = mx.zeros((2, dim))
        self.proj_out = nn.Linear(dim, self.patch_size * self.patch_size * self.out_channels)
        self.adaln_single = AdaLayerNormSingle(dim, self.use_additional_conditions)
        if c.get("caption_channels") is not None:
            self.caption_projection = CaptionProjection(int(c["caption_channels"]), dim)

    def __call__(self, hidden_states, encoder_hidden_states=None, timestep=None, added_cond_kwargs=None,
                 encoder_attention_mask=None, **_unused):
        x = hidden_states
        b = x.shape[0]
        p = self.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        added = added_cond_kwargs or {}
        res, ar = added.get("resolution"), added.get("aspect_ratio")
        if self.use_additional_conditions and (res is None or ar is None):
            raise ValueError("this PixArt model needs added_cond_kwargs resolution and aspect_ratio")

        bias = None
        if encoder_attention_mask is not None:
            m = encoder_attention_mask
            if m.ndim == 2:  # keep-mask -> additive bias, in the latent dtype (as diffusers)
                bias = ((1 - m.astype(x.dtype)) * -10000.0)[:, None, None, :]
            else:  # already a bias (B, 1, Lk)
                bias = m.astype(x.dtype)[:, None]
        tokens = self.pos_embed(x)
        t = timestep
        if not isinstance(t, mx.array):
            t = mx.array(t)
        if t.ndim == 0:
            t = mx.broadcast_to(t, (b,))
        t6, emb = self.adaln_single(t, res, ar, b, tokens.dtype)
        context = encoder_hidden_states
        if "caption_projection" in self and context is not None:
            context = self.caption_projection(context).reshape(b, -1, tokens.shape[-1])
        for blk in self.transformer_blocks:
            tokens = blk(tokens, context, bias, t6)
            layers.block_done(tokens)
        mods = self.scale_shift_table[None] + emb[:, None]
        shift, scale = mods[:, 0:1], mods[:, 1:2]
        tokens = layers.layer_norm(tokens, 1e-6) * (1 + scale) + shift
        tokens = self.proj_out(tokens)
        c = self.out_channels
        out = tokens.reshape(b, h, w, p, p, c).transpose(0, 5, 1, 3, 2, 4)
        return out.reshape(b, c, h * p, w * p)


def map_weights(sd: dict) -> dict:
    """diffusers ``PixArtTransformer2DModel`` names -> this port's (the patch conv kernel to OHWI)."""
    return layers.map_names(sd)


__all__ = ["PixArtTransformer2DModel", "map_weights"]
