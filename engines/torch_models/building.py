"""Building models on torch: a diffusers/transformers class made on the meta device, then filled with
``load_state_dict(assign=True)`` from a tensor source (:mod:`.tensors`), read in small groups with a
progress step (the interrupt point) after each, checked strictly against the class's own keys and shapes."""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ...models.families import registry
from ...models.safetensors_header import TensorInfo
from . import quant
from .fp8 import FP8

# where each class lives (a family's transformer: as the family declares): importing it directly skips diffusers'
# lazy import of every model (seconds)
CLASS_MODULES = {
    **{f.transformer_class: f.transformer_module for f in registry.families() if f.transformer_module},
    "AutoencoderKL": "diffusers.models.autoencoders.autoencoder_kl",
    "AutoencoderDC": "diffusers.models.autoencoders.autoencoder_dc",
    "AutoencoderKLFlux2": f"{__package__}.vae",  # diffusers' class, its encode/decode speaking the sampled latents
    # the real class on single frames (4-D images and latents, latents normalised): our subclass of the same name
    "AutoencoderKLQwenImage": f"{__package__}.vae_qwenimage",
    "AutoencoderKLQwenImage21": f"{__package__}.vae_qwenimage21",  # (the same, Qwen-Image 2.1's: RGB frames in and out)
}


def diffusers_class(name: str):
    """A diffusers model class by name, imported from its own module when known."""
    import importlib

    mod = CLASS_MODULES.get(name)
    if mod:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            pass
    import diffusers

    return getattr(diffusers, name)


def build_empty(build):
    """``build()`` on the meta device (no memory for the weights)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def load_dtype(info: TensorInfo, weight: torch.dtype, keep_fp8: bool, keep: tuple = ()) -> torch.dtype | None:
    """The dtype a stored tensor is loaded in: ``weight`` for floats; None (as stored) for integers, kept fp8 and the
    ``keep`` dtypes (upcast per layer when run: :mod:`.fp8`)."""
    if not info.dtype.startswith(("float", "bfloat")):
        return None  # integer buffers keep their dtype
    if (info.dtype in FP8 and keep_fp8) or info.dtype in keep:
        return None
    return weight


# Tensors are read (and cast) in groups of at most this many tensors and file bytes; each group ends with a
# progress step, the interrupt point (a group is well under a second of reading and casting on a CPU).
LOAD_GROUP_TENSORS = 32
LOAD_GROUP_BYTES = 64 << 20


def load_groups(source, mapping) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    size = 0
    for src_key in mapping:
        info = source.tensors[src_key]
        b, e = info.offsets
        n = (e - b) or info.numel * 4
        if groups[-1] and (len(groups[-1]) >= LOAD_GROUP_TENSORS or size + n > LOAD_GROUP_BYTES):
            groups.append([])
            size = 0
        groups[-1].append(src_key)
        size += n
    return groups if groups[0] else []


def prefixed(source, prefix: str, skip=()) -> dict[str, str]:
    """``{source key: key without prefix}`` of the tensors under ``prefix`` (but those ending in ``skip``)."""
    return {k: k[len(prefix):] for k in source.keys() if k.startswith(prefix) and not any(k.endswith(s) for s in skip)}


def load_into(model, source, mapping: dict[str, str], convert_fn, *, dtype, device, keep_fp8=False, keep=(), what="model",
              fill=None):
    """Read ``mapping`` (source key -> prefix-less key), convert, and assign into ``model`` (on meta).

    ``convert_fn`` maps the prefix-less dict to the model's keys; ``keep``: stored dtype names loaded as stored.
    Returns the model.
    """
    from ...progress import Progress

    sd = {}
    groups = load_groups(source, mapping)
    with Progress(len(groups), f"loading {what}") as bar:
        for group in groups:
            for src_key in group:
                sd[mapping[src_key]] = source.get(src_key, load_dtype(source.tensors[src_key], dtype, keep_fp8, keep), device)
            bar.update()  # also the interrupt point: Cancel stops within one group
    sd = quant.install(model, convert_fn(sd), dtype)  # quantized Linear weights stay stored (QuantLinear)
    expected = model.state_dict()
    if fill:
        for k, fn in fill.items():
            if k in expected and k not in sd:
                sd[k] = fn(expected[k]).to(device=device, dtype=dtype)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [(k, tuple(sd[k].shape), tuple(expected[k].shape)) for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        bits = []
        if wrong:
            bits.append("shape mismatch " + "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in wrong[:4]))
        if missing:
            bits.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            bits.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"{Path(source.path).name}: the {what} weights do not fit the detected architecture: {'; '.join(bits)}.",
            details={"missing": missing[:50], "unexpected": unexpected[:50], "shape_mismatch": [list(w) for w in wrong[:50]]},
        )
    model.load_state_dict(sd, strict=True, assign=True)
    # buffers that are not in the file (computed at init: pos tables, rotary freqs) follow the device
    for mod in model.modules():
        for name, buf in list(mod._buffers.items()):
            if buf is None:
                continue
            if buf.device.type == "meta":
                raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{what}: buffer {name} was not initialised.")
            mod._buffers[name] = buf.to(device=device, dtype=dtype if buf.is_floating_point() else buf.dtype)
    return model.eval().requires_grad_(False)
