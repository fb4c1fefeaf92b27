"""Qwen-Image 2.1's VAE (diffusers' ``AutoencoderKLQwenImage21``: RGBA, 64 latent channels, 16x) on MLX, for single
frames.

diffusers' class already folds the frame away (its causal convolutions are ``Conv2d``s), so the port is 2-D, NHWC
inside, sharing the Qwen-Image VAE port's residual, attention and mid blocks (:mod:`.vae_qwenimage`). What 2.1 adds
are residual shortcuts around each down and up block, and they do see time on one frame:

* the down shortcut (``QwenImage21AvgDown3D``) pads time causally to its factor (a zero frame *before* the frame
  where it halves time), gathers each ``t x 2 x 2`` neighbourhood into channels and averages consecutive groups of
  them into the output channels: the zero frame takes part in the average;
* the up shortcut (``QwenImage21DupUp3D``) repeats channels, spreads them over ``t x 2 x 2`` and keeps the last time
  slot (the decoder's first chunk drops the others);
* the temporal resamplers (``time_conv``) run only from the second frame on, so they never run here and
  :func:`map_weights` (the Qwen-Image port's: 2.1's kernels are all 4-D) drops them.

``encode`` / ``decode`` take and give NCHW; an RGB image is encoded with an opaque alpha channel (1.0 in [-1, 1], as
``QwenImage21Pipeline`` converts every image to RGBA), decoding gives the RGB channels, and latents are normalised
per channel (``(z - latents_mean) / latents_std``), as the torch engine's single-frame class
(``engines/torch_models/vae_qwenimage21.py``) does.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .layers import Conv2d, nchw_to_nhwc, nhwc_to_nchw, set_circular
from .vae_qwenimage import MidBlock, Resample, ResidualBlock, RMSNorm, map_weights


def avg_down(x, out: int, ft: int, fs: int):
    """``QwenImage21AvgDown3D`` on one NHWC frame (see the module note)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // fs, fs, w // fs, fs, c).transpose(0, 1, 3, 5, 2, 4)[:, :, :, :, None]  # (B,H',W',C,1,fs,fs)
    if ft > 1:  # the causal padding: zero frames before the frame
        x = mx.concatenate([mx.zeros((*x.shape[:4], ft - 1, fs, fs), dtype=x.dtype), x], axis=4)
    x = x.reshape(b, h // fs, w // fs, c * ft * fs * fs)
    return x.reshape(b, h // fs, w // fs, out, -1).mean(axis=-1)


def dup_up(x, out: int, ft: int, fs: int):
    """``QwenImage21DupUp3D`` on one NHWC frame, the first chunk's last time slot kept (see the module note)."""
    b, h, w, c = x.shape
    factor = ft * fs * fs
    x = mx.repeat(x, out * factor // c, axis=-1).reshape(b, h, w, out, ft, fs, fs)[:, :, :, :, ft - 1]
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * fs, w * fs, out)


class ResidualDownBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, res_blocks: int, temporal: bool, down: bool):
        super().__init__()
        self._shortcut = (out_dim, 2 if temporal else 1, 2 if down else 1)
        self.resnets = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(res_blocks)]
        if down:
            self.downsampler = Resample(out_dim, up=False)

    def __call__(self, x):
        skip = avg_down(x, *self._shortcut)
        for r in self.resnets:
            x = r(x)
        if "downsampler" in self:
            x = self.downsampler(x)
        return x + skip


class ResidualUpBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, res_blocks: int, temporal: bool, up: bool):
        super().__init__()
        self._shortcut = (out_dim, 2 if temporal else 1, 2) if up else None
        self.resnets = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(res_blocks + 1)]
        if up:
            self.upsampler = Resample(out_dim, up=True, out=out_dim)

    def __call__(self, x):
        skip = dup_up(x, *self._shortcut) if self._shortcut else None
        for r in self.resnets:
            x = r(x)
        if "upsampler" in self:
            x = self.upsampler(x)
        return x if skip is None else x + skip


class Encoder(nn.Module):
    def __init__(self, in_ch: int, dim: int, z2: int, mult, res_blocks: int, temporal):
        super().__init__()
        dims = [dim * u for u in [1, *mult]]
        last = len(mult) - 1
        self.conv_in = Conv2d(in_ch, dims[0], 3, padding=1)
        self.down_blocks = [ResidualDownBlock(a, b, res_blocks, bool(temporal[i]) if i != last else False, i != last)
                            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = Conv2d(dims[-1], z2, 3, padding=1)

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, dim: int, z: int, out_ch: int, mult, res_blocks: int, temporal):
        super().__init__()
        dims = [dim * u for u in [mult[-1], *mult[::-1]]]
        last = len(mult) - 1
        self.conv_in = Conv2d(z, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = [ResidualUpBlock(a, b, res_blocks, bool(temporal[i]) if i != last else False, i != last)
                          for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = Conv2d(dims[-1], out_ch, 3, padding=1)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.norm_out(x)))


class AutoencoderKLQwenImage21(nn.Module):
    """diffusers' ``AutoencoderKLQwenImage21`` on one frame, from its config dict; latents normalised per channel."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = dict(config)
        self._config = cfg
        dim, z = int(cfg.get("base_dim", 96)), int(cfg.get("z_dim", 64))
        mult, res = list(cfg.get("dim_mult", [1, 2, 4, 8, 8])), int(cfg.get("num_res_blocks", 2))
        temporal = list(cfg.get("temperal_downsample", [False, True, True, True]))
        if cfg.get("attn_scales") or not cfg.get("is_residual", True) or cfg.get("patch_size"):
            raise ValueError("attn_scales / is_residual=False / patch_size: layouts no released Qwen-Image 2.1 VAE uses (not ported)")
        self.z_dim = z
        self._in = int(cfg.get("in_channels", 4))
        self.encoder = Encoder(self._in, dim, 2 * z, mult, res, temporal)
        self.quant_conv = Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = Conv2d(z, z, 1)
        self.decoder = Decoder(int(cfg.get("decoder_base_dim") or dim), z, int(cfg.get("out_channels", 4)), mult, res, temporal[::-1])
        self._mean = mx.array(cfg["latents_mean"], dtype=mx.float32)
        self._std = mx.array(cfg["latents_std"], dtype=mx.float32)

    @property
    def config(self) -> dict:
        return self._config

    def encode(self, x):
        """NCHW image in [-1, 1] (RGB: an opaque alpha is added) -> the normalised latent distribution's mode (NCHW)."""
        x = nchw_to_nhwc(x)
        if x.shape[-1] == 3 and self._in == 4:
            x = mx.concatenate([x, mx.ones_like(x[..., :1])], axis=-1)
        mu = self.quant_conv(self.encoder(x))[..., : self.z_dim].astype(mx.float32)
        return nhwc_to_nchw((mu - self._mean) / self._std)

    def decode(self, z):
        """Normalised NCHW latent -> NCHW RGB image in [-1, 1] (clamped, as diffusers' decode; the alpha dropped)."""
        z = nchw_to_nhwc(z).astype(mx.float32) * self._std + self._mean
        x = self.decoder(self.post_quant_conv(z.astype(self.post_quant_conv.weight.dtype)))
        return nhwc_to_nchw(mx.clip(x[..., :3], -1.0, 1.0))

    def __call__(self, sample):
        return self.decode(self.encode(sample))

    def set_circular(self, on: bool) -> None:
        set_circular(self, on)


__all__ = ["AutoencoderKLQwenImage21", "map_weights"]
