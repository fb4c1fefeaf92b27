"""``spriteforge pixel INPUT... --out DIR``: the pixel-art chain for files and folders of sprites.

Order: load -> grid recovery (``--detect-grid``) -> downscale (``--factor``/``--size``) -> alpha clean-up
-> one palette for every input (``--palette NAME|FILE|K``; ``--per-image-palette`` to fit each alone)
-> quantize/dither -> write PNGs (``--indexed`` for mode-P files) to ``--out``, the palette beside them as
``palette.hex``/``palette.gpl``, and optionally a sprite sheet with a JSON atlas.

Every option is checked before anything is read or written. ``--out`` is created when there is something to
write; a name that exists there is kept and the result gets a new one (``hero_1.png``); ``--out`` may not be a
folder the inputs come from.
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
from ._files import collect_images, output_folder, result_name

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
    p.add_argument("--out", "-o", help="output folder (created when needed; nothing in it is overwritten: an existing "
                   "name gets a new one, e.g. hero_1.png; not a folder the inputs are in)")
    g = p.add_argument_group("size")
    g.add_argument("--factor", type=int, help="downscale by this whole factor")
    g.add_argument("--size", help="downscale to WxH, e.g. 64x64 (cells must divide the image, see --fit)")
    g.add_argument("--fit", default="exact", choices=["exact", "crop", "pad"],
                   help="when --factor/--size cells do not divide the image: exact = stop with an error (default: "
                   "the sprite's canvas is never changed unasked), crop = cut the rest off (centred), pad = add "
                   "transparent pixels up to whole cells (centred)")
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


def _at_least(args, option: str, low: int) -> None:
    value = getattr(args, option.lstrip("-").replace("-", "_"))
    if value is not None and value < low:
        raise _bad(f"{option} {value} must be {low} or more.")


def _check_args(args) -> None:
    """Every option, before anything is read or written."""
    if not args.inputs or not args.out:
        raise _bad("give INPUT files/folders and --out DIR (see spriteforge pixel --help).")
    if args.factor is not None and args.size:
        raise _bad("give --factor or --size, not both.")
    for option, low in (("--factor", 1), ("--upscale", 1), ("--min-island", 0), ("--fill-holes", 0),
                        ("--columns", 0), ("--seed", 0)):
        _at_least(args, option, low)
    if args.upscale > 64:
        raise _bad(f"--upscale {args.upscale} is too large. Use 1..64.")
    if args.size:
        w, h = _parse_size(args.size)
        if w < 1 or h < 1:
            raise _bad(f"--size {args.size} must be at least 1x1.")
    if args.palette is not None and re.fullmatch(r"\s*-?\d+\s*", args.palette):
        if not 1 <= int(args.palette) <= 256:
            raise _bad(f"--palette {args.palette.strip()} colours: give 1..256 (or a palette name or file).")
    elif args.palette is not None and not args.palette.strip():
        raise _bad("--palette is empty. Give a palette name (see --list-palettes), a file, or a number of colours.")
    if args.per_image_palette and not (args.palette and args.palette.strip().isdigit()):
        raise _bad("--per-image-palette needs --palette K (a number of colours to fit to each image).")
    if args.sheet is not None and not re.sub(r"[^A-Za-z0-9._-]", "", args.sheet).strip("."):
        raise _bad(f"--sheet {args.sheet!r} is not a usable file name. Give a name like 'sheet'.")
    if args.fit != "exact" and args.factor is None and not args.size:
        raise _bad("--fit only applies with --factor or --size.")
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
        size=_parse_size(args.size) if args.size and not args.factor else None, method=args.method, fit=args.fit,
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
    out = output_folder(args.out)
    files = collect_images(args.inputs, out=out)
    t0 = time.perf_counter()
    bar = Progress(len(files), "pixel")
    images = []
    for f in files:
        images.append(_load(f))
        bar.update()
    pal_kw = _palette_args(args)
    batch = clean_sprites(images, _steps(args), names=[str(f) for f in files], **pal_kw)
    results = _results(args, batch)
    sheet = _sheet(args, files, results) if args.sheet else None  # refused here, before any file is written
    last_pal = _write_images(out, files, results) or batch.palette
    if last_pal is not None and not pal_kw.get("per_image"):
        _write_palette(out, last_pal)
    if sheet is not None:
        _write_sheet(args, out, sheet, last_pal)
    _summary(args, out, batch, time.perf_counter() - t0)
    return 0


def _results(args, batch) -> list:
    """(image, palette it is written with (None: RGBA), note) per input; ``--indexed`` fits each image's palette."""
    from ..pixel.sprite import indexed_palette

    out = []
    for img, pal, note in zip(batch.images, batch.palettes, batch.notes):
        ipal = indexed_palette(img, pal, add_missing=bool(args.outline)) if args.indexed else None
        out.append((img, ipal, note))
    return out


def _write_palette(out, pal) -> None:
    from .. import pixel as px

    for ext in ("hex", "gpl"):
        out.write_bytes(f"palette.{ext}", px.format_palette(pal, ext))


def _write_images(out, files: list[Path], results: list):
    """One PNG per input (indexed with --indexed); the palette of the last indexed image (None without
    --indexed)."""
    from .. import pixel as px

    last_pal = None
    for f, (img, ipal, note) in zip(files, results):
        with out.create(result_name(f)) as (target, fp):
            if ipal is not None:
                px.save_indexed_png(fp, px.to_indexed(img, ipal), ipal)
            else:
                px.save_rgba_png(fp, img)
        last_pal = ipal
        print(f"{f} -> {target} {img.shape[1]}x{img.shape[0]}" + (f" ({note})" if note else ""))
    return last_pal


def _sheet(args, files: list[Path], results: list):
    """The sprite sheet (image, atlas) of all results; BAD_INPUT when they differ in size."""
    from ..pixel import export as X

    if len({img.shape for img, _, _ in results}) != 1:
        raise _bad("--sheet needs all results to have one size. Use --size/--factor to make them equal.")
    names, used = [], set()
    for f in files:  # frame names: the input stems, made unique like the files
        name, i = f.stem, 1
        while name in used:
            name, i = f"{f.stem}_{i}", i + 1
        used.add(name)
        names.append(name)
    return X.pack_sheet([img for img, _, _ in results], columns=args.columns or None, names=names,
                        image_name=f"{_sheet_name(args)}.png", scale=args.upscale)


def _sheet_name(args) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", args.sheet)


def _write_sheet(args, out, packed, last_pal) -> None:
    from .. import pixel as px
    from ..pixel.sprite import indexed_palette

    sheet, atlas = packed
    with out.create(f"{_sheet_name(args)}.png") as (target, fp):
        atlas["meta"]["image"] = target.name
        if args.indexed:
            spal = indexed_palette(sheet, last_pal)
            px.save_indexed_png(fp, px.to_indexed(sheet, spal), spal)
            atlas["meta"]["format"] = "I8"
        else:
            px.save_rgba_png(fp, sheet)
    out.write_text(f"{target.stem}.json", json.dumps(atlas, indent=2))
    print(f"sheet -> {target} ({len(atlas['frames'])} frames)")


def _summary(args, out, batch, seconds: float) -> None:
    what = []
    if batch.palette is not None:
        what.append(f"palette {batch.palette.name or args.palette} ({len(batch.palette)} colours)")
    elif args.palette:
        what.append(f"{args.palette} colours per image")
    if args.dither != "none" and args.palette:
        what.append(f"dither {args.dither}")
    if args.indexed:
        what.append("indexed")
    n = len(batch.images)
    print(f"{n} image(s) -> {out.root} in {seconds:.2f}s" + (f"; {', '.join(what)}" if what else ""), file=sys.stdout)
