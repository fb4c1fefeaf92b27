"""Load benchmark: N prompts of the sprite-demo workflow with varied seeds, in-process or on a running ComfyUI.

In-process (default): the prompts go through :func:`spriteforge.workflow.runner.run_workflow` one after another on one shared
cache, like a ComfyUI server's queue. Measured: per-prompt latency (median, p95, max), throughput, and the
process's resident memory (psutil) after warm-up and at the end. Checked: every run succeeds, every output file is
present, no file is written twice or changed afterwards, and the sprites differ by seed.

``--server URL`` (repeatable): the same prompts queued on running ComfyUI servers with the real command line,
``spriteforge submit WORKFLOW --server URL --prompts SEEDS --prompt-input 3.seed``; checked: every job done, the
expected number of sprite files downloaded, all distinct. (The server's memory is the server's; not measured.)

Run: ``python benchmarks/bench_load.py [--n 200] [--batch 8] [--steps 20] [--warmup 5] [--out DIR]
[--server URL ...] [--json]``. Not a test: prints the figures (and exits non-zero when a check fails).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "workflows" / "api" / "sprite_demo.json"


def _pixels(p: Path) -> bytes:
    with Image.open(p) as im:
        return np.asarray(im.convert("RGBA")).tobytes()


def in_process(n: int, batch: int, steps: int, warmup: int, out: Path) -> dict:
    import psutil

    from spriteforge.workflow.runner import Cache, run_workflow

    proc = psutil.Process()
    cache = Cache()
    written: dict[Path, str] = {}
    failures, overwritten, latencies, rss = [], [], [], []
    per_seed: dict[int, str] = {}
    t_all = time.perf_counter()
    for k in range(n):
        seed = 1000 + k
        t0 = time.perf_counter()
        try:
            res = run_workflow(WF, out_dir=out, cache=cache,
                               overrides=[f"3.seed={seed}", f"3.batch_size={batch}", f"3.steps={steps}"])
        except Exception as exc:  # noqa: BLE001 - counted and reported
            failures.append((seed, f"{type(exc).__name__}: {exc}"))
            continue
        latencies.append(time.perf_counter() - t0)
        files = [Path(p) for p in res.files]
        for p in files:
            if p in written or not p.is_file():
                overwritten.append(str(p))
            written[p] = hashlib.sha256(p.read_bytes()).hexdigest()
        sprites = sorted(p for p in files if p.name.startswith("demo_sprite_"))
        if len(sprites) != batch:
            failures.append((seed, f"{len(sprites)} sprites written, expected {batch}"))
        h = hashlib.sha256()
        for p in sprites:
            h.update(_pixels(p))
        per_seed[seed] = h.hexdigest()
        gc.collect()
        rss.append(proc.memory_info().rss)
        if (k + 1) % max(1, n // 10) == 0:
            print(f"  {k + 1}/{n} prompts, {latencies[-1]:.2f}s last, RSS {rss[-1] / 2**20:.0f} MiB", file=sys.stderr)
    total = time.perf_counter() - t_all
    changed = [str(p) for p, d in written.items() if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != d]
    on_disk = {p for p in out.rglob("*.png")}
    w = min(warmup, len(rss)) - 1
    base = rss[w] if rss else 0
    lat = sorted(latencies)
    return {
        "mode": "in-process",
        "prompts": n, "batch": batch, "steps": steps,
        "succeeded": len(latencies), "failed": len(failures), "failures": failures[:5],
        "seconds": round(total, 1),
        "prompts_per_minute": round(60 * len(latencies) / total, 1) if total else None,
        "latency_median_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3) if lat else None,
        "latency_max_s": round(lat[-1], 3) if lat else None,
        "first_prompt_s": round(latencies[0], 2) if latencies else None,
        "rss_after_warmup_mib": round(base / 2**20, 1),
        "rss_end_mib": round(rss[-1] / 2**20, 1) if rss else None,
        "rss_max_mib": round(max(rss) / 2**20, 1) if rss else None,
        "rss_growth_after_warmup": round((max(rss[w:]) - base) / base, 4) if base else None,
        "files": len(written), "files_on_disk": len(on_disk),
        "written_twice": len(overwritten), "changed_later": len(changed),
        "distinct_by_seed": len(set(per_seed.values())) == len(per_seed),
    }


def on_servers(servers: list[str], n: int, batch: int, steps: int, out: Path, timeout: float | None) -> dict:
    seeds = out / "seeds.txt"
    out.mkdir(parents=True, exist_ok=True)
    seeds.write_text("".join(f"{1000 + k}\n" for k in range(n)))
    cmd = [sys.executable, "-m", "spriteforge.cli.main", "submit", str(WF), "--prompts", str(seeds),
           "--prompt-input", "3.seed", "--set", f"3.batch_size={batch}", "--set", f"3.steps={steps}",
           "--out", str(out / "downloads"), "--max-inflight", "2"]
    for s in servers:
        cmd += ["--server", s]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    env = {**os.environ, "PYTHONPATH": str(REPO.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    total = time.perf_counter() - t0
    sprites = sorted((out / "downloads").rglob("demo_sprite_*.png"))
    digests = {hashlib.sha256(_pixels(p)).hexdigest() for p in sprites}
    return {
        "mode": "submit", "servers": servers, "prompts": n, "batch": batch, "steps": steps,
        "exit_code": r.returncode, "stderr_tail": r.stderr[-800:] if r.returncode else "",
        "seconds": round(total, 1), "prompts_per_minute": round(60 * n / total, 1) if total else None,
        "sprites_downloaded": len(sprites), "sprites_expected": n * batch,
        "distinct_sprites": len(digests),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="prompts (default 200)")
    ap.add_argument("--batch", type=int, default=8, help="sprites per prompt (the workflow's own: 8)")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (the workflow's own: 20)")
    ap.add_argument("--warmup", type=int, default=5, help="prompts before the memory baseline (default 5)")
    ap.add_argument("--out", help="output folder (default: a temporary one)")
    ap.add_argument("--server", action="append", default=[], metavar="URL", help="a running ComfyUI (repeatable)")
    ap.add_argument("--timeout", type=float, help="submit: give up after this many seconds")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sf-bench-load-"))
    if args.server:
        fig = on_servers(args.server, args.n, args.batch, args.steps, out, args.timeout)
        ok = (fig["exit_code"] == 0 and fig["sprites_downloaded"] == fig["sprites_expected"]
              and fig["distinct_sprites"] == fig["sprites_downloaded"])
    else:
        fig = in_process(args.n, args.batch, args.steps, args.warmup, out)
        ok = (fig["failed"] == 0 and fig["written_twice"] == 0 and fig["changed_later"] == 0
              and fig["files"] == fig["files_on_disk"] and fig["distinct_by_seed"]
              and (fig["rss_growth_after_warmup"] or 0) < 0.05)
    fig["out"] = str(out)
    fig["ok"] = ok
    if args.json:
        print(json.dumps(fig))
    else:
        width = max(len(k) for k in fig)
        for k, v in fig.items():
            print(f"{k:<{width}}  {v}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
