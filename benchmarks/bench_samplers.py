"""Sampler overhead: each sampler's time per model call against a bare hand-written Euler loop
measured in the same run on the same toy denoiser (ratio ~1 means the shared code adds nothing).  Stochastic samplers include drawing the
seeded CPU noise (numpy PCG64, per batch item), which dominates on this tiny toy model.

    python -m spriteforge.benchmarks.bench_samplers   (or: python benchmarks/bench_samplers.py)
"""

from __future__ import annotations

import time

import numpy as np


def _toy(x, sigma):
    return x * (1.0 / (1.0 + sigma * sigma))


def _bare_euler(x, sigmas):
    for s, s1 in zip(sigmas[:-1], sigmas[1:]):
        d = _toy(x, s)
        x = x + (x - d) * ((s1 - s) / s)
    return x


def _time(fn, repeat=7):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(shape=(1, 4, 64, 64), steps=30) -> int:
    from spriteforge.samplers import SAMPLERS, SCHEDULES, NoiseSampler, make_noise

    sigmas = SCHEDULES["karras"](steps, 0.03, 14.6)
    arrays = [("numpy", lambda a: a)]
    try:
        import torch
        arrays.append(("torch", torch.from_numpy))
    except ImportError:
        pass
    for label, to in arrays:
        x = to(make_noise(0, shape) * np.float32(sigmas[0]))
        _time(lambda: _bare_euler(x, sigmas))  # warm-up
        ref = _time(lambda: _bare_euler(x, sigmas)) / steps
        print(f"[{label}] reference bare Euler: {ref * 1e6:8.1f} us per model call, shape {shape}")
        for name, fn in SAMPLERS.items():
            calls = [0]

            def model(v, s):
                calls[0] += 1
                return _toy(v, s)

            def run():
                ns = NoiseSampler(0, shape, to_array=to)
                fn(model, x, sigmas, noise_sampler=ns)

            run()
            per_run_calls = calls[0]
            per_call = _time(run) / per_run_calls
            print(f"[{label}] {name:22s} {per_call * 1e6:8.1f} us per model call  ratio {per_call / ref:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
