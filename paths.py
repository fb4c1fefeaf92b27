"""Where models live: ComfyUI's ``folder_paths`` inside ComfyUI, a models root outside.

Kinds follow ComfyUI's folder names (``diffusion_models``, ``checkpoints``, ``vae``,
``text_encoders``, ``diffusers``, ``loras``) plus ``birefnet``, which the pack registers
(appending, never replacing, so paths from ``extra_model_paths.yaml`` stay).
Outside ComfyUI a root laid out like ComfyUI's ``models/`` is used: ``--models DIR`` on
the command line or the ``SPRITEFORGE_MODELS`` environment variable.
A name given to :func:`resolve` must stay inside its folder: ``..`` and absolute
names are refused unless ``allow_absolute`` (explicit command-line paths).

Where files go: :class:`OutputFolder` is the one way every command, save node and export writes a file the user
sees (never replacing a file, never following a link out of the folder).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
from pathlib import Path
from typing import Iterator

from .errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError, classify

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


# --------------------------------------------------------------------------- output files

def _plain_name(name: str) -> str:
    name = str(name)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise SpriteForgeError(BAD_INPUT, f"output file name {name!r} must be a plain file name (no folders).")
    return name


def _numbered(prefix: str, ext: str, names) -> Iterator[str]:
    """ComfyUI's counter names ``prefix_00001_.ext``, starting above every counter already in ``names``."""
    pat = re.compile(re.escape(prefix) + r"_(\d+)_?\.")
    start = max((int(m.group(1)) for m in map(pat.match, names) if m), default=0)
    return (f"{prefix}_{i:05}_{ext}" for i in itertools.count(start + 1))


def _suffixed(name: str) -> Iterator[str]:
    """``name``, then ``stem_1.ext``, ``stem_2.ext``, ..."""
    stem, ext = os.path.splitext(name)
    yield name
    for i in itertools.count(1):
        yield f"{stem}_{i}{ext}"


def _free_stems(folder: Path, base: str, exts, numbered: bool) -> Iterator[str]:
    """``base``, ``base_1``, ... (or, ``numbered``, ComfyUI's ``base_00001_``, ...) with no file, folder or link
    named ``stem + ext`` in ``folder`` for any of ``exts``."""
    stems = (_numbered(base, "", os.listdir(folder)) if numbered
             else (base if k == 0 else f"{base}_{k}" for k in itertools.count()))
    return (c for c in stems if not any(os.path.lexists(folder / f"{c}{e}") for e in exts))


_NEW_FILE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))


class OutputFolder:
    """The one way the pack writes a file a user sees (every command, save node and export goes through it).

    * A name that exists gets a new one (``hero.png`` -> ``hero_1.png``, or ComfyUI's next ``_00002_`` counter):
      no file is ever replaced, neither a user's nor an earlier one of this run (two inputs named ``hero.png``
      give ``hero.png`` and ``hero_1.png``).
    * Files are created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``): a link planted at the name, even between
      the check and the write, is not followed.
    * A sub-folder is confirmed inside the folder (links on the way resolved) before anything is created, and
      folders are made one level at a time, each checked again.
    * Nothing exists on disk until the first file is written (a failed run leaves no empty folder behind);
      :meth:`check` says early, creating nothing, whether the folder can be written at all.
    """

    def __init__(self, root, *, label: str = "the output folder"):
        self.root = Path(root).expanduser()
        self.label = label
        self.written: list[Path] = []  # the files this run wrote, in order

    def check(self) -> "OutputFolder":
        """BAD_INPUT, creating nothing, when the folder is an existing file or cannot be written (read-only file
        system, no permission)."""
        r = self.root
        if r.exists() and not r.is_dir():
            raise self._error(f"{self.label} {r} is an existing file, not a folder. Give a folder (it is created "
                              "when missing).")
        p = r
        while not p.exists():
            if os.path.lexists(p):
                raise self._error(f"{self.label} {r}: {p} is a link to something that does not exist. Remove the "
                                  "link or give another folder.")
            p = p.parent
        if not p.is_dir():
            raise self._error(f"{self.label} {r} cannot be made: {p} is a file. Give another folder.")
        if not os.access(p, os.W_OK | os.X_OK):
            raise self._error(f"{self.label} {r} cannot be written ({p} is read-only or not writable for this user). "
                              "Give a folder you can write to.")
        return self

    def folder(self, sub: str = "") -> Path:
        """``root/sub``, confirmed inside the folder and then created; BAD_INPUT when a link leads out of it."""
        parts = [q for q in str(sub or "").replace("\\", "/").split("/") if q not in ("", ".")]
        if ".." in parts or str(sub or "").startswith(("/", "\\")):
            raise self._error(f"sub-folder {sub!r} leads outside {self.label} ('..' or an absolute path); nothing "
                              "was written. Give a sub-folder inside it.", subfolder=sub)
        target = self.root.joinpath(*parts)
        if parts and not _inside(target, self.root):  # checked before anything is created
            raise self._outside(sub)
        self._mkdir(self.root, parents=True)
        here = self.root
        for part in parts:
            here = here / part
            self._mkdir(here)
            if not _inside(here, self.root) or not here.is_dir():  # a link swapped in meanwhile
                raise self._outside(sub)
        return target

    @contextlib.contextmanager
    def create(self, name: str, *, sub: str = "", numbered: str | None = None):
        """Open a new file for writing: ``with out.create("hero.png") as (path, f): image.save(f, format="PNG")``.

        ``name`` is a plain file name (a free variant is taken when it exists); with ``numbered=".png"`` it is a
        prefix and ComfyUI's counter is added (``prefix_00001_.png``). The file is removed again when the block
        fails."""
        folder = self.folder(sub)
        if numbered is not None:
            candidates = _numbered(_plain_name(name), numbered, os.listdir(folder))
        else:
            candidates = _suffixed(_plain_name(name))
        path, fd = self._open_new(folder, candidates)
        try:
            with os.fdopen(fd, "wb") as f:
                yield path, f
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.written.append(path)

    def write_bytes(self, name: str, data: bytes, **kw) -> Path:
        with self.create(name, **kw) as (path, f):
            f.write(data)
        return path

    def write_text(self, name: str, text: str, **kw) -> Path:
        return self.write_bytes(name, text.encode("utf-8"), **kw)

    def free_stem(self, stem: str, exts, *, sub: str = "", numbered: bool = False) -> str:
        """The first stem free for every extension in ``exts`` under ``sub`` (made): ``stem``, ``stem_1``, ... or,
        with ``numbered``, ComfyUI's ``stem_00001_``, ... above every counter there. Nothing is reserved: a name
        taken before its file is created still gets a new one (:meth:`create`)."""
        folder = self.folder(sub)
        return next(_free_stems(folder, _plain_name(stem), exts, numbered))

    def write_group(self, stem: str, exts, make, *, sub: str = "") -> list[Path]:
        """Files that name each other (a tile sheet and the tileset files that point at it): the first stem free
        for every extension in ``exts`` (``stem``, ``stem_1``, ...), then ``make(stem)`` -> ``{name: bytes}``,
        each file created as :meth:`create` does. When one of them cannot be created (a name taken meanwhile), the
        ones already written are removed and the next stem is tried."""
        folder = self.folder(sub)
        for cand in _free_stems(folder, _plain_name(stem), exts, numbered=False):
            done: list[Path] = []
            try:
                for name, data in make(cand).items():
                    path = folder / _plain_name(name)
                    fd = self._open_exclusive(path)
                    if fd is None:
                        raise FileExistsError(name)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    done.append(path)
            except FileExistsError:
                for path in done:
                    path.unlink(missing_ok=True)
                continue
            except BaseException:
                for path in done:
                    path.unlink(missing_ok=True)
                raise
            self.written.extend(done)
            return done
        raise AssertionError("unreachable")  # the stems are endless

    def _open_new(self, folder: Path, candidates) -> tuple[Path, int]:
        """The first candidate name that can be created exclusively, and its open descriptor."""
        for cand in candidates:
            path = folder / cand
            fd = self._open_exclusive(path)
            if fd is not None:
                return path, fd
        raise AssertionError("unreachable")  # the candidate generators are endless

    def _open_exclusive(self, path: Path) -> int | None:
        """``path`` created and opened for writing; None when the name is taken (a file, a folder or a link, dangling
        too: never replaced nor followed, also when it appears between the check and the open)."""
        if os.path.lexists(path):
            return None
        try:
            return os.open(path, _NEW_FILE, 0o666)
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # the user's over-long name or prefix: said as errors.classify says it
                raise classify(exc) from exc
            raise self._error(f"cannot write {path}: {exc.strerror or exc}. Give an output folder you can write "
                              "to, with free space.") from exc

    def _mkdir(self, p: Path, parents: bool = False) -> None:
        try:
            p.mkdir(parents=parents, exist_ok=True)
        except FileExistsError:
            raise self._error(f"{p} is an existing file, not a folder. Give another {self.label} or prefix.") from None
        except OSError as exc:
            raise self._error(f"cannot create {p}: {exc.strerror or exc}. Give a folder you can write to.") from exc

    def _outside(self, sub: str) -> SpriteForgeError:
        return self._error(f"the sub-folder {sub!r} is a link that leads outside {self.label} {self.root}. Use "
                           "another name, or replace the link with a folder.", subfolder=sub)

    def _error(self, msg: str, **details) -> SpriteForgeError:
        return SpriteForgeError(BAD_INPUT, msg, details={"folder": str(self.root), **details})
