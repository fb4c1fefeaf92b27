#!/usr/bin/env python
"""Draw ``docs/pipeline.png``: the sprite pipeline's stages on the built-in model, through the pack's own nodes.

    python training/make_pipeline_figure.py [--prompt "red potion"] [--seed 0]

Rows: generated (model output on its key colour) -> background cleaned (key colour to alpha) ->
palette-locked (one 16-colour palette for all frames, alpha cleaned) -> the packed sprite sheet.
Each 32x32 sprite is shown at 4x on a checkerboard so transparency is visible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]


def checker(h, w, cell=8):
    y, x = np.mgrid[:h, :w]
    v = np.where(((y // cell) + (x // cell)) % 2 == 0, 205, 235).astype(np.uint8)
    return np.stack([v, v, v], -1)


def show(rgba, scale=4):
    rgba = np.kron(rgba, np.ones((scale, scale, 1), np.uint8))
    bg = checker(*rgba.shape[:2])
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return (rgba[..., :3] * a + bg * (1 - a)).astype(np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompt", default="red potion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "docs" / "pipeline.png"))
    args = ap.parse_args(argv)

    from spriteforge.nodes import generate as G
    from spriteforge.nodes import loaders as LD
    from spriteforge.nodes import pixel as P
    from spriteforge.pixel import export as X
    from spriteforge.resolve import DEMO

    model = LD.LoadModel.execute(DEMO).args[0]
    cond = G.EncodePrompt.execute(model, args.prompt, "").args[0]
    lat = G.Sampler.execute(model, cond, seed=args.seed, steps=20, sampler="dpmpp_2m", schedule="normal", cfg=4.5,
                            batch_size=args.frames, width=32, height=32).args[0]
    img = G.VAEDecode.execute(model, lat).args[0]
    keyed, mask = P.PixelKeyToAlpha.execute(img).args
    pal = P.PixelPaletteExtract.execute(keyed, colors=16, method="kmeans", seed=0, mask=mask).args[0]
    clean, cmask = P.PixelAlphaCleanup.execute(keyed, mask=mask, palette=pal).args
    quant, qmask = P.PixelQuantize.execute(clean, pal, mask=cmask).args

    def rgba(im, m=None):
        rgb = P.image_to_np(im)
        a = np.full(rgb.shape[:3], 255, np.uint8) if m is None else P.mask_to_np(m, *rgb.shape[:3])
        return np.concatenate([rgb, a[..., None]], -1)

    rows = [("generated", rgba(img)), ("background cleaned", rgba(keyed, mask)),
            ("palette-locked", rgba(quant, qmask))]
    sheet, _ = X.pack_sheet(list(rgba(quant, qmask)), columns=args.frames, padding=1)
    tile, gap, label_w = 32 * 4, 8, 170
    width = label_w + args.frames * (tile + gap)
    height = len(rows) * (tile + gap) + sheet.shape[0] * 4 + 40
    canvas = Image.new("RGB", (width, height), (250, 250, 250))
    d = ImageDraw.Draw(canvas)
    for r, (name, frames) in enumerate(rows):
        y = r * (tile + gap) + gap
        d.text((8, y + tile // 2 - 6), name, fill=(20, 20, 20))
        for i, f in enumerate(frames):
            canvas.paste(Image.fromarray(show(f)), (label_w + i * (tile + gap), y))
    y = len(rows) * (tile + gap) + gap
    d.text((8, y + 6), "sprite sheet", fill=(20, 20, 20))
    canvas.paste(Image.fromarray(show(sheet)), (label_w, y))
    d.text((8, height - 16), f'prompt "{args.prompt}", seed {args.seed}, built-in demo model', fill=(90, 90, 90))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
