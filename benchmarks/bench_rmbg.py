"""Background-removal benchmark: time and peak memory of BiRefNet at 1024x1024 on the CPU.

For each architecture (lite = Swin-T, general = Swin-L; random weights, which time the same as
real ones) and batch size (1, 4) two paths are measured, each in a fresh process so that its
peak resident memory (ru_maxrss, weights included) is its own:

* ``reference``: the plain fp32 forward ``model(x)`` on the whole batch at once (NCHW, no chunking,
  input already normalised) - what calling the module directly costs;
* ``pipeline``: SpriteForge's path, ``rmbg.predict_alpha`` with ``BiRefNetHandle.predict``, the
  automatic chunk size (``chunk_size=0``: ``BiRefNetHandle.auto_chunk`` from free memory) and the
  per-stage progress callback (pad/resize/normalise/sigmoid/unpad included).

Printed ratios: pipeline vs reference (time and peak memory, same batch, same run) and the
per-image time of batch 4 vs batch 1. Each row is the best of ``--repeats`` timed runs (default 2)
after a small warm-up (256x256); the load average is printed with each row, since on a shared
machine other processes' load is the main noise. The CPU seconds the process used (all threads) are
printed too: on a loaded machine their ratio is the steadier measure of the pipeline's own overhead.
``est GB`` is the activation memory ``BiRefNetHandle.bytes_per_image`` budgets for the chunk (what
``auto_chunk`` sizes chunks by) and ``act GB`` the measured peak resident memory above the weights and the
warm-up (ru_maxrss after the warm-up): the estimate should be above the measurement, not far above it.

With ``--interrupt`` each pipeline row is followed by a run per fraction f in 0.1, 0.4, 0.7 of its time
with an interrupt requested (another thread, ``progress.request_interrupt``) at f * time: printed is how
long after the request the pipeline stopped (backbone, decoder and late-decoder requests).

With ``--canvas N`` the rows are instead the peak memory of one N x N image (uint8 in and out, model at
``--size``) through the command line's path ``rmbg.cutout`` (``cutout``), through the batch path
``rmbg.remove_background`` (``batch``, full-size float arrays, what ``spriteforge rmbg`` used before), and the
reference: ``cutout`` on a ``--size`` x ``--size`` image, where the canvas is the model's. Printed ratios:
batch/cutout at N, and cutout at N vs the reference (how memory grows with the canvas).

Usage: python benchmarks/bench_rmbg.py [--arch lite general] [--batch 1 4] [--size 1024] [--threads 2]
       [--paths reference pipeline] [--repeats 2] [--interrupt] [--json FILE]
       python benchmarks/bench_rmbg.py --canvas 6000 [--arch lite] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _child(arch: str, batch: int, size: int, path: str, threads: int, repeats: int = 2) -> dict:
    import numpy as np
    import torch

    from spriteforge.engines.torch_models import birefnet as bn
    from spriteforge.progress import Progress
    from spriteforge.rmbg import predict_alpha

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = bn.SWIN_T if arch == "lite" else bn.SWIN_L
    model = bn.BiRefNet(cfg).eval().requires_grad_(False)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    handle = bn.BiRefNetHandle(model=model, config=cfg, variant=arch, resolution=(size, size),
                               device=torch.device("cpu"), dtype=torch.float32)
    if path.startswith("canvas-"):
        return _canvas(handle, arch, size, *path.split(":"))
    rng = np.random.default_rng(0)
    imgs = rng.random((batch, size, size, 3), dtype=np.float32)
    with torch.inference_mode():
        model(torch.randn(1, 3, 256, 256))  # warm-up: kernels, allocator
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mean = np.array(bn.IMAGENET_MEAN, np.float32)
    std = np.array(bn.IMAGENET_STD, np.float32)
    x = torch.from_numpy(((imgs - mean) / std).transpose(0, 3, 1, 2).copy())
    chunk = batch if path == "reference" else handle.auto_chunk((size, size), batch)
    if path.startswith("interrupt:"):
        return _interrupts(handle, imgs, size, float(path.split(":")[1]), arch, batch)
    times, cpu = [], []
    for _ in range(max(1, repeats)):
        c0 = time.process_time()
        t0 = time.perf_counter()
        if path == "reference":
            with torch.inference_mode():
                torch.sigmoid(model(x))
        else:
            with Progress(handle.stages * batch, "bench") as prog:
                predict_alpha(imgs, handle.predict, resolution=size, chunk_size=0, auto_chunk=handle.auto_chunk,
                              stages=handle.stages, progress=prog)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    dt = min(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"arch": arch, "batch": batch, "path": path, "seconds": dt, "per_image": dt / batch, "peak_rss": peak,
            "rss_before": rss0, "weights": weights, "chunk": chunk, "threads": threads, "times": times,
            "cpu_seconds": min(cpu),
            # what auto_chunk budgets for the chunk's activations vs what the run added to the peak resident
            # memory over weights + warm-up (ru_maxrss after the warm-up)
            "estimate_bytes": handle.bytes_per_image((size, size)) * chunk, "activation_peak": peak - rss0,
            "load": os.getloadavg()[0]}


def _canvas(handle, arch: str, size: int, path: str, side: str) -> dict:
    """Peak RSS of one ``side`` x ``side`` uint8 image through ``cutout`` or ``remove_background`` (to uint8)."""
    import numpy as np

    from spriteforge.rmbg import cutout, remove_background

    n = int(side)
    img = np.zeros((n, n, 3), np.uint8)
    img[..., 1] = (np.arange(n) * 255 // n).astype(np.uint8)[None]
    img[n // 4:3 * n // 4, n // 4:3 * n // 4] = [230, 40, 30]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if path == "canvas-cutout":
        cutout(img, handle.predict, resolution=size, stages=handle.stages)
    else:
        r = remove_background(img, handle.predict, resolution=size, stages=handle.stages)
        np.round(np.clip(r.composite[0], 0, 1) * 255).astype(np.uint8)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"arch": arch, "path": path, "canvas": n, "seconds": time.perf_counter() - t0, "peak_rss": peak,
            "rss_before": rss0, "load": os.getloadavg()[0]}


def _canvas_rows(args) -> list:
    GB = 1024**3
    rows = []
    print(f"rmbg memory by canvas, model at {args.size}x{args.size}, fp32, {args.threads} threads, random weights")
    for arch in args.arch:
        for path, n in (("canvas-cutout", args.size), ("canvas-cutout", args.canvas), ("canvas-batch", args.canvas)):
            r = run_one(arch, 1, args.size, f"{path}:{n}", args.threads, 1)
            rows.append(r)
            print(f"  {arch:8} {path[7:]:7} {n:6d}^2  peak {r['peak_rss'] / GB:6.2f} GB (before the run "
                  f"{r['rss_before'] / GB:.2f})  {r['seconds']:7.1f} s  load {r['load']:.2f}", flush=True)
        ref, ours, old = rows[-3:]
        print(f"  {arch}: batch/cutout peak memory at {args.canvas}^2 {old['peak_rss'] / ours['peak_rss']:.2f}x; "
              f"cutout {args.canvas}^2 vs {args.size}^2 (the model's canvas) {ours['peak_rss'] / ref['peak_rss']:.2f}x")
    return rows


def _interrupts(handle, imgs, size, seconds, arch, batch) -> dict:
    import threading

    from spriteforge.progress import Interrupted, clear_interrupt, request_interrupt
    from spriteforge.rmbg import predict_alpha

    out = []
    for frac in (0.1, 0.4, 0.7):
        req = []

        def fire(delay=frac * seconds, req=req):
            time.sleep(delay)
            req.append(time.perf_counter())
            request_interrupt()

        th = threading.Thread(target=fire, daemon=True)
        th.start()
        try:
            predict_alpha(imgs, handle.predict, resolution=size, chunk_size=0, auto_chunk=handle.auto_chunk,
                          stages=handle.stages)
            stopped = False
        except Interrupted:
            stopped = True
        t1 = time.perf_counter()
        th.join()
        clear_interrupt()
        out.append({"at": frac, "stopped": stopped, "latency": t1 - req[0] if req else None})
    return {"arch": arch, "batch": batch, "path": "interrupt", "interrupts": out, "load": os.getloadavg()[0]}


def run_one(arch, batch, size, path, threads, repeats=2) -> dict:
    cmd = [sys.executable, __file__, "--child", arch, str(batch), str(size), path, str(threads), str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["lite", "general"], choices=["lite", "general"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--paths", nargs="+", default=["reference", "pipeline"], choices=["reference", "pipeline"],
                    help="which paths to time (default both)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per row; the best is reported (default 2)")
    ap.add_argument("--interrupt", action="store_true", help="also measure how soon an interrupt stops the pipeline")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--canvas", type=int, help="measure memory by canvas instead: one N x N image (see above)")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        arch, batch, size, path, threads, repeats = args.child
        print(json.dumps(_child(arch, int(batch), int(size), path, int(threads), int(repeats))))
        return 0
    if args.canvas:
        rows = _canvas_rows(args)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=2)
        return 0
    GB = 1024**3
    rows = []
    print(f"BiRefNet CPU benchmark, {args.size}x{args.size}, fp32, {args.threads} threads, random weights")
    print(f"{'arch':8} {'batch':>5} {'path':10} {'chunk':>5} {'seconds':>8} {'s/image':>8} {'cpu s':>8} {'peak GB':>8} "
          f"{'weights GB':>10} {'est GB':>7} {'act GB':>7} {'load':>5}  runs")
    for arch in args.arch:
        for b in args.batch:
            for path in args.paths:
                r = run_one(arch, b, args.size, path, args.threads, args.repeats)
                rows.append(r)
                print(f"{arch:8} {b:5d} {path:10} {r['chunk']:5d} {r['seconds']:8.2f} {r['per_image']:8.2f} "
                      f"{r['cpu_seconds']:8.2f} {r['peak_rss'] / GB:8.2f} {r['weights'] / GB:10.2f} {r['estimate_bytes'] / GB:7.2f} "
                      f"{r['activation_peak'] / GB:7.2f} {r['load']:5.2f}  "
                      f"{' '.join(f'{t:.2f}' for t in r['times'])}", flush=True)
                if args.interrupt and path == "pipeline":
                    ir = run_one(arch, b, args.size, f"interrupt:{r['seconds']}", args.threads, 1)
                    rows.append(ir)
                    print(f"{arch:8} {b:5d} interrupt  requests at " + ", ".join(
                        f"{i['at']:.2f}: {'stopped %.2f s after' % i['latency'] if i['stopped'] else 'NOT stopped'}"
                        for i in ir["interrupts"]) + f" (load {ir['load']:.2f})", flush=True)
    print("\nratios (measured in this run):")
    both = len(args.paths) == 2
    for arch in args.arch:
        for b in args.batch if both else []:
            ref = next(r for r in rows if r["arch"] == arch and r["batch"] == b and r["path"] == "reference")
            ours = next(r for r in rows if r["arch"] == arch and r["batch"] == b and r["path"] == "pipeline")
            print(f"  {arch} batch {b}: pipeline/reference time {ours['seconds'] / ref['seconds']:.2f}x "
                  f"(CPU seconds {ours['cpu_seconds'] / ref['cpu_seconds']:.2f}x), "
                  f"peak memory {ours['peak_rss'] / ref['peak_rss']:.2f}x ({ours['peak_rss'] / GB:.2f} GB)")
        if 1 in args.batch and 4 in args.batch:
            for path in args.paths:
                r1 = next(r for r in rows if r["arch"] == arch and r["batch"] == 1 and r["path"] == path)
                r4 = next(r for r in rows if r["arch"] == arch and r["batch"] == 4 and r["path"] == path)
                print(f"  {arch} {path}: per-image time batch4/batch1 {r4['per_image'] / r1['per_image']:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
