"""Reference images of an edit run (numpy, framework-free): checked, counted against what the model takes, and
sized as the family's pipeline sizes them (:meth:`spriteforge.models.families.Family.reference_size`) before the
engine VAE-encodes them (:func:`spriteforge.pipeline.encode_references`).

A reference is one RGB image, numpy float ``[H,W,3]`` (or ``[1,H,W,3]``; an alpha channel is dropped) in 0..1.
"""

from __future__ import annotations

import numpy as np

from ..engines.ops import to_numpy
from ..errors import BAD_INPUT, SpriteForgeError
from ..models.families import registry


def max_references(handle) -> int:
    """How many reference images ``handle``'s model takes (0: it cannot edit)."""
    cfg = getattr(handle, "config", None) or {}
    inc = cfg.get("in_channels") or (getattr(handle, "extras", None) or {}).get("in_channels") or 0
    return int(registry.rules(handle.family).references_of(handle.variant, int(inc)))


def editing_families() -> str:
    """The models that take reference images, as people name them (for messages)."""
    return ", ".join(f.edit_title or f.label for f in registry.families() if f.max_references)


def check_count(handle, n: int) -> None:
    """BAD_INPUT unless ``handle``'s model takes ``n`` reference images (a model that cannot edit: any)."""
    if n <= 0:
        return
    fam = registry.rules(handle.family)
    most = max_references(handle)
    if most == 0:
        raise SpriteForgeError(BAD_INPUT, f"the {fam.title(handle.variant)} model cannot take reference images (editing). "
                               f"Load a model that edits ({editing_families()}), or generate without reference images.",
                               details={"family": handle.family, "variant": handle.variant})
    if n > most:
        raise SpriteForgeError(BAD_INPUT, f"{n} reference images were given; the {fam.title(handle.variant)} model "
                               f"takes at most {most}. Give {most} or fewer.", details={"given": n, "most": most})


def check_references(handle, references) -> list[np.ndarray]:
    """``references`` as a list of float32 ``[H,W,3]`` images in 0..1; BAD_INPUT when the model takes none or fewer,
    or an item is not one RGB image."""
    refs = list(references or [])
    if not refs:
        return []
    check_count(handle, len(refs))
    out = []
    for i, r in enumerate(refs, 1):
        a = to_numpy(r)
        a = None if a is None else np.asarray(a, dtype=np.float32)
        if a is not None and a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        if a is None or a.ndim != 3 or a.shape[-1] not in (3, 4) or min(a.shape[:2]) < 1:
            shape = None if a is None else tuple(a.shape)
            raise SpriteForgeError(BAD_INPUT, f"reference image {i} must be one RGB image [H,W,3], got shape {shape}. "
                                   "Give one image per reference.", details={"reference": i, "shape": shape})
        if not np.isfinite(a).all():
            raise SpriteForgeError(BAD_INPUT, f"reference image {i} holds NaN or infinite values. Give an image in 0..1.")
        out.append(np.clip(a[..., :3], 0.0, 1.0))
    return out


def reference_size(handle, image, *, auto: bool = True) -> tuple[int, int]:
    """``(width, height)`` the reference ``image`` ([H,W,3]) is encoded at for ``handle``'s model (the family's rule,
    on the model's latent grid); the size an edit draws at unless told otherwise."""
    a = np.asarray(image)
    h, w = (a.shape[-3], a.shape[-2])
    mult = int(getattr(handle, "latent_multiple", 16) or 16)
    return registry.rules(handle.family).reference_size(w, h, mult, auto=auto)


def _lanczos(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """``[H,W,C]`` float resized to ``w`` x ``h`` (PIL's Lanczos per channel, as the pipelines' image processors)."""
    from PIL import Image

    if img.shape[0] == h and img.shape[1] == w:
        return img
    out = np.empty((h, w, img.shape[2]), np.float32)
    for c in range(img.shape[2]):
        out[:, :, c] = np.asarray(Image.fromarray(img[:, :, c].astype(np.float32), mode="F").resize((w, h), Image.LANCZOS))
    return np.clip(out, 0.0, 1.0)


def fit(img: np.ndarray, w: int, h: int, how: str = "stretch", scaled: tuple[int, int] | None = None) -> np.ndarray:
    """``img`` [H,W,3] at ``w`` x ``h``: ``stretch`` (resized), or ``crop`` (resized to ``scaled``, default its own
    size, then cut to ``w`` x ``h`` about the centre, as the FLUX.2 pipelines' image processor does)."""
    if how != "crop":
        return _lanczos(img, w, h)
    sw, sh = scaled or (img.shape[1], img.shape[0])
    big = _lanczos(img, sw, sh)
    left, top = (sw - w) // 2, (sh - h) // 2
    return big[top:top + h, left:left + w]


def prepare(handle, images, *, auto: bool = True) -> list[np.ndarray]:
    """Each checked reference ``[H,W,3]`` at its encoding size, as ``[1,h,w,3]`` for the VAE."""
    fam = registry.rules(handle.family)
    out = []
    for img in images:
        w, h = reference_size(handle, img, auto=auto)
        scaled = fam.reference_scaled(img.shape[1], img.shape[0], auto=auto)
        out.append(fit(img, w, h, fam.reference_fit, scaled)[None])
    return out


__all__ = ["check_count", "check_references", "editing_families", "fit", "max_references", "prepare", "reference_size"]
