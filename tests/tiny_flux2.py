"""Tiny FLUX.2 models built with the REAL classes (diffusers' ``Flux2Transformer2DModel``, ``AutoencoderKLFlux2``)
and saved in the REAL layouts: BFL's single files (``flux-2-klein-4b.safetensors`` keys, the VAE's
``ae.safetensors`` / ``flux2-vae.safetensors`` with the quant convs inside ``encoder.`` / ``decoder.``) and diffusers'.

    build_flux2_vae(seed=0)                      -> AutoencoderKLFlux2 (4 blocks: scale factor 8; 2x2 patch)
    make_flux2_vae(root, layout="original"|"diffusers"|"folder", name=None)
    flux2_vae_to_original(sd)                    -> BFL key names (inverse of diffusers' converter + quant renames)
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tiny_models import _randomize, _save_file, vae_to_original


# --------------------------------------------------------------------------- the VAE


def build_flux2_vae(seed: int = 0):
    """A tiny ``AutoencoderKLFlux2`` with random weights and random (but valid) batch-norm statistics."""
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=32, norm_num_groups=32, sample_size=64)
    vae = _randomize(vae, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.3 * torch.randn(vae.bn.running_mean.shape, generator=g))
        vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape, generator=g))
        vae.bn.num_batches_tracked.fill_(1234)
    return vae.eval()


_QUANT = {"quant_conv.": "encoder.quant_conv.", "post_quant_conv.": "decoder.post_quant_conv."}


def flux2_vae_to_original(sd: dict) -> dict:
    """diffusers ``AutoencoderKLFlux2`` keys -> BFL's (``flux2/autoencoder.py``): the LDM names, the quant convs
    inside the encoder/decoder, the mid attention's q/k/v/proj_out as 1x1 convs; ``bn.*`` as it is."""
    out = {}
    for k, v in vae_to_original({k: v for k, v in sd.items() if not k.startswith("bn.")}).items():
        for old, new in _QUANT.items():
            if k.startswith(old):
                k = new + k[len(old):]
        out[k] = v
    out.update({k: v for k, v in sd.items() if k.startswith("bn.")})
    return out


def make_flux2_vae(root, layout: str = "original", seed: int = 0, name: str | None = None) -> Path:
    """``layout``: ``original`` (BFL names), ``diffusers`` (single file, diffusers names; both published as
    ``flux2-vae.safetensors``), ``folder`` (a diffusers ``vae`` folder)."""
    root = Path(root)
    vae = build_flux2_vae(seed)
    if layout == "folder":
        d = root / (name or "flux2-vae")
        if not (d / "config.json").exists():
            vae.save_pretrained(str(d))
        return d
    path = root / (name or f"flux2-vae-{layout}.safetensors")
    if path.exists():
        return path
    sd = vae.state_dict()
    return _save_file(flux2_vae_to_original(sd) if layout == "original" else sd, path)


def original_names_like_the_release(names) -> set:
    """BFL VAE names with block indices replaced by ``N`` (to compare a tiny file's names with the real manifest's)."""
    return {re.sub(r"\.\d+\.", ".N.", re.sub(r"\.\d+\.", ".N.", n)) for n in names}
