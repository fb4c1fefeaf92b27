"""Load DiT models (single files in original or diffusers layout, all-in-one checkpoints,
diffusers folders) with their VAE and text encoders, offline, onto the engine's device.

Public entry point: :func:`load_model` (``TorchEngine.load_model`` calls it). The pieces:

* :mod:`.tensors`: tensor sources (memory-mapped safetensors, ``weights_only`` pickles);
* :mod:`.building`: models built on the meta device and filled with ``load_state_dict(assign=True)``;
* :mod:`.fp8`: fp8-stored weights kept as fp8 and upcast per layer;
* :mod:`.vae`, :mod:`.text_encoders`: :func:`load_vae`, :func:`load_text_encoder`;
* :mod:`..model_files` (shared with the MLX loader): which file or folder, which part of it;
* :mod:`..tokenizers` (shared with the MLX loader): :func:`find_tokenizer`.

Memory: tensors whose stored dtype is the one wanted on a CPU device are views of the file's
mapping (no copy at all); every other tensor is read into a reused buffer and cast/moved from
there, so peak RSS stays near the size of the loaded model, never twice the file.

Nothing in a file is executed: safetensors only; ``.ckpt/.pt/.pth/.bin`` go through
``torch.load(weights_only=True)`` which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ...errors import BAD_INPUT, SpriteForgeError
from ...log import get_logger
from ...models.detect import Detection, folder_tensors
from ..base import ModelHandle
from ..model_files import (
    MODEL_KINDS,
    TRANSFORMER_CLASSES,
    checkpoint_text_encoders,
    coded_errors,
    diffusion_folder,
    diffusion_model_in,
    folder_text_encoders,
    Parts,
    complete,
    folder_variant,
    resolve,
)
from ..tokenizers import find_tokenizer, folder_tokenizer
from . import convert
from .building import build_empty, diffusers_class, load_into, prefixed
from .fp8 import enable_fp8, enable_upcast, has_fp8, keep_fp8, keep_half
from .tensors import open_tensors, torch_dtype
from .text_encoders import load_text_encoder, text_encoder_from
from .vae import load_vae, vae_from

log = get_logger("torch")


def build_transformer(det: Detection):
    cls = diffusers_class(TRANSFORMER_CLASSES[det.family])
    cfg = {k: v for k, v in det.config.items() if not k.startswith("_")}
    return build_empty(lambda: cls.from_config(cfg))


def _load_transformer(engine, source, det: Detection, prefix: str, dtype):
    device = engine.torch_device
    keep = keep_fp8(engine) and has_fp8(source.tensors)
    half = keep_half(engine, dtype)  # a CPU computing in fp32: bf16/fp16 weights stay views of the file, upcast per layer
    model = build_transformer(det)
    mapping = prefixed(source, prefix)
    model = load_into(model, source, mapping, lambda sd: convert.convert_transformer(det.family, sd, det.layout), dtype=dtype,
                      device=device, keep_fp8=keep, keep=half, what=f"{det.family} transformer")
    fp8 = enable_fp8(model, {k: source.tensors[k] for k in mapping}, dtype) if keep else None
    if half:
        enable_upcast(model, tuple(torch_dtype(h) for h in half), dtype, reuse=True)
    return model, fp8


def _weight_dtype(engine, dtype: str | None) -> torch.dtype:
    name = dtype or engine.policy.weight_dtype
    if name in ("bfloat16", "bf16") and not engine.policy.bf16 and engine.device.kind not in ("cpu",):
        name = "float16"
    return torch_dtype(name)


def load_model(engine, path, *, vae=None, text_encoders=(), dtype=None) -> ModelHandle:
    """Load a DiT model (file or diffusers folder) with its VAE and text encoders.

    ``path``: a diffusers folder (``model_index.json``), a transformer component folder
    (``config.json``), or a single file: a transformer in the original or diffusers layout,
    or an all-in-one SD3/SD3.5 (or ComfyUI Flux) checkpoint. A bare name is looked up in the
    ``diffusion_models``, ``checkpoints`` and ``diffusers`` model folders. ``vae`` and
    ``text_encoders`` are optional paths/names (files or folders) that replace or complete
    what ``path`` carries. ``dtype`` overrides the policy's weight dtype. Every failure is a
    :class:`SpriteForgeError`.
    """
    p = resolve(path, MODEL_KINDS)
    with coded_errors(f"loading {p.name}"):
        return _load_model(engine, p, vae=vae, text_encoders=text_encoders, dtype=dtype)


def _load_model(engine, p: Path, *, vae=None, text_encoders=(), dtype=None) -> ModelHandle:
    wdt = _weight_dtype(engine, dtype)
    vdt = torch_dtype(engine.policy.vae_dtype)
    tdt = torch_dtype(dtype or engine.policy.text_encoder_dtype)
    parts = _from_folder(engine, p, wdt, vdt, tdt) if p.is_dir() else _from_file(engine, p, vae, wdt, vdt, tdt)
    te_dtype = dtype or engine.policy.text_encoder_dtype
    return complete(engine, p, parts, vae=vae, text_encoders=text_encoders,
                    load_vae=lambda path, **kw: load_vae(engine, path, **kw),
                    load_text_encoder=lambda path, **kw: load_text_encoder(engine, path, dtype=te_dtype, **kw),
                    dtype=str(wdt).replace("torch.", ""))


def _from_folder(engine, p: Path, wdt, vdt, tdt) -> Parts:
    det = diffusion_folder(p)
    if det.kind == "diffusers":
        transformer, vae_model, vae_cfg, tes, toks = _load_folder(engine, p, det, wdt, vdt, tdt)
        return Parts(det, transformer, dict(transformer.config), vae_model, vae_cfg, tes, toks)
    transformer = _load_component_folder(engine, p, det, wdt)
    return Parts(det, transformer, dict(transformer.config))


def _from_file(engine, p: Path, vae, wdt, vdt, tdt) -> Parts:
    source = open_tensors(p)
    det = diffusion_model_in(source.tensors, p)
    prefix = det.components.get("transformer", "")
    transformer, fp8 = _load_transformer(engine, source, det, prefix, wdt)
    parts = Parts(det, transformer, dict(transformer.config), extras={"fp8_storage": fp8} if fp8 else {})
    if "vae" in det.parts and vae is None:
        parts.vae, parts.vae_config = vae_from(engine, source, det.parts["vae"], det.components["vae"], det.family, det.variant, vdt)
    for comp, sub, te_prefix in checkpoint_text_encoders(det):
        sub.variant = comp
        parts.text_encoders[comp] = text_encoder_from(engine, source, sub, te_prefix, det.family, tdt)
        parts.tokenizers[comp] = find_tokenizer(comp, p, source=source, required=False)
    source.close()  # tensors that are views keep the mapping alive on their own
    return parts


def check_config_fits_weights(cls, folder: Path) -> None:
    """Refuse a component folder whose ``config.json`` describes another model than its weights (a config 1000x
    the weights would otherwise be allocated, then fail): the model is built on the meta device (no memory) and its
    tensor shapes and size compared with the weight files' headers, before anything is loaded."""
    cfg = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = cls.from_config(cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = folder_tensors(folder)
    wrong = [k for k, shape in want.items() if k in have and tuple(have[k].shape) != shape]
    need, got = sum(math.prod(s) for s in want.values()), sum(t.numel for t in have.values())
    if wrong or need > got * 1.01:
        detail = (f"{wrong[0]} is {list(want[wrong[0]])} in the config but {list(have[wrong[0]].shape)} in the weights"
                  if wrong else f"the config describes {need:,} parameters, the weights hold {got:,}")
        raise SpriteForgeError(BAD_INPUT, f"{folder.name}/config.json does not match the weights beside it ({detail}). "
                               "Use the config.json that came with these weights.",
                               details={"folder": str(folder), "mismatched": wrong[:8], "config_parameters": need,
                                        "weight_parameters": got})


def _load_component_folder(engine, p: Path, det: Detection, wdt):
    cls = diffusers_class(TRANSFORMER_CLASSES[det.family])
    check_config_fits_weights(cls, p)
    return cls.from_pretrained(p, local_files_only=True, torch_dtype=wdt).to(engine.torch_device).eval().requires_grad_(False)


def _load_folder(engine, p: Path, det: Detection, wdt, vdt, tdt):
    import transformers

    index = json.loads((p / "model_index.json").read_text())
    device = engine.torch_device
    tcls = diffusers_class(TRANSFORMER_CLASSES[det.family])
    check_config_fits_weights(tcls, p / "transformer")
    transformer = tcls.from_pretrained(p, subfolder="transformer", local_files_only=True, torch_dtype=wdt, **folder_variant(p / "transformer"))
    transformer = transformer.to(device).eval().requires_grad_(False)
    vae_model, vae_cfg = None, {}
    if (p / "vae" / "config.json").exists():
        vcfg = json.loads((p / "vae" / "config.json").read_text())
        vcls = diffusers_class(vcfg.get("_class_name", "AutoencoderKL"))
        check_config_fits_weights(vcls, p / "vae")
        vae_model = vcls.from_pretrained(p, subfolder="vae", local_files_only=True, torch_dtype=vdt, **folder_variant(p / "vae"))
        vae_model = vae_model.to(device).eval().requires_grad_(False)
        vae_cfg = dict(vae_model.config)
    tes, toks = {}, {}
    for sub, key, cls_name in folder_text_encoders(p, det.family, index):
        cls = getattr(transformers, cls_name)
        tes[key] = cls.from_pretrained(p / sub, local_files_only=True, dtype=tdt, **folder_variant(p / sub)).to(device).eval().requires_grad_(False)
        tok = folder_tokenizer(p, sub, index)
        if tok is not None:
            toks[key] = tok
    return transformer, vae_model, vae_cfg, tes, toks
