"""Image files on the command line: the inputs of ``spriteforge pixel`` and ``spriteforge rmbg``, and their
output folder (written through :class:`spriteforge.paths.OutputFolder`: nothing is overwritten, nothing is
written beside the inputs, the folder is made only when there is something to write)."""

from __future__ import annotations

from pathlib import Path

from ..errors import BAD_INPUT, SpriteForgeError
from ..paths import OutputFolder

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tga", ".tif", ".tiff")


def _bad(msg: str, **details) -> SpriteForgeError:
    return SpriteForgeError(BAD_INPUT, msg, details=details or None)


def _under(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def output_folder(out) -> OutputFolder:
    """``--out`` as an :class:`OutputFolder`, checked (an existing file or a read-only place is refused);
    nothing is created yet."""
    if not out:
        raise _bad("give the output folder with --out DIR.")
    return OutputFolder(out, label="--out").check()


def collect_images(inputs, *, out: OutputFolder, recursive: bool = False) -> list[Path]:
    """The image files among ``inputs`` (files, and the images of folders, sorted; ``recursive`` descends).

    ``out`` may not be a folder the inputs come from (the results would be written among the originals, and the
    next run would take them for inputs); a folder's images inside ``out`` (an output folder within an input
    folder) are left out, and when that leaves none the message says so."""
    dest = out.root.resolve()
    files: list[Path] = []
    skipped = 0
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            if p.resolve() == dest:
                raise _bad(f"--out {out.root} is the input folder {raw}: the results would be written among the "
                           "originals. Give another --out folder.", path=str(p))
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(q for q in it if q.is_file() and q.suffix.lower() in IMAGE_EXTS)
            kept = [q for q in found if not _under(q.resolve().parent, dest)]
            skipped += len(found) - len(kept)
            files.extend(kept)
        elif p.is_file():
            if p.resolve().parent == dest:
                raise _bad(f"--out {out.root} is the folder of the input {raw}: the results would be written among "
                           "the originals. Give another --out folder.", path=str(p))
            files.append(p)
        else:
            raise _bad(f"input {raw} does not exist. Give image files or folders.", path=str(p))
    if not files:
        why = (f" ({skipped} image(s) there are inside the output folder {out.root} and were left out)"
               if skipped else "")
        raise _bad(f"no images found in {', '.join(map(str, inputs))}{why} ({', '.join(IMAGE_EXTS)}). "
                   "Give image files or folders holding them.")
    return files


def result_name(path: Path, ext: str = ".png") -> str:
    """The output name of input ``path`` (``stem.png``); :meth:`OutputFolder.create` makes it unique."""
    return f"{path.stem}{ext}"


__all__ = ["IMAGE_EXTS", "collect_images", "output_folder", "result_name"]
