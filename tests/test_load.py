"""Load: many prompts of the sprite-demo workflow through the in-process runner, as a busy ComfyUI queue would.

Twelve prompts with varied seeds share one runner cache, like one ComfyUI server: every run succeeds, every output
is there, no file is ever overwritten, the sprites differ by seed, and the process's resident memory does not grow
after warm-up (< 5%); the shared cache keeps only the last prompt's outputs. The last prompt repeated on the same
cache re-runs nothing (as in ComfyUI) and touches no file; the first seed run afresh writes new files under new
names, with the same sprites. ``benchmarks/bench_load.py`` does the same with 200 prompts (and against a running ComfyUI).
"""

from __future__ import annotations

import gc
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "example_workflows" / "api" / "sprite_demo.json"
N = 12
WARMUP = 3

pytestmark = pytest.mark.skipif(not (REPO / "demo_model" / "model_index.json").exists(),
                                reason="demo_model/ is not present")


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with Image.open(p) as im:
            h.update(np.asarray(im.convert("RGBA")).tobytes())
    return h.hexdigest()


def test_twelve_prompts_in_process(tmp_path):
    psutil = pytest.importorskip("psutil")
    from spriteforge.execution.runner import Cache, run_workflow

    proc = psutil.Process()
    cache = Cache()
    seeds = [100 + i for i in range(N - 1)] + [100]  # the last one repeats the first seed
    written: dict[Path, str] = {}
    per_run = []
    rss = []
    for k, seed in enumerate(seeds):
        sets = [f"3.seed={seed}", "3.batch_size=2", "3.steps=6"]
        if k == N - 1:  # the last prompt again on the same cache: nothing re-runs (as in ComfyUI), nothing is touched
            again = run_workflow(WF, out_dir=tmp_path, cache=cache, overrides=[f"3.seed={seeds[k - 1]}", *sets[1:]])
            assert again.executed == [] and set(again.files) <= set(written)
            cache_for_run = Cache()  # ... and the first seed queued fresh runs again, under new names
        else:
            cache_for_run = cache
        res = run_workflow(WF, out_dir=tmp_path, cache=cache_for_run, overrides=sets)
        # the cache holds the last prompt's outputs only (as ComfyUI's): it does not grow with the queue
        assert len(cache_for_run) <= len(res.executed) + len(res.cached)
        files = [Path(p) for p in res.files]
        assert files and all(p.is_file() for p in files)
        for p in files:
            assert p not in written, f"{p} was written twice"
        for p, digest in written.items():  # nothing written before was changed
            if k % 4 == 0 or k == N - 1:
                assert hashlib.sha256(p.read_bytes()).hexdigest() == digest, f"{p} was overwritten"
        for p in files:
            written[p] = hashlib.sha256(p.read_bytes()).hexdigest()
        sprites = [p for p in files if p.name.startswith("demo_sprite_")]
        assert len(sprites) == 2
        per_run.append(_digest(sprites))
        gc.collect()
        rss.append(proc.memory_info().rss)
    assert len(set(per_run[:-1])) == N - 1, "two seeds gave the same sprites"
    assert per_run[-1] == per_run[0], "the same seed gave different sprites"
    on_disk = {p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".png"}
    assert on_disk == set(written)  # every output present, nothing else
    growth = (max(rss[WARMUP:]) - rss[WARMUP - 1]) / rss[WARMUP - 1]
    assert growth < 0.05, f"resident memory grew {growth:.1%} after warm-up ({[r >> 20 for r in rss]} MiB)"
