"""diffusers' ``AutoencoderKLQwenImage21`` (Qwen-Image 2.1's VAE: RGBA, 64 latent channels, 16x) on single frames, as
SpriteForge's engines call a VAE.

The subclass keeps the real class's weights and numerics and changes only the calling convention, as
``QwenImage21Pipeline`` uses the class: images and latents are 4-D ``[B,C,H,W]`` (the frame axis is added and removed
here), an RGB image is encoded with an opaque alpha channel (the pipeline converts every image to RGBA, alpha 255 =
1.0 in [-1, 1]), decoding gives the RGB channels (the alpha channel the VAE also decodes is dropped: SpriteForge's
images are RGB), and latents are normalised per channel (``(z - latents_mean) / latents_std``, from the config), so the
handle's scaling is 1 and its shift 0.
"""

from __future__ import annotations

import functools

import torch
from diffusers.models.autoencoders.autoencoder_kl_qwenimage21 import AutoencoderKLQwenImage21 as _Frames
from diffusers.models.autoencoders.autoencoder_kl_qwenimage21 import QwenImage21CausalConv3d
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from .vae_qwenimage import SingleFrame


def _own_padding(conv) -> None:
    """A causal conv's zero padding (its own ``F.pad`` before the ``Conv2d``) done by the ``Conv2d`` itself (the same
    numbers), so that seamless decoding (``generation.circular``, which makes padded convolutions pad circularly)
    reaches it, as the MLX port's convolutions do."""
    w, _, h, _ = conv._padding
    conv._padding = (0, 0, 0, 0)
    conv.padding = (h, w)
    conv._reversed_padding_repeated_twice = (w, w, h, h)


class AutoencoderKLQwenImage21(SingleFrame, _Frames):
    """``encode(x)`` and ``decode(z)`` as ``AutoencoderKL``'s, on one RGB frame, latents normalised."""

    @functools.wraps(_Frames.__init__)  # diffusers reads the config's fields from this signature
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for m in self.modules():
            if isinstance(m, QwenImage21CausalConv3d):
                _own_padding(m)

    def encode(self, x, return_dict: bool = True):
        """``x`` [B,3,H,W] in [-1, 1] (or [B,4,H,W] with alpha) -> the normalised latent distribution ([B,64,h,w])."""
        if x.shape[1] == 3 and self.config.in_channels == 4:
            x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        dist = self._normalised(super().encode(x[:, :, None], return_dict=False)[0])
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z, return_dict: bool = True):
        """Normalised latents [B,64,h,w] -> RGB images [B,3,H,W] in [-1, 1]."""
        x = super().decode(self._frames(z), return_dict=False)[0][:, :3, 0]
        return DecoderOutput(sample=x) if return_dict else (x,)

    def tiled_decode(self, z, return_dict: bool = True):
        x = super().tiled_decode(self._frames(z), return_dict=False)[0][:, :3, 0]
        return DecoderOutput(sample=x) if return_dict else (x,)


__all__ = ["AutoencoderKLQwenImage21"]
