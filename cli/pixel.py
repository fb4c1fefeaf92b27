"""``spriteforge pixel INPUT... --out DIR``: the pixel-art chain for files and folders of sprites.

Order: load -> grid recovery (``--detect-grid``) -> downscale (``--factor``/``--size``) -> alpha clean-up
-> one palette for every input (``--palette NAME|FILE|K``; ``--per-image-palette`` to fit each alone)
-> quantize/dither -> write PNGs (``--indexed`` for mode-P files) to ``--out`` (inputs are never overwritten),
the palette beside them as ``palette.hex``/``palette.gpl``, and optionally a sprite sheet with a JSON atlas.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError
from ._files import collect_images, unique_name

def _bad(msg: str) -> SpriteForgeError:
    return SpriteForgeError(BAD_INPUT, msg)


def register(subparsers) -> None:
    from ..pixel import DITHERS, DOWNSCALE_METHODS
    from ..pixel.palette import METHODS as PALETTE_METHODS

    p = subparsers.add_parser(
        "pixel",
        help="pixel-art chain for sprite files/folders: grid recovery, downscale, palette, dithering, alpha, indexed PNG",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--out", "-o", help="output folder (created; inputs are never overwritten)")
    g = p.add_argument_group("size")
    g.add_argument("--factor", type=int, help="downscale by this whole factor")
    g.add_argument("--size", help="downscale to WxH (must divide the image), e.g. 64x64")
    g.add_argument("--method", default="kcentroid", choices=list(DOWNSCALE_METHODS), help="downscale method (default kcentroid)")
    g.add_argument("--detect-grid", action="store_true", help="recover the native grid of upscaled/AI 'fake' pixel art")
    g.add_argument("--snap", type=int, choices=[8, 16, 32], help="with --detect-grid: round the size to a multiple")
    g.add_argument("--upscale", type=int, default=1, help="enlarge the result by this factor (nearest) when saving")
    c = p.add_argument_group("colour")
    c.add_argument("--palette", help="shipped palette name (see --list-palettes), a palette file (.hex .gpl .pal .png), "
                   "or a number K to fit K colours")
    c.add_argument("--palette-method", default="kmeans", choices=list(PALETTE_METHODS), help="fitting method for --palette K")
    c.add_argument("--seed", type=int, default=0, help="seed for k-means (same seed, same palette)")
    c.add_argument("--per-image-palette", action="store_true", help="fit --palette K per image instead of once for all")
    c.add_argument("--dither", default="none", choices=list(DITHERS), help="dithering (default none)")
    c.add_argument("--dither-strength", type=float, default=1.0, help="0..1 (default 1)")
    c.add_argument("--protect-edges", action="store_true", help="leave outlines and silhouette edges undithered")
    a = p.add_argument_group("alpha")
    a.add_argument("--alpha-threshold", type=int, help="make alpha binary at this level 0..255 (default 128 when any "
                   "alpha option or --indexed is used)")
    a.add_argument("--min-island", type=int, default=0, help="remove opaque specks smaller than N pixels")
    a.add_argument("--fill-holes", type=int, default=0, help="fill enclosed transparent holes up to N pixels")
    a.add_argument("--strays", action="store_true", help="stray-pixel clean-up")
    a.add_argument("--outline", metavar="COLOR", help="add a 1-pixel outline: #rrggbb or a palette index")
    a.add_argument("--no-bleed", action="store_true", help="do not bleed edge colours into transparent pixels (RGBA output)")
    o = p.add_argument_group("output")
    o.add_argument("--indexed", action="store_true", help="write indexed PNGs (mode P, index 0 transparent)")
    o.add_argument("--sheet", metavar="NAME", help="also pack all results into NAME.png with NAME.json (atlas)")
    o.add_argument("--columns", type=int, default=0, help="sprite sheet columns (0 = square-ish)")
    o.add_argument("--list-palettes", action="store_true", help="list the shipped palettes and exit")
    p.set_defaults(func=run)


def _load(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.seek(0)
            return np.asarray(im.convert("RGBA"))
    except Exception as exc:  # noqa: BLE001
        raise _bad(f"{path} is not a readable image ({type(exc).__name__}: {exc}). Remove it or convert it.") from exc


def _parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX*,]\s*(\d+)\s*", text or "")
    if not m:
        raise _bad(f"--size {text!r} is not WxH. Write it like 64x64.")
    return int(m.group(1)), int(m.group(2))


def _check_args(args) -> None:
    if not args.inputs or not args.out:
        raise _bad("give INPUT files/folders and --out DIR (see spriteforge pixel --help).")
    if args.factor is not None and args.size:
        raise _bad("give --factor or --size, not both.")
    if args.snap and not args.detect_grid:
        raise _bad("--snap only applies with --detect-grid.")
    if not 0.0 <= args.dither_strength <= 1.0:
        raise _bad(f"--dither-strength {args.dither_strength} is outside 0..1.")
    if args.alpha_threshold is not None and not 0 <= args.alpha_threshold <= 255:
        raise _bad(f"--alpha-threshold {args.alpha_threshold} is outside 0..255.")
    if args.outline and re.fullmatch(r"\s*\d+\s*", args.outline) and not args.palette:
        raise _bad("--outline N (a palette index) needs --palette.")


def _steps(args):
    """The options as the library's :class:`~spriteforge.pixel.sprite.SpriteSteps`."""
    from ..pixel.sprite import SpriteSteps

    alpha_on = (args.alpha_threshold is not None or args.min_island or args.fill_holes or args.strays
                or args.outline or args.indexed)
    return SpriteSteps(
        detect_grid=args.detect_grid, snap=args.snap, factor=args.factor,
        size=_parse_size(args.size) if args.size and not args.factor else None, method=args.method,
        alpha_level=(128 if args.alpha_threshold is None else args.alpha_threshold) if alpha_on else None,
        min_island=args.min_island, max_hole=args.fill_holes, strays=args.strays,
        dither=args.dither, dither_strength=args.dither_strength, protect_edges=args.protect_edges,
        outline=args.outline.strip() if args.outline else None, bleed=not args.no_bleed and not args.indexed,
        upscale=args.upscale)


def _palette_args(args) -> dict:
    """``--palette NAME|FILE`` as a palette, ``--palette K`` as a colour count (per image with --per-image-palette)."""
    if not args.palette:
        return {}
    if re.fullmatch(r"\d+", args.palette.strip()):
        return {"colors": int(args.palette), "per_image": bool(args.per_image_palette), "method": args.palette_method,
                "seed": args.seed}
    return {"palette": args.palette}


def _list_palettes() -> int:
    from .. import pixel as px

    for name in px.builtin_names():
        pal = px.builtin(name)
        print(f"{name:32s} {len(pal):3d} colours  {pal.comments[0] if pal.comments else ''}")
    return 0


def run(args) -> int:
    from ..pixel.sprite import clean_sprites
    from ..progress import Progress

    if args.list_palettes:
        return _list_palettes()
    _check_args(args)
    out = Path(args.out)
    files = collect_images(args.inputs, skip_folder=out)
    t0 = time.perf_counter()
    bar = Progress(len(files), "pixel")
    images = []
    for f in files:
        images.append(_load(f))
        bar.update()
    pal_kw = _palette_args(args)
    batch = clean_sprites(images, _steps(args), **pal_kw)
    out.mkdir(parents=True, exist_ok=True)
    written, last_pal = _write_images(args, out, files, batch)
    if last_pal is not None and not pal_kw.get("per_image"):
        inputs = {f.resolve() for f in files}
        for ext in ("hex", "gpl"):
            _write_palette(last_pal, _output(out / f"palette.{ext}", inputs))
    if args.sheet:
        _write_sheet(args, out, files, written, batch.images, last_pal)
    _summary(args, out, written, batch, time.perf_counter() - t0)
    return 0


def _output(target: Path, inputs: set[Path]) -> Path:
    """``target``, unless it is one of the (resolved) input files."""
    if target.resolve() in inputs:
        raise _bad(f"{target} is one of the inputs; choose another --out folder (inputs are never overwritten).")
    return target


def _write_palette(pal, target: Path) -> None:
    from .. import pixel as px

    px.write_palette(pal, target)


def _write_images(args, out: Path, files: list[Path], batch):
    """One PNG per input (indexed with --indexed); (the paths written, the palette of the last indexed file)."""
    from .. import pixel as px
    from ..pixel.sprite import indexed_palette

    used: set[str] = set()
    written = []
    last_pal = batch.palette
    inputs = {f.resolve() for f in files}
    for f, img, pal, note in zip(files, batch.images, batch.palettes, batch.notes):
        target = _output(out / unique_name(f, used), inputs)
        if args.indexed:
            ipal = indexed_palette(img, pal, add_missing=bool(args.outline))
            px.save_indexed_png(target, px.to_indexed(img, ipal), ipal)
            last_pal = ipal
        else:
            px.save_rgba_png(target, img)
        written.append(target)
        print(f"{f} -> {target} {img.shape[1]}x{img.shape[0]}" + (f" ({note})" if note else ""))
    return written, last_pal


def _write_sheet(args, out: Path, files: list[Path], written: list[Path], results: list, last_pal) -> None:
    from .. import pixel as px
    from ..pixel import export as X
    from ..pixel.sprite import indexed_palette

    if len({r.shape for r in results}) != 1:
        raise _bad("--sheet needs all results to have one size. Use --size/--factor to make them equal.")
    sheet_name = re.sub(r"[^A-Za-z0-9._-]", "_", args.sheet)
    target = out / f"{sheet_name}.png"
    sheet, atlas = X.pack_sheet(results, columns=args.columns or None, names=[w.stem for w in written],
                                image_name=target.name, scale=args.upscale)
    if args.indexed:
        spal = indexed_palette(sheet, last_pal)
        px.save_indexed_png(target, px.to_indexed(sheet, spal), spal)
        atlas["meta"]["format"] = "I8"
    else:
        px.save_rgba_png(target, sheet)
    (out / f"{sheet_name}.json").write_text(json.dumps(atlas, indent=2))
    print(f"sheet -> {target} ({len(results)} frames)")


def _summary(args, out: Path, written: list[Path], batch, seconds: float) -> None:
    what = []
    if batch.palette is not None:
        what.append(f"palette {batch.palette.name or args.palette} ({len(batch.palette)} colours)")
    elif args.palette:
        what.append(f"{args.palette} colours per image")
    if args.dither != "none" and args.palette:
        what.append(f"dither {args.dither}")
    if args.indexed:
        what.append("indexed")
    print(f"{len(written)} image(s) -> {out} in {seconds:.2f}s" + (f"; {', '.join(what)}" if what else ""),
          file=sys.stdout)
