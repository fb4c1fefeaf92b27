"""spriteforge convert --engine mlx MODEL: an MLX-native cache of a model, checked on every load.

  spriteforge convert --engine mlx pixart-sigma.safetensors --vae sdxl_vae.safetensors \\
      --text-encoder t5xxl_fp16.safetensors [--out DIR] [--dtype auto|float16|bfloat16|float32] [--quantize 4|8]

Loads MODEL once through the MLX loader (any file or folder the MLX engine takes, with the VAE and
text encoders given) and writes each component's weights under the MLX port's names (MLX
safetensors), a copy of the tokenizers and a manifest.json with the configs and an integrity record
(sha256 of the source's safetensors headers and tensor bytes, and of every cache file). Without
--out the cache goes to the source's default cache folder (mlx_cache/ under the models root,
$SPRITEFORGE_MLX_CACHE or ~/.cache/spriteforge/mlx), where loading the source with --engine mlx
finds it; the user's model files are never written. --dtype auto keeps each tensor as the source
stored it (the cache loads bit-identical); the others cast every weight. --quantize 4|8 stores the transformer's and
text encoders' linear layers MLX-quantized (affine, group size 64, as mlx.nn.quantize) and loads them as MLX's
quantized layers (the scales in the dtype loading asks for); its default folder is <name>-q<bits>-<key>, which
loading the source with dtype q8/q4 (generate --dtype, the Load Model node) finds, and writes when it is missing.
MODEL may be a GGUF or a ComfyUI-quantized file (decoded while converting). If the source or the cache
changes later, loading says MODEL_NOT_CONVERTED: convert again.
"""

from __future__ import annotations

import argparse
import json
import time

from ..errors import BAD_INPUT, SpriteForgeError


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a model into an MLX-native cache (checked on every load)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="DiT model: a path, or a name in diffusion_models/checkpoints/diffusers")
    p.add_argument("--engine", default="mlx", help="the engine to convert for (only mlx has a converted format)")
    p.add_argument("--out", metavar="DIR", help="cache folder (default: the source's default cache folder)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="weight dtype in the cache (auto: as the source stores each tensor, bit-identical loads)")
    p.add_argument("--quantize", type=int, choices=[4, 8], default=None,
                   help="MLX-quantize the transformer's and text encoders' linear layers to 4 or 8 bits (group size 64, "
                        "as mlx.nn.quantize): about 1/4 or 1/2 of the bf16 memory")
    p.add_argument("--vae", help="VAE file (path or a name in the vae folder) when the model has none")
    p.add_argument("--text-encoder", action="append", default=[], metavar="PATH",
                   help="text encoder file (repeat for several: CLIP-L, CLIP-G, T5 / Gemma-2 / Qwen2.5-VL-7B)")
    p.add_argument("--models", metavar="DIR", help="models root laid out like ComfyUI's models/ (for names)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import paths

    if args.engine != "mlx":
        raise SpriteForgeError(BAD_INPUT, f"--engine {args.engine}: only the MLX engine has a converted format (the torch "
                               "engine loads the files as they are). Use --engine mlx.")
    from ._models import models_dir

    if models_dir(args.models):
        paths.set_models_root(args.models)
    from ..engines import get_engine
    from ..engines.mlx_models import cache

    engine = get_engine("mlx")
    t0 = time.perf_counter()
    out = cache.convert(engine, args.model, out=args.out, vae=args.vae, text_encoders=args.text_encoder, dtype=args.dtype,
                        quantize=args.quantize)
    man = cache.read_manifest(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    info = {"cache": str(out), "family": man["family"], "variant": man["variant"], "dtype": man["dtype"],
            "quantize": args.quantize,
            "components": sorted(man["components"]), "bytes": size, "source_sha256": man["source"]["sha256"],
            "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{out}")
        print(f"  {man['family']} {man['variant']}, {', '.join(info['components'])}; {size / 2**20:.1f} MiB, dtype {man['dtype']}, "
              f"{info['seconds']:.1f} s")
        found = (f" (or --model {args.model} --dtype q{args.quantize}: this default folder is found automatically)" if args.quantize
                 else f" (or --model {args.model}: this default folder is found automatically)")
        print(f"  load it with --engine mlx --model {out}" + ("" if args.out else found))
    return 0
