"""``spriteforge generate``: a quick image without a graph, on the same code path as the nodes.

  spriteforge generate --model pixart-sigma.safetensors --vae sdxl_vae.safetensors \\
      --text-encoder t5xxl_fp16.safetensors --prompt "a knight, pixel art" --seed 7 --out out/

Loads the model as SpriteForge Load Model does (:func:`spriteforge.resolve.load_handle`) and
runs :func:`spriteforge.pipeline.generate_full` (txt2img, img2img with ``--init``/``--denoise``,
inpainting with ``--mask`` (white = repaint), seamless tiles with ``--tile``). Images are written
as ``<prefix>-<seed of the image>.png`` (batch item i has seed + i, so each file can be remade
alone at batch 1; seeds are zero-padded to the batch's widest, ``sf-07.png ... sf-10.png``, so the
files sort) with the parameters in the PNG text chunks ``parameters`` (readable) and
``spriteforge`` (JSON). The written paths are printed, one a line (``--json``: one JSON object).
On the built-in demo model, which draws on a magenta key colour, the PNGs are transparent (the key
removed by :func:`spriteforge.pixel.alpha.key_to_alpha`, edges decontaminated); ``--keep-key`` keeps
the raw image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError
from ..paths import OutputFolder


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate images from a prompt with a DiT model (no graph needed)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="DiT model: a path, or a name in diffusion_models/checkpoints/diffusers "
                        "(default: the built-in 32x32 sprite demo model)")
    p.add_argument("--vae", help="VAE file (path or a name in the vae folder) when the model has none")
    p.add_argument("--text-encoder", action="append", default=[], metavar="PATH",
                   help="text encoder file (repeat for several: CLIP-L, CLIP-G, T5 / Gemma-2)")
    p.add_argument("--models", metavar="DIR", help="models root laid out like ComfyUI's models/ (for names)")
    p.add_argument("--prompt", required=True, help="what to draw (DiT: a class number 0-999)")
    p.add_argument("--negative", default="", help="what to avoid")
    p.add_argument("--seed", type=int, default=0, help="noise seed (image i of a batch uses seed + i)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the family's)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance (default: the family's; Flux 1 = off)")
    p.add_argument("--guidance", type=float, help="Flux dev's distilled guidance (default 3.5)")
    p.add_argument("--sampler", help="sampler name (default: the family's)")
    p.add_argument("--schedule", help="schedule name (default normal)")
    p.add_argument("--shift", type=float, help="flow shift (SD3/Sana/Flux)")
    p.add_argument("--width", type=int, default=None, help="image width (default 512; 32 for the demo model)")
    p.add_argument("--height", type=int, default=None, help="image height (default 512; 32 for the demo model)")
    p.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    p.add_argument("--init", metavar="IMAGE", help="source image for img2img / inpainting")
    p.add_argument("--denoise", type=float, default=None, help="img2img strength 0..1 (default 0.6 with --init, 1 with --mask)")
    p.add_argument("--mask", metavar="MASK", help="inpainting mask image: white = repaint (needs --init)")
    p.add_argument("--feather", type=int, default=8, help="mask edge softness in pixels (default 8)")
    p.add_argument("--tile", action="store_true", help="seamless tile (wraps on both axes)")
    p.add_argument("--max-side", type=int, default=2048, help="largest width/height allowed (default 2048)")
    p.add_argument("--engine", default="auto", help="auto, torch or mlx")
    p.add_argument("--device", default="auto", help="auto, gpu, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="weight dtype")
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


def _output_folder(args) -> Path:
    out = Path(args.out).expanduser()
    prefix = str(args.prefix)
    if not prefix or prefix in (".", "..") or any(c in prefix for c in "/\\:\0"):
        raise SpriteForgeError(BAD_INPUT, f"--prefix {prefix!r} must be a plain file name prefix (no folders, no '..'); "
                               "the files go into --out.")
    OutputFolder(out, label="--out").check()  # created when the first image is written
    return out


def _load_model(args):
    """The model handle (with the --lora files applied); fills in the demo model and its size when not given."""
    from ..lora import apply_loras, specs_from_args
    from ..resolve import DEMO, load_handle

    args.model = args.model or DEMO
    side = 32 if args.model == DEMO else 512  # the demo model draws 32x32 sprites
    args.width = side if args.width is None else args.width
    args.height = side if args.height is None else args.height
    handle = load_handle(args.model, vae=args.vae, text_encoders=args.text_encoder, engine=args.engine,
                         device=args.device, dtype=args.dtype, allow_path=True)
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
        max_side=args.max_side,
    )
    progress.clear_interrupt()
    bars = progress._cli_bars["enabled"]
    if getattr(args, "quiet", False):
        progress.set_cli_bars(False)
    try:
        return generate_full(handle.engine, handle, params)
    finally:
        progress.set_cli_bars(bars)


def _save_images(args, out: Path, handle, res) -> tuple[list[str], dict]:
    """One PNG per image (the demo model's key colour made transparent unless --keep-key); (paths, info)."""
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
                "init": args.init, "mask": args.mask, "spriteforge_command": "generate"}
        if key is not None:  # transparent: the key colour removed, edge colours decontaminated
            from ..pixel.alpha import key_to_alpha

            img = key_to_alpha(img, key)
        with folder.create(f"{args.prefix}-{seed_i:0{width}d}.png") as (path, f):  # never over an earlier file
            save_png(f, img, meta, param_text({**info, "seed": seed_i}, args.prompt, args.negative))
    return [str(p) for p in folder.written], info


def run(args) -> int:
    from .. import paths

    if args.models:
        if not Path(args.models).expanduser().is_dir():
            raise SpriteForgeError(MODEL_NOT_FOUND, f"models folder {args.models} does not exist.")
        paths.set_models_root(args.models)
    if args.mask and not args.init:
        raise SpriteForgeError(BAD_INPUT, "--mask needs --init (the image to inpaint).")
    init = _load_image(args.init) if args.init else None
    mask = _load_mask(args.mask) if args.mask else None
    denoise = args.denoise
    if denoise is None:
        denoise = 1.0 if (init is None or mask is not None) else 0.6
    out = _output_folder(args)
    handle = _load_model(args)
    res = _generate(args, handle, init, mask, denoise)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    written, info = _save_images(args, out, handle, res)
    if args.json:
        print(json.dumps({"images": written, "info": info, "notes": res.notes}, default=str))
    else:
        for w in written:
            print(w)
    return 0
