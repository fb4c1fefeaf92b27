"""Minimal LoadImage / SaveImage / PreviewImage for running workflows without ComfyUI.

Same node ids, inputs, outputs and ``ui`` results as ComfyUI's core nodes, so an exported
workflow runs unchanged in ``spriteforge run``. NOT registered in ``NODES``: inside ComfyUI
its own nodes are used; :mod:`spriteforge.execution.runner` adds these when ComfyUI is absent.

Folders: images are read from ``cls.folders.input`` and written to ``cls.folders.output`` (previews in its
``previews`` folder); the runner passes both as a :class:`~spriteforge.nodes.folders.Folders` by binding
the classes of a run (:func:`~spriteforge.nodes.folders.with_folders`); unbound, ``./input`` and ``./output``.
Files are never overwritten: names get ComfyUI's ``_00001_`` counter, written through
:class:`~spriteforge.paths.OutputFolder` (exclusive create, no link followed out of the folder).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError
from ..paths import OutputFolder
from ..nodes._compat import io
from ..nodes.comfy_types import image_to_np, to_tensor
from ..nodes.folders import Folders, input_dir, output_dir, with_folders

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_input_images(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            out.append(p.relative_to(root).as_posix())
    return out


def _split_prefix(prefix: str) -> tuple[str, str]:
    prefix = (prefix or "ComfyUI").replace("\\", "/").strip()
    parts = [p for p in prefix.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or prefix.startswith("/") or re.match(r"^[A-Za-z]:", prefix):
        raise SpriteForgeError(BAD_INPUT, f"filename_prefix {prefix!r} must be a relative name inside the output "
                               "folder (no '..', not absolute). Use e.g. 'sprites/hero'.")
    return "/".join(parts[:-1]), parts[-1]


def _pnginfo(cls):
    try:
        from PIL.PngImagePlugin import PngInfo
    except ImportError:  # pragma: no cover
        return None
    hidden = getattr(cls, "hidden", None)
    info = PngInfo()
    prompt = getattr(hidden, "prompt", None)
    extra = getattr(hidden, "extra_pnginfo", None)
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    if isinstance(extra, dict):
        for k, v in extra.items():
            info.add_text(str(k), json.dumps(v))
    return info


def save_images(cls, images, filename_prefix: str, root: Path, kind: str) -> list[dict]:
    from PIL import Image

    sub, name = _split_prefix(filename_prefix)
    out = OutputFolder(root)
    results = []
    meta = _pnginfo(cls)
    for frame in image_to_np(images, keep_alpha=True):  # uint8 RGB or RGBA
        with out.create(name, sub=sub, numbered=".png") as (path, f):
            Image.fromarray(frame).save(f, format="PNG", pnginfo=meta, compress_level=4)
        results.append({"filename": path.name, "subfolder": sub, "type": kind})
    return results


def _upload_kw() -> dict:
    if hasattr(io, "UploadType"):  # comfy_api.latest.io
        return {"upload": io.UploadType.image}
    return {"image_upload": True}


class LoadImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadImage",
            display_name="Load Image",
            category="image",
            description="Loads an image from the input folder (ComfyUI's LoadImage: the mask is 1 - alpha).",
            inputs=[io.Combo.Input("image", options=list_input_images(input_dir(cls)),
                                   tooltip="Image file in the input folder.",
                                   **_upload_kw())],
            outputs=[io.Image.Output(display_name="IMAGE"), io.Mask.Output(display_name="MASK")],
        )

    @classmethod
    def execute(cls, image):
        root = input_dir(cls)
        p = Path(str(image))
        if p.is_absolute() or ".." in p.parts:
            raise SpriteForgeError(BAD_INPUT, f"image {image!r} must be a name inside the input folder {root}, not a "
                                   "path. Put the file there and give its name.", details={"image": str(image)})
        path = root / p
        try:
            inside = path.resolve().is_relative_to(root.resolve())  # a symlink may not point out of the folder
        except (OSError, RuntimeError):
            inside = False
        if not inside:
            raise SpriteForgeError(BAD_INPUT, f"image {image!r} points outside the input folder {root}. "
                                   "Copy the file into the folder instead of linking it.", details={"image": str(image)})
        if not path.is_file():
            raise SpriteForgeError(BAD_INPUT, f"image {image!r} was not found in the input folder {root}. "
                                   "Put it there (or pass --input DIR).", details={"image": str(image)})
        try:
            return cls._load(path)
        except SpriteForgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - unreadable, truncated or damaged file
            raise SpriteForgeError(BAD_INPUT, f"image {image!r} is not a readable image ({type(exc).__name__}). "
                                   "Replace the file or pick another one.", details={"image": str(image)}) from exc

    @classmethod
    def _load(cls, path: Path):
        from PIL import Image, ImageOps, ImageSequence

        frames, masks = [], []
        im = Image.open(path)
        with im:
            size = None
            for f in ImageSequence.Iterator(im):
                f = ImageOps.exif_transpose(f)
                if f.mode == "I":
                    f = f.point(lambda v: v * (1 / 255))
                rgb = np.asarray(f.convert("RGB"), np.float32) / 255.0
                if size is None:
                    size = rgb.shape[:2]
                elif rgb.shape[:2] != size:
                    continue
                if "A" in f.getbands() or (f.mode == "P" and "transparency" in f.info):
                    a = np.asarray(f.convert("RGBA").getchannel("A"), np.float32) / 255.0
                    m = 1.0 - a
                else:
                    m = np.zeros((64, 64), np.float32)
                frames.append(rgb)
                masks.append(m)
                if im.format == "MPO":
                    break
        if len({m.shape for m in masks}) > 1:
            masks = [m if m.shape == frames[0].shape[:2] else np.zeros(frames[0].shape[:2], np.float32) for m in masks]
        return io.NodeOutput(to_tensor(np.stack(frames)), to_tensor(np.stack(masks)))


class SaveImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaveImage",
            display_name="Save Image",
            category="image",
            description="Saves the images to the output folder as PNG (with the workflow in the metadata).",
            inputs=[
                io.Image.Input("images", tooltip="The images to save."),
                io.String.Input("filename_prefix", default="ComfyUI",
                                tooltip="Prefix of the file names; may contain sub-folders, e.g. 'sprites/hero'."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, filename_prefix="ComfyUI"):
        return io.NodeOutput(ui={"images": save_images(cls, images, filename_prefix, output_dir(cls), "output")})


class PreviewImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PreviewImage",
            display_name="Preview Image",
            category="image",
            description="Shows the images; on the command line they are written to the output's 'previews' folder.",
            inputs=[io.Image.Input("images", tooltip="The images to preview.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images):
        return io.NodeOutput(ui={"images": save_images(cls, images, "preview", output_dir(cls) / "previews", "temp")})


CORE_NODES = [LoadImage, SaveImage, PreviewImage]

__all__ = ["CORE_NODES", "LoadImage", "SaveImage", "PreviewImage", "list_input_images", "Folders",
           "with_folders"]
