"""Shape quality of the demo model: silhouette IoU of generated sprites against the procedural class shapes.

  python -m spriteforge.benchmarks.bench_demo_shapes [--model demo_model] [--seeds 2] [--json out.json]

For every object of the demo model's vocabulary, sprites are generated the way ``spriteforge generate`` and the
``sprite_demo`` workflow make them: the pack's torch engine and pipeline (the PixArt family defaults:
DPM-Solver++ 2M, 20 steps, CFG 4.5, 32x32), then the magenta key removed by
:func:`spriteforge.pixel.alpha.key_to_alpha`. The alpha of each sprite is scored with
:func:`spriteforge.sprites.metrics.shape_iou`: the best IoU against the generator's own silhouettes for the
caption's (object, size, outline) over 48 shape variations (styles, scale, aspect and offset jitter), held-out
variant seeds. Noise seeds start at 1000 (the tests use 0-8). Four captions per object (medium, large,
small with outline, medium with outline), colours rotating, ``--seeds`` noise seeds each.

It also scores the model's VAE alone: held-out generator sprites encoded and decoded (the latent mean), key
removed the same way, IoU against the sprite's own silhouette ("vae" rows; a ceiling for what the DiT can reach
through that decoder), and the generator's own sprites under the generator measure ("ceiling" rows).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STEPS, CFG = 20, 4.5
FIRST_SEED = 1000


def captions_for(kind: str, k: int = 0) -> list[str]:
    """Four captions for one object: medium, large, small with outline, medium with outline; colours rotate."""
    from spriteforge import sprites as S

    cols = list(S.COLORS)
    c = [cols[(k * 4 + i) % len(cols)] for i in range(4)]
    return [f"{c[0]} {kind}", f"large {c[1]} {kind}", f"small {c[2]} {kind} with outline", f"{c[3]} {kind} with outline"]


def load(model: str | Path):
    from spriteforge.engines import get_engine

    eng = get_engine("torch", "cpu")
    return eng, eng.load_model(str(model))


def generate_rgba(eng, handle, prompt: str, seed: int, n: int, steps: int = STEPS, cfg: float = CFG) -> np.ndarray:
    """``n`` RGBA uint8 sprites for ``prompt`` (noise seeds ``seed .. seed+n-1``), key removed as the CLI does."""
    from spriteforge import pipeline as P
    from spriteforge.pixel.alpha import key_to_alpha

    res = P.generate_full(eng, handle, P.GenerateParams(prompt=prompt, seed=seed, steps=steps, cfg=cfg, width=32, height=32,
                                                         batch_size=n))
    return key_to_alpha(res.images)


def measure_generated(eng, handle, kinds=None, seeds: int = 2, first_seed: int = FIRST_SEED, captions=captions_for) -> dict:
    """Per object: mean shape IoU over its captions x seeds, and the individual scores."""
    from spriteforge import sprites as S
    from spriteforge.sprites import metrics as M

    out = {}
    for k, kind in enumerate(kinds or S.KINDS):
        scores = []
        for j, cap in enumerate(captions(kind, k)):
            imgs = generate_rgba(eng, handle, cap, first_seed + 10 * j, seeds)
            scores += [M.caption_shape_iou(M.silhouette(im), cap) for im in imgs]
        out[kind] = {"mean": float(np.mean(scores)), "min": float(np.min(scores)), "scores": [round(s, 3) for s in scores]}
    return out


def measure_vae(model: str | Path, n_per_kind: int = 24, seed: int = 4242) -> dict:
    """Per object: mean IoU of VAE reconstructions (latent mean, decoded, key removed) against the original
    silhouette, for held-out generator sprites (all sizes / outline states / colours at random)."""
    import torch
    from diffusers import AutoencoderKL

    from spriteforge import sprites as S
    from spriteforge.pixel.alpha import key_to_alpha

    vae = AutoencoderKL.from_pretrained(Path(model) / "vae", local_files_only=True, torch_dtype=torch.float32).eval()
    rng = np.random.default_rng(seed)
    out = {}
    for kind in S.KINDS:
        specs = [S.SpriteSpec(kind, list(S.COLORS)[int(rng.integers(12))], ("small", "", "large")[int(rng.integers(3))],
                              bool(rng.random() < 0.5), int(rng.integers(2**31 - 1))) for _ in range(n_per_kind)]
        rgba = np.stack([S.render(s) for s in specs])
        x = torch.from_numpy(S.to_key_rgb(rgba).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)
        with torch.no_grad():
            rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        rec = ((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        a = key_to_alpha(rec)
        ious = [S.iou(a[i, ..., 3] >= 128, rgba[i, ..., 3] >= 128) for i in range(len(specs))]
        out[kind] = {"mean": float(np.mean(ious)), "min": float(np.min(ious))}
    return out


def measure_ceiling() -> dict:
    from spriteforge import sprites as S
    from spriteforge.sprites import metrics as M

    out = {}
    for k, kind in enumerate(S.KINDS):
        vals = []
        for cap in captions_for(kind, k):
            spec = S.parse_caption(cap)
            vals.append(M.shape_iou_ceiling(kind, spec.size, spec.outline, n=8))
        out[kind] = {"mean": float(np.mean(vals))}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "demo_model"))
    ap.add_argument("--seeds", type=int, default=2, help="noise seeds per caption (4 captions per object)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from spriteforge import sprites as S

    t0 = time.time()
    eng, handle = load(args.model)
    gen = measure_generated(eng, handle, seeds=args.seeds)
    t_gen = time.time() - t0
    vae = measure_vae(args.model)
    ceil = measure_ceiling()
    print(f"model {args.model}: {4 * args.seeds} sprites per object, {STEPS} steps, CFG {CFG}, seeds from {FIRST_SEED} "
          f"({t_gen:.1f}s to generate and score)")
    print(f"{'object':10s} {'generated':>10s} {'(min)':>6s} {'vae':>6s} {'ceiling':>8s}")
    for kind in S.KINDS:
        print(f"{kind:10s} {gen[kind]['mean']:10.3f} {gen[kind]['min']:6.3f} {vae[kind]['mean']:6.3f} {ceil[kind]['mean']:8.3f}")
    means = {n: float(np.mean([d[k]["mean"] for k in S.KINDS])) for n, d in (("generated", gen), ("vae", vae), ("ceiling", ceil))}
    print(f"{'mean':10s} {means['generated']:10.3f} {'':6s} {means['vae']:6.3f} {means['ceiling']:8.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model), "steps": STEPS, "cfg": CFG, "seeds": args.seeds,
                                               "generated": gen, "vae": vae, "ceiling": ceil, "means": means}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
