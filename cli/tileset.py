"""spriteforge tileset: an autotile set for two terrains (or a terrain and transparency), ready for Godot and Tiled.

  spriteforge tileset --terrain grass --terrain water --layout wang16 --tile 16 --out tiles/

Each --terrain is a prompt; one terrain alone makes a terrain-and-transparency set (islands, platforms).
Layouts: wang16 (corner Wang, 16 tiles), blob47 (edges and corners, 47 tiles), dualgrid (16 tiles
in the dual-grid order). Writes OUT/NAME.png (indexed sheet), NAME.json (atlas: each tile's rectangle
and terrain code), NAME.tsx (Tiled tileset with a wangset) and NAME.tres (Godot 4 TileSet with a terrain
set and peering bits); existing files are never replaced (a taken name gets _1, _2 ...). Runs on any model (default: the built-in demo
model).
"""

from __future__ import annotations

import argparse
import json
import re

from ..errors import BAD_INPUT, SpriteForgeError


def register(subparsers) -> None:
    from ..pixel.autotile import LAYOUTS

    p = subparsers.add_parser("tileset", help="autotile set (Wang 16, blob 47, dual grid) for Godot and Tiled",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--terrain", action="append", default=[], metavar="PROMPT", required=True,
                   help="a terrain prompt; give it twice for two terrains, once for a terrain and transparency")
    p.add_argument("--layout", default="wang16", help=f"tile layout: {', '.join(LAYOUTS)} (default wang16)")
    p.add_argument("--tile", type=int, default=16, help="tile size in pixels (default 16)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--name", help="file name stem (default <terrain>_<terrain>_<layout>)")
    p.add_argument("--model", default=None, help="model path or name (default: the built-in demo model)")
    p.add_argument("--vae", help="VAE file when the model has none")
    p.add_argument("--text-encoder", action="append", default=[], metavar="PATH", help="text encoder file (repeat)")
    p.add_argument("--seed", type=int, default=0, help="seed of textures, boundary noise and inpainting")
    p.add_argument("--steps", type=int, help="sampling steps of the textures (default: the family's)")
    p.add_argument("--inpaint-steps", type=int, help="sampling steps of the boundary band (default: the family's)")
    p.add_argument("--strength", type=float, default=0.75, help="how much of the boundary band is redrawn, 0..1")
    p.add_argument("--cfg", type=float, help="classifier-free guidance (default: the family's)")
    p.add_argument("--transition", help="prompt for the boundary band (default '<a> and <b>')")
    p.add_argument("--scale", type=int, help="generation pixels per tile pixel (default: near the model's size)")
    p.add_argument("--colors", type=int, default=16, help="palette size fitted to the whole set (default 16)")
    p.add_argument("--palette", help="a shipped palette name or palette file instead of --colors")
    p.add_argument("--batch", type=int, default=8, help="tiles inpainted per run (default 8)")
    p.add_argument("--engine", default="auto", help="auto, torch or mlx")
    p.add_argument("--device", default="auto", help="auto, gpu, cpu, cuda, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="weight dtype")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of the paths")
    p.set_defaults(func=run)


def _spec(args):
    from ..generation.autotile import AutotileSpec, check_spec

    if len(args.terrain) > 2:
        raise SpriteForgeError(BAD_INPUT, f"{len(args.terrain)} --terrain given; give one (with transparency) or two.")
    spec = AutotileSpec(terrain_a=args.terrain[0], terrain_b=args.terrain[1] if len(args.terrain) > 1 else None,
                        layout=args.layout, tile=args.tile, scale=args.scale, seed=args.seed, steps=args.steps,
                        inpaint_steps=args.inpaint_steps, strength=args.strength, cfg=args.cfg,
                        transition=args.transition, colors=args.colors, palette=args.palette, batch=args.batch)
    check_spec(spec)
    return spec


def _stem(args) -> str:
    raw = args.name or "_".join([*args.terrain, *([] if len(args.terrain) > 1 else ["transparent"]), args.layout])
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._") or "tileset"
    if args.name and stem != args.name:
        raise SpriteForgeError(BAD_INPUT, f"--name {args.name!r} must be a plain file name stem (letters, digits, . _ -).")
    return stem


def _folder(args):
    from ..paths import OutputFolder

    return OutputFolder(args.out, label="--out").check()  # created when the set is written


def run(args) -> int:
    from .. import progress
    from ..generation.autotile import make_autotiles, tileset_files
    from ..generation.autotile import FILE_EXTS
    from ..pixel.autotile import continuity, seam_ratio
    from ..resolve import DEMO, load_handle

    spec = _spec(args)
    stem = _stem(args)
    out = _folder(args)
    handle = load_handle(args.model or DEMO, vae=args.vae, text_encoders=args.text_encoder, engine=args.engine,
                         device=args.device, dtype=args.dtype, allow_path=True)
    progress.clear_interrupt()
    aset = make_autotiles(handle.engine, handle, spec)
    written = out.write_group(stem, FILE_EXTS, lambda name: tileset_files(aset, name))
    c = continuity(aset.tiles, aset.layout)
    summary = {"files": [str(p) for p in written], "layout": aset.layout.name, "tiles": len(aset.tiles),
               "tile": aset.tile, "scale": aset.scale, "colors": len(aset.palette),
               "edge_ratio": round(c["ratio"], 3), "worst_edge_ratio": round(c["worst"], 3),
               "worst_edge_line_ratio": round(c["worst_line"], 3),
               "texture_seam_ratios": [round(seam_ratio(t), 3) for t in aset.textures], "notes": aset.notes}
    if args.json:
        print(json.dumps(summary))
    else:
        for p in written:
            print(p)
    return 0
