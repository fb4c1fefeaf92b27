"""Indexed PNG, sprite sheets with a JSON atlas, and tileset slicing.

Indexed PNGs are mode ``P`` with index 0 reserved for transparency (a ``tRNS`` chunk marks it
fully transparent) and the palette's colours at indices ``1..N`` in the palette's own order, so
the order is stable across frames and files.  The JSON atlas is the TexturePacker/Aseprite
"hash" layout that game engines (Phaser, Godot importers, PixiJS, LibGDX tools) read.
"""

from __future__ import annotations

import json
import math
import numpy as np

from .color import bad, check_alpha, check_image
from .palette import Palette, resolve_palette
from .quantize import match

ATLAS_APP = "SpriteForge"


def to_indexed(img, palette, *, alpha=None, alpha_threshold: int = 128, indices=None) -> np.ndarray:
    """``H x W`` uint8 indices for an indexed PNG: 0 = transparent, ``1 + i`` = ``palette.colors[i]``.

    ``indices`` (palette indices from :func:`spriteforge.pixel.quantize.dither`) are used when given,
    otherwise each pixel takes its nearest palette colour.
    """
    img = check_image(img)
    pal = resolve_palette(palette)
    if len(pal) > 255:
        raise bad(f"palette has {len(pal)} colours; an indexed PNG with a transparent index holds 255. Reduce it.")
    if alpha is None and img.shape[2] == 4:
        alpha = img[..., 3]
    idx = match(img, pal) if indices is None else np.asarray(indices)
    if idx.shape != img.shape[:2]:
        raise bad("indices do not match the image size. Pass indices made for this image.")
    out = (idx + 1).astype(np.uint8)
    if alpha is not None:
        out[check_alpha(alpha, img.shape) < alpha_threshold] = 0
    return out


def indexed_image(indices: np.ndarray, palette):
    """A PIL mode-P image: palette entry 0 transparent (black), entries 1..N the palette, tRNS set."""
    from PIL import Image

    pal = resolve_palette(palette)
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.dtype != np.uint8:
        raise bad("indexed data must be H x W uint8. Use to_indexed() to make it.")
    if idx.size and idx.max() > len(pal):
        raise bad("indexed data refers to colours the palette does not have. Use the palette it was made with.")
    im = Image.fromarray(idx, "P")
    entries = np.concatenate([np.zeros((1, 3), np.uint8), pal.colors], 0)
    im.putpalette(entries.reshape(-1).tolist(), rawmode="RGB")
    trns = [0] + [int(v) for v in (pal.alpha if pal.alpha is not None else np.full(len(pal), 255))]
    im.info["transparency"] = bytes(trns)
    return im


def _pnginfo(text: dict | None):
    if not text:
        return None
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in text.items():
        info.add_text(str(k), v if isinstance(v, str) else json.dumps(v))
    return info


def save_indexed_png(file, indices: np.ndarray, palette, *, text: dict | None = None):
    """Write an indexed PNG (mode P, tRNS with index 0 transparent) to ``file`` (a path, or a binary file such as
    :meth:`spriteforge.paths.OutputFolder.create` opens). ``text`` adds tEXt chunks (e.g. prompt/workflow)."""
    im = indexed_image(indices, palette)
    im.save(file, format="PNG", transparency=im.info["transparency"], pnginfo=_pnginfo(text), optimize=False)
    return file


def save_rgba_png(file, img, *, alpha=None, text: dict | None = None):
    """Write an RGBA (or RGB) PNG with optional tEXt chunks to ``file`` (a path or a binary file)."""
    from PIL import Image

    img = check_image(img)
    if alpha is not None:
        img = np.concatenate([img[..., :3], check_alpha(alpha, img.shape)[..., None]], -1)
    Image.fromarray(img, "RGBA" if img.shape[2] == 4 else "RGB").save(file, format="PNG", pnginfo=_pnginfo(text))
    return file


def pack_sheet(frames, *, columns: int | None = None, padding: int = 0, names=None, image_name: str = "sheet.png",
               scale: int = 1, duration_ms: int = 100) -> tuple[np.ndarray, dict]:
    """Pack equal-size RGBA frames on a grid. Returns (sheet ``H x W x 4`` uint8, atlas dict).

    The atlas is TexturePacker/Aseprite "hash" JSON: ``frames: {name: {frame: {x, y, w, h}, rotated, trimmed,
    spriteSourceSize, sourceSize, duration}}``, ``meta: {app, version, image, format, size: {w, h}, scale}``.
    """
    frames = [check_image(f, "frame") for f in (list(frames) if not isinstance(frames, np.ndarray) or frames.ndim == 4
                                                else [frames])]
    if not frames:
        raise bad("no frames to pack. Pass at least one frame.")
    fh, fw = frames[0].shape[:2]
    if any(f.shape[:2] != (fh, fw) for f in frames):
        raise bad("frames differ in size. Pack frames of one size (resize or pad them first).")
    n = len(frames)
    cols = int(columns) if columns else int(math.ceil(math.sqrt(n)))
    if cols < 1:
        raise bad(f"columns {columns} must be >= 1.")
    cols = min(cols, n)
    rows = int(math.ceil(n / cols))
    pad = int(padding)
    if pad < 0:
        raise bad(f"padding {padding} must be >= 0.")
    names = list(names) if names is not None else [f"frame_{i:03d}" for i in range(n)]
    if len(names) != n or len(set(names)) != n:
        raise bad("frame names must be unique, one per frame.")
    W = cols * fw + (cols - 1) * pad
    H = rows * fh + (rows - 1) * pad
    sheet = np.zeros((H, W, 4), np.uint8)
    atlas_frames = {}
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        x, y = c * (fw + pad), r * (fh + pad)
        rgba = f if f.shape[2] == 4 else np.concatenate([f, np.full((fh, fw, 1), 255, np.uint8)], -1)
        sheet[y:y + fh, x:x + fw] = rgba
        atlas_frames[names[i]] = {
            "frame": {"x": x, "y": y, "w": fw, "h": fh},
            "rotated": False,
            "trimmed": False,
            "spriteSourceSize": {"x": 0, "y": 0, "w": fw, "h": fh},
            "sourceSize": {"w": fw, "h": fh},
            "duration": int(duration_ms),
        }
    from ..version import __version__

    atlas = {
        "frames": atlas_frames,
        "meta": {"app": ATLAS_APP, "version": __version__, "image": image_name, "format": "RGBA8888",
                 "size": {"w": W, "h": H}, "scale": str(int(scale)),
                 "grid": {"columns": cols, "rows": rows, "frame_w": fw, "frame_h": fh, "padding": pad}},
    }
    return sheet, atlas


def slice_tiles(img, tile_w: int, tile_h: int, *, margin: int = 0, spacing: int = 0,
                skip_empty: bool = False) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Cut a tileset into tiles, row by row: (``N x th x tw x C`` uint8, [(col, row), ...]).

    ``margin`` is the border around the whole sheet, ``spacing`` the gap between tiles (Tiled's terms).
    ``skip_empty`` drops fully transparent tiles (RGBA input).
    """
    img = check_image(img)
    try:
        tw, th, mg, sp = int(tile_w), int(tile_h), int(margin), int(spacing)
    except (TypeError, ValueError):
        raise bad("tile size, margin and spacing must be whole numbers.") from None
    if tw < 1 or th < 1 or mg < 0 or sp < 0:
        raise bad(f"tile size {tile_w}x{tile_h} must be >= 1 and margin/spacing >= 0.")
    h, w = img.shape[:2]
    nx = (w - 2 * mg + sp) // (tw + sp)
    ny = (h - 2 * mg + sp) // (th + sp)
    if nx < 1 or ny < 1:
        raise bad(f"a {tw}x{th} tile does not fit in the {w}x{h} image with margin {mg}. Use a smaller tile size.")
    tiles, pos = [], []
    for r in range(ny):
        for c in range(nx):
            x, y = mg + c * (tw + sp), mg + r * (th + sp)
            t = img[y:y + th, x:x + tw]
            if skip_empty and img.shape[2] == 4 and not (t[..., 3] > 0).any():
                continue
            tiles.append(t)
            pos.append((c, r))
    if not tiles:
        raise bad("every tile is empty. Check the tile size, or turn off skip_empty.")
    return np.stack(tiles), pos


__all__ = ["to_indexed", "indexed_image", "save_indexed_png", "save_rgba_png", "pack_sheet", "slice_tiles",
           "Palette"]
