"""The MLX engine against the torch engine on the built-in demo model, same seed, steps and size, one process.

  python -m spriteforge.benchmarks.bench_mlx [--steps 20] [--size 64] [--batch 1] [--repeat 3] [--threads N]

Both engines load ``demo_model/`` (a real diffusers PixArt-Σ folder) and run the three stages of
a generation through ``spriteforge.pipeline``: text encoding (T5, prompt + negative), the
sampling loop (dpmpp_2m, CFG 4.5) and the VAE decode. The engines alternate run by run
(torch, mlx, mlx, torch, ...) so a busy machine slows both alike. It prints, per stage, the
median seconds of each engine and the ratio mlx/torch (below 1 = MLX is faster), the largest
pixel difference of the two images, and the peak memory: MLX's own allocator peak
(``mx.get_peak_memory``) and the process' peak RSS (``resource.getrusage``, which counts both
engines, torch's loaded model included).

On Linux this measures ``mlx[cpu]``, whose matrix products do not use an optimised BLAS (a
plain 1024x1024 float32 matmul runs about 40x slower than numpy/OpenBLAS on the same core), so
the CPU ratio says little about Apple silicon; see the README's MLX section for what to expect
on Metal against MPS.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _stages(engine, handle, steps, size, batch, seed):
    from spriteforge import pipeline

    t0 = time.perf_counter()
    cond = pipeline.encode(engine, handle, "red potion", "blurry")
    engine.sync()
    t1 = time.perf_counter()
    res = pipeline.sample(engine, handle, pipeline.GenerateParams(cond=cond, seed=seed, steps=steps, width=size, height=size,
                                                                  batch_size=batch, sampler="dpmpp_2m", cfg=4.5))
    t2 = time.perf_counter()
    images = pipeline.decode(engine, handle, res.latents)
    t3 = time.perf_counter()
    return {"text": t1 - t0, "sampling": t2 - t1, "decode": t3 - t2}, images


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (the demo model draws 32-64)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)

    import torch

    from spriteforge.engines import get_engine
    from spriteforge.errors import SpriteForgeError
    from spriteforge.progress import set_cli_bars

    set_cli_bars(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    demo = REPO / "demo_model"
    try:
        engines = {"torch": get_engine("torch", "cpu"), "mlx": get_engine("mlx", "cpu")}
    except SpriteForgeError as exc:
        print(f"the MLX engine is not usable here: {exc}")
        return 2
    em = engines["mlx"]
    load, handles = {}, {}
    engines["torch"].load_model(str(demo))  # imports (diffusers, transformers) are paid here, by neither engine
    load_peak = None
    for name in ("torch", "mlx"):
        if name == "mlx":
            em.reset_peak_memory()
        t0 = time.perf_counter()
        handles[name] = engines[name].load_model(str(demo))
        load[name] = time.perf_counter() - t0
        if name == "mlx":
            load_peak = em.peak_memory()
    param_bytes = em.parameter_bytes(handles["mlx"])
    em.reset_peak_memory()
    times = {"torch": [], "mlx": []}
    images = {}
    _stages(engines["torch"], handles["torch"], 2, args.size, args.batch, 0)  # warm-up: first calls allocate
    _stages(engines["mlx"], handles["mlx"], 2, args.size, args.batch, 0)
    order = []
    for r in range(args.repeat):
        order += ["torch", "mlx"] if r % 2 == 0 else ["mlx", "torch"]
    for name in order:
        t, images[name] = _stages(engines[name], handles[name], args.steps, args.size, args.batch, 1)
        times[name].append(t)

    def med(name, stage):
        return statistics.median(t[stage] for t in times[name])

    print(f"demo model (PixArt-Σ, {args.size}x{args.size}, batch {args.batch}, {args.steps} steps dpmpp_2m, CFG 4.5), "
          f"{args.repeat} runs per engine, alternating; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'stage':<14}{'torch s':>10}{'mlx s':>10}{'mlx/torch':>11}")
    for stage in ("text", "sampling", "decode"):
        a, b = med("torch", stage), med("mlx", stage)
        print(f"{stage:<14}{a:>10.4f}{b:>10.4f}{b / a:>11.2f}")
    print(f"{'load (once)':<14}{load['torch']:>10.3f}{load['mlx']:>10.3f}{load['mlx'] / load['torch']:>11.2f}")
    diff = float(np.abs(images["torch"] - images["mlx"]).max())
    print(f"max |torch - mlx| pixel difference: {diff * 255:.4f}/255")
    peak = em.peak_memory()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 1024 if sys.platform != "darwin" else rss / 2**20
    print(f"MLX parameters: {param_bytes / 2**20:.1f} MiB; MLX peak while loading: "
          f"{(load_peak or 0) / 2**20:.1f} MiB (about one copy: weights are made group by group from the mapped file)")
    if peak is not None:
        print(f"MLX peak memory while generating (allocator): {peak / 2**20:.1f} MiB")
    print(f"process peak RSS (both engines): {rss_mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
