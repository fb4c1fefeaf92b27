"""The Qwen-Image VAE (diffusers' ``AutoencoderKLQwenImage``, the Wan-2.1 causal 3-D VAE) on MLX, for single frames.

An image is a video of one frame. Every causal 3-D convolution pads time with two zero frames *before* the frame
(and none after), so on one frame only the kernel's last time tap meets data: the 3-D convolution is exactly a 2-D
convolution with ``weight[:, :, -1]``. The temporal resamplers (``time_conv``) run only from the second frame on,
so they never run here. The port is therefore 2-D: NHWC inside, :func:`map_weights` keeps the last time tap of
every 5-D kernel and drops ``time_conv``. Parameter paths are diffusers' (``decoder.up_blocks.0.resnets.1.conv2``).

``encode`` / ``decode`` take and give NCHW, and latents are normalised per channel as ``QwenImagePipeline`` does
(``(z - latents_mean) / latents_std``); the torch engine's single-frame class
(``engines/torch_models/vae_qwenimage.py``) does the same, so the handle's scaling is 1 and its shift 0.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .layers import Conv2d, nchw_to_nhwc, nhwc_to_nchw, set_circular


class RMSNorm(nn.Module):
    """``QwenImageRMS_norm``: ``x / max(|x|, 1e-12) * sqrt(C) * gamma`` over the channels (torch's F.normalize)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = mx.ones((dim,))
        self._scale = math.sqrt(dim)

    def __call__(self, x):
        x32 = x.astype(mx.float32)
        norm = mx.sqrt(mx.sum(x32 * x32, axis=-1, keepdims=True))
        return (x32 / mx.maximum(norm, 1e-12)).astype(x.dtype) * (self._scale * self.gamma)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = Conv2d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim)
        self.conv2 = Conv2d(out_dim, out_dim, 3, padding=1)
        if in_dim != out_dim:
            self.conv_shortcut = Conv2d(in_dim, out_dim, 1)

    def __call__(self, x):
        h = self.conv_shortcut(x) if "conv_shortcut" in self else x
        x = self.conv1(nn.silu(self.norm1(x)))
        return self.conv2(nn.silu(self.norm2(x))) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the frame's H*W positions (1x1-conv q/k/v and projection)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = Conv2d(dim, dim * 3, 1)
        self.proj = Conv2d(dim, dim, 1)

    def __call__(self, x):
        b, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, 1, h * w, 3 * c)
        q, k, v = mx.split(qkv, 3, axis=-1)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c))
        return self.proj(o.reshape(b, h, w, c)) + x


class Resample(nn.Module):
    """2x down (zero pad right/bottom, 3x3 stride 2) or 2x up (nearest, 3x3 conv to ``out``: half the width unless
    given; Qwen-Image 2.1's keeps it)."""

    def __init__(self, dim: int, up: bool, out: int | None = None):
        super().__init__()
        self._up = up
        self.conv = Conv2d(dim, out or dim // 2, 3, padding=1) if up else Conv2d(dim, dim, 3, stride=2)

    def __call__(self, x):
        if self._up:
            x = mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2)
        else:
            x = mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        return self.conv(x)


class MidBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.resnets = [ResidualBlock(dim, dim), ResidualBlock(dim, dim)]
        self.attentions = [AttentionBlock(dim)]

    def __call__(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder(nn.Module):
    def __init__(self, dim: int, z2: int, mult, res_blocks: int):
        super().__init__()
        dims = [dim * u for u in [1, *mult]]
        self.conv_in = Conv2d(3, dims[0], 3, padding=1)
        self.down_blocks = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(res_blocks):
                self.down_blocks.append(ResidualBlock(a, b))
                a = b
            if i != len(mult) - 1:
                self.down_blocks.append(Resample(b, up=False))
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = Conv2d(dims[-1], z2, 3, padding=1)

    def __call__(self, x):
        x = self.conv_in(x)
        for layer in self.down_blocks:
            x = layer(x)
        return self.conv_out(nn.silu(self.norm_out(self.mid_block(x))))


class UpBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, res_blocks: int, upsample: bool):
        super().__init__()
        self.resnets = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(res_blocks + 1)]
        if upsample:
            self.upsamplers = [Resample(out_dim, up=True)]

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if "upsamplers" in self else x


class Decoder(nn.Module):
    def __init__(self, dim: int, z: int, mult, res_blocks: int):
        super().__init__()
        dims = [dim * u for u in [mult[-1], *mult[::-1]]]
        self.conv_in = Conv2d(z, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = [UpBlock(a // 2 if i > 0 else a, b, res_blocks, i != len(mult) - 1)
                          for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = Conv2d(dims[-1], 3, 3, padding=1)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.norm_out(x)))


class AutoencoderKLQwenImage(nn.Module):
    """diffusers' ``AutoencoderKLQwenImage`` on one frame, from its config dict; latents normalised per channel."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = dict(config)
        self._config = cfg
        dim, z = int(cfg.get("base_dim", 96)), int(cfg.get("z_dim", 16))
        mult, res = list(cfg.get("dim_mult", [1, 2, 4, 4])), int(cfg.get("num_res_blocks", 2))
        if cfg.get("attn_scales"):
            raise ValueError("attn_scales: attention inside the down blocks is not ported (no released VAE uses it)")
        self.z_dim = z
        self.encoder = Encoder(dim, 2 * z, mult, res)
        self.quant_conv = Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = Conv2d(z, z, 1)
        self.decoder = Decoder(dim, z, mult, res)
        self._mean = mx.array(cfg["latents_mean"], dtype=mx.float32)
        self._std = mx.array(cfg["latents_std"], dtype=mx.float32)

    @property
    def config(self) -> dict:
        return self._config

    def encode(self, x):
        """NCHW image in [-1, 1] -> the normalised latent distribution's mode (NCHW)."""
        mu = self.quant_conv(self.encoder(nchw_to_nhwc(x)))[..., : self.z_dim].astype(mx.float32)
        return nhwc_to_nchw((mu - self._mean) / self._std)

    def decode(self, z):
        """Normalised NCHW latent -> NCHW image in [-1, 1] (clamped, as diffusers' decode)."""
        z = nchw_to_nhwc(z).astype(mx.float32) * self._std + self._mean
        x = self.decoder(self.post_quant_conv(z.astype(self.post_quant_conv.weight.dtype)))
        return nhwc_to_nchw(mx.clip(x, -1.0, 1.0))

    def __call__(self, sample):
        return self.decode(self.encode(sample))

    def set_circular(self, on: bool) -> None:
        set_circular(self, on)


def map_weights(sd: dict) -> dict:
    """diffusers ``AutoencoderKLQwenImage`` names -> this port's: the last time tap of each 5-D kernel (see the module
    note), 4-D kernels to OHWI, ``gamma`` [C,1,1(,1)] to [C], ``resample.1`` -> ``conv``; ``time_conv`` dropped."""
    out = {}
    for k, v in sd.items():
        if ".time_conv." in k:
            continue
        name = k.replace(".resample.1.", ".conv.")
        if k.endswith(".gamma"):
            v = v.reshape(v.shape[0])
        elif k.endswith(".weight") and v.ndim == 5:
            v = v[:, :, -1].transpose(0, 2, 3, 1)
        elif k.endswith(".weight") and v.ndim == 4:
            v = v.transpose(0, 2, 3, 1)
        out[name] = v
    return out


__all__ = ["AutoencoderKLQwenImage", "map_weights"]
