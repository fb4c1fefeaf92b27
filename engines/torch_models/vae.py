"""VAEs on torch: from a single file (original or diffusers layout, or the VAE inside an all-in-one
checkpoint) or a diffusers ``vae`` folder."""

from __future__ import annotations

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
