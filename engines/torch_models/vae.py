"""VAEs on torch: from a single file (original or diffusers layout, or the VAE inside an all-in-one
checkpoint) or a diffusers ``vae`` folder."""

from __future__ import annotations

import functools
import json

from ..model_files import resolve, vae_config_for, vae_folder, vae_in
from . import convert
from .building import build_empty, diffusers_class, load_into, prefixed
from .tensors import open_tensors, torch_dtype


def build_vae(cfg: dict):
    """The diffusers VAE class of ``cfg`` built on the meta device."""
    cls = diffusers_class(cfg.get("_class_name", "AutoencoderKL"))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return build_empty(lambda: cls.from_config(cfg))


def vae_from(engine, source, det, prefix: str, family, variant, dtype):
    """The VAE under ``prefix`` in the tensor source ``source`` (detected as ``det``) -> (model, config)."""
    cfg = vae_config_for(det, family, variant)
    model = build_vae(cfg)
    model = load_into(model, source, prefixed(source, prefix), lambda sd: convert.convert_vae(det.variant or "", sd, det.layout, cfg),
                      dtype=dtype, device=engine.torch_device, what="VAE")
    return model, dict(model.config)


def load_vae(engine, path, *, family: str | None = None, variant: str | None = None, dtype=None):
    """A VAE from a single file (original or diffusers layout) or a diffusers ``vae`` folder -> (model, config)."""
    p = resolve(path, ("vae",))
    dt = torch_dtype(dtype or engine.policy.vae_dtype)
    if p.is_dir():
        sub = vae_folder(p)
        cfg = json.loads((sub / "config.json").read_text())
        cls = diffusers_class(cfg.get("_class_name", "AutoencoderKL"))
        model = cls.from_pretrained(sub, local_files_only=True, torch_dtype=dt).to(engine.torch_device).eval().requires_grad_(False)
        return model, dict(model.config)
    source = open_tensors(p)
    try:
        det, prefix = vae_in(source.tensors, p.name, family)
        return vae_from(engine, source, det, prefix, family, variant, dt)
    finally:
        source.close()


# --------------------------------------------------------------------------- VAEs whose latents are patched and normalised


def _patchify(z, p: int):
    """``[B,C,H,W]`` -> ``[B,C*p*p,H/p,W/p]``, each channel's p x p patch stacked after it (the FLUX.2 pipelines')."""
    b, c, h, w = z.shape
    return z.view(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, h // p, w // p)


def _unpatchify(z, p: int):
    b, c, h, w = z.shape
    return z.reshape(b, c // (p * p), p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (p * p), h * p, w * p)


@functools.cache
def _latent_flux2():
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_flux2 import AutoencoderKLFlux2 as Base
    from diffusers.models.autoencoders.vae import EncoderOutput

    class AutoencoderKLFlux2(Base):
        """diffusers' ``AutoencoderKLFlux2`` whose ``encode``/``decode`` speak the latents the transformer samples, as
        ``Flux2Pipeline`` / ``Flux2KleinPipeline`` make them: the distribution's mode, patchified 2x2 into channels,
        normalised by the batch-norm running statistics (``(z - mean) / sqrt(var + eps)``); ``decode`` undoes both.
        ``encode`` returns the latents as ``.latent`` (a tuple without ``return_dict``). Built from the same config and weights as the diffusers class."""

        def _stats(self, z):
            mean = self.bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
            std = torch.sqrt(self.bn.running_var.view(1, -1, 1, 1) + self.config.batch_norm_eps).to(z.device, z.dtype)
            return mean, std

        def _patch(self):
            return int(self.config.patch_size[0])

        def encode(self, x, return_dict: bool = True):
            z = _patchify(super().encode(x).latent_dist.mode(), self._patch())
            mean, std = self._stats(z)
            z = (z - mean) / std
            return EncoderOutput(latent=z) if return_dict else (z,)

        def _raw(self, z):
            mean, std = self._stats(z)
            return _unpatchify(z * std + mean, self._patch())

        def decode(self, z, return_dict: bool = True, **kw):
            return super().decode(self._raw(z), return_dict=return_dict, **kw)

        def tiled_decode(self, z, return_dict: bool = True):
            return super().tiled_decode(self._raw(z), return_dict=return_dict)

    return AutoencoderKLFlux2


def __getattr__(name: str):
    """``AutoencoderKLFlux2``: the class :func:`.building.diffusers_class` builds for that name (made on first use)."""
    if name == "AutoencoderKLFlux2":
        return _latent_flux2()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
