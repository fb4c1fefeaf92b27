"""What a model's files are, decided once for both engines' loaders (no torch or mlx here).

* :func:`resolve`: a path, or a bare name looked up in the model folders of some kinds;
* which part of a file or folder is the diffusion model, the VAE, a text encoder
  (:func:`diffusion_model_in`, :func:`diffusion_folder`, :func:`vae_in`, :func:`vae_folder`,
  :func:`text_encoder_in`, :func:`text_encoder_key`, :func:`folder_text_encoders`);
* the diffusers class names each family's parts are built from, and a single-file VAE's
  config (:func:`vae_config_for`);
* dtype names (:func:`dtype_name`: ``fp16`` → ``float16``).

The torch loader (``torch_models/loading.py``) and the MLX loader (``mlx_models/loading.py``)
read tensors their own way; everything they must agree on about *which* tensors lives here.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..errors import BAD_INPUT, MODEL_NOT_FOUND, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ..models import configs
from ..models.detect import Detection, detect, detect_tensors, with_side_config
from ..models.families import components, registry
from ..models.families.base import TEXT_ENCODER_PORTS
from ..models.safetensors_header import canonical_dtype
from .base import ModelHandle, family_vae_name, handle_fields
from .tokenizers import find_tokenizer

# where a bare model name is looked for
MODEL_KINDS = ("diffusion_models", "checkpoints", "diffusers")

# the diffusers class each family's transformer is (declared by the family, :mod:`spriteforge.models.families`)
TRANSFORMER_CLASSES = {f.name: f.transformer_class for f in registry.families()}
# diffusers folder sub-folders -> our text-encoder keys, per family (several where one sub-folder holds one of several
# encoders: FLUX.2's text_encoder/ is Qwen3-4B, Qwen3-8B or Mistral-3 by the size; its config.json says which)
FOLDER_TEXT_ENCODERS = {f.name: {te.folder: tuple(t.key for t in f.text_encoders if t.folder == te.folder) for te in f.text_encoders}
                        for f in registry.families()}
# the text encoders an all-in-one checkpoint may carry (``text_encoders.<name>.transformer.``): the slots of the families
# SpriteForge runs (SD3's CLIP-L, CLIP-G and T5; Z-Image's Qwen3-4B, ...)
CHECKPOINT_TEXT_ENCODERS = tuple(dict.fromkeys(("clip_l", "clip_g", "t5", *(te.key for f in registry.families() for te in f.text_encoders))))


def dtype_name(name: str) -> str:
    """The full dtype name for ``name`` (``fp16`` → ``float16``, ``BF16`` → ``bfloat16``), as safetensors headers
    and the manifests spell them (:func:`~spriteforge.models.safetensors_header.canonical_dtype`)."""
    return canonical_dtype(name)


# --------------------------------------------------------------------------- where


@contextlib.contextmanager
def coded_errors(context: str):
    """Every failure inside becomes a :class:`SpriteForgeError` (``classify`` of it, ``context`` saying what was done)."""
    try:
        yield
    except SpriteForgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a coded error
        from ..errors import classify

        raise classify(exc, context=context) from exc


def resolve(path, kinds) -> Path:
    """``path`` when it exists, else the bare name ``path`` in the model folders of ``kinds``; MODEL_NOT_FOUND otherwise."""
    p = Path(str(path)).expanduser()
    if p.exists():
        return p
    if not p.is_absolute():
        for kind in kinds:
            try:
                return paths.resolve(kind, str(path))
            except SpriteForgeError:
                continue
    raise SpriteForgeError(
        MODEL_NOT_FOUND,
        f"{path} was not found (looked for it as a path and in the {', '.join(kinds)} model folders). "
        "Put the file there or give its full path.",
        details={"path": str(path), "kinds": list(kinds)},
    )


def folder_variant(folder: Path) -> dict:
    """``{"variant": "fp16"}`` when a component folder only has ``*.fp16.safetensors`` (or bf16) weights."""
    files = [f.name for f in folder.glob("*.safetensors")]
    if not files or any(not re.search(r"\.(fp16|bf16|fp8)\.safetensors$", f) and not re.search(r"\.(fp16|bf16)-\d+-of-\d+\.safetensors$", f) for f in files):
        return {}
    for v in ("fp16", "bf16"):
        if any(f".{v}." in f or f".{v}-" in f for f in files):
            return {"variant": v}
    return {}


# --------------------------------------------------------------------------- the diffusion model


def diffusion_folder(p: Path) -> Detection:
    """The detection of a diffusers folder or transformer component folder; BAD_INPUT for any other folder."""
    det = detect(p)
    if det.kind not in ("diffusers", "transformer"):
        raise SpriteForgeError(BAD_INPUT, f"{p.name} is a {det.kind} folder, not a diffusion model.")
    registry.check_generates(det, p.name)
    return det


def diffusion_model_in(tensors, p: Path) -> Detection:
    """The detection of the single file ``p`` (its ``tensors``): a transformer or an all-in-one checkpoint."""
    # settings a diffusers-layout file has no weights for (Qwen-Image-Edit-2511's zero_cond_t) from a config.json
    # beside it, as ``inspect`` reads them
    det = with_side_config(detect_tensors(tensors, name=p.name), p)
    det.path = str(p)
    if det.kind not in ("transformer", "checkpoint"):
        raise SpriteForgeError(
            BAD_INPUT,
            f"{p.name} is a {det.kind} ({det.variant or det.family}), not a diffusion model. "
            "Load it through the matching VAE/text-encoder input instead.",
            details={"kind": det.kind},
        )
    registry.check_generates(det, p.name)
    return det


def checkpoint_text_encoders(det: Detection):
    """``(key, part detection, tensor prefix)`` for each text encoder an all-in-one file carries."""
    for comp in CHECKPOINT_TEXT_ENCODERS:
        if comp in det.parts and det.parts[comp].kind == "text_encoder":
            yield comp, det.parts[comp], det.components[comp]


def folder_text_encoders(p: Path, family: str, index: dict):
    """``(sub-folder, key, class name)`` for each text encoder a diffusers folder (``model_index.json`` = ``index``) has."""
    for sub, keys in FOLDER_TEXT_ENCODERS.get(family, {}).items():
        entry = index.get(sub)
        if not entry or not entry[0] or not (p / sub).is_dir():
            continue
        yield sub, keys[0] if len(keys) == 1 else text_encoder_key(folder_config(p / sub), f"{p.name}/{sub}"), entry[1]


# --------------------------------------------------------------------------- VAE


def vae_folder(p: Path) -> Path:
    """The folder holding a VAE's ``config.json``: ``p/vae`` of a diffusers folder, else ``p`` itself."""
    return p / "vae" if (p / "vae" / "config.json").exists() else p


def vae_in(tensors, name: str, family: str | None) -> tuple[Detection, str]:
    """``(VAE detection, tensor prefix)`` of a single file: a VAE, or a checkpoint that carries one; BAD_INPUT otherwise."""
    det = detect_tensors(tensors, name=name, family_hint=family)
    prefix = ""
    if det.kind != "vae":
        if "vae" in det.parts:
            prefix = det.components["vae"]
            det = det.parts["vae"]
        else:
            raise SpriteForgeError(BAD_INPUT, f"{name} is a {det.kind} ({det.family or det.variant}), not a VAE. Choose a VAE file for the VAE input.")
    elif det.components.get("vae"):
        prefix = det.components["vae"]
    registry.check_generates(det, name)
    return det, prefix


def vae_config_for(det: Detection, family: str | None, variant: str | None = None) -> dict:
    """A single-file VAE's diffusers config: the detected one, with the family's scaling/shift factors for KL VAEs."""
    cfg = dict(det.config)
    if det.variant and det.variant.startswith("kl"):
        name = family_vae_name(family, variant, int(det.variant[2:]))
        ref = configs.load(name)["config"]
        cfg["scaling_factor"] = ref["scaling_factor"]
        cfg["shift_factor"] = ref.get("shift_factor")
    return cfg


def _latent_users(channels: int) -> str:
    return ", ".join(f.label for f in registry.families() if f.latent_channels == channels) or "another family"


def check_vae_fits(det: Detection, vae_config: dict, vae) -> None:
    """BAD_INPUT when the VAE given with a model makes latents of another width than the model's family draws
    (a PixArt/SDXL VAE given for Flux...): said before sampling, naming both, instead of a shape error inside it."""
    want = registry.rules(det.family).latent_channels
    got = int(vae_config.get("latent_channels") or vae_config.get("z_dim") or 0)
    if got and got != want:
        raise SpriteForgeError(
            BAD_INPUT,
            f"{Path(str(vae)).name} is a VAE for {got}-channel latents ({_latent_users(got)}), but "
            f"this {det.family} model needs a VAE for {want}-channel latents ({_latent_users(want)}). "
            f"Give the {det.family} model's own VAE.",
            details={"vae": str(vae), "latent_channels": got, "needed": want, "family": det.family})


# --------------------------------------------------------------------------- text encoders


def text_encoder_in(tensors, name: str, hint: str | None) -> tuple[Detection, str]:
    """``(text-encoder detection, tensor prefix)`` of a single file; BAD_INPUT when it is no text encoder."""
    det = detect_tensors(tensors, name=name, family_hint=hint)
    if det.kind != "text_encoder":
        raise SpriteForgeError(BAD_INPUT, f"{name} is a {det.kind} ({det.family or det.variant}), not a text encoder.")
    registry.check_generates(det, name)
    prefix = det.components.get(det.variant, "") if det.components else ""
    return det, prefix


def folder_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def text_encoder_key(cfg: dict, name: str, hint: str | None = None) -> str:
    """Our key (``t5``, ``gemma``, ``clip_l``, ``clip_g``) for a transformers folder's ``config.json`` (``cfg``)."""
    mt = cfg.get("model_type", "")
    if mt.startswith("t5"):
        return "t5"
    if mt.startswith("gemma"):
        return "gemma"
    if mt.startswith("clip"):
        return hint if hint in ("clip_l", "clip_g") else ("clip_g" if cfg.get("hidden_size") == 1280 else "clip_l")
    key = components.folder_text_encoder(cfg)  # a decoder LM (Qwen3...) some family runs
    if key in TEXT_ENCODER_PORTS:
        return key
    raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{name}: text encoder type {mt!r} is not supported.")


def clip_with_projection(key: str, family: str | None, archs=()) -> bool:
    """Whether a CLIP text encoder is built as CLIPTextModelWithProjection (CLIP-G, every CLIP of a family
    whose ``projected_clip`` is set (SD3), a folder whose config names the projection class)."""
    return key == "clip_g" or registry.rules(family).projected_clip or any("WithProjection" in a for a in archs or ())


# --------------------------------------------------------------------------- the handle


@dataclass
class Parts:
    """What a loader read from a model's own file or folder, before the VAE and text encoders given with it."""

    det: Detection
    transformer: object
    config: dict
    vae: object = None
    vae_config: dict = field(default_factory=dict)
    text_encoders: dict = field(default_factory=dict)
    tokenizers: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


def complete(engine, source: Path, parts: Parts, *, vae, text_encoders, load_vae, load_text_encoder, dtype: str) -> ModelHandle:
    """The :class:`ModelHandle` of ``parts`` (loaded from ``source``), the same steps on every engine: the ``vae`` and
    ``text_encoders`` given with the model replace what its file carries (loaded by the engine's
    ``load_vae(path, family=, variant=)`` and ``load_text_encoder(path, family=)``), every text encoder without a
    tokenizer gets one found for it, and the framework-free fields come from :func:`handle_fields`."""
    det = parts.det
    if vae is not None:
        parts.vae, parts.vae_config = load_vae(vae, family=det.family, variant=det.variant)
        check_vae_fits(det, parts.vae_config, vae)
    for te in text_encoders or ():
        if te is None or te == "":
            continue
        key, model, tok = load_text_encoder(te, family=det.family)
        parts.text_encoders[key] = model  # an explicit text encoder replaces one the model file carries
        parts.tokenizers[key] = tok
    for k in [k for k in parts.text_encoders if parts.tokenizers.get(k) is None]:
        parts.tokenizers[k] = find_tokenizer(k, source, required=True)
    fields = handle_fields(det, parts.config, parts.vae_config, has_vae=parts.vae is not None, text_encoders=parts.text_encoders,
                           extras=parts.extras)
    return ModelHandle(family=det.family, variant=det.variant or "", engine=engine, transformer=parts.transformer,
                       config=parts.config, vae=parts.vae, vae_config=dict(parts.vae_config), text_encoders=parts.text_encoders,
                       tokenizers=parts.tokenizers, dtype=dtype, source=str(source), **fields)


__all__ = ["coded_errors", "Parts", "complete", "MODEL_KINDS", "TRANSFORMER_CLASSES", "FOLDER_TEXT_ENCODERS", "dtype_name", "resolve", "folder_variant",
           "diffusion_folder", "diffusion_model_in", "checkpoint_text_encoders", "folder_text_encoders", "vae_folder",
           "vae_in", "vae_config_for", "check_vae_fits", "text_encoder_in", "text_encoder_key", "clip_with_projection"]
