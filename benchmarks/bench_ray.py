"""One batch three ways: a fresh run per job, the in-process batch (shared Cache), and Ray actors.

  python -m spriteforge.benchmarks.bench_ray [--jobs 12] [--workers 2] [--steps 4] [--size 32]

The batch is a seed range of the built-in ``sprite_demo`` workflow (demo model, ``batch_size`` 1). It is run
(a) job by job with a new runner Cache each time (what a shell loop over ``spriteforge run`` does, minus the
interpreter start), (b) by :func:`spriteforge.execution.batch.run_batch` (one process, one shared Cache) and
(c) by :func:`spriteforge.execution.ray_batch.run_batch_ray` on a local Ray cluster of ``--workers`` actors,
its start-up (cluster and actors) included, and again from the moment every actor had started. It prints jobs
per minute and model loads per job for each, and the ratios against (b), the in-process runner, measured in the
same run.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "example_workflows" / "api" / "sprite_demo.json"


def _sets(steps: int, size: int) -> list[str]:
    return [f"3.steps={steps}", "3.batch_size=1", f"3.width={size}", f"3.height={size}"]


def fresh_per_job(jobs: int, sets: list[str]) -> tuple[float, int]:
    """A new Cache for every job: every job loads the model."""
    from spriteforge.execution import batch as B
    from spriteforge.execution.runner import Cache

    batch = B.plan(DEMO, seeds=list(range(jobs)), sets=sets, out=tempfile.mkdtemp(prefix="bench-fresh-"))
    t0, loads = time.perf_counter(), 0
    for job in batch.jobs:
        loads += B.run_job(batch.job_prompt(job), Cache())["loads"]
    return time.perf_counter() - t0, loads


def in_process(jobs: int, sets: list[str]) -> tuple[float, int]:
    from spriteforge.execution import batch as B

    batch = B.plan(DEMO, seeds=list(range(jobs)), sets=sets, out=tempfile.mkdtemp(prefix="bench-batch-"))
    t0 = time.perf_counter()
    res = B.run_batch(batch)
    assert res["done"] == jobs, res
    return time.perf_counter() - t0, res["model_loads"]


def on_ray(jobs: int, sets: list[str], workers: int) -> tuple[float, int, float]:
    import ray

    from spriteforge.execution import batch as B
    from spriteforge.execution.ray_batch import run_batch_ray

    batch = B.plan(DEMO, seeds=list(range(jobs)), sets=sets, out=tempfile.mkdtemp(prefix="bench-ray-"))
    ready = []  # when each worker had started (imports, no model yet)

    def note(kind, data):
        if kind == "worker":
            ready.append(time.perf_counter())

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        res = run_batch_ray(batch, workers=workers, on_event=note)
        t1 = time.perf_counter()
    finally:
        ray.shutdown()
    assert res["done"] == jobs, res
    return t1 - t0, res["model_loads"], t1 - max(ready)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args(argv)
    from spriteforge.progress import set_cli_bars

    set_cli_bars(False)
    sets = _sets(a.steps, a.size)
    rows = [("fresh Cache per job", *fresh_per_job(a.jobs, sets)),
            ("in-process batch (shared Cache)", *in_process(a.jobs, sets)),
            (f"Ray, {a.workers} workers (start-up included)", *on_ray(a.jobs, sets, a.workers))]
    ref = a.jobs / rows[1][1] * 60
    print(f"{a.jobs} jobs of sprite_demo ({a.steps} steps, {a.size}x{a.size}, batch_size 1)")
    print(f"{'how':42} {'s':>7} {'jobs/min':>9} {'loads/job':>10} {'x in-process':>13}")
    for name, secs, loads, *_ in rows:
        jpm = a.jobs / secs * 60
        print(f"{name:42} {secs:7.1f} {jpm:9.1f} {loads / a.jobs:10.3f} {jpm / ref:13.2f}")
    steady = rows[2][3]
    print(f"Ray once every worker had started (torch import and model load still included): {steady:.1f}s, "
          f"{a.jobs / steady * 60:.1f} jobs/min, x{a.jobs / steady * 60 / ref:.2f} in-process")


if __name__ == "__main__":
    main()
