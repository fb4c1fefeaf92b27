"""Checks of a workflow that need the files it names but load nothing: run before a workflow executes.

:func:`size_issues` finds every SpriteForge VAE Encode whose image comes straight from LoadImage and
whose model from SpriteForge Load Model, reads the image's size (its header) and the model's largest
side (SD3's position table, from the safetensors header) and reports an image the model cannot draw
-- at validation, rather than at VAE Encode after the model has been loaded.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DIMENSION_LIMIT, SpriteForgeError


def _const(prompt: dict, nid: str, name: str):
    v = (prompt.get(nid) or {}).get("inputs", {}).get(name)
    return None if isinstance(v, list) else v


def _source(prompt: dict, nid: str, name: str, class_type: str):
    v = (prompt.get(nid) or {}).get("inputs", {}).get(name)
    if isinstance(v, list) and len(v) == 2 and str(v[0]) in prompt and prompt[str(v[0])].get("class_type") == class_type:
        return str(v[0])
    return None


def _image_size(root: Path, name: str) -> tuple[int, int] | None:
    from PIL import Image

    path = Path(root) / str(name).split(" [")[0]
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except Exception:
        return None


def _model_cap(name: str) -> tuple[int | None, str]:
    """(largest side in pixels or None, family) of a Load Model choice, from its header."""
    try:
        from ..models.detect import detect
        from ..resolve import resolve_model

        det = detect(resolve_model(str(name)))
    except Exception:  # unreadable or missing: the loader reports it properly
        return None, ""
    cfg = det.config or {}
    n = cfg.get("pos_embed_max_size")
    if not n:
        return None, det.family or ""
    return int(n) * 8 * int(cfg.get("patch_size") or 2), det.family or ""


def size_issues(prompt: dict, input_dir: str | Path = "input") -> list:
    """Issues (``spriteforge.execution.graph.Issue``) for images too large for their model or over max_side.

    ``input_dir`` is the folder LoadImage reads (the run's :class:`~spriteforge.nodes.folders.Folders` input)."""
    from .graph import Issue

    out = []
    for nid, node in prompt.items():
        if node.get("class_type") != "SpriteForgeVAEEncode":
            continue
        img_node = _source(prompt, nid, "image", "LoadImage")
        model_node = _source(prompt, nid, "model", "SpriteForgeLoadModel")
        if img_node is None:
            continue
        name = _const(prompt, img_node, "image")
        size = _image_size(input_dir, name) if name else None
        if size is None:
            continue
        side = max(size)
        max_side = _const(prompt, nid, "max_side")
        if isinstance(max_side, (int, float)) and side > max_side:
            out.append(Issue(str(nid), "SpriteForgeVAEEncode", "max_side", "dimension_limit",
                             f"the image {name} ({size[0]}x{size[1]}, from node {img_node}) is over max_side {int(max_side)}. "
                             f"Raise max_side or resize the image."))
            continue
        if model_node is None:
            continue
        cap, family = _model_cap(_const(prompt, model_node, "model") or "")
        if cap and side > cap:
            out.append(Issue(str(nid), "SpriteForgeVAEEncode", "image", "dimension_limit",
                             f"the image {name} is {size[0]}x{size[1]} but the {family} model of node {model_node} draws at "
                             f"most {cap} pixels per side (its position table). Resize the image to {cap} px or less "
                             f"(e.g. ImageScale), or use a model made for that size."))
    return out


def check_sizes(prompt: dict, input_dir: str | Path = "input") -> None:
    """Raise DIMENSION_LIMIT listing :func:`size_issues`, if any."""
    issues = size_issues(prompt, input_dir)
    if issues:
        lines = [str(i) for i in issues]
        raise SpriteForgeError(DIMENSION_LIMIT, lines[0] if len(lines) == 1 else
                               "images too large for their models:\n  - " + "\n  - ".join(lines),
                               details={"issues": [i.to_dict() for i in issues]})
