"""``spriteforge rmbg INPUT... --model FILE --out DIR``: remove the background of images and folders.

Writes ``DIR/<name>.png`` (RGBA cut-out, or the foreground over ``--background``), or with
``--mask-only`` ``DIR/<name>.png`` as an 8-bit grayscale mask (white = foreground). Every option is checked
before the model is loaded; ``--out`` is created when the first result is written, a name that exists there is
kept and the result gets a new one (``photo_1.png``), and ``--out`` may not be a folder the inputs are in.
Images up to 67 megapixels (the area of 8192x8192) are taken (larger ones: DIMENSION_LIMIT, checked from the file's
header); memory follows the model's working resolution plus about 16 bytes per pixel of the image.
An image that fails (unreadable, too small or too large) is reported and the rest of the batch goes on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import BAD_INPUT, DIMENSION_LIMIT, SpriteForgeError
from ._files import collect_images, output_folder, result_name

PER_IMAGE = (BAD_INPUT, DIMENSION_LIMIT)  # errors of one image: reported, and the batch goes on


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rmbg",
        help="remove image backgrounds with BiRefNet",
        description="Remove the background of images (files or folders) with a BiRefNet model.safetensors. "
        "Images up to 67 megapixels (the area of 8192x8192); memory follows the model's working resolution.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--model", required=True, metavar="FILE",
                   help="BiRefNet weights: a path, or a name in the birefnet models folder (see --models)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created when needed; nothing in it is "
                   "overwritten: an existing name gets a new one, e.g. photo_1.png; not a folder the inputs are in)")
    p.add_argument("--models", metavar="DIR", help="models root laid out like ComfyUI's models/ (for a --model name)")
    p.add_argument("--resolution", type=int, default=0, metavar="N",
                   help="working resolution, a multiple of 32 (default: the variant's, 1024 / HR 2048)")
    p.add_argument("--variant", default="auto", help="general, lite, lite-2K, portrait, matting, HR, HR-matting, "
                   "dynamic, massive (default: from the file name)")
    p.add_argument("--mask-only", action="store_true", help="write only the grayscale mask")
    p.add_argument("--recursive", "-r", action="store_true", help="also read sub-folders")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="compute dtype of weights and activations: auto = fp16 on a GPU that runs it well, else fp32")
    p.add_argument("--threshold", type=float, default=0.0, help="hard mask at this level (0: soft)")
    p.add_argument("--grow", type=int, default=0, help="grow (>0) or shrink (<0) the mask, pixels")
    p.add_argument("--feather", type=float, default=0.0, help="blur the mask edge, sigma in pixels")
    p.add_argument("--remove-islands", type=int, default=0, metavar="PX", help="drop specks below this area")
    p.add_argument("--fill-holes", type=int, default=0, metavar="PX", help="fill enclosed holes up to this area (-1: any)")
    p.add_argument("--foreground", choices=["ml", "blur_fusion", "none"], default="ml",
                   help="foreground colour estimation (default ml)")
    p.add_argument("--background", default="alpha",
                   help="alpha (RGBA, default), white, black or a hex colour like '#00ff00'")
    p.set_defaults(func=run)


def read_image(path: Path):
    """An image file as uint8 [H, W, C] (C = 3, or 4 when it has transparency; 16-bit and float gray as 8-bit gray).

    The size is checked from the header before anything is decoded (DIMENSION_LIMIT above 67 megapixels); a
    file that is not an image, or a decompression bomb, is BAD_INPUT for this file."""
    import warnings

    import numpy as np
    from PIL import Image

    from ..rmbg.geometry import check_size

    try:
        with warnings.catch_warnings():  # Pillow's "could be a bomb" warning: the size limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            check_size(im.height, im.width)
            im.seek(0)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / (65535.0 if arr.max(initial=0) > 255 else 255.0)
                return np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)[..., None]
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except SpriteForgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - not an image, truncated, or a decompression bomb (not an OSError)
        raise SpriteForgeError(BAD_INPUT, f"{path} is not a readable image ({type(exc).__name__}: {exc}). Remove it "
                               "or convert it.", details={"path": str(path)}) from exc


def _check_args(args) -> None:
    """Every option, before anything is loaded, read or written."""
    import math

    from ..rmbg import parse_color
    from ..rmbg.geometry import MAX_RESOLUTION, MULTIPLE

    if args.resolution and not (MULTIPLE <= args.resolution <= MAX_RESOLUTION and args.resolution % MULTIPLE == 0):
        raise SpriteForgeError(BAD_INPUT, f"--resolution {args.resolution} must be a multiple of {MULTIPLE} between "
                               f"{MULTIPLE} and {MAX_RESOLUTION} (or 0 for the model's own).")
    if args.resolution < 0:
        raise SpriteForgeError(BAD_INPUT, f"--resolution {args.resolution} must be 0 (the model's own) or more.")
    if not (math.isfinite(args.threshold) and 0.0 <= args.threshold <= 1.0):
        raise SpriteForgeError(BAD_INPUT, f"--threshold {args.threshold} must be between 0 (soft mask) and 1.")
    if not (math.isfinite(args.feather) and 0.0 <= args.feather <= 256):
        raise SpriteForgeError(BAD_INPUT, f"--feather {args.feather} must be a sigma between 0 and 256 pixels.")
    if args.remove_islands < 0:
        raise SpriteForgeError(BAD_INPUT, f"--remove-islands {args.remove_islands} must be 0 (off) or more pixels.")
    if args.fill_holes < -1:
        raise SpriteForgeError(BAD_INPUT, f"--fill-holes {args.fill_holes} must be -1 (any size), 0 (off) or more.")
    if abs(args.grow) > 1024:
        raise SpriteForgeError(BAD_INPUT, f"--grow {args.grow} must be between -1024 and 1024 pixels.")
    if args.background not in ("alpha", "white", "black"):
        parse_color(args.background)


def _remove_one(args, handle, path: Path, out, res, opts) -> Path:
    """Remove the background of one file and write the result (or the mask); the path written."""
    from ..pixel.export import save_rgba_png
    from ..rmbg import cutout

    img = read_image(path)
    bg = args.background
    data = cutout(img, handle.predict, resolution=res, refine_opts=opts, stages=handle.stages,
                  foreground="none" if args.mask_only else args.foreground, mask_only=args.mask_only,
                  composite=bg if bg in ("alpha", "white", "black") else "color", color=bg)
    with out.create(result_name(path)) as (target, f):
        if args.mask_only:
            from PIL import Image

            Image.fromarray(data, mode="L").save(f, format="PNG")
        else:
            save_rgba_png(f, data)
    return target


def run(args) -> int:
    from .. import paths
    from ..engines import engine_for
    from ..models.birefnet import EXPECTED_FILES
    from ..rmbg import RefineOptions

    _check_args(args)
    out = output_folder(args.out)
    files = collect_images(args.inputs, out=out, recursive=args.recursive)
    if args.models:
        paths.set_models_root(args.models)
    model_path = paths.resolve("birefnet", args.model, allow_absolute=True, expected=EXPECTED_FILES)
    handle = engine_for("birefnet", args.device or "auto").load_birefnet(model_path, variant=args.variant,
                                                                         precision=args.precision)
    opts = RefineOptions(threshold=args.threshold, fill_holes=args.fill_holes, remove_islands=args.remove_islands,
                         grow=args.grow, feather=args.feather)
    res = args.resolution or tuple(handle.resolution)
    quiet = getattr(args, "quiet", False)
    if not quiet:
        print(f"{handle.describe()}; {len(files)} image(s) -> {out.root}", file=sys.stderr)
    failures = []
    for path in files:
        try:
            target = _remove_one(args, handle, path, out, res, opts)
            if not quiet:
                print(f"  {path} -> {target}", file=sys.stderr)
        except SpriteForgeError as err:
            if err.code not in PER_IMAGE:
                raise
            failures.append(err)
            print(f"{err.code}: {err.message}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(files)} image(s) failed.", file=sys.stderr)
        return failures[0].exit_code
    return 0
