#!/usr/bin/env python
"""Remake ``docs/autotile.png``: autotile sets made on the built-in model, and a map painted with one.

    python tools/make_autotile_figure.py [--out docs/autotile.png] [--seed 2]
    python tools/make_autotile_figure.py --table [--seed 0]     # docs/AUTOTILE.md's continuity table

Three sets through the same code as ``spriteforge tileset`` (:func:`spriteforge.generation.autotile.make_autotiles`,
torch on the CPU): wang16 grass/water, blob47 sand/stone and dualgrid grass/transparent, 16-pixel tiles; the wang16
set painted over a random corner grid (every cell the one tile whose corner code matches its four corners).
Prints each set's continuity figures (``spriteforge.pixel.autotile.continuity``). Not part of the pack's runtime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SCALE = 3
BG = (34, 36, 44)
SETS = (("wang16", "grass", "water"), ("blob47", "sand", "stone"), ("dualgrid", "grass", None))


def sheet(tiles: np.ndarray, columns: int) -> np.ndarray:
    """The tiles on a sheet, the layout's columns, transparent where a tile is."""
    n, t = len(tiles), tiles.shape[1]
    rows = -(-n // columns)
    out = np.zeros((rows * t, columns * t, 4), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        out[r * t:(r + 1) * t, c * t:(c + 1) * t] = tile
    return out


def painted_map(tiles: np.ndarray, lay, cells: tuple, seed: int) -> np.ndarray:
    """A map of ``cells`` (rows, columns) of a corner set: random terrain at every vertex, each cell the tile whose
    corners match (wangid order: tl is 7, tr 1, br 3, bl 5)."""
    rng = np.random.default_rng(seed)
    rows, cols = cells
    v = (rng.random((rows + 1, cols + 1)) < 0.55).astype(int)
    by_corners = {(t.code[7], t.code[1], t.code[3], t.code[5]): k for k, t in enumerate(lay.tiles)}
    pick = [[by_corners[(v[r, c], v[r, c + 1], v[r + 1, c + 1], v[r + 1, c])] for c in range(cols)] for r in range(rows)]
    t = tiles.shape[1]
    out = np.zeros((rows * t, cols * t, 4), np.uint8)
    for r in range(rows):
        for c in range(cols):
            out[r * t:(r + 1) * t, c * t:(c + 1) * t] = tiles[pick[r][c]]
    return out


def on_checker(img: np.ndarray) -> np.ndarray:
    """RGBA over a grey checkerboard (where the set is transparent), RGB."""
    h, w = img.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    board = np.where(((y // 4 + x // 4) % 2)[..., None] == 0, 200, 160).astype(np.float32).repeat(3, -1)
    a = img[..., 3:4].astype(np.float32) / 255.0
    return np.clip(img[..., :3] * a + board * (1 - a), 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "docs" / "autotile.png"))
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="print the continuity table of 9 sets (3 terrain pairs x 3 layouts) instead")
    args = ap.parse_args(argv)

    from spriteforge.generation.autotile import AutotileSpec, make_autotiles
    from spriteforge.pixel import autotile as T
    from spriteforge.resolve import DEMO, load_handle

    handle = load_handle(DEMO, engine="torch", device="cpu", dtype="float32")
    if args.table:
        print("| set | edge ratio | worst pair | worst pair / its tiles' lines | texture seams |\n|---|---|---|---|---|")
        for a, b in (("grass", "water"), ("sand", "stone"), ("grass", None)):
            for layout in ("wang16", "blob47", "dualgrid"):
                s = make_autotiles(handle.engine, handle, AutotileSpec(a, b, layout, tile=16, seed=args.seed, colors=16))
                c = T.continuity(s.tiles, s.layout)
                seams = ", ".join(f"{T.seam_ratio(x):.2f}" for x in s.textures)
                print(f"| {a} / {b or 'transparent'}, {layout} | {c['ratio']:.2f} | {c['worst']:.2f} | {c['worst_line']:.2f} | {seams} |",
                      flush=True)
        return 0
    panels = []
    for layout, a, b in SETS:
        s = make_autotiles(handle.engine, handle, AutotileSpec(a, b, layout, tile=16, seed=args.seed, colors=16))
        c = T.continuity(s.tiles, s.layout)
        print(f"{layout} {a}/{b or 'transparent'}: ratio {c['ratio']:.2f}, worst pair {c['worst']:.2f}, "
              f"worst pair against its tiles' lines {c['worst_line']:.2f}, texture seams "
              f"{[round(T.seam_ratio(x), 2) for x in s.textures]}", flush=True)
        panels.append((f"{layout}: {a} / {b or 'transparent'}", on_checker(sheet(s.tiles, s.layout.columns))))
        if layout == "wang16":
            panels.append(("a map painted with it", on_checker(painted_map(s.tiles, s.layout, (8, 14), args.seed))))
    pad, title = 16, 18
    pics = [Image.fromarray(p).resize((p.shape[1] * SCALE, p.shape[0] * SCALE), Image.NEAREST) for _, p in panels]
    width = sum(p.width for p in pics) + pad * (len(pics) + 1)
    height = max(p.height for p in pics) + title + 2 * pad
    fig = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(fig)
    x = pad
    for (label, _), p in zip(panels, pics):
        draw.text((x, pad // 2), label, fill=(230, 230, 230))
        fig.paste(p, (x, pad + title - 6))
        x += p.width + pad
    fig.save(args.out, optimize=True)
    print(f"wrote {args.out} ({fig.width}x{fig.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
