"""``spriteforge inspect PATH [--json]``: what a model file or folder is, from its header alone.

Prints family, variant, kind, layout, stored dtype, parameter count, what else the model
needs (VAE, text encoders) and, for all-in-one checkpoints, the components found. Only the
safetensors header (or a diffusers folder's JSON) is read, so it takes milliseconds even on
a multi-gigabyte file. ``--json`` prints the full detection (keys ``family``, ``variant``,
``kind``, ``dtype``, ``parameters``, ``needs``, ``components``, ``config`` ...).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError

SEARCH_KINDS = ("diffusion_models", "checkpoints", "diffusers", "vae", "text_encoders", "loras", "birefnet")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="tell what a model file or folder is (reads only the header)",
        description="Detect family, variant, config, dtype, parameter count and needed parts of a model file or diffusers folder.",
    )
    p.add_argument("path", metavar="PATH", help="a .safetensors file, a diffusers folder, or a name in the models folders (see --models)")
    p.add_argument("--json", action="store_true", help="print the detection as JSON")
    p.add_argument("--models", metavar="DIR", help="models root laid out like ComfyUI's models/ (to find PATH by name)")
    p.add_argument("--config", action="store_true", help="also print the full model config (always in --json)")
    p.set_defaults(func=run)


def _resolve(raw: str, models: str | None) -> Path:
    from .. import paths
    from ._models import models_dir

    models = models_dir(models)
    p = Path(raw).expanduser()
    if p.exists():
        return p
    if models:
        paths.set_models_root(models)
    last: SpriteForgeError | None = None
    for kind in SEARCH_KINDS:
        try:
            return paths.resolve(kind, raw)
        except SpriteForgeError as exc:
            last = exc
    raise SpriteForgeError(
        "MODEL_NOT_FOUND",
        f"{raw} is neither an existing path nor a model name in the models folders ({', '.join(SEARCH_KINDS)}). "
        "Give the full path, or the models root with --models DIR.",
        details={"path": raw, "last": last.to_dict() if last else None},
    )


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps the number at 1 or more: 512 B, 6.9 MiB, 23.80 GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{n} B"


def describe(det, file_size: int | None = None) -> list[str]:
    lines = []
    what = det.family or "-"
    lines.append(f"kind:       {det.kind}" + (f" ({det.layout} layout)" if det.layout else ""))
    lines.append(f"family:     {what}")
    lines.append(f"variant:    {det.variant or '-'}")
    lines.append(f"dtype:      {det.dtype or '-'}")
    lines.append(f"parameters: {_human_count(det.parameters)} ({det.parameters:,})")
    if file_size is not None:
        lines.append(f"file size:  {human_bytes(file_size)}")
    if det.kind == "lora":
        lines.append(f"lora:       format {det.extras.get('format')}, rank {det.extras.get('rank')}, {det.extras.get('modules')} modules")
    if det.kind == "birefnet":
        res = det.extras.get("resolution") or []
        lines.append(f"backbone:   {det.config.get('backbone')}" + (f", trained at {res[0]}x{res[1]}" if len(res) == 2 else "")
                     + (f" ({det.extras['release']})" if det.extras.get("release") else "")
                     + "; load it with Load BiRefNet / spriteforge rmbg")
    if det.components:
        comps = ", ".join(f"{k} ({v})" for k, v in det.components.items())
        lines.append(f"components: {comps}")
    if det.kind in ("transformer", "checkpoint", "diffusers"):
        lines.append(f"needs:      {', '.join(det.needs) if det.needs else 'nothing else'}")
    for k in ("prediction", "flow_shift", "max_sequence_length", "num_classes", "guidance_embeds", "in_channels", "ambiguous"):
        if k in det.extras and det.extras[k] is not None:
            lines.append(f"{k + ':':<11} {det.extras[k]}")
    return lines


def run(args) -> int:
    from ..models.detect import detect

    t0 = time.perf_counter()
    path = _resolve(args.path, args.models)
    from ..lora import inspect_lora, is_lora_file

    if is_lora_file(path):
        from ..engines.ops import torch_ops

        return _print_lora(inspect_lora(path, load_pickled=torch_ops().load_pickled), path, time.perf_counter() - t0,
                           args.json)
    try:
        det = detect(path)
    except SpriteForgeError as exc:
        det = _birefnet(path) if exc.code == UNSUPPORTED_ARCHITECTURE else None
        if det is None:
            raise
    elapsed = time.perf_counter() - t0
    size = path.stat().st_size if path.is_file() else None
    if args.json:
        out = det.to_dict()
        out["path"] = str(path)
        out["file_size"] = size
        out["seconds"] = round(elapsed, 4)
        json.dump(out, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    print(f"{path}")
    for line in describe(det, size):
        print("  " + line)
    if det.parts:
        for comp, part in det.parts.items():
            if comp == "transformer":
                continue
            print(f"  [{comp}] {part.kind} {part.variant or ''} {part.dtype} {_human_count(part.parameters)}")
    if args.config:
        print("  config:")
        for line in json.dumps(det.config, indent=2, default=str).splitlines():
            print("    " + line)
    print(f"  (read the header in {elapsed * 1000:.1f} ms)")
    return 0


def _birefnet(path: Path):
    """A BiRefNet weights file (what ``spriteforge rmbg`` / Load BiRefNet load) from its header alone:
    kind ``birefnet``, the backbone from the tensor shapes and the released variant (general, lite, HR, ...)
    from the backbone and the file name; None when it is not one."""
    if not path.is_file() or path.suffix.lower() not in (".safetensors", ".sft"):
        return None
    from ..models.detect import Detection
    from ..models.safetensors_header import read_header

    try:
        from ..models import birefnet as bn
    except ImportError:  # torch missing: the shapes cannot be read into a config
        return None
    tensors = read_header(path).tensors
    shapes = bn.strip_training_prefixes({k: tuple(t.shape) for k, t in tensors.items()})
    try:
        cfg = bn.config_from_shapes(shapes)
    except SpriteForgeError:
        return None
    backbone = cfg.backbone
    variant = bn.variant_from_name(path.name, backbone) or bn.DEFAULT_VARIANT_FOR_BACKBONE.get(backbone)
    weights = {}
    for t in tensors.values():
        weights[t.dtype] = weights.get(t.dtype, 0) + t.numel
    info = bn.VARIANTS.get(variant or "", {})
    return Detection(family="birefnet", variant=variant, kind="birefnet", dtype=max(weights, key=weights.get) if weights else "",
                     parameters=sum(t.numel for t in tensors.values()), layout="original", path=str(path),
                     config={"backbone": backbone, "embed_dim": cfg.embed_dim, "depths": list(cfg.depths)},
                     extras={"resolution": list(info.get("resolution", ())), "release": info.get("hf")})


def _print_lora(info: dict, path, elapsed: float, as_json: bool) -> int:
    """A LoRA file: family, format, rank, which blocks (``--json`` keeps the common keys too)."""
    from collections import Counter

    from ..lora import summary
    from ..models.safetensors_header import read_header

    tensors = read_header(path).tensors
    info = dict(info)
    info.setdefault("parameters", sum(t.numel for t in tensors.values()))
    weights = Counter()
    for t in tensors.values():
        weights[t.dtype] += t.numel
    info.setdefault("dtype", weights.most_common(1)[0][0] if weights else None)
    if as_json:
        out = dict(info)
        out.update({
            "kind": "lora",
            "family": info.get("family"),
            "variant": f"lora-{info.get('format')}",
            "dtype": info.get("dtype"),
            "parameters": info.get("parameters"),
            "seconds": round(elapsed, 4),
        })
        json.dump(out, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    print(f"{path}")
    for line in summary(info).splitlines():
        print("  " + line)
    print(f"  (read the header in {elapsed * 1000:.1f} ms)")
    return 0
