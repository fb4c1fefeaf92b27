"""Pixel-art nodes: thin adapters over :mod:`spriteforge.pixel`.

IMAGE is ComfyUI's float32 ``[B,H,W,3]`` in 0..1; MASK here is the *alpha* of the sprite,
float32 ``[B,H,W]`` with 1 = opaque sprite pixel (background-removal nodes give this; ComfyUI's
LoadImage gives the inverse, so put an InvertMask after it). A missing mask means fully opaque.
Palettes travel between nodes as ``SF_PALETTE`` (a :class:`spriteforge.pixel.Palette`).
"""

from __future__ import annotations

import json
import re

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError
from ..paths import OutputFolder
from ..pixel import alpha as A
from ..pixel import export as X
from ..pixel import grid as G
from ..pixel import palette as P
from ..pixel import reference as R
from ..pixel.color import parse_hex_color
from ..pixel.quantize import DITHERS
from ..pixel.quantize import quantize as quantize_image
from ..pixel.sprite import indexed_palette
from ..pixel.sprite import outline_color as outline_color_of
from ..pixel import scale as S
from ..progress import Progress
from ._compat import io
from .validation import ValidatedNode
from .folders import output_dir
from .comfy_types import image_to_np, mask_to_np, np_to_image, np_to_mask

CATEGORY = "SpriteForge/pixel"
TIP_OUT_IMAGE = "The processed image [B,H,W,3], 0..1."
TIP_OUT_MASK = "Alpha [B,H,W]: 1 = opaque (sprite), 0 = transparent."
PaletteType = io.Custom("SF_PALETTE")
MASK_TIP = "Optional alpha of the sprite: 1 = opaque sprite pixel, 0 = transparent (LoadImage's mask is the inverse: " \
           "add InvertMask). Without it the image is treated as fully opaque."
DITHER_CHOICES = list(DITHERS)
SNAP_CHOICES = ["none", "8", "16", "32"]


def _mask_in():
    return io.Mask.Input("mask", optional=True, tooltip=MASK_TIP)


def _invert_mask_in():
    return io.Boolean.Input("invert_mask", default=False,
                            tooltip="Turn on when the mask comes straight from LoadImage (there 1 = transparent).")


def _image_and_mask_out() -> list:
    return [io.Image.Output(display_name="image", tooltip=TIP_OUT_IMAGE),
            io.Mask.Output(display_name="mask", tooltip=TIP_OUT_MASK)]


# --------------------------------------------------------------------------- tensor <-> numpy

def _bad(msg: str) -> SpriteForgeError:
    return SpriteForgeError(BAD_INPUT, msg)


def _frames(image, mask, invert: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rgb = image_to_np(image)
    a = mask_to_np(mask, *rgb.shape[:3])
    if invert and mask is not None:
        a = 255 - a
    return rgb, a


def _rgba(rgb: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.concatenate([rgb, a[..., None]], -1)


def palette_swatch(pal: P.Palette, cell: int = 16) -> np.ndarray:
    """A preview strip of the palette (one ``cell`` square per colour, up to 16 per row)."""
    n = len(pal)
    cols = min(16, n)
    rows = (n + cols - 1) // cols
    out = np.zeros((rows * cell, cols * cell, 3), np.uint8)
    for i, c in enumerate(pal.colors):
        r, k = divmod(i, cols)
        out[r * cell:(r + 1) * cell, k * cell:(k + 1) * cell] = c
    return out


# --------------------------------------------------------------------------- output folder

def _split_prefix(prefix: str) -> tuple[str, str]:
    prefix = (prefix or "sprite").replace("\\", "/").strip()
    parts = [p for p in prefix.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or prefix.startswith("/") or re.match(r"^[A-Za-z]:", prefix):
        raise _bad(f"filename_prefix {prefix!r} must be a relative name inside the output folder (no '..').")
    name = re.sub(r"[^A-Za-z0-9._ -]", "_", parts[-1]) or "sprite"
    sub = "/".join(re.sub(r"[^A-Za-z0-9._ -]", "_", p) for p in parts[:-1])
    return sub, name


def _outline_color(text: str) -> int | str:
    """An outline colour: the palette index N of ``index:N``, or the ``#rrggbb`` text (checked)."""
    oc = (text or "#000000").strip()
    if oc.lower().startswith("index:"):
        index = oc.split(":", 1)[1].strip()
        if not index.isdigit():
            raise _bad(f"outline_color {oc!r}: write the palette index as 'index:N'.")
        return int(index)
    parse_hex_color(oc)
    return oc


def _metadata(cls) -> dict | None:
    try:
        from comfy.cli_args import args  # type: ignore

        if getattr(args, "disable_metadata", False):
            return None
    except Exception:
        pass
    hidden = getattr(cls, "hidden", None)
    text = {}
    prompt = getattr(hidden, "prompt", None)
    extra = getattr(hidden, "extra_pnginfo", None)
    if prompt is not None:
        text["prompt"] = json.dumps(prompt)
    if isinstance(extra, dict):
        for k, v in extra.items():
            text[str(k)] = json.dumps(v)
    return text or None


# --------------------------------------------------------------------------- nodes

class PixelDownscale(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelDownscale",
            display_name="SpriteForge Pixel Downscale",
            category=CATEGORY,
            description="Downscale to pixel-art resolution by a whole factor or to a size that divides the image: "
            "nearest, box, k-centroid (dominant colour per cell), median, or contrast-aware (keeps thin dark outlines).",
            inputs=[
                io.Image.Input("image", tooltip="Images to downscale (a batch is processed frame by frame)."),
                io.Combo.Input("method", options=list(S.METHODS), default="kcentroid",
                               tooltip="How each cell becomes one pixel: kcentroid = dominant colour, contrast = keeps "
                               "1-pixel dark outlines, box = average, median, nearest = cell centre."),
                io.Combo.Input("mode", options=["factor", "size"], default="factor",
                               tooltip="Downscale by 'factor', or to 'width' x 'height' (must divide the image)."),
                io.Int.Input("factor", default=8, min=1, max=64, tooltip="Cell size in pixels when mode is 'factor'."),
                io.Int.Input("width", default=64, min=1, max=4096, tooltip="Target width when mode is 'size'."),
                io.Int.Input("height", default=64, min=1, max=4096, tooltip="Target height when mode is 'size'."),
                _invert_mask_in(),
                io.Combo.Input("fit", options=list(S.FITS), default="exact", optional=True,
                               tooltip="When the cells do not divide the image: 'exact' stops with an error, 'crop' "
                               "cuts the rest off (centred), 'pad' adds transparent pixels up to whole cells (centred)."),
                _mask_in(),
            ],
            outputs=_image_and_mask_out(),
        )

    @classmethod
    def execute(cls, image, method="kcentroid", mode="factor", factor=8, width=64, height=64, invert_mask=False,
                fit="exact", mask=None):
        rgb, a = _frames(image, mask, invert_mask)
        kw = {"factor": factor} if mode == "factor" else {"size": (width, height)}
        outs = []
        bar = Progress(len(rgb), "downscale")
        for f, m in zip(rgb, a):
            outs.append(S.downscale(_rgba(f, m), method=method, fit=fit, **kw))
            bar.update()
        o = np.stack(outs)
        return io.NodeOutput(np_to_image(o), np_to_mask(o[..., 3]))


class PixelUpscale(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelUpscale",
            display_name="SpriteForge Pixel Upscale (nearest)",
            category=CATEGORY,
            description="Nearest-neighbour integer upscale for display: every pixel becomes a crisp square.",
            inputs=[
                io.Image.Input("image", tooltip="Pixel-art images to enlarge."),
                io.Int.Input("factor", default=4, min=1, max=64, tooltip="Each pixel becomes factor x factor pixels."),
                _mask_in(),
            ],
            outputs=_image_and_mask_out(),
        )

    @classmethod
    def execute(cls, image, factor=4, mask=None):
        rgb, a = _frames(image, mask)
        o = np.stack([S.upscale(_rgba(f, m), factor) for f, m in zip(rgb, a)])
        return io.NodeOutput(np_to_image(o), np_to_mask(o[..., 3]))


class PixelGridRecover(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelGridRecover",
            display_name="SpriteForge Pixel Grid Recover",
            category=CATEGORY,
            description="Recovers the true resolution of 'fake' pixel art (AI output where each art pixel became a "
            "blurry block, possibly on a slightly uneven grid, with compression noise): detects the grid, snaps to it "
            "and returns the native-resolution sprite and the detected scale. A batch uses the first frame's grid.",
            inputs=[
                io.Image.Input("image", tooltip="Upscaled / AI-generated pixel art."),
                io.Combo.Input("snap_to_multiple", options=SNAP_CHOICES, default="none",
                               tooltip="Round the recovered width and height to a multiple of 8/16/32 (e.g. when a 64px "
                               "sprite comes back as 63px)."),
                io.Float.Input("max_scale", default=0.0, min=0.0, max=256.0, step=0.5,
                               tooltip="Largest cell size to consider in pixels (0 = automatic, up to a third of the image)."),
                _invert_mask_in(),
                _mask_in(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The image on its native pixel grid (one pixel per cell)."),
                     io.Mask.Output(display_name="mask", tooltip=TIP_OUT_MASK),
                     io.Float.Output(display_name="scale", tooltip="The detected cell size in input pixels."),
                     io.Int.Output(display_name="width", tooltip="Width of the recovered image in pixels."),
                     io.Int.Output(display_name="height", tooltip="Height of the recovered image in pixels.")],
        )

    @classmethod
    def execute(cls, image, snap_to_multiple="none", max_scale=0.0, invert_mask=False, mask=None):
        rgb, a = _frames(image, mask, invert_mask)
        snap = None if snap_to_multiple in (None, "none", "", 0) else int(snap_to_multiple)
        first = _rgba(rgb[0], a[0]) if mask is not None else rgb[0]
        out0, info = G.recover_grid(first, snap_multiple=snap, max_scale=float(max_scale) or None)
        outs = [_rgba(out0[..., :3], out0[..., 3]) if out0.shape[2] == 4 else _rgba(out0, np.full(out0.shape[:2], 255, np.uint8))]
        bar = Progress(len(rgb), "grid recover")
        bar.update()
        for f, m in zip(rgb[1:], a[1:]):
            outs.append(G.sample_cells(_rgba(f, m), info.cuts_y, info.cuts_x))
            bar.update()
        o = np.stack(outs)
        ui = None if info.found else {"text": ["no pixel grid found: the image is returned at its full size"]}
        return io.NodeOutput(np_to_image(o), np_to_mask(o[..., 3]), float(info.scale), int(info.width), int(info.height),
                             ui=ui)


def palette_ui(pal, used=None, alpha=None) -> dict:
    """The editor's swatch strip data (``{"palette": ["#rrggbb", ...]}``, the node's ``ui`` output).

    With ``used`` (the node's output frames, uint8 ``[H,W,3]``) only the palette colours that occur in
    their opaque pixels (``alpha``: uint8 masks, 255 = opaque, > 127 counts) are listed, in palette order.
    """
    colours = ["#" + h for h in pal.hex()]
    if used is not None:
        rgb = np.asarray(pal.colors, dtype=np.int64).reshape(-1, 3)
        px = [np.asarray(f)[..., :3].astype(np.int64).reshape(-1, 3) for f in used]
        if alpha is not None:
            px = [p[np.asarray(m).reshape(-1) > 127] for p, m in zip(px, alpha)]
        allpx = np.concatenate(px) if px else np.zeros((0, 3), np.int64)
        codes = set(np.unique((allpx[:, 0] << 16) | (allpx[:, 1] << 8) | allpx[:, 2]).tolist())
        colours = [c for c, (r, g, b) in zip(colours, rgb.tolist()) if (r << 16) | (g << 8) | b in codes]
    return {"palette": colours}


class PixelPaletteExtract(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelPaletteExtract",
            display_name="SpriteForge Pixel Palette Extract",
            category=CATEGORY,
            description="Fits one palette to all frames of the batch (so an animation does not flicker): seeded k-means "
            "in OKLab, median cut, or octree. Transparent pixels (mask) are ignored.",
            inputs=[
                io.Image.Input("image", tooltip="Image or batch/animation to take the colours from (pooled)."),
                io.Int.Input("colors", default=16, min=1, max=255, tooltip="Number of palette colours."),
                io.Combo.Input("method", options=list(P.METHODS), default="kmeans",
                               tooltip="kmeans = best perceptual fit (seeded, deterministic); median_cut; octree."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the k-means start: same seed, same palette."),
                _mask_in(),
            ],
            outputs=[PaletteType.Output(display_name="palette", tooltip="The palette, for Quantize, Save Indexed and Sprite Sheet."),
                     io.Image.Output(display_name="preview", tooltip="The palette as a strip of swatches.")],
        )

    @classmethod
    def execute(cls, image, colors=16, method="kmeans", seed=0, mask=None):
        rgb, a = _frames(image, mask)
        pal = P.extract([_rgba(f, m) for f, m in zip(rgb, a)], colors, method, seed=seed)
        return io.NodeOutput(pal, np_to_image(palette_swatch(pal)[None]), ui=palette_ui(pal))


class PixelPaletteLoad(ValidatedNode):
    @classmethod
    def define_schema(cls):
        names = P.builtin_names()
        return io.Schema(
            node_id="SpriteForgePixelPaletteLoad",
            display_name="SpriteForge Pixel Palette Load",
            category=CATEGORY,
            description="A fixed palette: one shipped with SpriteForge (Lospec names: pico-8, sweetie-16, endesga-32...) "
            "or a palette file (.hex, .gpl incl. Aseprite RGBA, JASC .pal, PNG strip).",
            inputs=[
                io.Combo.Input("name", options=names, default="pico-8" if "pico-8" in names else names[0],
                               tooltip="Shipped palette, used when 'file' is empty."),
                io.String.Input("file", default="", tooltip="Optional palette file (.hex/.gpl/.pal/.png) in the input "
                                "folder, by name (e.g. mine.gpl); overrides 'name'."),
            ],
            outputs=[PaletteType.Output(display_name="palette", tooltip="The palette, for Quantize, Save Indexed and Sprite Sheet."),
                     io.Image.Output(display_name="preview", tooltip="The palette as a strip of swatches.")],
        )

    @classmethod
    def execute(cls, name="pico-8", file=""):
        from .folders import input_dir

        if file and file.strip():  # confined like LoadImage: the input folder, then the shipped palettes
            pal = P.read_palette(P.find_palette_file(file, [input_dir(cls), P.PALETTE_DIR]))
        else:
            pal = P.builtin(name)
        return io.NodeOutput(pal, np_to_image(palette_swatch(pal)[None]), ui=palette_ui(pal))


class PixelQuantize(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelQuantize",
            display_name="SpriteForge Pixel Quantize / Dither",
            category=CATEGORY,
            description="Maps every frame onto one palette (nearest colour in OKLab), optionally dithered: Floyd-Steinberg, "
            "Atkinson or Bayer 2/4/8, with a strength, and optionally leaving outlines and silhouette edges undithered.",
            inputs=[
                io.Image.Input("image", tooltip="Images to quantize (every frame uses the same palette)."),
                PaletteType.Input("palette", tooltip="Palette from Pixel Palette Load / Extract."),
                io.Combo.Input("dither", options=DITHER_CHOICES, default="none",
                               tooltip="none, fs (Floyd-Steinberg), atkinson, bayer2/4/8 (ordered)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How much of the error (or Bayer offset) is applied: 0 = no dithering."),
                io.Boolean.Input("protect_edges", default=True,
                                 tooltip="Leave dark outlines and silhouette edges undithered (their nearest colour)."),
                _mask_in(),
            ],
            outputs=_image_and_mask_out(),
        )

    @classmethod
    def execute(cls, image, palette, dither="none", strength=1.0, protect_edges=True, mask=None):
        rgb, a = _frames(image, mask)
        pal = P.resolve_palette(palette)
        outs = []
        bar = Progress(len(rgb), "quantize")
        for f, m in zip(rgb, a):
            outs.append(quantize_image(f, pal, dither, strength=strength, protect_edges=protect_edges,
                                   alpha=m if mask is not None else None))
            bar.update()
        return io.NodeOutput(np_to_image(np.stack(outs)), np_to_mask(a), ui=palette_ui(pal, used=outs, alpha=a))


class PixelAlphaCleanup(ValidatedNode):
    CHECKS = {"outline_color": _outline_color}

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelAlphaCleanup",
            display_name="SpriteForge Pixel Alpha Cleanup",
            category=CATEGORY,
            description="Makes sprite alpha clean: threshold to 0/1, remove small islands, fill pinholes, stray-pixel "
            "clean-up, optional 1-pixel outline, and edge-colour bleed into transparent pixels (no halos when scaled).",
            inputs=[
                io.Image.Input("image", tooltip="Sprite colours."),
                io.Mask.Input("mask", tooltip="Sprite alpha: 1 = opaque (e.g. from background removal; invert LoadImage's mask)."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Alpha at or above this becomes opaque, below becomes transparent."),
                io.Int.Input("min_island", default=4, min=0, max=100000,
                             tooltip="Opaque specks smaller than this many pixels are removed (0/1 = keep all)."),
                io.Int.Input("max_hole", default=4, min=0, max=100000,
                             tooltip="Enclosed transparent holes up to this many pixels are filled (0 = none)."),
                io.Boolean.Input("strays", default=False,
                                 tooltip="Remove lonely opaque pixels and recolour single pixels that differ from four "
                                 "agreeing neighbours."),
                io.Boolean.Input("outline", default=False, tooltip="Add a 1-pixel outline around the silhouette."),
                io.String.Input("outline_color", default="#000000",
                                tooltip="Outline colour as hex (#rrggbb), or 'index:N' for colour N of the palette."),
                io.Boolean.Input("bleed", default=True,
                                 tooltip="Fill transparent pixels' colour from the edge so filtering shows no dark halo."),
                _invert_mask_in(),
                PaletteType.Input("palette", optional=True, tooltip="Palette for 'index:N' outline colours."),
            ],
            outputs=_image_and_mask_out(),
        )

    @classmethod
    def execute(cls, image, mask, threshold=0.5, min_island=4, max_hole=4, strays=False, outline=False,
                outline_color="#000000", bleed=True, invert_mask=False, palette=None):
        rgb, a = _frames(image, mask, invert_mask)
        color = None
        if outline:
            color = _outline_color(outline_color)
            if isinstance(color, int):
                if palette is None:
                    raise _bad("outline_color 'index:N' needs a palette input. Connect a palette or give a hex colour.")
                color = outline_color_of(color, P.resolve_palette(palette))
        outs, alphas = [], []
        bar = Progress(len(rgb), "alpha cleanup")
        level = int(round(float(threshold) * 255))
        for f, m in zip(rgb, a):
            r, al = A.clean(f, m, level=max(1, level), min_island=min_island, max_hole=max_hole, strays=strays,
                            bleed_edges=bleed, outline_color=color)
            outs.append(r)
            alphas.append(al)
            bar.update()
        return io.NodeOutput(np_to_image(np.stack(outs)), np_to_mask(np.stack(alphas)))


class PixelSaveIndexed(ValidatedNode):
    CHECKS = {"filename_prefix": _split_prefix}

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelSaveIndexed",
            display_name="SpriteForge Save Indexed Sprite PNG",
            category=CATEGORY,
            description="Saves each frame as an indexed PNG (mode P, index 0 transparent via tRNS, palette in a stable "
            "order) with the workflow embedded, and the palette as a .hex file beside it. Never overwrites.",
            inputs=[
                io.Image.Input("images", tooltip="Sprites to save (already quantized for exact colours)."),
                io.String.Input("filename_prefix", default="spriteforge/sprite",
                                tooltip="File name prefix; may include a subfolder of the output folder."),
                PaletteType.Input("palette", optional=True,
                                  tooltip="Palette to index with (nearest colour). Without it the image's own colours "
                                  "are used (fitted down to 255 if there are more)."),
                io.Mask.Input("mask", optional=True, tooltip=MASK_TIP + " Pixels below 0.5 get the transparent index 0."),
                io.Int.Input("upscale", default=1, min=1, max=64,
                             tooltip="Save enlarged by this whole factor (nearest neighbour); 1 = native size."),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, filename_prefix="spriteforge/sprite", palette=None, mask=None, upscale=1):
        rgb, a = _frames(images, mask)
        frames = [_rgba(f, m) for f, m in zip(rgb, a)]
        pal = indexed_palette(frames, palette)
        sub, name = _split_prefix(filename_prefix)
        out = OutputFolder(output_dir(cls))
        text = _metadata(cls)
        results = []
        bar = Progress(len(frames), "save indexed")
        for f in frames:
            idx = X.to_indexed(f, pal)
            if int(upscale) > 1:
                idx = S.upscale(idx[..., None], upscale)[..., 0]
            with out.create(name, sub=sub, numbered=".png") as (path, fp):
                X.save_indexed_png(fp, idx, pal, text=text)
            results.append({"filename": path.name, "subfolder": sub, "type": "output"})
            bar.update()
        out.write_bytes(name + "_palette", P.format_palette(pal, "hex"), sub=sub, numbered=".hex")
        return io.NodeOutput(ui={"images": results})


class PixelSpriteSheet(ValidatedNode):
    CHECKS = {"filename_prefix": _split_prefix}

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelSpriteSheet",
            display_name="SpriteForge Save Sprite Sheet",
            category=CATEGORY,
            description="Packs the batch's frames on a grid into one PNG (indexed or RGBA) with a JSON atlas "
            "(TexturePacker/Aseprite hash format) and the palette (.hex and .gpl) beside it. Never overwrites.",
            inputs=[
                io.Image.Input("images", tooltip="Frames of the animation / sprite set, all the same size."),
                io.String.Input("filename_prefix", default="spriteforge/sheet",
                                tooltip="File name prefix; may include a subfolder of the output folder."),
                io.Int.Input("columns", default=0, min=0, max=1024, tooltip="Frames per row (0 = square-ish)."),
                io.Int.Input("padding", default=0, min=0, max=64, tooltip="Transparent pixels between frames."),
                io.Boolean.Input("indexed", default=True, tooltip="Save as an indexed PNG (mode P, index 0 transparent)."),
                io.Int.Input("frame_duration_ms", default=100, min=1, max=10000, tooltip="Frame duration written to the atlas."),
                PaletteType.Input("palette", optional=True, tooltip="Palette for the indexed sheet (else the frames' colours)."),
                _mask_in(),
            ],
            outputs=[io.Image.Output(display_name="sheet", tooltip="The sprite sheet image (as saved, in RGB)."),
                     io.Mask.Output(display_name="mask", tooltip="The sheet's alpha: 1 = sprite pixel, 0 = transparent.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, filename_prefix="spriteforge/sheet", columns=0, padding=0, indexed=True,
                frame_duration_ms=100, palette=None, mask=None):
        rgb, a = _frames(images, mask)
        frames = [_rgba(f, m) for f, m in zip(rgb, a)]
        sub, name = _split_prefix(filename_prefix)
        out = OutputFolder(output_dir(cls))
        text = _metadata(cls)
        pal = indexed_palette(frames, palette)
        with out.create(name, sub=sub, numbered=".png") as (path, fp):
            sheet, atlas = X.pack_sheet(frames, columns=columns or None, padding=padding, image_name=path.name,
                                        duration_ms=frame_duration_ms)
            if indexed:
                X.save_indexed_png(fp, X.to_indexed(sheet, pal), pal, text=text)
                atlas["meta"]["format"] = "I8"
            else:
                X.save_rgba_png(fp, sheet, text=text)
        stem = path.name[:-len(".png")]
        out.write_text(f"{stem}.json", json.dumps(atlas, indent=2), sub=sub)
        for ext in ("hex", "gpl"):
            out.write_bytes(f"{stem}.{ext}", P.format_palette(pal, ext), sub=sub)
        Progress(1, "sprite sheet").update()
        ui = {"images": [{"filename": path.name, "subfolder": sub, "type": "output"}]}
        return io.NodeOutput(np_to_image(sheet[None]), np_to_mask(sheet[None, ..., 3]), ui=ui)


class PixelSliceTiles(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelSliceTiles",
            display_name="SpriteForge Slice Tileset",
            category=CATEGORY,
            description="Cuts a tileset image into its tiles (row by row) and returns them as a batch with their masks.",
            inputs=[
                io.Image.Input("image", tooltip="The tileset (the first frame of a batch is used)."),
                io.Int.Input("tile_width", default=16, min=1, max=4096, tooltip="Tile width in pixels."),
                io.Int.Input("tile_height", default=16, min=1, max=4096, tooltip="Tile height in pixels."),
                io.Int.Input("margin", default=0, min=0, max=1024, tooltip="Border around the whole tileset (Tiled's margin)."),
                io.Int.Input("spacing", default=0, min=0, max=1024, tooltip="Gap between tiles (Tiled's spacing)."),
                io.Boolean.Input("skip_empty", default=True, tooltip="Drop tiles that are fully transparent (needs a mask)."),
                _mask_in(),
            ],
            outputs=[io.Image.Output(display_name="tiles", tooltip="The tiles as a batch [N,h,w,3], row by row."),
                     io.Mask.Output(display_name="masks", tooltip="Each tile's alpha [N,h,w]: 1 = opaque."),
                     io.Int.Output(display_name="count", tooltip="How many tiles were cut.")],
        )

    @classmethod
    def execute(cls, image, tile_width=16, tile_height=16, margin=0, spacing=0, skip_empty=True, mask=None):
        rgb, a = _frames(image, mask)
        tiles, _ = X.slice_tiles(_rgba(rgb[0], a[0]), tile_width, tile_height, margin=margin, spacing=spacing,
                                 skip_empty=skip_empty)
        return io.NodeOutput(np_to_image(tiles), np_to_mask(tiles[..., 3]), int(len(tiles)))


class PixelKeyToAlpha(ValidatedNode):
    CHECKS = {"key_color": parse_hex_color}

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelKeyToAlpha",
            display_name="SpriteForge Pixel Key Colour to Alpha",
            category=CATEGORY,
            description="Turns a flat key-colour background (magenta by default, what the built-in demo model draws "
            "on) into exact 0/1 alpha: pixels near the key colour become transparent, everything else opaque; "
            "edge pixels are decontaminated (no key-colour fringe).",
            inputs=[
                io.Image.Input("image", tooltip="Images drawn on a flat key-colour background."),
                io.String.Input("key_color", default="#ff00ff", tooltip="The background colour to remove, as #rrggbb."),
                io.Float.Input("threshold", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="How close to the key colour a pixel must be to become transparent "
                               "(relative RGB distance)."),
                io.Boolean.Input("decontaminate", default=True, optional=True,  # optional: older workflows load
                                 tooltip="Take the key colour out of the edge pixels (2 px band): pixels that are "
                                 "a sprite colour blended with the key get it back, mostly-key ones become "
                                 "transparent, and key-hued fringe is dropped. Off: threshold only."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The sprite's colours [B,H,W,3]; the mask says which "
                                     "pixels are transparent."),
                     io.Mask.Output(display_name="mask", tooltip="Alpha: 1 = sprite pixel, 0 = background.")],
        )

    @classmethod
    def execute(cls, image, key_color="#ff00ff", threshold=0.3, decontaminate=True):

        rgb = image_to_np(image)
        out = A.key_to_alpha(rgb, tuple(parse_hex_color(key_color))[:3], threshold=float(threshold),
                             decontaminate=bool(decontaminate))
        return io.NodeOutput(np_to_image(out), np_to_mask(out[..., 3]))


REFERENCE_TIP = "The reference sprite at its native size (one image: what Save Indexed wrote, or the sprite chain's " \
                "output)."
REFERENCE_MASK_TIP = "Optional alpha of the reference sprite: 1 = sprite pixel (LoadImage's mask is the inverse: turn " \
                     "on invert_reference_mask). Without it the reference is opaque."


def _reference(image, mask, invert: bool) -> np.ndarray:
    """The one reference sprite of a node input as RGBA uint8."""
    rgb, a = _frames(image, mask, invert)
    if len(rgb) != 1:
        raise _bad(f"the reference is a batch of {len(rgb)} images. Give one sprite.")
    return _rgba(rgb[0], a[0])


class PixelEditReference(ValidatedNode):
    CHECKS = {"key_color": parse_hex_color}

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelEditReference",
            display_name="SpriteForge Reference Sprite for Edit",
            category=CATEGORY,
            description="Enlarges a native-size sprite by a whole factor (nearest neighbour, crisp squares) to about "
            "the size an edit model works at, its transparent pixels on a flat key colour, so an Edit node can make "
            "variants of it; Match Reference Sprite brings them back to the sprite's grid and palette.",
            inputs=[
                io.Image.Input("image", tooltip="The sprite at its native size (a batch: every frame the same size)."),
                io.Int.Input("size", default=1024, min=16, max=4096,
                              tooltip="The edit model's working size (long side): the largest whole factor that "
                              "fits is used."),
                io.Int.Input("multiple", default=16, min=1, max=128,
                             tooltip="Prefer a factor that makes both sides a multiple of this (the model's latent "
                             "grid; 16 for FLUX.2 and Qwen-Image)."),
                io.String.Input("key_color", default=R.KEY_COLOR,
                                tooltip="The flat background the transparent pixels get, as #rrggbb (a colour the "
                                "sprite does not use; Match Reference Sprite keys it out again)."),
                _invert_mask_in(),
                _mask_in(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The enlarged sprite on the key colour [B,H,W,3]."),
                     io.Int.Output(display_name="factor", tooltip="The whole factor the sprite was enlarged by."),
                     io.Int.Output(display_name="width", tooltip="Width of the enlarged image in pixels."),
                     io.Int.Output(display_name="height", tooltip="Height of the enlarged image in pixels.")],
        )

    @classmethod
    def execute(cls, image, size=1024, multiple=16, key_color=R.KEY_COLOR, invert_mask=False, mask=None):
        rgb, a = _frames(image, mask, invert_mask)
        outs, factor = [], 1
        bar = Progress(len(rgb), "reference for edit")
        for f, m in zip(rgb, a):
            big, factor = R.edit_reference(_rgba(f, m), size=size, key=key_color, multiple=multiple)
            outs.append(big)
            bar.update()
        o = np.stack(outs)
        return io.NodeOutput(np_to_image(o), int(factor), int(o.shape[2]), int(o.shape[1]))


class PixelMatchReference(ValidatedNode):
    CHECKS = {"key_color": parse_hex_color}

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgePixelMatchReference",
            display_name="SpriteForge Match Reference Sprite",
            category=CATEGORY,
            description="Locks images (e.g. an edit model's variants of a sprite: recolour, damaged, night, facing "
            "left) to a reference sprite: the reference's exact size (downscaled by the factor the sizes give, or by "
            "the detected pixel grid), only the reference's colours, alpha exactly 0/1 by the reference's rule (an "
            "opaque reference gives opaque images; else the key colour, the image's mask or the reference's own "
            "silhouette). Give Save Indexed / Sprite Sheet its palette output: every variant then has the "
            "reference's palette and indices.",
            inputs=[
                io.Image.Input("image", tooltip="Images at the model's resolution (a batch is matched frame by frame)."),
                io.Image.Input("reference", tooltip=REFERENCE_TIP),
                io.Combo.Input("grid", options=list(R.GRIDS), default="reference size",
                               tooltip="'reference size': cut the image into the reference's width x height cells "
                               "(the factor it was enlarged by); 'detect': recover the image's own pixel grid (it "
                               "must come out at the reference's size)."),
                io.Combo.Input("method", options=list(S.METHODS), default="kcentroid",
                               tooltip="How each cell becomes one pixel: kcentroid = dominant colour, contrast = keeps "
                               "1-pixel dark outlines, box = average, median, nearest = cell centre."),
                io.Combo.Input("fit", options=list(R.FITS), default="scale",
                               tooltip="When the cells do not divide the image: 'scale' resizes it to the nearest "
                               "whole multiple of the reference's size, 'crop' cuts the rest off (centred), 'pad' "
                               "adds it, 'exact' stops with an error."),
                io.Combo.Input("alpha", options=list(R.ALPHAS), default="key",
                               tooltip="Where transparency comes from when the reference has any: 'key' = the key "
                               "colour background (the silhouette may change), 'reference' = the reference's "
                               "silhouette exactly, 'mask' = the image's own mask input."),
                io.String.Input("key_color", default=R.KEY_COLOR,
                                tooltip="The flat background colour that becomes transparent (alpha 'key'), as #rrggbb."),
                io.Float.Input("threshold", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="How close to the key colour a pixel must be to become transparent "
                               "(relative RGB distance)."),
                io.Combo.Input("dither", options=DITHER_CHOICES, default="none",
                               tooltip="none (crisp sprites), fs (Floyd-Steinberg), atkinson, bayer2/4/8, within the "
                               "reference's colours."),
                io.Int.Input("min_island", default=0, min=0, max=100000,
                             tooltip="Opaque specks smaller than this many pixels are removed (0 = keep all)."),
                io.Int.Input("max_hole", default=0, min=0, max=100000,
                             tooltip="Enclosed transparent holes up to this many pixels are filled (0 = none)."),
                io.Boolean.Input("invert_reference_mask", default=False,
                                 tooltip="Turn on when the reference mask comes straight from LoadImage (there 1 = "
                                 "transparent)."),
                _invert_mask_in(),
                io.Mask.Input("reference_mask", optional=True, tooltip=REFERENCE_MASK_TIP),
                _mask_in(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The images on the reference's grid and palette "
                                     "[B,h,w,3] (h, w: the reference's size)."),
                     io.Mask.Output(display_name="mask", tooltip=TIP_OUT_MASK),
                     PaletteType.Output(display_name="palette", tooltip="The reference's palette (its own colours, in "
                                        "the order Save Indexed writes them), for Save Indexed and Sprite Sheet.")],
        )

    @classmethod
    def execute(cls, image, reference, grid="reference size", method="kcentroid", fit="scale", alpha="key",
                key_color=R.KEY_COLOR, threshold=0.3, dither="none", min_island=0, max_hole=0,
                invert_reference_mask=False, invert_mask=False, reference_mask=None, mask=None):
        ref = _reference(reference, reference_mask, invert_reference_mask)
        pal = R.reference_palette(ref)
        rgb, a = _frames(image, mask, invert_mask)
        outs = []
        bar = Progress(len(rgb), "match reference")
        for f, m in zip(rgb, a):
            img = _rgba(f, m) if mask is not None else f
            outs.append(R.match_reference(img, ref, grid=grid, method=method, fit=fit, alpha=alpha, key=key_color,
                                          threshold=threshold, dither=dither, min_island=min_island,
                                          max_hole=max_hole))
            bar.update()
        o = np.stack(outs)
        return io.NodeOutput(np_to_image(o), np_to_mask(o[..., 3]), pal,
                             ui=palette_ui(pal, used=[x[..., :3] for x in outs], alpha=[x[..., 3] for x in outs]))


BATCH_SLOTS = 8


class PixelBatch(ValidatedNode):
    @classmethod
    def define_schema(cls):
        slots = []
        for i in range(1, BATCH_SLOTS + 1):
            slots.append(io.Image.Input(f"image_{i}", optional=i > 1,
                                        tooltip=f"Frame(s) {i} of the batch (a batch adds all its frames)."))
            slots.append(io.Mask.Input(f"mask_{i}", optional=True,
                                       tooltip=f"Alpha of image_{i}: 1 = opaque (none: opaque)."))
        return io.Schema(
            node_id="SpriteForgePixelBatch",
            display_name="SpriteForge Sprite Batch",
            category=CATEGORY,
            description="Joins sprites of one size (e.g. the variants of a sprite) with their alpha into one batch, "
            "in input order, for Save Indexed and Sprite Sheet. Images of different sizes are refused.",
            inputs=slots,
            outputs=[io.Image.Output(display_name="images", tooltip="All frames [N,H,W,3] in input order."),
                     io.Mask.Output(display_name="masks", tooltip="Their alpha [N,H,W]: 1 = opaque.")],
        )

    @classmethod
    def execute(cls, image_1, mask_1=None, **more):
        rgbs, alphas = [], []
        for i in range(1, BATCH_SLOTS + 1):
            image = image_1 if i == 1 else more.get(f"image_{i}")
            mask = mask_1 if i == 1 else more.get(f"mask_{i}")
            if image is None:
                if mask is not None:
                    raise _bad(f"mask_{i} is connected but image_{i} is not. Connect its image too.")
                continue
            rgb, a = _frames(image, mask)
            if rgbs and rgb.shape[1:3] != rgbs[0].shape[1:3]:
                raise _bad(f"image_{i} is {rgb.shape[2]}x{rgb.shape[1]}, image_1 is {rgbs[0].shape[2]}x"
                           f"{rgbs[0].shape[1]}. Give sprites of one size (Match Reference Sprite makes them so).")
            rgbs.append(rgb)
            alphas.append(a)
        rgb, a = np.concatenate(rgbs), np.concatenate(alphas)
        return io.NodeOutput(np_to_image(rgb), np_to_mask(a))


NODES = [
    PixelKeyToAlpha,
    PixelDownscale,
    PixelUpscale,
    PixelGridRecover,
    PixelPaletteExtract,
    PixelPaletteLoad,
    PixelQuantize,
    PixelAlphaCleanup,
    PixelSaveIndexed,
    PixelSpriteSheet,
    PixelSliceTiles,
    PixelEditReference,
    PixelMatchReference,
    PixelBatch,
]
