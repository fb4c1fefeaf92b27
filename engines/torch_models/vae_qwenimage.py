"""diffusers' ``AutoencoderKLQwenImage`` (the Wan-2.1 causal 3-D VAE) on single frames, as SpriteForge's engines call a VAE.

The subclass keeps the real class's weights and numerics and changes only the calling convention: images and
latents are 4-D ``[B,C,H,W]`` (one frame; the frame axis is added and removed here) and latents are normalised per
channel as ``QwenImagePipeline`` does (``(z - latents_mean) / latents_std``, from the config), so the handle's
scaling is 1 and its shift 0. The MLX port (``engines/mlx_models/vae_qwenimage.py``) does the same.
"""

from __future__ import annotations

import functools

import torch
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import AutoencoderKLQwenImage as _Frames
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput


def _own_spatial_padding(conv) -> None:
    """A causal conv's spatial zero padding done by the ``Conv3d`` itself (the same numbers), so that seamless decoding
    (``generation.circular``, which makes padded convolutions pad circularly) reaches it; the causal time padding
    stays where diffusers puts it (``_padding``, applied before the convolution)."""
    w, _, h, _, t, _ = conv._padding
    conv._padding = (0, 0, 0, 0, t, 0)
    conv.padding = (0, h, w)
    conv._reversed_padding_repeated_twice = (w, w, h, h, 0, 0)


class SingleFrame:
    """What a single-frame subclass of a video VAE with per-channel latent statistics shares (this module's and
    Qwen-Image 2.1's): the statistics, a frame's distribution normalised, latents back to one frame."""

    def _stats(self, like):
        def col(v):
            return torch.tensor(v, device=like.device, dtype=torch.float32).view(1, -1, 1, 1)

        return col(self.config.latents_mean), col(self.config.latents_std)

    def _normalised(self, post):
        """The video VAE's posterior of one frame -> its normalised 4-D distribution."""
        mean, std = self._stats(post.mean)
        mu = (post.mean[:, :, 0].float() - mean) / std
        logvar = post.logvar[:, :, 0].float() - 2.0 * torch.log(std)
        return DiagonalGaussianDistribution(torch.cat([mu, logvar], 1).to(post.mean.dtype))

    def _frames(self, z):
        mean, std = self._stats(z)
        return (z.float() * std + mean).to(z.dtype)[:, :, None]


class AutoencoderKLQwenImage(SingleFrame, _Frames):
    """``encode(x)`` and ``decode(z)`` as ``AutoencoderKL``'s, on one frame, latents normalised."""

    @functools.wraps(_Frames.__init__)  # diffusers reads the config's fields from this signature
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for m in self.modules():
            if isinstance(m, QwenImageCausalConv3d):
                _own_spatial_padding(m)

    def encode(self, x, return_dict: bool = True):
        """``x`` [B,3,H,W] in [-1, 1] -> the normalised latent distribution (``latent_dist``, [B,16,h,w])."""
        dist = self._normalised(super().encode(x[:, :, None], return_dict=False)[0])
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z, return_dict: bool = True):
        """Normalised latents [B,16,h,w] -> images [B,3,H,W] in [-1, 1]."""
        x = super().decode(self._frames(z), return_dict=False)[0][:, :, 0]
        return DecoderOutput(sample=x) if return_dict else (x,)

    def tiled_decode(self, z, return_dict: bool = True):
        x = super().tiled_decode(self._frames(z), return_dict=False)[0][:, :, 0]
        return DecoderOutput(sample=x) if return_dict else (x,)


__all__ = ["AutoencoderKLQwenImage", "SingleFrame"]
