"""The KL autoencoder of Stable Diffusion / SDXL / SD3 / Flux / PixArt / DiT (and FLUX.2's, with its latent
batch-norm statistics) on MLX.

A port of diffusers' ``AutoencoderKL``: an encoder of ResNet down blocks, a mid block with
one single-head self-attention, and a mirrored decoder with nearest-2x upsampling. The
parameter paths are diffusers' (``encoder.down_blocks.0.resnets.0.conv1.weight``), so
:func:`map_weights` only turns conv kernels to MLX's OHWI layout.

Inside, tensors are NHWC (MLX's conv layout); the public ``encode``/``decode`` take and give
NCHW like diffusers. Latents are unscaled: the caller applies ``scaling_factor`` and
``shift_factor``.
"""

from __future__ import annotations

import re

import mlx.core as mx
import mlx.nn as nn

from .layers import Conv2d, map_names, nchw_to_nhwc, nhwc_to_nchw, sdpa_heads
from .layers import set_circular as _set_circular

_ACTS = {
    "silu": nn.silu,
    "swish": nn.silu,
    "gelu": nn.gelu,
    "relu": nn.relu,
    "mish": nn.mish,
}


def activation(name: str):
    """The activation diffusers' ``get_activation(name)`` gives, as a function."""
    try:
        return _ACTS[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}") from None


def group_norm(groups: int, channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """torch ``nn.GroupNorm`` semantics (groups of consecutive channels) on NHWC input."""
    return nn.GroupNorm(groups, channels, eps=eps, affine=True, pytorch_compatible=True)


class ResnetBlock2D(nn.Module):
    """diffusers' ``ResnetBlock2D`` without a time embedding (the VAE's): two norm-act-conv
    steps plus the (1x1-projected when the width changes) input."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6, act: str = "silu",
                 output_scale_factor: float = 1.0):
        super().__init__()
        self.norm1 = group_norm(groups, in_channels, eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(groups, out_channels, eps)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = Conv2d(in_channels, out_channels, 1)
        self._act = activation(act)
        self._scale = float(output_scale_factor)

    def __call__(self, x):
        h = self.conv1(self._act(self.norm1(x)))
        h = self.conv2(self._act(self.norm2(h)))
        if "conv_shortcut" in self:
            x = self.conv_shortcut(x)
        out = x + h
        return out / self._scale if self._scale != 1.0 else out


class VAEAttention(nn.Module):
    """The mid block's spatial self-attention: group norm, linear q/k/v over the H*W tokens,
    output projection ``to_out.0``, residual added back."""

    def __init__(self, channels: int, head_dim: int, groups: int, eps: float = 1e-6,
                 rescale_output_factor: float = 1.0):
        super().__init__()
        self.group_norm = group_norm(groups, channels, eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = [nn.Linear(channels, channels)]
        self.heads = max(1, channels // int(head_dim or channels))
        self._rescale = float(rescale_output_factor)

    def __call__(self, x):
        b, h, w, c = x.shape
        t = self.group_norm(x).reshape(b, h * w, c)
        d = c // self.heads

        def split(a):
            return a.reshape(b, h * w, self.heads, d).transpose(0, 2, 1, 3)

        q, k, v = split(self.to_q(t)), split(self.to_k(t)), split(self.to_v(t))
        o = sdpa_heads(q, k, v).transpose(0, 2, 1, 3).reshape(b, h * w, c)
        o = self.to_out[0](o).reshape(b, h, w, c)
        out = o + x
        return out / self._rescale if self._rescale != 1.0 else out


class UNetMidBlock2D(nn.Module):
    """ResNet, (attention, ResNet) once: diffusers' ``UNetMidBlock2D`` with ``num_layers=1``."""

    def __init__(self, channels: int, groups: int, act: str, add_attention: bool = True):
        super().__init__()
        self.resnets = [ResnetBlock2D(channels, channels, groups, act=act) for _ in range(2)]
        if add_attention:
            self.attentions = [VAEAttention(channels, channels, groups)]

    def __call__(self, x):
        x = self.resnets[0](x)
        if "attentions" in self:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample2D(nn.Module):
    """Zero-pad one row/column at the bottom/right, then a stride-2 3x3 conv (``padding=0``,
    so circular mode leaves it alone, exactly as torch's padding_mode does)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=0)

    def __call__(self, x):
        x = mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def __call__(self, x):
        b, h, w, c = x.shape
        x = mx.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
        return self.conv(x)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, act: str, add_downsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, act=act)
                        for i in range(layers)]
        if add_downsample:
            self.downsamplers = [Downsample2D(out_channels)]

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        if "downsamplers" in self:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, act: str, add_upsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, act=act)
                        for i in range(layers)]
        if add_upsample:
            self.upsamplers = [Upsample2D(out_channels)]

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        if "upsamplers" in self:
            x = self.upsamplers[0](x)
        return x


def _check_blocks(kinds, want: str, what: str):
    for k in kinds:
        if k != want:
            raise ValueError(f"{what} block type {k!r} is not supported by the MLX AutoencoderKL (only {want})")


class Encoder(nn.Module):
    def __init__(self, in_channels: int, latent_channels: int, block_out_channels, layers_per_block: int,
                 groups: int, act: str, add_attention: bool = True, double_z: bool = True):
        super().__init__()
        ch = list(block_out_channels)
        self.conv_in = Conv2d(in_channels, ch[0], 3, padding=1)
        self.down_blocks = []
        prev = ch[0]
        for i, c in enumerate(ch):
            self.down_blocks.append(DownEncoderBlock2D(prev, c, layers_per_block, groups, act, i < len(ch) - 1))
            prev = c
        self.mid_block = UNetMidBlock2D(ch[-1], groups, act, add_attention)
        self.conv_norm_out = group_norm(groups, ch[-1])
        self.conv_out = Conv2d(ch[-1], (2 if double_z else 1) * latent_channels, 3, padding=1)
        self._act = activation(act)

    def __call__(self, x):
        x = self.conv_in(x)
        for blk in self.down_blocks:
            x = blk(x)
        x = self.mid_block(x)
        return self.conv_out(self._act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, latent_channels: int, out_channels: int, block_out_channels, layers_per_block: int,
                 groups: int, act: str, add_attention: bool = True):
        super().__init__()
        rev = list(reversed(list(block_out_channels)))
        self.conv_in = Conv2d(latent_channels, rev[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(rev[0], groups, act, add_attention)
        self.up_blocks = []
        prev = rev[0]
        for i, c in enumerate(rev):
            self.up_blocks.append(UpDecoderBlock2D(prev, c, layers_per_block + 1, groups, act, i < len(rev) - 1))
            prev = c
        self.conv_norm_out = group_norm(groups, rev[-1])
        self.conv_out = Conv2d(rev[-1], out_channels, 3, padding=1)
        self._act = activation(act)

    def __call__(self, z):
        x = self.conv_in(z)
        x = self.mid_block(x)
        for blk in self.up_blocks:
            x = blk(x)
        return self.conv_out(self._act(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """diffusers' ``AutoencoderKL`` from its config dict (``dict(vae.config)``)."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = dict(config)
        self._config = cfg  # underscore: kept out of the parameter tree
        ch = tuple(cfg.get("block_out_channels", (64,)))
        n = len(ch)
        down = tuple(cfg.get("down_block_types", ("DownEncoderBlock2D",) * n))
        up = tuple(cfg.get("up_block_types", ("UpDecoderBlock2D",) * n))
        _check_blocks(down, "DownEncoderBlock2D", "encoder")
        _check_blocks(up, "UpDecoderBlock2D", "decoder")
        if len(down) != n or len(up) != n:
            raise ValueError("down/up block types must match block_out_channels in length")
        lc = int(cfg.get("latent_channels", 4))
        lpb = int(cfg.get("layers_per_block", 1))
        groups = int(cfg.get("norm_num_groups", 32))
        act = cfg.get("act_fn", "silu")
        attn = bool(cfg.get("mid_block_add_attention", True))
        self.latent_channels = lc
        self.encoder = Encoder(int(cfg.get("in_channels", 3)), lc, ch, lpb, groups, act, attn)
        self.decoder = Decoder(lc, int(cfg.get("out_channels", 3)), ch, lpb, groups, act, attn)
        if cfg.get("use_quant_conv", True):
            self.quant_conv = Conv2d(2 * lc, 2 * lc, 1)
        if cfg.get("use_post_quant_conv", True):
            self.post_quant_conv = Conv2d(lc, lc, 1)
        self.scaling_factor = cfg.get("scaling_factor", 0.18215)
        self.shift_factor = cfg.get("shift_factor")

    @property
    def config(self) -> dict:
        """The config dict the model was built from."""
        return self._config

    # ----------------------------------------------------------------- NHWC core
    def encode_nhwc(self, x):
        """Mean of the latent distribution (NHWC) for an NHWC image in [-1, 1]."""
        h = self.encoder(x)
        if "quant_conv" in self:
            h = self.quant_conv(h)
        return h[..., : self.latent_channels]

    def decode_nhwc(self, z):
        if "post_quant_conv" in self:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    # ----------------------------------------------------------------- NCHW interface
    def encode(self, x):
        """``x`` NCHW in [-1, 1] -> the latent distribution's mode (NCHW, unscaled)."""
        return nhwc_to_nchw(self.encode_nhwc(nchw_to_nhwc(x)))

    def decode(self, z):
        """``z`` NCHW (unscaled latent) -> NCHW image in about [-1, 1]."""
        return nhwc_to_nchw(self.decode_nhwc(nchw_to_nhwc(z)))

    def __call__(self, sample):
        """diffusers' forward with ``sample_posterior=False``: decode(encode(sample))."""
        return self.decode(self.encode(sample))

    def set_circular(self, on: bool) -> None:
        """Circular padding in every padded conv (encoder and decoder), for seamless tiles."""
        _set_circular(self, on)


class AutoencoderKLFlux2(AutoencoderKL):
    """diffusers' ``AutoencoderKLFlux2``: the KL autoencoder above (32 latent channels) plus the latent batch-norm
    statistics ``bn.running_mean`` / ``bn.running_var`` (affine-free, over the 2x2-patchified latent). As the torch
    engine's class, ``encode``/``decode`` speak the latents the transformer samples (``Flux2Pipeline``'s): the
    mode patchified into channels and normalised, ``(z - mean) / sqrt(var + eps)``; :meth:`encode_raw` /
    :meth:`decode_raw` are the plain autoencoder."""

    def __init__(self, config: dict):
        super().__init__(config)
        self.patch = int((self.config.get("patch_size") or (2, 2))[0])
        self.bn_eps = float(self.config.get("batch_norm_eps", 1e-4))
        self.bn = {"running_mean": mx.zeros((self.latent_channels * self.patch ** 2,)),
                   "running_var": mx.ones((self.latent_channels * self.patch ** 2,))}

    def _stats(self):
        mean = self.bn["running_mean"].astype(mx.float32)
        return mean, mx.sqrt(self.bn["running_var"].astype(mx.float32) + self.bn_eps)

    def encode_raw(self, x):
        return super().encode(x)

    def decode_raw(self, z):
        return super().decode(z)

    def encode(self, x):
        """``x`` NCHW in [-1, 1] -> normalised, patchified latents ``[B, 4*C, H/16, W/16]`` (float32)."""
        z = patchify(self.encode_raw(x).astype(mx.float32), self.patch)
        mean, std = self._stats()
        return (z - mean[:, None, None]) / std[:, None, None]

    def decode(self, z):
        mean, std = self._stats()
        z = z.astype(mx.float32) * std[:, None, None] + mean[:, None, None]
        return self.decode_raw(unpatchify(z, self.patch).astype(self.decoder.conv_in.weight.dtype))


def patchify(z, p: int):
    """NCHW ``[B,C,H,W]`` -> ``[B,C*p*p,H/p,W/p]``, each channel's p x p patch stacked after it (the FLUX.2 pipelines')."""
    b, c, h, w = z.shape
    return z.reshape(b, c, h // p, p, w // p, p).transpose(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, h // p, w // p)


def unpatchify(z, p: int):
    b, c, h, w = z.shape
    return z.reshape(b, c // (p * p), p, p, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(b, c // (p * p), h * p, w * p)


LDM_PREFIXES = ("first_stage_model.", "vae.")
_LDM_ATTN = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}


def is_ldm_layout(sd: dict) -> bool:
    """True for the original (LDM / BFL ``ae.safetensors``) key layout: ``encoder.down.0.block.0...``."""
    return any(re.match(r"(encoder\.(down|mid)|decoder\.(up|mid))\.", _strip_prefix(k)) for k in sd)


def _strip_prefix(k: str) -> str:
    for p in LDM_PREFIXES:
        if k.startswith(p):
            return k[len(p):]
    return k


def ldm_to_diffusers(sd: dict) -> dict:
    """Original LDM VAE names (optionally under ``first_stage_model.`` / ``vae.``) -> diffusers'.

    The decoder's ``up.N`` run from the highest resolution in LDM and from the lowest in diffusers,
    so they are renumbered; the mid attention's 1x1-conv q/k/v/proj_out become linear weights.
    """
    ups = [int(m.group(1)) for k in sd for m in [re.match(r"decoder\.up\.(\d+)\.", _strip_prefix(k))] if m]
    n_up = max(ups) + 1 if ups else 0
    out = {}
    for key, v in sd.items():
        k = _strip_prefix(key)
        k = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", k)
        k = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{n_up - 1 - int(m.group(1))}.resnets.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up_blocks.{n_up - 1 - int(m.group(1))}.upsamplers.0.", k)
        k = re.sub(r"^(encoder|decoder)\.mid\.block_(\d+)\.", lambda m: f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}.", k)
        m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(norm\.|q\.|k\.|v\.|proj_out\.)(.*)$", k)
        if m:
            k = f"{m.group(1)}.mid_block.attentions.0.{_LDM_ATTN[m.group(2)]}{m.group(3)}"
            if m.group(2) != "norm." and len(v.shape) > 2:
                v = v.reshape(v.shape[0], v.shape[1])
        k = k.replace(".nin_shortcut.", ".conv_shortcut.")
        k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", k)
        out[k] = v
    return out


def map_weights(sd: dict) -> dict:
    """A KL VAE state dict -> this port's names (conv kernels to OHWI).

    Takes diffusers' names, the original LDM / BFL layout (also under ``first_stage_model.`` or
    ``vae.``, as in single-file checkpoints: pass only the VAE's tensors), and old diffusers
    checkpoints (before the attention refactor) whose mid attention is ``query/key/value/proj_attn``,
    possibly stored as 1x1 convs.
    """
    if is_ldm_layout(sd):
        sd = ldm_to_diffusers(sd)
    sd = {k: v for k, v in sd.items() if k != "bn.num_batches_tracked"}  # a training counter: nothing reads it
    old = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}
    out = {}
    for k, v in sd.items():
        name = k
        if ".attentions." in k:
            for a, b in old.items():
                if ("." + a) in name:
                    name = name.replace("." + a, "." + b)
            if k.endswith(".weight") and len(v.shape) > 2 and "group_norm" not in k:
                v = v.reshape(v.shape[0], v.shape[1])
        out[name] = v
    return map_names(out)


__all__ = ["AutoencoderKL", "AutoencoderKLFlux2", "patchify", "unpatchify", "map_weights", "ldm_to_diffusers", "is_ldm_layout"]
