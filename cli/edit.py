"""spriteforge edit: edit one or more reference images by an instruction, on the code the Edit node runs.

  spriteforge edit --model flux1-kontext-dev.safetensors --vae ae.safetensors \\
      --text-encoder clip_l.safetensors --text-encoder t5xxl_fp16.safetensors \\
      --image knight.png --prompt "make the armour red" --out out/
  spriteforge edit --model flux-2-klein-4b.safetensors --vae flux2-vae.safetensors \\
      --text-encoder qwen_3_4b.safetensors --image knight.png --image palette.png \\
      --prompt "the knight from image 1 in the colours of image 2" --out out/

The model must take reference images (FLUX.1 Kontext [dev] or another Flux.1 [dev]-layout file: one; FLUX.2
[klein]: up to 4, [dev]: 6; Qwen-Image-Edit: 1, 2509/2511: 3, with Qwen2.5-VL-7B including its vision tower).
Each --image is VAE-encoded once, at the model's reference size (--keep-size: at its own size, rounded down to
the 16-pixel grid); the output is the first image's size unless --width/--height say
otherwise. Steps, cfg and guidance default to the model's edit defaults (Kontext: 28 steps, guidance 2.5).
Every argument and image is checked before the model loads or anything is written; images are written as
PREFIX-SEED.png with the parameters in their text chunks, never over an existing file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import BAD_INPUT, SpriteForgeError
from ..samplers import SAMPLERS, SCHEDULES
from .generate import _check_args, _load_image, _output_folder, _save_images

MAX_IMAGES = 10  # more than any model takes: the model's own limit is checked once it is loaded


def register(subparsers) -> None:
    p = subparsers.add_parser("edit", help="edit reference images by an instruction (FLUX.1 Kontext, FLUX.2, Qwen-Image-Edit)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model that takes reference images: a path, or a name in "
                                                  "diffusion_models/checkpoints/diffusers")
    p.add_argument("--vae", help="VAE file (path or a name in the vae folder) when the model has none")
    p.add_argument("--text-encoder", action="append", default=[], metavar="PATH",
                   help="text encoder file (repeat for several: CLIP-L and T5 for Flux.1, Qwen3 or Mistral-3 for FLUX.2, "
                        "Qwen2.5-VL-7B for Qwen-Image-Edit)")
    p.add_argument("--models", metavar="DIR", help="models root laid out like ComfyUI's models/ (for names)")
    p.add_argument("--image", action="append", default=[], metavar="IMAGE", required=True,
                   help="a reference image (repeat for several, in order: the first sets the output size)")
    p.add_argument("--prompt", required=True, help="the instruction: what to change")
    p.add_argument("--negative", default="", help="what to avoid (with --cfg above 1 only)")
    p.add_argument("--seed", type=int, default=0, help="noise seed, 0 to 2**64-1 (image i of a batch uses seed + i)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's edit default)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance (default: the model's; Kontext 1 = off)")
    p.add_argument("--guidance", type=float, help="distilled guidance, 0 to 30 (default: Kontext 2.5, FLUX.2 [dev] 4)")
    p.add_argument("--sampler", metavar="NAME", help=f"one of {', '.join(SAMPLERS)} (default: the model's)")
    p.add_argument("--schedule", metavar="NAME", help=f"one of {', '.join(SCHEDULES)} (default: the model's)")
    p.add_argument("--shift", type=float, help="flow shift, above 0 and at most 20 (default: by resolution)")
    p.add_argument("--width", type=int, default=None, help="output width (default: the first image's, as the model sizes it)")
    p.add_argument("--height", type=int, default=None, help="output height (default: the first image's, as the model sizes it)")
    p.add_argument("--keep-size", action="store_true",
                   help="encode each image at its own size (rounded down to 16 pixels) instead of the model's trained sizes")
    p.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    p.add_argument("--max-side", type=int, default=2048, help="largest width/height allowed (default 2048)")
    p.add_argument("--engine", default="auto", help="auto, torch or mlx")
    p.add_argument("--device", default="auto", help="auto, gpu, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="weight dtype")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--prefix", default="edit", help="file name prefix (default edit)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of paths")
    from ..lora import add_cli_arguments

    add_cli_arguments(p)
    p.set_defaults(func=run)


def _check(args) -> None:
    """Every argument (generate's rules, and the images), before the model loads or anything is written."""
    for name, value in (("init", None), ("mask", None), ("denoise", None), ("feather", 8), ("tile", False), ("cfg_rescale", 0.0),
                        ("dynamic_threshold", 0.0)):
        setattr(args, name, value)  # generate's checks read these; an edit has none of them
    _check_args(args)
    if not args.image:
        raise SpriteForgeError(BAD_INPUT, "--image is required: give the image to edit.")
    if len(args.image) > MAX_IMAGES:
        raise SpriteForgeError(BAD_INPUT, f"{len(args.image)} --image given; no model takes more than {MAX_IMAGES}.")


def run(args) -> int:
    from .. import paths, progress
    from ..lora import apply_loras, specs_from_args
    from ..pipeline import GenerateParams, edit
    from ..resolve import load_handle
    from ._models import models_dir

    _check(args)
    if models_dir(args.models):
        paths.set_models_root(args.models)
    refs = [_load_image(p)[0] for p in args.image]  # every image read before the model loads
    handle = load_handle(args.model, vae=args.vae, text_encoders=args.text_encoder, engine=args.engine,
                         device=args.device, dtype=args.dtype, allow_path=True)
    specs = specs_from_args(args)
    if specs:
        handle = apply_loras(handle, specs)
        for applied in handle.loras:
            print(f"lora: {applied.summary()}", file=sys.stderr)
    params = GenerateParams(prompt=args.prompt, negative=args.negative, seed=args.seed, steps=args.steps, cfg=args.cfg,
                            sampler=args.sampler, schedule=args.schedule, shift=args.shift, guidance=args.guidance,
                            batch_size=args.batch, max_side=args.max_side, references=refs,
                            reference_resize=not args.keep_size)
    progress.clear_interrupt()
    res = edit(handle.engine, handle, params, width=args.width, height=args.height)
    out = _output_folder(args)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    written, info = _save_images(args, out, handle, res, "edit", {"references": [str(Path(p).name) for p in args.image]})
    if args.json:
        print(json.dumps({"images": written, "info": info, "notes": res.notes}, default=str))
    else:
        for w in written:
            print(w)
    return 0
