"""Reading LoRA files (safetensors; ``.pt``/``.ckpt`` with ``weights_only``) and describing them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError
from ..models.families import registry
from ..models.safetensors_header import read_numpy
from .family import _BLOCK, NAMES, family_of_modules
from .keys import LoRAModule, file_format, group_modules, split_key
from .layouts import is_original_layout


@dataclass
class LoRAFile:
    name: str
    path: str | None
    tensors: Mapping[str, Any]
    metadata: dict = field(default_factory=dict)
    modules: list = field(default_factory=list)
    stray: list = field(default_factory=list)

    def get(self, key):
        return self.tensors[key]


def _metadata(path: Path) -> dict:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def load_numpy(path) -> dict:
    """Every tensor of a safetensors LoRA file as numpy arrays (bfloat16 and fp8 as float32, exactly)."""
    return read_numpy(path)


def _load_tensors(path: Path, load, load_pickled) -> dict:
    suffix = path.suffix.lower()
    if suffix in (".safetensors", ".sft"):
        return (load or load_numpy)(path)
    if suffix in (".pt", ".pth", ".ckpt", ".bin"):
        if load_pickled is None:
            raise SpriteForgeError(BAD_INPUT, f"{path.name} is a pickled (.pt/.ckpt) LoRA, which only an engine can "
                                   "read (weights only). Apply it through a loaded model, or convert it to .safetensors.")
        return load_pickled(path)
    raise SpriteForgeError(BAD_INPUT, f"{path.name}: LoRA files must be .safetensors (or .pt/.ckpt); got {suffix or 'no extension'}.")


def read_lora(source, *, load=None, load_pickled=None, name: str | None = None) -> LoRAFile:
    """A LoRA from a file path or an in-memory ``{name: array}`` dict, grouped into modules.

    ``load(path) -> {name: array}`` reads a safetensors file into the engine's arrays (the
    engine's ``engine.ops.load_safetensors``); default :func:`load_numpy`. ``.pt``/``.ckpt``
    files need ``load_pickled`` (the engine's ``engine.ops.load_pickled``, a weights-only load).
    """
    if isinstance(source, LoRAFile):
        return source
    if isinstance(source, Mapping):
        tensors, meta, path = dict(source), {}, None
        label = name or "LoRA"
    else:
        p = Path(source)
        if not p.is_file():
            raise SpriteForgeError(MODEL_NOT_FOUND, f"LoRA file {p} does not exist. Put it in models/loras or give its full path.",
                                   details={"path": str(p)})
        try:
            tensors = _load_tensors(p, load, load_pickled)
        except SpriteForgeError:
            raise
        except Exception as exc:
            raise SpriteForgeError(BAD_INPUT, f"{p.name} could not be read as a LoRA ({type(exc).__name__}: {exc}). "
                                   "The download may be damaged; download it again.", details={"path": str(p)}) from exc
        meta, path = _metadata(p) if p.suffix.lower() in (".safetensors", ".sft") else {}, str(p)
        label = name or p.name
    modules, stray = group_modules(tensors.keys())
    if not modules:
        raise SpriteForgeError(BAD_INPUT, f"{label} has no LoRA tensors (no lora_down/lora_A/hada/lokr names): it is not a LoRA file.")
    return LoRAFile(label, path, tensors, meta, modules, stray)


# -- inspect -----------------------------------------------------------------------


def _header(path: Path) -> tuple[dict, dict]:
    """``({name: shape}, metadata)`` of a safetensors file without reading tensor data."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        return shapes, dict(f.metadata() or {})


def _alpha_values(path: Path, keys) -> list:
    if not keys:
        return []
    try:  # only these scalars are read (bfloat16 ones too, without a framework)
        tensors = read_numpy(path, keys)
    except Exception:
        return []
    return [float(tensors[k].reshape(-1)[0]) for k in keys]


def is_lora_file(path) -> bool:
    """True when ``path`` is a safetensors file whose tensors are (mostly) LoRA adapter parts."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() not in (".safetensors", ".sft"):
        return False
    try:
        shapes, _ = _header(p)
    except Exception:
        return False
    if not shapes:
        return False
    hits = sum(1 for k in shapes if split_key(k) is not None)
    return hits >= max(1, len(shapes) // 2)


def _rank(m: LoRAModule, shapes) -> int | None:
    p = m.params
    for role in ("down", "w1b_h", "w1b_k", "w2b_k"):
        if role in p and shapes.get(p[role]):
            return int(shapes[p[role]][0])
    return None


_TE_LABEL = {"te1": "text_encoder_1", "te2": "text_encoder_2", "te3": "text_encoder_3"}


def describe_modules(modules, shapes: dict, metadata: dict | None = None, alphas: list | None = None) -> dict:
    fmt = file_format(modules)
    det = family_of_modules(modules, lambda k: shapes[k], metadata)
    ranks = Counter(r for r in (_rank(m, shapes) for m in modules) if r is not None)
    comps = Counter(_TE_LABEL.get(m.component, m.component) for m in modules)
    blocks: dict[str, set] = {}
    other: list[str] = []
    fam = det.family
    layout = "unknown"
    for m in modules:
        if m.component != "transformer":
            continue
        mb = _BLOCK.search(m.flat)
        if mb:
            blocks.setdefault(mb.group(2), set()).add(int(mb.group(3)))
        else:
            other.append(m.body)
        if is_original_layout(m.flat, fam if registry.get(fam) else None):
            layout = "original"
    if layout == "unknown" and any(m.component == "transformer" for m in modules):
        layout = "diffusers"
    info = {
        "kind": "lora",
        "format": fmt["format"],
        "namings": fmt["namings"],
        "algorithms": fmt["algorithms"],
        "dora": fmt["dora"],
        "family": fam,
        "family_name": NAMES.get(fam, "unknown") if fam else "unknown",
        "family_candidates": det.candidates,
        "family_reason": det.reason,
        "layout": layout,
        "rank": ranks.most_common(1)[0][0] if ranks else None,
        "ranks": sorted(ranks),
        "alphas": sorted(set(alphas or [])),
        "modules": len(modules),
        "components": dict(comps),
        "blocks": {k: sorted(v) for k, v in sorted(blocks.items())},
        "other_layers": sorted(other),
    }
    if metadata:
        keep = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "modelspec.architecture",
                "modelspec.title", "ss_output_name")
        info["metadata"] = {k: metadata[k] for k in keep if k in metadata}
    return info


def inspect_lora(path, *, load_pickled=None) -> dict:
    """What a LoRA file is: format, algorithms, family, rank(s), alpha(s), components and blocks.

    Reads only the header (and the tiny ``alpha`` scalars) of a safetensors file; a pickled one is read whole
    through ``load_pickled`` (see :func:`read_lora`). Raises BAD_INPUT when the file holds no LoRA tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise SpriteForgeError(MODEL_NOT_FOUND, f"{p} does not exist.", details={"path": str(p)})
    if p.suffix.lower() in (".safetensors", ".sft"):
        try:
            shapes, meta = _header(p)
        except Exception as exc:
            raise SpriteForgeError(BAD_INPUT, f"{p.name} is not a readable safetensors file ({exc}).") from exc
        modules, stray = group_modules(shapes)
        alphas = _alpha_values(p, [m.params["alpha"] for m in modules if "alpha" in m.params])
    else:
        lf = read_lora(p, load_pickled=load_pickled)
        shapes = {k: tuple(v.shape) for k, v in lf.tensors.items()}
        meta, modules, stray = lf.metadata, lf.modules, lf.stray
        alphas = [float(lf.tensors[m.params["alpha"]].reshape(-1)[0]) for m in modules if "alpha" in m.params]
    if not modules:
        raise SpriteForgeError(BAD_INPUT, f"{p.name} has no LoRA tensors: it is not a LoRA file.")
    info = describe_modules(modules, shapes, meta, alphas)
    info["path"] = str(p)
    info["tensors"] = len(shapes)
    info["ignored_tensors"] = sorted(stray)[:20]
    info["size_bytes"] = p.stat().st_size
    return info


def summary(info: dict) -> str:
    """A few lines describing an :func:`~spriteforge.lora.inspect_lora` result."""
    algos = ", ".join(f"{k} x{v}" for k, v in info["algorithms"].items())
    fam = " or ".join(info["family_candidates"]) or "unknown"
    lines = [
        f"LoRA for {fam} ({info['family_reason']})",
        f"format {info['format']}, {info['layout']} layout, {algos}{', DoRA' if info['dora'] else ''}",
        f"rank {info['rank']}" + (f" (ranks {info['ranks']})" if len(info["ranks"]) > 1 else "")
        + (f", alpha {info['alphas'][0] if len(info['alphas']) == 1 else info['alphas']}" if info["alphas"] else ", no alpha (scale 1)"),
        "layers: " + ", ".join(f"{k} {v}" for k, v in info["components"].items()),
    ]
    for group, idx in info["blocks"].items():
        lines.append(f"  {group}: {_ranges(idx)}")
    if info["other_layers"]:
        lines.append("  other: " + ", ".join(info["other_layers"][:8]) + ("…" if len(info["other_layers"]) > 8 else ""))
    return "\n".join(lines)


def _ranges(idx) -> str:
    out, start, prev = [], None, None
    for i in idx:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(out)
