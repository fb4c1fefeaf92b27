"""Sana's deep-compression autoencoder (DC-AE) on MLX.

A port of diffusers' ``AutoencoderDC``: stages of ``ResBlock`` (conv-act-conv-norm, residual)
and ``EfficientViTBlock`` (multi-scale ReLU linear attention, then a gated inverted-bottleneck
conv ``GLUMBConv``), joined by down/up blocks whose shortcuts are parameter-free
pixel-(un)shuffles with channel averaging / repetition. The latent is deterministic (no
distribution). Parameter paths are diffusers' (``decoder.up_blocks.2.0.attn.to_q.weight``);
:func:`map_weights` turns conv kernels to OHWI and drops BatchNorm's step counter.

Tensors are NHWC inside and NCHW at ``encode``/``decode``; latents are unscaled (the caller
applies ``scaling_factor``).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .layers import Conv2d, map_names, nchw_to_nhwc, nhwc_to_nchw
from .layers import set_circular as _set_circular
from .vae import activation as _activation


def activation(name):
    """diffusers' ``get_activation``; ``None`` is the identity."""
    return (lambda x: x) if name is None else _activation(name)


# --------------------------------------------------------------------------- norms over the channel axis
class _AffineNorm(nn.Module):
    """A norm over the last (channel) axis with a per-channel ``weight`` (ones) and ``bias`` (zeros)."""

    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.bias = mx.zeros((dims,))
        self.eps = eps


class ChannelRMSNorm(_AffineNorm):
    """diffusers' ``RMSNorm(dim, eps, elementwise_affine=True, bias=True)`` over the last (channel) axis."""

    def __call__(self, x):
        y = mx.fast.rms_norm(x.astype(mx.float32), self.weight.astype(mx.float32), self.eps)
        return (y + self.bias.astype(mx.float32)).astype(x.dtype)


class BatchNorm2d(_AffineNorm):
    """torch ``BatchNorm2d`` in eval mode (running statistics) on NHWC input."""

    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__(dims, eps)
        self.running_mean = mx.zeros((dims,))
        self.running_var = mx.ones((dims,))

    def __call__(self, x):
        scale = self.weight * mx.rsqrt(self.running_var + self.eps)
        return (x - self.running_mean) * scale + self.bias


class ChannelLayerNorm(_AffineNorm):
    def __call__(self, x):
        return mx.fast.layer_norm(x, self.weight, self.bias, self.eps)


def normalization(norm_type: str, dims: int):
    """diffusers' ``get_normalization(norm_type, dims)`` with its defaults (eps 1e-5, affine, bias)."""
    if norm_type == "rms_norm":
        return ChannelRMSNorm(dims)
    if norm_type == "batch_norm":
        return BatchNorm2d(dims)
    if norm_type == "layer_norm":
        return ChannelLayerNorm(dims)
    raise ValueError(f"norm type {norm_type!r} is not supported")


# --------------------------------------------------------------------------- pixel (un)shuffle, NHWC with torch's channel order
def pixel_unshuffle(x, r: int = 2):
    """torch ``F.pixel_unshuffle`` on NHWC: output channel ``c*r*r + i*r + j``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // r, r, w // r, r, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x, r: int = 2):
    """torch ``F.pixel_shuffle`` on NHWC (inverse of :func:`pixel_unshuffle`)."""
    b, h, w, c = x.shape
    co = c // (r * r)
    x = x.reshape(b, h, w, co, r, r).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * r, w * r, co)


def upsample_nearest(x, r: int = 2):
    b, h, w, c = x.shape
    return mx.broadcast_to(x[:, :, None, :, None, :], (b, h, r, w, r, c)).reshape(b, h * r, w * r, c)


def group_mean(x, group: int):
    """Mean over consecutive channel groups of size ``group`` (torch ``unflatten(1, (-1, g)).mean(2)``)."""
    b, h, w, c = x.shape
    return x.reshape(b, h, w, c // group, group).mean(axis=-1)


# --------------------------------------------------------------------------- blocks
class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm_type: str = "batch_norm", act_fn="relu6"):
        super().__init__()
        self.conv1 = Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = normalization(norm_type, out_channels)
        self._act = activation(act_fn)

    def __call__(self, x):
        h = self.conv2(self._act(self.conv1(x)))
        return self.norm(h) + x


class MultiscaleProjection(nn.Module):
    """diffusers' ``SanaMultiscaleAttentionProjection``: depthwise kxk conv, then a grouped 1x1 conv."""

    def __init__(self, inner: int, heads: int, kernel_size: int):
        super().__init__()
        ch = 3 * inner
        self.proj_in = Conv2d(ch, ch, kernel_size, padding=kernel_size // 2, groups=ch, bias=False)
        self.proj_out = Conv2d(ch, ch, 1, groups=3 * heads, bias=False)

    def __call__(self, x):
        return self.proj_out(self.proj_in(x))


class MultiscaleLinearAttention(nn.Module):
    """diffusers' ``SanaMultiscaleLinearAttention`` (ReLU linear attention over q/k/v and their
    multi-scale aggregates; quadratic ReLU attention when there are no more tokens than the head width)."""

    def __init__(self, in_channels: int, out_channels: int, attention_head_dim: int = 8, mult: float = 1.0,
                 norm_type: str = "batch_norm", kernel_sizes=(5,), eps: float = 1e-15, residual_connection: bool = True):
        super().__init__()
        heads = int(in_channels // attention_head_dim * mult)
        inner = heads * attention_head_dim
        self.to_q = nn.Linear(in_channels, inner, bias=False)
        self.to_k = nn.Linear(in_channels, inner, bias=False)
        self.to_v = nn.Linear(in_channels, inner, bias=False)
        self.to_qkv_multiscale = [MultiscaleProjection(inner, heads, k) for k in kernel_sizes]
        self.to_out = nn.Linear(inner * (1 + len(kernel_sizes)), out_channels, bias=False)
        self.norm_out = normalization(norm_type, out_channels)
        self.head_dim = int(attention_head_dim)
        self.eps = eps
        self.residual = residual_connection

    def __call__(self, x):
        b, h, w, _ = x.shape
        n = h * w
        d = self.head_dim
        dtype = x.dtype
        qkv = mx.concatenate([self.to_q(x), self.to_k(x), self.to_v(x)], axis=-1)
        qkv = mx.concatenate([qkv] + [p(qkv) for p in self.to_qkv_multiscale], axis=-1)
        linear = n > d
        if linear:
            qkv = qkv.astype(mx.float32)
        # heads are consecutive channel groups of width 3*d, each split q | k | v (diffusers' layout)
        qkv = qkv.reshape(b, n, -1, 3 * d).transpose(0, 2, 1, 3)  # (B, G, N, 3d)
        q = nn.relu(qkv[..., :d])
        k = nn.relu(qkv[..., d:2 * d])
        v = qkv[..., 2 * d:]
        if linear:
            v = mx.concatenate([v, mx.ones(v.shape[:-1] + (1,), dtype=v.dtype)], axis=-1)  # (B, G, N, d+1)
            kv = k.transpose(0, 1, 3, 2) @ v  # (B, G, d, d+1)
            o = (q @ kv).astype(mx.float32)  # (B, G, N, d+1)
            o = (o[..., :-1] / (o[..., -1:] + self.eps)).astype(dtype)
        else:
            s = (k @ q.transpose(0, 1, 3, 2)).astype(mx.float32)  # s[m, n] = k_m . q_n
            s = s / (s.sum(axis=-2, keepdims=True) + self.eps)
            o = s.transpose(0, 1, 3, 2).astype(v.dtype) @ v  # (B, G, N, d)
        o = o.transpose(0, 2, 1, 3).reshape(b, h, w, -1)
        o = self.norm_out(self.to_out(o))
        return o + x if self.residual else o


class GLUMBConv(nn.Module):
    """Sana's gated inverted-bottleneck conv: 1x1 expand, SiLU, depthwise 3x3, GLU gate, 1x1 project, RMSNorm."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: float = 4, norm_type: str | None = "rms_norm",
                 residual_connection: bool = True):
        super().__init__()
        hidden = int(expand_ratio * in_channels)
        self.conv_inverted = Conv2d(in_channels, 2 * hidden, 1)
        self.conv_depth = Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = Conv2d(hidden, out_channels, 1, bias=False)
        if norm_type == "rms_norm":
            self.norm = ChannelRMSNorm(out_channels, eps=1e-5)
        self.residual = residual_connection

    def __call__(self, x):
        h = self.conv_depth(nn.silu(self.conv_inverted(x)))
        h, gate = mx.split(h, 2, axis=-1)
        h = self.conv_point(h * nn.silu(gate))
        if "norm" in self:
            h = self.norm(h)
        return h + x if self.residual else h


class EfficientViTBlock(nn.Module):
    def __init__(self, in_channels: int, mult: float = 1.0, attention_head_dim: int = 32, qkv_multiscales=(5,),
                 norm_type: str = "batch_norm"):
        super().__init__()
        self.attn = MultiscaleLinearAttention(in_channels, in_channels, attention_head_dim, mult, norm_type,
                                              tuple(qkv_multiscales), residual_connection=True)
        self.conv_out = GLUMBConv(in_channels, in_channels, norm_type="rms_norm")

    def __call__(self, x):
        return self.conv_out(self.attn(x))


def get_block(block_type: str, in_channels: int, out_channels: int, attention_head_dim: int, norm_type: str, act_fn,
              qkv_multiscales=()):
    if block_type == "ResBlock":
        return ResBlock(in_channels, out_channels, norm_type, act_fn)
    if block_type == "EfficientViTBlock":
        return EfficientViTBlock(in_channels, attention_head_dim=attention_head_dim, norm_type=norm_type,
                                 qkv_multiscales=qkv_multiscales)
    raise ValueError(f"DC-AE block type {block_type!r} is not supported")


class DCDownBlock2d(nn.Module):
    """Stride-2 conv (or conv + pixel-unshuffle) plus the pixel-unshuffle/channel-average shortcut."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = False, shortcut: bool = True):
        super().__init__()
        self._unshuffle = bool(downsample)
        self._group = in_channels * 4 // out_channels
        self._shortcut = bool(shortcut)
        conv_out = out_channels // 4 if downsample else out_channels
        self.conv = Conv2d(in_channels, conv_out, 3, stride=1 if downsample else 2, padding=1)

    def __call__(self, x):
        y = self.conv(x)
        if self._unshuffle:
            y = pixel_unshuffle(y, 2)
        if self._shortcut:
            y = y + group_mean(pixel_unshuffle(x, 2), self._group)
        return y


class DCUpBlock2d(nn.Module):
    """Nearest-2x + conv (or conv + pixel-shuffle) plus the channel-repeat/pixel-shuffle shortcut."""

    def __init__(self, in_channels: int, out_channels: int, interpolate: bool = False, shortcut: bool = True):
        super().__init__()
        self._interpolate = bool(interpolate)
        self._shortcut = bool(shortcut)
        self._repeats = out_channels * 4 // in_channels
        self.conv = Conv2d(in_channels, out_channels if interpolate else out_channels * 4, 3, padding=1)

    def __call__(self, x):
        if self._interpolate:
            y = self.conv(upsample_nearest(x, 2))
        else:
            y = pixel_shuffle(self.conv(x), 2)
        if self._shortcut:
            y = y + pixel_shuffle(mx.repeat(x, self._repeats, axis=-1), 2)
        return y


def _per_block(v, n: int) -> tuple:
    return (v,) * n if isinstance(v, str) or v is None else tuple(v)


class Encoder(nn.Module):
    def __init__(self, in_channels: int, latent_channels: int, attention_head_dim: int, block_type, block_out_channels,
                 layers_per_block, qkv_multiscales, downsample_block_type: str = "pixel_unshuffle",
                 out_shortcut: bool = True):
        super().__init__()
        ch = list(block_out_channels)
        nb = len(ch)
        block_type = _per_block(block_type, nb)
        unshuffle = downsample_block_type == "pixel_unshuffle"
        if layers_per_block[0] > 0:
            self.conv_in = Conv2d(in_channels, ch[0], 3, padding=1)
        else:
            self.conv_in = DCDownBlock2d(in_channels, ch[1], downsample=unshuffle, shortcut=False)
        self.down_blocks = []
        for i, (c, layers) in enumerate(zip(ch, layers_per_block)):
            stage = [get_block(block_type[i], c, c, attention_head_dim, "rms_norm", "silu", tuple(qkv_multiscales[i]))
                     for _ in range(layers)]
            if i < nb - 1 and layers > 0:
                stage.append(DCDownBlock2d(c, ch[i + 1], downsample=unshuffle, shortcut=True))
            self.down_blocks.append(stage)
        self.conv_out = Conv2d(ch[-1], latent_channels, 3, padding=1)
        self._out_group = ch[-1] // latent_channels if out_shortcut else 0

    def __call__(self, x):
        x = self.conv_in(x)
        for stage in self.down_blocks:
            for blk in stage:
                x = blk(x)
        y = self.conv_out(x)
        return y + group_mean(x, self._out_group) if self._out_group else y


class Decoder(nn.Module):
    def __init__(self, in_channels: int, latent_channels: int, attention_head_dim: int, block_type, block_out_channels,
                 layers_per_block, qkv_multiscales, norm_type="rms_norm", act_fn="silu",
                 upsample_block_type: str = "pixel_shuffle", in_shortcut: bool = True, conv_act_fn: str = "relu"):
        super().__init__()
        ch = list(block_out_channels)
        nb = len(ch)
        block_type = _per_block(block_type, nb)
        norm_type = _per_block(norm_type, nb)
        act_fn = _per_block(act_fn, nb)
        interp = upsample_block_type == "interpolate"
        self.conv_in = Conv2d(latent_channels, ch[-1], 3, padding=1)
        self._in_repeats = ch[-1] // latent_channels if in_shortcut else 0
        self.up_blocks = []
        for i, (c, layers) in enumerate(zip(ch, layers_per_block)):
            stage = []
            if i < nb - 1 and layers > 0:
                stage.append(DCUpBlock2d(ch[i + 1], c, interpolate=interp, shortcut=True))
            stage += [get_block(block_type[i], c, c, attention_head_dim, norm_type[i], act_fn[i], tuple(qkv_multiscales[i]))
                      for _ in range(layers)]
            self.up_blocks.append(stage)
        out_ch = ch[0] if layers_per_block[0] > 0 else ch[1]
        self.norm_out = ChannelRMSNorm(out_ch, 1e-5)
        self._act = activation(conv_act_fn)
        if layers_per_block[0] > 0:
            self.conv_out = Conv2d(out_ch, in_channels, 3, padding=1)
        else:
            self.conv_out = DCUpBlock2d(out_ch, in_channels, interpolate=interp, shortcut=False)

    def __call__(self, z):
        x = self.conv_in(z)
        if self._in_repeats:
            x = x + mx.repeat(z, self._in_repeats, axis=-1)
        for stage in reversed(self.up_blocks):
            for blk in stage:
                x = blk(x)
        return self.conv_out(self._act(self.norm_out(x)))


class AutoencoderDC(nn.Module):
    """diffusers' ``AutoencoderDC`` from its config dict (``dict(vae.config)``)."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = dict(config)
        self._config = cfg  # underscore: kept out of the parameter tree
        g = cfg.get
        enc_ch = tuple(g("encoder_block_out_channels", (128, 256, 512, 512, 1024, 1024)))
        dec_ch = tuple(g("decoder_block_out_channels", (128, 256, 512, 512, 1024, 1024)))
        ms_default = ((), (), (), (5,), (5,), (5,))
        in_ch = int(g("in_channels", 3))
        lc = int(g("latent_channels", 32))
        hd = int(g("attention_head_dim", 32))
        self.latent_channels = lc
        self.encoder = Encoder(in_ch, lc, hd, g("encoder_block_types", "ResBlock"), enc_ch,
                               tuple(g("encoder_layers_per_block", (2, 2, 2, 3, 3, 3))),
                               tuple(g("encoder_qkv_multiscales", ms_default)),
                               g("downsample_block_type", "pixel_unshuffle"), bool(g("encoder_out_shortcut", True)))
        self.decoder = Decoder(in_ch, lc, hd, g("decoder_block_types", "ResBlock"), dec_ch,
                               tuple(g("decoder_layers_per_block", (3, 3, 3, 3, 3, 3))),
                               tuple(g("decoder_qkv_multiscales", ms_default)),
                               g("decoder_norm_types", "rms_norm"), g("decoder_act_fns", "silu"),
                               g("upsample_block_type", "pixel_shuffle"), bool(g("decoder_in_shortcut", True)),
                               g("decoder_conv_act_fn", "relu"))
        self.scaling_factor = g("scaling_factor", 1.0)
        self.shift_factor = None
        self.spatial_compression_ratio = 2 ** (len(enc_ch) - 1)

    @property
    def config(self) -> dict:
        """The config dict the model was built from."""
        return self._config

    def encode_nhwc(self, x):
        return self.encoder(x)

    def decode_nhwc(self, z):
        return self.decoder(z)

    def encode(self, x):
        """``x`` NCHW in [-1, 1] -> the latent (NCHW, unscaled)."""
        return nhwc_to_nchw(self.encoder(nchw_to_nhwc(x)))

    def decode(self, z):
        """``z`` NCHW (unscaled latent) -> NCHW image in about [-1, 1]."""
        return nhwc_to_nchw(self.decoder(nchw_to_nhwc(z)))

    def __call__(self, sample):
        return self.decode(self.encode(sample))

    def set_circular(self, on: bool) -> None:
        """Circular padding in every padded conv (encoder and decoder), for seamless tiles."""
        _set_circular(self, on)


def map_weights(sd: dict) -> dict:
    """diffusers ``AutoencoderDC`` state-dict names -> this port's (conv kernels to OHWI, no BatchNorm counters)."""
    return map_names(sd, drop=tuple(k for k in sd if k.endswith("num_batches_tracked")))


__all__ = ["AutoencoderDC", "map_weights"]
