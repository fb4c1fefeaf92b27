"""Output folders shared by the nodes that write files (pixel exports) and the core IO stand-ins."""

from __future__ import annotations

from pathlib import Path

from ..errors import BAD_INPUT, SpriteForgeError


def confined_folder(root: Path, sub: str) -> Path:
    """``root/sub``, created; BAD_INPUT when a symlink on the way leads out of ``root``."""
    folder = root / sub if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    try:
        folder.resolve().relative_to(root.resolve())
    except ValueError:
        raise SpriteForgeError(BAD_INPUT, f"the output subfolder {sub!r} is a link that leads outside the output folder "
                               f"{root}. Use another filename_prefix, or replace the link with a folder.",
                               details={"subfolder": sub}) from None
    return folder
