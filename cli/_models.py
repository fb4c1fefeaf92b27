"""Model folders on the command line: ``--models DIR`` checked once for every sub-command that takes it, and
the MODEL_NOT_FOUND a workflow gets when the files its loaders name are not in those folders."""

from __future__ import annotations

from pathlib import Path

from .. import paths
from ..errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError


def models_dir(raw: str | None) -> str | None:
    """``--models DIR`` as given, after checking it is an existing folder (None when not given)."""
    if not raw:
        return None
    p = Path(raw).expanduser()
    if not p.is_dir():
        what = "is a file, not a folder" if p.exists() else "does not exist"
        raise SpriteForgeError(MODEL_NOT_FOUND, f"--models {raw}: that folder {what}. Give the folder laid out like "
                               "ComfyUI's models/ (the one holding diffusion_models/, vae/, text_encoders/ ...).",
                               hint="Check the path given to --models (e.g. ~/ComfyUI/models).", details={"path": str(p)})
    return raw


def searched_folders() -> list[str]:
    """The models roots searched now (``--models``, then ``SPRITEFORGE_MODELS``)."""
    return list(dict.fromkeys(str(r.parent) for kind in paths.KINDS for r in paths.roots(kind)))


def _is_model_file(name: str, value) -> bool:
    return isinstance(value, str) and (Path(value).suffix.lower() in paths.MODEL_EXTENSIONS or name == "model")


def missing_models_error(err: SpriteForgeError, prompt: dict) -> SpriteForgeError | None:
    """MODEL_NOT_FOUND for a workflow whose loaders name files that are not in the models folders (what the
    validation of ``prompt`` reported in ``err`` as values "not one of the choices"); None when none is missing."""
    issues = ((err.details or {}).get("issues") or []) if err.code == BAD_INPUT else []
    missing, other = [], []
    for issue in issues:
        value = ((prompt.get(str(issue.get("node_id"))) or {}).get("inputs") or {}).get(issue.get("input"))
        if issue.get("type") == "value_not_in_list" and _is_model_file(issue.get("input"), value):
            missing.append(f"{value} (node {issue['node_id']} {issue['class_type']}, input {issue['input']})")
        else:
            other.append(issue.get("text") or issue.get("message"))
    if not missing:
        return None
    roots = searched_folders()
    where = ("Searched " + ", ".join(roots) + " (their diffusion_models/, checkpoints/, diffusers/, vae/, text_encoders/, "
             "loras/ and birefnet/)") if roots else "No models folder is set (no --models DIR, SPRITEFORGE_MODELS unset)"
    msg = "the workflow needs model files that are not in the models folders: " + "; ".join(missing) + f". {where}."
    if other:
        msg += "\n  other problems:\n  - " + "\n  - ".join(other)
    hint = ("Put the files in those folders, or point --models DIR (or SPRITEFORGE_MODELS) at the folder laid out like "
            "ComfyUI's models/ that holds them." if roots else
            "Point --models DIR (or set SPRITEFORGE_MODELS) to the folder laid out like ComfyUI's models/ that holds "
            "them (e.g. ~/ComfyUI/models).")
    return SpriteForgeError(MODEL_NOT_FOUND, msg, hint=hint, details={"missing": missing, "searched": roots})


__all__ = ["models_dir", "searched_folders", "missing_models_error"]
