"""Sampler previews that follow ComfyUI's own preview setting.

ComfyUI decides with ``--preview-method`` (``comfy.cli_args.args.preview_method``, a
``LatentPreviewMethod`` whose values are ``none``, ``auto``, ``latent2rgb`` and ``taesd``; the default
is ``none``) and sends each step's preview as ``("JPEG", PIL.Image, args.preview_size)`` through
``ProgressBar.update_absolute``. This module makes the same decision for SpriteForge's sampler:

* ``none`` (and everything outside ComfyUI): :func:`make_previewer` returns ``None`` and the sampler
  does no preview work at all;
* ``auto`` means ``latent2rgb``, as in ComfyUI;
* ``latent2rgb``: a linear map from the latent channels to RGB, applied to the first image of the
  batch. For a release VAE (PixArt-alpha/DiT = SD1 VAE, PixArt-Sigma = SDXL VAE, SD3, Flux) the map is
  ComfyUI's own (read from ``comfy.latent_formats`` at run time); for any other VAE (the built-in
  demo model, Sana's DC-AE) it is measured once from the VAE itself (:func:`fit_latent2rgb`);
* ``taesd``: ComfyUI's TAESD decoder from ``models/vae_approx`` when the family has one and the
  file is there, else (with a warning, like ComfyUI) ``latent2rgb``.

The latents given to a previewer are the sampler's ``denoised`` estimate in model space (VAE-scaled,
``(z - shift) * scale``), the space ComfyUI's latent formats and TAESD decoders work in.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np

from .models.families import registry

log = logging.getLogger("spriteforge")

METHODS = ("none", "auto", "latent2rgb", "taesd")
DEFAULT_SIZE = 512
_UNSET = object()

# ComfyUI latent formats of the release VAEs: name -> (channels, VAE factor, scaling, shift, TAESD decoder).
LATENT_FORMATS = {
    "SD15": (4, 8, 0.18215, 0.0, "taesd_decoder"),
    "SDXL": (4, 8, 0.13025, 0.0, "taesdxl_decoder"),
    "SD3": (16, 8, 1.5305, 0.0609, "taesd3_decoder"),
    "Flux": (16, 8, 0.3611, 0.1159, "taef1_decoder"),
}
# the shipped VAE configs (a family's ``release_vae``) ComfyUI has a latent format for
VAE_LATENT_FORMATS = {"vae-kl4-sd": "SD15", "vae-kl4-sdxl": "SDXL", "vae-kl16-sd3": "SD3", "vae-kl16-flux": "Flux"}


def comfy_args():
    """ComfyUI's parsed command line (``comfy.cli_args.args``), or None outside ComfyUI."""
    try:
        from comfy.cli_args import args  # type: ignore

        return args
    except Exception:
        return None


def preview_method(args=_UNSET) -> str:
    """``"none"``, ``"latent2rgb"`` or ``"taesd"``: what ComfyUI's ``args.preview_method`` asks for.

    ``args`` is ComfyUI's parsed command line (default: looked up; None outside ComfyUI, which means
    no previews). ``auto`` resolves to ``latent2rgb`` as ComfyUI's ``get_previewer`` does.
    """
    if args is _UNSET:
        args = comfy_args()
    if args is None:
        return "none"
    m = getattr(args, "preview_method", None)
    value = str(getattr(m, "value", m) or "none").lower()
    if value not in METHODS:
        log.warning("[spriteforge] unknown preview method %r: no previews", value)
        return "none"
    return "latent2rgb" if value == "auto" else value


def preview_size(args=_UNSET) -> int:
    """ComfyUI's ``--preview-size`` (the longest side of a preview), 512 by default."""
    if args is _UNSET:
        args = comfy_args()
    try:
        return int(getattr(args, "preview_size", DEFAULT_SIZE) or DEFAULT_SIZE)
    except (TypeError, ValueError):
        return DEFAULT_SIZE


def latent_format_name(handle) -> str | None:
    """The ComfyUI latent format of the handle's VAE when it is a release VAE of its family, else None."""
    fam = registry.get(str(getattr(handle, "family", "") or ""))
    name = VAE_LATENT_FORMATS.get(fam.release_vae(str(getattr(handle, "variant", "") or ""))) if fam else None
    if name is None:
        return None
    ch, factor, scale, shift, _t = LATENT_FORMATS[name]
    ok = (int(getattr(handle, "latent_channels", 0)) == ch and int(getattr(handle, "vae_scale_factor", 0)) == factor
          and abs(float(getattr(handle, "scaling_factor", 0.0)) - scale) < 1e-3
          and abs(float(getattr(handle, "shift_factor", 0.0) or 0.0) - shift) < 1e-3)
    return name if ok else None


def comfy_rgb_factors(name: str | None):
    """``(factors [C,3], bias [3] or None)`` from ComfyUI's ``comfy.latent_formats``, or None."""
    if name is None:
        return None
    try:
        import comfy.latent_formats as LF  # type: ignore

        fmt = getattr(LF, name)()
    except Exception:
        return None
    f = getattr(fmt, "latent_rgb_factors", None)
    if f is None:
        return None
    b = getattr(fmt, "latent_rgb_factors_bias", None)
    return np.asarray(f, np.float32), (None if b is None else np.asarray(b, np.float32))


_FITS: dict = {}


def fit_latent2rgb(engine, handle, amplitude: float = 1.0, size: int = 2):
    """Measure a latent->RGB linear map (factors ``[C,3]``, bias ``[3]``, RGB in -1..1) from the VAE.

    Decodes the zero latent and ``+-amplitude`` along each channel on a ``size x size`` latent; the
    bias is the zero latent's mean colour and each channel's factors the central difference of the
    mean colour. One decode of ``2C+1`` tiny latents, cached per VAE object.
    """
    vae = getattr(handle, "vae", None)
    key = id(vae)
    hit = _FITS.get(key)
    if hit is not None and hit[0]() is vae:
        return hit[1], hit[2]
    C = int(handle.latent_channels)
    lat = np.zeros((2 * C + 1, C, size, size), np.float32)
    for i in range(C):
        lat[1 + 2 * i, i] = amplitude
        lat[2 + 2 * i, i] = -amplitude
    img = np.asarray(engine.vae_decode(handle, lat), np.float32)  # [N,H,W,3] 0..1
    mean = img.reshape(img.shape[0], -1, 3).mean(axis=1) * 2.0 - 1.0
    bias = mean[0]
    factors = (mean[1::2] - mean[2::2]) / (2.0 * amplitude)
    try:
        _FITS[key] = (weakref.ref(vae), factors, bias)
    except TypeError:  # not weak-referenceable: do not cache
        pass
    return factors, bias


def _to_image(rgb_hwc: np.ndarray):
    """ComfyUI's preview conversion: -1..1 -> 0..255 uint8 PIL image."""
    from PIL import Image

    return Image.fromarray((np.clip((rgb_hwc + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8))


def _first(x0, engine):
    a = x0[:1]
    if hasattr(a, "detach"):
        return a.detach().float().cpu().numpy()[0]
    if isinstance(a, np.ndarray):
        return a.astype(np.float32)[0]
    return np.asarray(engine.to_numpy(a) if engine is not None else a, np.float32)[0]


class Latent2RGBPreviewer:
    """The first image of a latent batch through a linear channel->RGB map."""

    method = "latent2rgb"

    def __init__(self, factors, bias=None, max_size: int = DEFAULT_SIZE, engine=None, source: str = ""):
        self.factors = np.asarray(factors, np.float32)
        self.bias = None if bias is None else np.asarray(bias, np.float32)
        self.max_size = int(max_size)
        self.engine = engine
        self.source = source

    def rgb(self, x0) -> np.ndarray:
        """``[h,w,3]`` in about -1..1 for the first latent of ``x0`` (``[B,C,h,w]``)."""
        lat = _first(x0, self.engine)  # [C,h,w]
        out = np.einsum("chw,cr->hwr", lat, self.factors)
        if self.bias is not None:
            out = out + self.bias
        return out

    def __call__(self, x0):
        return ("JPEG", _to_image(self.rgb(x0)), self.max_size)


class TAESDPreviewer:
    """ComfyUI's TAESD decoder on the first latent of the batch (inside ComfyUI only)."""

    method = "taesd"

    def __init__(self, taesd, max_size: int = DEFAULT_SIZE, engine=None):
        self.taesd = taesd
        self.max_size = int(max_size)
        self.engine = engine

    def __call__(self, x0):
        import torch

        p = next(self.taesd.parameters())
        lat = torch.from_numpy(_first(x0, self.engine)[None]).to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            img = self.taesd.decode(lat)[0].movedim(0, 2)
        return ("JPEG", _to_image(img.float().cpu().numpy()), self.max_size)


def taesd_path(decoder_name: str | None) -> str | None:
    """The full path of ComfyUI's ``models/vae_approx/<decoder_name>*`` file, or None."""
    if not decoder_name:
        return None
    try:
        import folder_paths  # type: ignore

        name = next((fn for fn in folder_paths.get_filename_list("vae_approx") if fn.startswith(decoder_name)), None)
        return folder_paths.get_full_path("vae_approx", name) if name else None
    except Exception:
        return None


def make_previewer(engine, handle, args=_UNSET):
    """The previewer ComfyUI's setting asks for (a callable ``x0 -> ("JPEG", image, size)``), or None.

    None means no previews: ComfyUI's method is ``none`` (its default) or ComfyUI is not running.
    """
    method = preview_method(args)
    if method == "none":
        return None
    size = preview_size(comfy_args() if args is _UNSET else args)
    fmt = latent_format_name(handle)
    if method == "taesd":
        decoder = LATENT_FORMATS[fmt][4] if fmt else None
        path = taesd_path(decoder)
        if path:
            try:
                from comfy.taesd.taesd import TAESD  # type: ignore

                import torch

                dev = "cpu"
                try:
                    import comfy.model_management as mm  # type: ignore

                    dev = mm.get_torch_device()
                except Exception:
                    pass
                taesd = TAESD(None, path, latent_channels=int(handle.latent_channels)).to(dev)
                return TAESDPreviewer(taesd, size, engine)
            except Exception as exc:
                log.warning("[spriteforge] TAESD preview decoder %s unusable (%s): using latent2rgb previews", path, exc)
        elif decoder:
            log.warning("[spriteforge] TAESD previews enabled, but models/vae_approx/%s was not found: using latent2rgb "
                        "previews", decoder)
        else:
            log.info("[spriteforge] no TAESD decoder for this %s VAE: using latent2rgb previews", handle.family)
    comfy = comfy_rgb_factors(fmt)
    if comfy is not None:
        return Latent2RGBPreviewer(comfy[0], comfy[1], size, engine, source=f"comfy:{fmt}")
    try:
        factors, bias = fit_latent2rgb(engine, handle)
    except Exception as exc:  # previews are best effort: never fail the sampler for one
        log.warning("[spriteforge] no latent preview for this model (%s)", exc)
        return None
    return Latent2RGBPreviewer(factors, bias, size, engine, source="fitted")


__all__ = ["preview_method", "preview_size", "make_previewer", "fit_latent2rgb", "latent_format_name",
           "Latent2RGBPreviewer", "TAESDPreviewer", "METHODS"]
