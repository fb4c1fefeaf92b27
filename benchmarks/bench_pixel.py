"""Pixel benchmarks against references measured in the same run.

1. Palette quantization with Floyd-Steinberg on a 1024x1024 photo-like image, K colours:
   reference = what ComfyUI's ImageQuantize does (PIL ``quantize(K)`` for the palette, then
   ``quantize(palette=..., dither=FLOYDSTEINBERG)``); ours = seeded OKLab k-means + OKLab
   wavefront Floyd-Steinberg. Time (best of N) and mean OKLab ΔE to the source.
2. k-centroid downscale 1024 -> 128: vectorised vs a straightforward per-cell Python loop doing
   the same steps (outputs compared for equality).

Run: ``python benchmarks/bench_pixel.py [--repeat N] [--colors 16,32,64]``. Not a test: prints a table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

import spriteforge.pixel as px
from spriteforge.pixel.scale import kcentroid_cells


def photo_like(size: int = 1024, seed: int = 0) -> np.ndarray:
    """Smooth lighting, several coloured objects with soft edges, texture and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([0.55 + 0.35 * np.sin(2.5 * x + 0.7), 0.5 + 0.3 * np.cos(3.1 * y - 0.4 + x),
                    0.35 + 0.45 * x * (1 - y)], -1)
    for _ in range(14):
        cy, cx, r = rng.random(), rng.random(), 0.05 + 0.2 * rng.random()
        col = rng.random(3).astype(np.float32)
        d = np.hypot(y - cy, x - cx) / r
        wgt = np.clip(1.5 - d, 0, 1)[..., None] ** 2
        shade = (1 - 0.5 * np.clip(d, 0, 1))[..., None]
        img = img * (1 - wgt) + wgt * col * shade
    tex = np.sin(40 * x + 7 * np.sin(9 * y)) * np.cos(33 * y) * 0.04
    img = img + tex[..., None] + rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def best_of(fn, n: int):
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def comfy_image_quantize(img: np.ndarray, k: int) -> np.ndarray:
    """ComfyUI's ImageQuantize (nodes_post_processing.py), Floyd-Steinberg branch."""
    im = Image.fromarray(img)
    pal = im.quantize(colors=k)
    return np.asarray(im.quantize(colors=k, palette=pal, dither=Image.Dither.FLOYDSTEINBERG).convert("RGB"))


def ours(img: np.ndarray, k: int, dither: str = "fs") -> np.ndarray:
    return px.quantize(img, px.kmeans(img, k, seed=0), dither)


def kcentroid_loop(img: np.ndarray, f: int) -> np.ndarray:
    """The reference: one cell at a time through the same k-centroid steps."""
    h, w, c = img.shape[0] // f, img.shape[1] // f, img.shape[2]
    out = np.zeros((h, w, c), np.uint8)
    for yy in range(h):
        for xx in range(w):
            cell = img[yy * f:(yy + 1) * f, xx * f:(xx + 1) * f].reshape(1, f * f, c)
            out[yy, xx] = np.clip(np.rint(kcentroid_cells(cell)[0]), 0, 255)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--colors", default="16,32,64")
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args(argv)
    img = photo_like(args.size)
    print(f"image: photo-like {args.size}x{args.size}, {len(np.unique(img.reshape(-1, 3), axis=0))} colours; "
          f"times are best of {args.repeat}")
    print()
    print(f"{'K':>4} | {'PIL/ComfyUI FS s':>16} {'ΔE':>7} | {'ours FS s':>9} {'ΔE':>7} | {'speed x':>7} {'ΔE ratio':>8} |"
          f" {'PIL none ΔE':>11} {'ours none ΔE':>12}")
    print("-" * 104)
    for k in [int(v) for v in args.colors.split(",")]:
        t_ref, ref = best_of(lambda: comfy_image_quantize(img, k), args.repeat)
        t_us, us = best_of(lambda: ours(img, k), args.repeat)
        de_ref, de_us = px.mean_delta_e(img, ref), px.mean_delta_e(img, us)
        pil_none = np.asarray(Image.fromarray(img).quantize(colors=k, dither=Image.Dither.NONE).convert("RGB"))
        us_none = ours(img, k, "none")
        print(f"{k:>4} | {t_ref:>16.3f} {de_ref:>7.4f} | {t_us:>9.3f} {de_us:>7.4f} | {t_ref / t_us:>7.2f} "
              f"{de_us / de_ref:>8.3f} | {px.mean_delta_e(img, pil_none):>11.4f} {px.mean_delta_e(img, us_none):>12.4f}")
    print("(speed x > 1: ours faster than PIL; ΔE ratio < 1: ours closer to the source; ΔE is OKLab, 0..1 scale)")
    print()
    f = args.size // 128
    t_vec, vec = best_of(lambda: px.downscale(img, factor=f, method="kcentroid"), args.repeat)
    t_loop, loop = best_of(lambda: kcentroid_loop(img, f), 1)
    print(f"k-centroid downscale {args.size} -> {args.size // f} (cells {f}x{f}):")
    print(f"  per-cell loop {t_loop:.3f} s | vectorised {t_vec:.3f} s | speed-up x{t_loop / t_vec:.1f} | "
          f"identical output: {np.array_equal(vec, loop)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
