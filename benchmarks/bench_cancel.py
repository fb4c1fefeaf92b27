"""How soon Cancel stops a sampler step and a prompt encoding, against the step's own length, one process.

  python -m spriteforge.benchmarks.bench_cancel [--size 128] [--batch 4] [--engines torch,mlx] [--repeat 3]

The built-in demo model (PixArt-Σ, 6 transformer blocks, 2 T5 layers) on each engine: one uninterrupted
sampling step is timed (the reference), then runs get Cancel from another thread halfway into their second
step, and the seconds from the request to ``Interrupted`` are measured. Before Cancel was checked between
transformer blocks it waited for the end of the step (up to a whole step, 8-10.5 s for a 1024² batch-4 step
on a CPU); now it waits for the end of the running block, about step / blocks. Printed: median step time,
median and worst latency, and latency / step (the ratio the tests cannot time: they count the blocks that run
after the request instead, ``tests/test_interrupt_latency.py``). Same for text encoding (prompt + negative, long
prompts). The machine may be shared: the ratio, measured in the same run, is the figure to quote.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cancel_after(delay, run):
    """Seconds from a Cancel request ``delay`` s into ``run()`` to its ``Interrupted`` (None: it finished first)."""
    from spriteforge.progress import Interrupted, clear_interrupt, request_interrupt

    clear_interrupt()
    asked = []

    def fire():
        time.sleep(delay)
        asked.append(time.perf_counter())
        request_interrupt()

    th = threading.Thread(target=fire, daemon=True)
    th.start()
    try:
        run()
        stopped = None
    except Interrupted:
        stopped = time.perf_counter()
    th.join()
    clear_interrupt()
    return None if stopped is None or not asked else stopped - asked[0]


def _measure(name, engine, handle, args):
    from spriteforge import pipeline

    params = pipeline.GenerateParams(prompt="red potion", seed=1, steps=1, width=args.size, height=args.size,
                                     batch_size=args.batch, sampler="euler", cfg=4.5)
    pipeline.sample(engine, handle, params)  # warm-up
    steps = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        pipeline.sample(engine, handle, params)
        steps.append(time.perf_counter() - t0)
    step = statistics.median(steps)
    long_params = pipeline.GenerateParams(**{**params.__dict__, "steps": 4})
    lat = [_cancel_after(1.5 * step, lambda: pipeline.sample(engine, handle, long_params)) for _ in range(args.repeat)]
    lat = [x for x in lat if x is not None]
    n_blocks = len(handle.transformer.transformer_blocks)
    print(f"{name:<6} step {step:7.3f} s ({n_blocks} blocks)   Cancel: median {statistics.median(lat):6.3f} s, "
          f"worst {max(lat):6.3f} s   latency/step {statistics.median(lat) / step:5.2f}")

    prompts = [" ".join(["red potion blue slime knight sword"] * 40)] * args.batch
    pipeline.encode(engine, handle, prompts, prompts)  # warm-up
    t0 = time.perf_counter()
    pipeline.encode(engine, handle, prompts, prompts)
    enc = time.perf_counter() - t0
    lat = [_cancel_after(0.5 * enc, lambda: pipeline.encode(engine, handle, prompts, prompts)) for _ in range(args.repeat)]
    lat = [x for x in lat if x is not None]
    if lat:
        print(f"{'':<6} text encoding {enc:7.4f} s   Cancel: median {statistics.median(lat):6.4f} s   "
              f"latency/encoding {statistics.median(lat) / enc:5.2f}")
    else:
        print(f"{'':<6} text encoding {enc:7.4f} s   (finished before the request: too short to cancel)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--engines", default="torch,mlx")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    from spriteforge.engines import get_engine
    from spriteforge.errors import SpriteForgeError
    from spriteforge.progress import set_cli_bars

    set_cli_bars(False)
    print(f"demo model, {args.size}x{args.size}, batch {args.batch}, CFG 4.5 (each step runs the network on "
          f"{2 * args.batch} rows), {args.repeat} runs")
    for name in args.engines.split(","):
        try:
            engine = get_engine(name, "cpu")
        except SpriteForgeError as exc:
            print(f"{name}: not usable here ({exc})")
            continue
        _measure(name, engine, engine.load_model(str(REPO / "demo_model")), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
