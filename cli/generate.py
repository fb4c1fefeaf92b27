"""spriteforge generate: a quick image without a graph, on the same code path as the nodes.

  spriteforge generate --prompt "small red potion with outline" --out out/
  spriteforge generate --model pixart-sigma.safetensors --vae sdxl_vae.safetensors \\
      --text-encoder t5xxl_fp16.safetensors --prompt "a knight, pixel art" --seed 7 --out out/

Without --model it uses the built-in 32x32 sprite model. The model loads as the Load Model node loads
it; txt2img, img2img (--init, --denoise), inpainting (--mask, white = repaint) and seamless tiles
(--tile). Every argument is checked before anything is loaded or written.

Images are written as PREFIX-SEED.png (image i of a batch has seed + i, so each file can be remade
alone at batch 1; seeds are zero-padded to the batch's widest so the files sort), with the parameters
in the PNG text chunks "parameters" (readable) and "spriteforge" (JSON); existing files are never
replaced. The written paths are printed, one a line (--json: one JSON object). On the built-in model,
which draws on a magenta key colour, the PNGs are transparent (--keep-key keeps the raw image).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import BAD_INPUT, DIMENSION_LIMIT, SpriteForgeError
from ..paths import OutputFolder
from ..samplers.guidance import check_guidance
from ..samplers import SAMPLERS, SCHEDULES

MAX_SEED = 2**64 - 1  # the noise generator's seed range; a larger seed would silently wrap around
DEFAULT_SIDE = 512
MAX_PREFIX_BYTES = 200  # file names are at most 255 bytes; "-SEED_N.png" needs the rest
# argument -> (lowest, highest, what it is): checked before anything is loaded or written
RANGES = {
    "steps": (1, 1000, "sampling steps"), "cfg": (0, 100, "the guidance scale"),
    "guidance": (0, 30, "Flux's distilled guidance"), "shift": (None, 20, "the flow shift"),
    "batch": (1, 64, "images per run"), "denoise": (0, 1, "the img2img strength"),
    "feather": (0, 256, "the mask feather in pixels"), "max_side": (64, 8192, "the largest side"),
}


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate images from a prompt with a DiT model (no graph needed)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="DiT model: a path, or a name in diffusion_models/checkpoints/diffusers "
                        "(default: the built-in 32x32 sprite demo model)")
    p.add_argument("--vae", help="VAE file (path or a name in the vae folder) when the model has none")
    p.add_argument("--text-encoder", action="append", default=[], metavar="PATH",
                   help="text encoder file (repeat for several: CLIP-L, CLIP-G, T5 / Gemma-2 / Qwen3-4B or -8B / Qwen2.5-VL-7B)")
    p.add_argument("--models", metavar="DIR", help="models root laid out like ComfyUI's models/ (for names)")
    p.add_argument("--prompt", required=True, help="what to draw (DiT: a class number 0-999)")
    p.add_argument("--negative", default="", help="what to avoid")
    p.add_argument("--seed", type=int, default=0, help="noise seed, 0 to 2**64-1 (image i of a batch uses seed + i)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the family's)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance (default: the family's; Flux 1 = off)")
    p.add_argument("--guidance", type=float, help="Flux dev's distilled guidance, 0 to 30 (default 3.5)")
    p.add_argument("--sampler", metavar="NAME", help=f"one of {', '.join(SAMPLERS)} (default: the family's)")
    p.add_argument("--schedule", metavar="NAME", help=f"one of {', '.join(SCHEDULES)} (default normal)")
    p.add_argument("--shift", type=float, help="flow shift for SD3/Sana/Flux, above 0 and at most 20 "
                                               "(default: the family's)")
    p.add_argument("--cfg-rescale", type=float, default=0.0, metavar="PHI",
                   help="CFG-rescale 0..1 against over-saturation at high cfg (e.g. 0.7; default 0 = off)")
    p.add_argument("--dynamic-threshold", type=float, default=0.0, metavar="PERCENTILE",
                   help="dynamic thresholding of each step's denoised latent at this percentile (e.g. 0.995; default 0 = off)")
    p.add_argument("--width", type=int, default=None,
                   help="image width (default: the model's own size, at most 512; the built-in model: 32)")
    p.add_argument("--height", type=int, default=None,
                   help="image height (default: the model's own size, at most 512; the built-in model: 32)")
    p.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    p.add_argument("--init", metavar="IMAGE", help="source image for img2img / inpainting")
    p.add_argument("--denoise", type=float, default=None, help="img2img strength 0..1 (default 0.6 with --init, 1 with --mask)")
    p.add_argument("--mask", metavar="MASK", help="inpainting mask image: white = repaint (needs --init)")
    p.add_argument("--feather", type=int, default=8, help="mask edge softness in pixels (default 8)")
    p.add_argument("--tile", action="store_true", help="seamless tile (wraps on both axes)")
    p.add_argument("--max-side", type=int, default=2048, help="largest width/height allowed (default 2048)")
    p.add_argument("--engine", default="auto", help="auto, torch or mlx")
    p.add_argument("--device", default="auto", help="auto, gpu, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16", "q8", "q4"],
                   help="weight dtype; q8/q4: MLX 8/4-bit quantized linear layers (MLX engine; the first run writes the "
                        "model's quantized cache, as convert --quantize)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--prefix", default="sf", help="file name prefix (default sf)")
    p.add_argument("--keep-key", action="store_true",
                   help="models that draw on a key colour (the built-in demo model, magenta): keep the raw image "
                        "(default: the key removed, a transparent RGBA PNG)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of paths")
    from ..lora import add_cli_arguments

    add_cli_arguments(p)
    p.set_defaults(func=run)


def _load_image(path: str) -> np.ndarray:
    from PIL import Image

    p = Path(path).expanduser()
    if not p.is_file():
        raise SpriteForgeError(BAD_INPUT, f"image {path} does not exist. Give the path of an image file.")
    try:
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as exc:
        raise SpriteForgeError(BAD_INPUT, f"{path} is not a readable image ({exc}).") from exc
    return rgb[None]


def _load_mask(path: str) -> np.ndarray:
    from PIL import Image

    p = Path(path).expanduser()
    if not p.is_file():
        raise SpriteForgeError(BAD_INPUT, f"mask {path} does not exist. Give the path of a mask image (white = repaint).")
    try:
        with Image.open(p) as im:
            if im.mode in ("RGBA", "LA") and np.asarray(im.convert("RGBA"))[..., 3].min() < 255 and \
                    np.asarray(im.convert("L")).max() == np.asarray(im.convert("L")).min():
                # a plain image with holes: transparent = repaint (as ComfyUI's LoadImage mask)
                m = 1.0 - np.asarray(im.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
            else:
                m = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except Exception as exc:
        raise SpriteForgeError(BAD_INPUT, f"{path} is not a readable mask image ({exc}).") from exc
    return m[None]


def param_text(info: dict, prompt: str, negative: str) -> str:
    """A1111-style readable parameters line for the PNG ``parameters`` chunk."""
    head = prompt + (f"\nNegative prompt: {negative}" if negative else "")
    keys = ["steps", "sampler", "schedule", "cfg", "seed", "width", "height", "denoise", "family", "variant", "model"]
    tail = ", ".join(f"{k}: {info[k]}" for k in keys if info.get(k) is not None)
    return f"{head}\n{tail}"


def save_png(file, image: np.ndarray, meta: dict, text: str) -> None:
    """``image``: float 0..1 RGB, or uint8 RGB(A) as it is (an RGBA array gives a transparent PNG), to ``file``
    (a path or a binary file)."""
    from PIL import Image, PngImagePlugin

    arr = image if image.dtype == np.uint8 else np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    info.add_text("spriteforge", json.dumps(meta, default=str))
    Image.fromarray(arr).save(file, format="PNG", pnginfo=info)


def key_colour(handle, model) -> tuple[int, int, int] | None:
    """The key colour a model draws its background in, when it is one that does: the built-in demo model
    (magenta, whether chosen by name or by its folder's path). None for every other model."""
    from ..resolve import DEMO, DEMO_DIR
    from ..sprites.generator import KEY_COLOR

    src = str(getattr(handle, "source", "") or "")
    try:
        is_demo = model == DEMO or (bool(src) and Path(src).resolve() == Path(DEMO_DIR).resolve())
    except OSError:
        is_demo = model == DEMO
    return tuple(KEY_COLOR) if is_demo else None


def _check_args(args) -> None:
    """Every argument, checked before anything is loaded or written: BAD_INPUT (DIMENSION_LIMIT for a size over
    --max-side) naming the argument and the range it takes."""
    for name, (lo, hi, what) in RANGES.items():
        v = getattr(args, name)
        if v is None:
            continue
        above_low = v > 0 if lo is None else v >= lo
        if not (math.isfinite(v) and above_low and v <= hi):
            span = f"above 0 and at most {hi}" if lo is None else f"between {lo} and {hi}"
            raise SpriteForgeError(BAD_INPUT, f"--{name.replace('_', '-')} {v}: {what} must be {span}.")
    last = int(args.seed) + int(args.batch) - 1
    if args.seed < 0 or last > MAX_SEED:
        raise SpriteForgeError(BAD_INPUT, f"--seed {args.seed}" + (f" with --batch {args.batch}" if args.batch > 1 else "")
                               + f": seeds go from 0 to 2**64-1 ({MAX_SEED}), and image i of a batch uses seed + i.")
    for name, names in (("sampler", SAMPLERS), ("schedule", SCHEDULES)):
        v = getattr(args, name)
        if v is not None and v not in names:
            raise SpriteForgeError(BAD_INPUT, f"--{name} {v!r} is not one of {', '.join(names)}.")
    for name in ("width", "height"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise SpriteForgeError(BAD_INPUT, f"--{name} {v}: give a size in pixels (1 or more).")
        if v is not None and v > args.max_side:
            raise SpriteForgeError(DIMENSION_LIMIT, f"--{name} {v} is over --max-side {args.max_side}. Ask for less, "
                                   "or raise --max-side if the machine has the memory.")
    if args.mask and not args.init:
        raise SpriteForgeError(BAD_INPUT, "--mask needs --init (the image to inpaint).")
    check_guidance(args.cfg_rescale, args.dynamic_threshold)
    _check_out(Path(args.out).expanduser())
    _check_prefix(str(args.prefix))
    from ..lora import specs_from_args

    specs_from_args(args)  # a malformed --lora (FILE:nan) is refused here, before the model loads


def _check_prefix(prefix: str) -> None:
    """A plain file-name prefix that leaves room for "-SEED_N.png" within the file system's 255 bytes."""
    if not prefix or prefix in (".", "..") or any(c in prefix for c in "/\\:\0"):
        raise SpriteForgeError(BAD_INPUT, f"--prefix {prefix[:60]!r} must be a plain file name prefix (no folders, "
                               "no '..'); the files go into --out.")
    if len(prefix.encode("utf-8", "surrogateescape")) > MAX_PREFIX_BYTES:
        raise SpriteForgeError(BAD_INPUT, f"--prefix is {len(prefix)} characters long; file names are limited to 255 "
                               f"bytes, so the prefix may have at most {MAX_PREFIX_BYTES}. Give a shorter one.")


def _check_out(out: Path) -> None:
    """--out can hold the images: an existing folder, or one that can be made in its nearest existing parent (it is
    made only when there are images to write, so a failed run leaves no empty folder)."""
    if out.exists() and not out.is_dir():
        raise SpriteForgeError(BAD_INPUT, f"--out {out} is a file, not a folder. Give a folder for the images.")
    parent = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SpriteForgeError(BAD_INPUT, f"--out {out}: {parent} cannot be written to. Give a folder you can write in.")


def _output_folder(args) -> Path:
    out = Path(args.out).expanduser()
    OutputFolder(out, label="--out").check()  # created when the first image is written
    return out


def _default_side(handle) -> int:
    """The side a model draws when no size is given: its own (the config's sample size times the VAE factor, which
    the built-in model records as 32 px), at most :data:`DEFAULT_SIDE`; DEFAULT_SIDE when the config has none."""
    sample = (handle.config or {}).get("sample_size")
    if isinstance(sample, (list, tuple)):
        sample = min(sample) if sample else None
    if not isinstance(sample, int) or sample < 1:
        return DEFAULT_SIDE
    return min(DEFAULT_SIDE, sample * int(handle.vae_scale_factor or 8))


def _load_model(args):
    """The model handle (with the --lora files applied); fills in the demo model, and the model's own size
    where --width/--height are not given."""
    from ..lora import apply_loras, specs_from_args
    from ..resolve import DEMO, load_handle

    args.model = args.model or DEMO
    handle = load_handle(args.model, vae=args.vae, text_encoders=args.text_encoder, engine=args.engine,
                         device=args.device, dtype=args.dtype, allow_path=True)
    side = _default_side(handle)
    args.width = side if args.width is None else args.width
    args.height = side if args.height is None else args.height
    lora_specs = specs_from_args(args)
    if lora_specs:
        handle = apply_loras(handle, lora_specs)
        for applied in handle.loras:
            print(f"lora: {applied.summary()}", file=sys.stderr)
    return handle


def _generate(args, handle, init, mask, denoise):
    from .. import progress
    from ..pipeline import GenerateParams, generate_full

    params = GenerateParams(
        prompt=args.prompt, negative=args.negative, seed=args.seed, steps=args.steps, cfg=args.cfg, sampler=args.sampler,
        schedule=args.schedule, shift=args.shift, guidance=args.guidance, width=args.width, height=args.height,
        batch_size=args.batch, init_image=init, denoise=denoise, mask=mask, mask_feather=args.feather, tile=args.tile,
        max_side=args.max_side, cfg_rescale=args.cfg_rescale, dynamic_threshold=args.dynamic_threshold,
    )
    progress.clear_interrupt()
    return generate_full(handle.engine, handle, params)


def _save_images(args, out: Path, handle, res, command: str = "generate", extra: dict | None = None) -> tuple[list[str], dict]:
    """One PNG per image (the demo model's key colour made transparent unless --keep-key); (paths, info).
    ``command``/``extra``: the sub-command and more fields for each PNG's JSON chunk."""
    info = dict(res.info)
    info["model"] = Path(str(handle.source or args.model)).name
    width = len(str(int(args.seed) + len(res.images) - 1))  # zero-pad seeds so a batch's files sort: sf-07 ... sf-10
    key = None if getattr(args, "keep_key", False) else key_colour(handle, args.model)
    if key is not None:
        info["key_removed"] = "#%02x%02x%02x" % key
    folder = OutputFolder(out, label="--out")
    for i, img in enumerate(res.images):
        seed_i = int(args.seed) + i
        meta = {**info, "seed": seed_i, "batch_index": i, "prompt": args.prompt, "negative": args.negative,
                "init": args.init, "mask": args.mask, **(extra or {}), "spriteforge_command": command}
        if key is not None:  # transparent: the key colour removed, edge colours decontaminated
            from ..pixel.alpha import key_to_alpha

            img = key_to_alpha(img, key)
        with folder.create(f"{args.prefix}-{seed_i:0{width}d}.png") as (path, f):  # never over an earlier file
            save_png(f, img, meta, param_text({**info, "seed": seed_i}, args.prompt, args.negative))
    return [str(p) for p in folder.written], info


def run(args) -> int:
    from .. import paths
    from ._models import models_dir

    _check_args(args)
    if models_dir(args.models):
        paths.set_models_root(args.models)
    init = _load_image(args.init) if args.init else None
    mask = _load_mask(args.mask) if args.mask else None
    denoise = args.denoise
    if denoise is None:
        denoise = 1.0 if (init is None or mask is not None) else 0.6
    handle = _load_model(args)
    res = _generate(args, handle, init, mask, denoise)
    out = _output_folder(args)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    written, info = _save_images(args, out, handle, res)
    if args.json:
        print(json.dumps({"images": written, "info": info, "notes": res.notes}, default=str))
    else:
        for w in written:
            print(w)
    return 0
