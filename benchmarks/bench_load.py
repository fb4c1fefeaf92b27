"""Load benchmark: N prompts of the sprite-demo workflow with varied seeds, in-process or on a running ComfyUI.

In-process (default): the prompts go through :func:`spriteforge.execution.runner.run_workflow` one after another on one shared
cache, like a ComfyUI server's queue. Measured: per-prompt latency (median, p95, max), throughput, and the
process's resident memory (psutil) after warm-up and at the end. Checked: every run succeeds, every output file is
present, no file is written twice or changed afterwards, and the sprites differ by seed.

``--server URL`` (repeatable): the same prompts queued on running ComfyUI servers with the real command line,
``spriteforge submit WORKFLOW --server URL --prompts SEEDS --prompt-input 3.seed``, after ``--warmup`` prompts of
other seeds submitted the same way. Measured: the server process's resident memory (the local process listening on
the first server's port, or ``--server-pid``) right after warm-up, sampled every 0.5 s during the run and at the
end. Checked: every job done, every sprite and sheet downloaded, all sprites distinct, one distinct sheet per seed,
and with ``--server-output DIR`` (the server's output folder) exactly the expected new files there and no earlier
file changed.

Run: ``python benchmarks/bench_load.py [--n 200] [--batch 8] [--steps 20] [--warmup 5] [--out DIR]
[--server URL ... [--server-pid PID] [--server-output DIR]] [--json]``. Not a test: prints the figures (and exits non-zero when a check fails).
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
WF = REPO / "example_workflows" / "api" / "sprite_demo.json"


def _pixels(p: Path) -> bytes:
    with Image.open(p) as im:
        return np.asarray(im.convert("RGBA")).tobytes()


def in_process(n: int, batch: int, steps: int, warmup: int, out: Path) -> dict:
    import psutil

    from spriteforge.execution.runner import Cache, run_workflow

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


def _server_pid(url: str) -> int | None:
    """The pid of the local process listening on the URL's port (None when it is not on this machine)."""
    import psutil
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return None
    port = u.port or 80
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return c.pid
    return None


class _RSSWatch:
    """Samples a process's resident memory every `every` seconds on a thread (max and last seen)."""

    def __init__(self, pid: int, every: float = 0.5):
        import threading

        import psutil

        self.proc = psutil.Process(pid)
        self.every = every
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return self.proc.memory_info().rss

    def _run(self):
        while not self._stop.wait(self.every):
            try:
                self.samples.append(self.now())
            except Exception:  # noqa: BLE001 - the server went away; the run reports it
                return

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _submit(servers: list[str], seeds: list[int], batch: int, steps: int, out: Path, timeout: float | None):
    out.mkdir(parents=True, exist_ok=True)
    seeds_file = out / "seeds.txt"
    seeds_file.write_text("".join(f"{s}\n" for s in seeds))
    cmd = [sys.executable, "-m", "spriteforge.cli.main", "submit", str(WF), "--prompts", str(seeds_file),
           "--prompt-input", "3.seed", "--set", f"3.batch_size={batch}", "--set", f"3.steps={steps}",
           "--out", str(out / "downloads"), "--max-inflight", "2", "-q"]
    for s in servers:
        cmd += ["--server", s]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    env = {**os.environ, "PYTHONPATH": str(REPO.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return r, time.perf_counter() - t0


def _snapshot(folder: Path | None) -> dict[Path, str]:
    if folder is None or not folder.is_dir():
        return {}
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


def on_servers(servers: list[str], n: int, batch: int, steps: int, warmup: int, out: Path, timeout: float | None,
               server_pid: int | None = None, server_output: Path | None = None) -> dict:
    """The prompts through ``spriteforge submit`` on running servers; the (first, local) server's RSS watched."""
    pid = server_pid or _server_pid(servers[0])
    fig: dict = {"mode": "submit", "servers": servers, "prompts": n, "batch": batch, "steps": steps,
                 "warmup": warmup, "server_pid": pid}
    if warmup:  # distinct seeds, own folder: the model is loaded and the caches filled before the baseline
        r, secs = _submit(servers, [900000 + k for k in range(warmup)], batch, steps, out / "warmup", timeout)
        fig["warmup_exit_code"], fig["warmup_seconds"] = r.returncode, round(secs, 1)
    before = _snapshot(server_output)
    watch = _RSSWatch(pid) if pid else None
    base = watch.now() if watch else None
    if watch:
        with watch:
            r, total = _submit(servers, [1000 + k for k in range(n)], batch, steps, out, timeout)
        end = watch.now()
    else:
        r, total = _submit(servers, [1000 + k for k in range(n)], batch, steps, out, timeout)
        end = None
    downloads = out / "downloads"
    sprites = sorted(downloads.rglob("demo_sprite_*.png"))
    sheets = sorted(downloads.rglob("demo_sheet_*.png"))
    digests = {hashlib.sha256(_pixels(p)).hexdigest() for p in sprites}
    fig.update({
        "exit_code": r.returncode, "stderr_tail": r.stderr[-800:] if r.returncode else "",
        "seconds": round(total, 1), "prompts_per_minute": round(60 * n / total, 1) if total else None,
        "seconds_per_prompt": round(total / n, 3) if n else None,
        "sprites_downloaded": len(sprites), "sprites_expected": n * batch,
        "distinct_sprites": len(digests),
        "sheets_downloaded": len(sheets),
        "distinct_by_seed": len({hashlib.sha256(_pixels(p)).hexdigest() for p in sheets}) == n == len(sheets),
    })
    if base is not None:
        peak = max([base, end, *watch.samples])
        fig.update({"server_rss_after_warmup_mib": round(base / 2**20, 1), "server_rss_end_mib": round(end / 2**20, 1),
                    "server_rss_max_mib": round(peak / 2**20, 1), "server_rss_samples": len(watch.samples),
                    "server_rss_growth_after_warmup": round((peak - base) / base, 4)})
    if server_output is not None:
        after = _snapshot(server_output)
        fig.update({"server_files_new": len(set(after) - set(before)),
                    "server_files_expected": n * (batch + 1),
                    "server_files_changed_or_gone": sum(1 for p, d in before.items() if after.get(p) != d)})
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="prompts (default 200)")
    ap.add_argument("--batch", type=int, default=8, help="sprites per prompt (the workflow's own: 8)")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (the workflow's own: 20)")
    ap.add_argument("--warmup", type=int, default=5, help="prompts before the memory baseline (default 5)")
    ap.add_argument("--out", help="output folder (default: a temporary one)")
    ap.add_argument("--server", action="append", default=[], metavar="URL", help="a running ComfyUI (repeatable)")
    ap.add_argument("--timeout", type=float, help="submit: give up after this many seconds")
    ap.add_argument("--server-pid", type=int, help="submit: the server process whose memory is watched "
                    "(default: the local process listening on the first --server's port)")
    ap.add_argument("--server-output", help="submit: the server's output folder; checks that exactly the expected "
                    "new files appear there and that no earlier file changes")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sf-bench-load-"))
    if args.server:
        fig = on_servers(args.server, args.n, args.batch, args.steps, args.warmup, out, args.timeout,
                         args.server_pid, Path(args.server_output) if args.server_output else None)
        ok = (fig["exit_code"] == 0 and fig.get("warmup_exit_code", 0) == 0
              and fig["sprites_downloaded"] == fig["sprites_expected"]
              and fig["distinct_sprites"] == fig["sprites_downloaded"] and fig["distinct_by_seed"]
              and (fig.get("server_rss_growth_after_warmup") or 0) < 0.05
              and fig.get("server_files_new") == fig.get("server_files_expected")
              and fig.get("server_files_changed_or_gone", 0) == 0)
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
