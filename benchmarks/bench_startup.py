"""The main job's wall time against its useful work: ``spriteforge run example_workflows/api/sprite_demo.json``.

  python -m spriteforge.benchmarks.bench_startup [--repeat 3] [--threads N] [--importtime]

Wall: the command run cold in a fresh subprocess (``python -m spriteforge.cli.main run ... --out TMP``), from
start to exit. Its parts: the runner's own total ("finished in X s": loading, sampling and the other nodes, plus
the imports the Load Model node triggers) and the shutdown (from that line to the exit). Useful work: the same
workflow run in this process after a warm-up run, so that every module is already imported: the runner's own
total (load + sample + nodes, a fresh cache and a fresh model load each time). Printed: medians, and the ratio
wall / useful (the goal in issue #21.12 is <= 2). ``--importtime`` adds where the cold run's import time goes,
by top-level package (``python -X importtime``; that run is slower, it is not part of the ratio).

The machine may be shared: wall and useful work are measured in the same run, alternating, so a busy machine
slows both; quote the ratio with the load average it prints.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "example_workflows" / "api" / "sprite_demo.json"


def _cold(extra=()) -> dict:
    """One cold run in a subprocess: wall seconds, the runner's seconds, the shutdown seconds, stderr."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, *extra, "-m", "spriteforge.cli.main", "run", str(WORKFLOW), "--out", out]
        t0 = time.perf_counter()
        # the runner reports on stderr (one line per node, then "finished in X s"); stdout is the short file list
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out)
        runner = t_finished = None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("finished in "):
                t_finished = time.perf_counter()
                runner = float(line.split()[2].rstrip("s:"))
        proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc
        err = "".join(lines)
        t_end = time.perf_counter()
    if rc != 0 or runner is None:
        raise SystemExit(f"the main job failed (exit {rc}):\n{err[-2000:]}")
    return {"wall": t_end - t0, "cpu": usage.ru_utime + usage.ru_stime, "runner": runner, "shutdown": t_end - t_finished,
            "stderr": err}


def _useful() -> tuple[float, float]:
    """The runner's own seconds for the workflow in this process, every module already imported; and its CPU seconds."""
    from spriteforge.execution.runner import Cache, run_workflow

    with tempfile.TemporaryDirectory() as out:
        c0 = time.process_time()
        seconds = run_workflow(str(WORKFLOW), out_dir=out, cache=Cache()).seconds
        return seconds, time.process_time() - c0


def _imports(stderr: str, top: int = 8) -> list[tuple[str, float]]:
    """Seconds of import per top-level package from ``-X importtime`` output (outermost imports only)."""
    per: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        if name.startswith("  "):  # nested: counted in its outermost import
            continue
        pkg = name.strip().split(".")[0]
        per[pkg] = per.get(pkg, 0.0) + int(cumulative) / 1e6
    return sorted(per.items(), key=lambda kv: -kv[1])[:top]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--importtime", action="store_true", help="also show where the cold run's imports go")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in both (0: torch's default)")
    args = ap.parse_args(argv)

    from spriteforge.progress import set_cli_bars

    set_cli_bars(False)
    _useful()  # warm-up: imports everything once in this process
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the cold runs' torch too
    cold, useful = [], []
    for _ in range(args.repeat):
        cold.append(_cold())
        useful.append(_useful())
    med = statistics.median
    wall, cpu, runner, shutdown = (med(c[k] for c in cold) for k in ("wall", "cpu", "runner", "shutdown"))
    work, work_cpu = med(u[0] for u in useful), med(u[1] for u in useful)
    walls = ", ".join(f"{c['wall']:.2f}" for c in cold)
    works = ", ".join(f"{u[0]:.2f}" for u in useful)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"main job: spriteforge run {WORKFLOW.relative_to(REPO)}; {args.repeat} cold runs, load average {load:.1f}, "
          f"{os.cpu_count()} CPUs")
    print(f"  wall (cold subprocess)          {wall:7.2f} s   runs: {walls}")
    print(f"    runner's own total             {runner:7.2f} s   (includes the imports Load Model triggers)")
    print(f"    before the runner (start-up)   {wall - runner - shutdown:7.2f} s")
    print(f"    after the runner (shutdown)    {shutdown:7.2f} s")
    print(f"  useful work (warm, in-process)  {work:7.2f} s   runs: {works}")
    print(f"  wall / useful work              {wall / work:7.2f}   (goal <= 2)")
    print(f"  CPU seconds: cold run {cpu:.2f}, useful work {work_cpu:.2f}; ratio {cpu / work_cpu:.2f} "
          "(less sensitive to a busy machine than wall time)")
    if args.importtime:
        c = _cold(("-X", "importtime"))
        print("  cold run's imports by top-level package (-X importtime, cumulative):")
        for pkg, sec in _imports(c["stderr"]):
            print(f"    {pkg:<22}{sec:7.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
