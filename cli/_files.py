"""Image files on the command line: the inputs of ``spriteforge pixel`` and ``spriteforge rmbg``."""

from __future__ import annotations

from pathlib import Path

from ..errors import BAD_INPUT, SpriteForgeError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tga", ".tif", ".tiff")


def collect_images(inputs, *, recursive: bool = False, skip_folder: Path | None = None) -> list[Path]:
    """The image files among ``inputs`` (files, and the images of folders, sorted; ``recursive`` descends);
    a folder's images inside ``skip_folder`` (the output folder) are left out."""
    skip = skip_folder.resolve() if skip_folder is not None else None
    files: list[Path] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            files.extend(sorted(q for q in it if q.is_file() and q.suffix.lower() in IMAGE_EXTS
                                and (skip is None or q.resolve().parent != skip)))
        elif p.is_file():
            files.append(p)
        else:
            raise SpriteForgeError(BAD_INPUT, f"input {raw} does not exist. Give image files or folders.",
                                   details={"path": str(p)})
    if not files:
        raise SpriteForgeError(BAD_INPUT, f"no images found in {', '.join(map(str, inputs))} ({', '.join(IMAGE_EXTS)}). "
                               "Give image files or folders holding them.")
    return files


def unique_name(path: Path, used: set, ext: str = ".png") -> str:
    """``stem.png``, or ``stem_1.png``, ``stem_2.png`` ... when an earlier input had the same stem."""
    stem = path.stem
    name = f"{stem}{ext}"
    i = 1
    while name in used:
        name = f"{stem}_{i}{ext}"
        i += 1
    used.add(name)
    return name


__all__ = ["IMAGE_EXTS", "collect_images", "unique_name"]
