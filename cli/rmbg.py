"""``spriteforge rmbg INPUT... --model FILE --out DIR``: remove the background of images and folders.

Writes ``DIR/<name>.png`` (RGBA cut-out, or the foreground over ``--background``), or with
``--mask-only`` ``DIR/<name>.png`` as an 8-bit grayscale mask (white = foreground).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import BAD_INPUT, SpriteForgeError
from ._files import collect_images, unique_name


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rmbg",
        help="remove image backgrounds with BiRefNet",
        description="Remove the background of images (files or folders) with a BiRefNet model.safetensors.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--model", required=True, metavar="FILE",
                   help="BiRefNet weights: a path, or a name in the birefnet models folder (see --models)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--models", metavar="DIR", help="models root laid out like ComfyUI's models/ (for a --model name)")
    p.add_argument("--resolution", type=int, default=0, metavar="N",
                   help="working resolution, a multiple of 32 (default: the variant's, 1024 / HR 2048)")
    p.add_argument("--variant", default="auto", help="general, lite, lite-2K, portrait, matting, HR, HR-matting, "
                   "dynamic, massive (default: from the file name)")
    p.add_argument("--mask-only", action="store_true", help="write only the grayscale mask")
    p.add_argument("--recursive", "-r", action="store_true", help="also read sub-folders")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="compute dtype (default auto: fp16 on a GPU, fp32 on the CPU)")
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
    """An image file as float32 [H, W, C] (C = 3, or 4 when it has transparency)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.seek(0)
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / (65535.0 if arr.max(initial=0) > 255 else 255.0)
                return np.clip(arr, 0, 1)[..., None]
            im = im.convert("RGBA" if has_alpha else "RGB")
            return np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SpriteForgeError(BAD_INPUT, f"{path} is not a readable image ({exc}).", details={"path": str(path)}) from exc


def _remove_one(args, handle, path: Path, out_dir: Path, used: set, res, opts, comp: str, color: str) -> str:
    """Remove the background of one file and write the result (or the mask); the name written."""
    import numpy as np
    from PIL import Image

    from ..rmbg import plan, remove_background

    img = read_image(path)
    plan(img.shape[0], img.shape[1], res)  # size checks before any model work
    r = remove_background(img, handle.predict, resolution=res, chunk_size=1, refine_opts=opts, stages=handle.stages,
                          foreground="none" if args.mask_only else args.foreground,
                          composite=comp, color=color, on_oom=handle.empty_cache)
    name = unique_name(path, used)
    if args.mask_only:
        data = np.round(r.alpha[0] * 255).astype(np.uint8)
        Image.fromarray(data, mode="L").save(out_dir / name)
    else:
        data = np.round(np.clip(r.composite[0], 0, 1) * 255).astype(np.uint8)
        Image.fromarray(data, mode="RGBA" if data.shape[-1] == 4 else "RGB").save(out_dir / name)
    return name


def run(args) -> int:
    from .. import paths
    from ..engines import engine_for
    from ..models.birefnet import EXPECTED_FILES
    from ..rmbg import RefineOptions

    if args.models:
        paths.set_models_root(args.models)
    model_path = paths.resolve("birefnet", args.model, allow_absolute=True, expected=EXPECTED_FILES)
    files = collect_images(args.inputs, recursive=args.recursive)
    bg = args.background
    if bg in ("alpha", "white", "black"):
        comp, color = bg, "#000000"
    else:
        comp, color = "color", bg
    if args.resolution and args.resolution % 32:
        raise SpriteForgeError(BAD_INPUT, f"--resolution {args.resolution} must be a multiple of 32.")
    handle = engine_for("birefnet", args.device or "auto").load_birefnet(model_path, variant=args.variant,
                                                                         precision=args.precision)
    out_dir = Path(args.out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = RefineOptions(threshold=args.threshold, fill_holes=args.fill_holes, remove_islands=args.remove_islands,
                         grow=args.grow, feather=args.feather)
    res = args.resolution or tuple(handle.resolution)
    quiet = getattr(args, "quiet", False)
    if not quiet:
        print(f"{handle.describe()}; {len(files)} image(s) -> {out_dir}", file=sys.stderr)
    used: set = set()
    failures = []
    for path in files:
        try:
            name = _remove_one(args, handle, path, out_dir, used, res, opts, comp, color)
            if not quiet:
                print(f"  {path} -> {out_dir / name}", file=sys.stderr)
        except SpriteForgeError as err:
            if err.code != BAD_INPUT:
                raise
            failures.append(err)
            print(f"{err.code}: {err.message}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(files)} image(s) failed.", file=sys.stderr)
        return failures[0].exit_code
    return 0
