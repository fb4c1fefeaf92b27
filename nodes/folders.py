"""Where the nodes read input images and write files.

Inside ComfyUI these are ComfyUI's folders (``folder_paths``). Outside it, whoever runs the nodes passes a
:class:`Folders` explicitly: the in-process runner hands every node class of a run a subclass carrying
``folders`` (:func:`with_folders`), which is how LoadImage lists its choices and how the save nodes find
the output folder (they write through :class:`spriteforge.paths.OutputFolder`). Nothing is read from
environment variables or module globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Folders:
    """The input folder (LoadImage) and the output folder (SaveImage, the pack's save nodes; previews below it)."""

    input: Path = Path("input")
    output: Path = Path("output")

    def __post_init__(self):
        object.__setattr__(self, "input", Path(self.input))
        object.__setattr__(self, "output", Path(self.output))

    @property
    def previews(self) -> Path:
        return self.output / "previews"


def with_folders(cls: type, folders: Folders) -> type:
    """A subclass of the node class ``cls`` that reads and writes in ``folders`` (same node id and schema)."""
    return type(cls.__name__, (cls,), {"folders": folders, "__module__": cls.__module__,
                                        "__qualname__": cls.__qualname__})


def _comfy_folder(getter: str) -> Path | None:
    try:
        import folder_paths  # type: ignore
    except ImportError:
        return None
    return Path(getattr(folder_paths, getter)())


def input_dir(cls: type | None = None) -> Path:
    """``cls.folders.input`` when the caller passed folders, else ComfyUI's input folder, else ``./input``."""
    folders = getattr(cls, "folders", None)
    if folders is not None:
        return folders.input
    return _comfy_folder("get_input_directory") or Folders().input


def output_dir(cls: type | None = None) -> Path:
    """``cls.folders.output`` when the caller passed folders, else ComfyUI's output folder, else ``./output``."""
    folders = getattr(cls, "folders", None)
    if folders is not None:
        return folders.output
    return _comfy_folder("get_output_directory") or Folders().output


__all__ = ["Folders", "with_folders", "input_dir", "output_dir"]
