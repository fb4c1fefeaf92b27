"""Where models live: ComfyUI's ``folder_paths`` inside ComfyUI, a models root outside.

Kinds follow ComfyUI's folder names (``diffusion_models``, ``checkpoints``, ``vae``,
``text_encoders``, ``diffusers``, ``loras``) plus ``birefnet``, which the pack registers
(appending, never replacing, so paths from ``extra_model_paths.yaml`` stay).
Outside ComfyUI a root laid out like ComfyUI's ``models/`` is used: ``--models DIR`` on
the command line or the ``SPRITEFORGE_MODELS`` environment variable.
A name given to :func:`resolve` must stay inside its folder: ``..`` and absolute
names are refused unless ``allow_absolute`` (explicit command-line paths).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError

KINDS = ("diffusion_models", "checkpoints", "vae", "text_encoders", "diffusers", "loras", "birefnet")
# Folders the pack adds to ComfyUI's registry.
PACK_FOLDERS = {"birefnet": (".safetensors", ".pth", ".bin")}
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")

_models_root: list[Path] = []


def set_models_root(path: str | os.PathLike | None) -> None:
    """Use ``path`` (laid out like ComfyUI's ``models/``) as the models root outside ComfyUI."""
    _models_root.clear()
    if path:
        _models_root.append(Path(path).expanduser().resolve())


@contextlib.contextmanager
def models_root(path: str | os.PathLike | None):
    """:func:`set_models_root` for the duration of a ``with`` block (nothing changes when ``path`` is empty);
    the previous root comes back afterwards, also on an error."""
    saved = list(_models_root)
    if path:
        set_models_root(path)
    try:
        yield
    finally:
        _models_root[:] = saved


def _folder_paths():
    try:
        import folder_paths  # type: ignore

        return folder_paths
    except Exception:
        return None


def in_comfyui() -> bool:
    """True inside ComfyUI (its ``folder_paths`` module is importable), False on the command line."""
    return _folder_paths() is not None


def not_found_hint(*, full_path: bool, comfy: bool | None = None) -> str:
    """What to do about a model file that is not in the folders searched, true where it is shown.

    Inside ComfyUI (``comfy``; default: :func:`in_comfyui`) names come from the node's list, paths are
    refused and the folders come from ComfyUI (``extra_model_paths.yaml``); on the command line
    ``--models DIR`` / ``SPRITEFORGE_MODELS`` set the folders and ``full_path`` says whether a path is
    accepted where the name was given.
    """
    if in_comfyui() if comfy is None else comfy:
        return ("Put the file in one of those folders (or add its folder to ComfyUI's extra_model_paths.yaml), "
                "press R in the editor to refresh the lists, and pick it from the node's list.")
    alt = "give its full path, or " if full_path else ""
    return (f"Put the file in one of those folders, {alt}point --models DIR (or SPRITEFORGE_MODELS) at a folder "
            "laid out like ComfyUI's models/.")


def register_comfy_folders() -> None:
    """Register the pack's own model folders with ComfyUI, keeping user-configured paths."""
    fp = _folder_paths()
    if fp is None:
        return
    for kind, exts in PACK_FOLDERS.items():
        default = os.path.join(fp.models_dir, kind)
        existing = fp.folder_names_and_paths.get(kind)
        if existing is None:
            fp.folder_names_and_paths[kind] = ([default], set(exts))
        else:
            paths, known = existing
            if default not in paths:
                paths.append(default)
            if isinstance(known, set):
                known.update(exts)


def roots(kind: str) -> list[Path]:
    """The folders searched for ``kind``, in priority order."""
    if kind not in KINDS:
        raise SpriteForgeError(BAD_INPUT, f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}.")
    fp = _folder_paths()
    if fp is not None:
        register_comfy_folders()
        try:
            return [Path(p) for p in fp.get_folder_paths(kind)]
        except Exception:
            return []
    out = []
    bases = list(_models_root)
    env = os.environ.get("SPRITEFORGE_MODELS")
    if env:
        bases.append(Path(env).expanduser())
    for base in bases:
        out.append(base / kind)
    return out


def list_models(kind: str, *, folders: bool = False) -> list[str]:
    """Names (relative to their folder) of the models of ``kind``; ``folders`` lists diffusers-style folders."""
    names: list[str] = []
    for root in roots(kind):
        if not root.is_dir():
            continue
        if folders:
            for child in sorted(root.iterdir()):
                if child.is_dir() and ((child / "model_index.json").exists() or (child / "config.json").exists()):
                    names.append(child.name)
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS:
                names.append(p.relative_to(root).as_posix())
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def resolve(kind: str, name: str, *, allow_absolute: bool = False, expected: str | None = None) -> Path:
    """The full path of model ``name`` of ``kind``.

    A name is looked up in every folder of the kind and must stay inside it.
    ``allow_absolute`` accepts an existing path as given (command line).
    Raises MODEL_NOT_FOUND naming the folders searched (and ``expected`` file names).
    """
    if not name or not str(name).strip():
        raise SpriteForgeError(BAD_INPUT, f"no {kind} model was chosen.")
    p = Path(name).expanduser()
    if allow_absolute and (p.is_absolute() or p.exists()):
        if p.exists():
            return p
        raise SpriteForgeError(MODEL_NOT_FOUND, f"{p} does not exist.", details={"path": str(p)})
    if p.is_absolute() or ".." in p.parts:
        raise SpriteForgeError(BAD_INPUT, f"model name {name!r} must be a name inside the {kind} folder, not a path.")
    searched = roots(kind)
    for root in searched:
        cand = root / p
        if cand.exists():
            if not _inside(cand, root):  # a symlink (the file or a folder on the way) pointing out of the folder
                raise SpriteForgeError(BAD_INPUT, f"{kind} model {name!r} is a link that points outside {root}. Move or "
                                       "copy the file into the folder instead of linking out of it.",
                                       details={"kind": kind, "name": name, "root": str(root)})
            return cand
    where = ", ".join(str(r) for r in searched) or f"models/{kind} (no models folder is configured)"
    extra = f" Expected file names: {expected}." if expected else ""
    raise SpriteForgeError(
        MODEL_NOT_FOUND,
        f"{kind} model {name!r} was not found in {where}.{extra}", hint=not_found_hint(full_path=allow_absolute),
        details={"kind": kind, "name": name, "searched": [str(r) for r in searched]},
    )
