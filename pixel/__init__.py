"""SpriteForge pixel-art library: pure functions on numpy arrays (numpy + PIL only).

Conventions: images are ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA) ``uint8`` sRGB arrays; masks are
``H x W`` (uint8 0..255, bool or float 0..1; opaque = 255/True/1); palettes are :class:`Palette`.
Perceptual work happens in OKLab. Bad input raises ``SpriteForgeError(BAD_INPUT, ...)``.

Modules: :mod:`.color` (OKLab, ΔE), :mod:`.scale` (downscale/upscale), :mod:`.grid` (native-grid
recovery), :mod:`.reference` (an image locked to a reference sprite's size, palette and alpha), :mod:`.palette` (shipped palettes, files, extraction), :mod:`.quantize` (matching and
dithering), :mod:`.alpha` (clean alpha), :mod:`.export` (indexed PNG, sprite sheets, tiles).
"""

from .alpha import (bleed, clean, fill_pinholes, key_to_alpha, label, outline, remove_islands, remove_strays,
                    threshold)
from .color import delta_e, mean_delta_e, oklab_to_srgb, srgb_to_oklab
from .export import (indexed_image, pack_sheet, save_indexed_png, save_rgba_png, slice_tiles, to_indexed)
from .grid import GridInfo, detect_grid, recover_grid
from .palette import (Palette, builtin, builtin_names, extract, format_palette, kmeans, median_cut, octree,
                      parse_palette, read_palette, resolve_palette)
from .quantize import DITHERS, apply_palette, bayer_matrix, dither, edge_mask, match, quantize
from .scale import METHODS as DOWNSCALE_METHODS
from .scale import downscale, upscale

__all__ = [
    "key_to_alpha",
    "DITHERS", "DOWNSCALE_METHODS", "GridInfo", "Palette", "apply_palette", "bayer_matrix", "bleed", "builtin",
    "builtin_names", "clean", "delta_e", "detect_grid", "dither", "downscale", "edge_mask", "extract",
    "fill_pinholes", "format_palette", "indexed_image", "kmeans", "label", "match", "mean_delta_e", "median_cut",
    "octree", "oklab_to_srgb", "outline", "pack_sheet", "parse_palette", "quantize", "read_palette",
    "recover_grid", "remove_islands", "remove_strays", "resolve_palette", "save_indexed_png", "save_rgba_png",
    "slice_tiles", "srgb_to_oklab", "threshold", "to_indexed", "upscale",
]
