"""Grid recovery of fake pixel art: cells right per degradation and scale, against references in the same run.

Cases: 16x16 procedural sprites (:mod:`spriteforge.sprites.degrade`: game sprites on flat backgrounds and
palette mosaics) upscaled 4x, 4.3x (4x resized bilinearly), 6x and 8x, then clean / blurred (0.7 px) /
noisy / JPEG q90 / all three. A cell is right when every channel is within 24/255 of the truth; a case
whose recovered size is wrong counts 0.

Columns (one grid detection per case, shared by the cell estimators):

* ``centre``: the reference, each cell's colour is the pixel nearest its centre;
* ``median``: the per-channel median of the cell cores (:func:`spriteforge.pixel.grid.sample_cells`,
  the colour step grid recovery used before the deblurring fit);
* ``ours``: :func:`spriteforge.pixel.grid.recover_grid` (:func:`~spriteforge.pixel.grid.estimate_cells`);
* ``before`` (with ``--before FILE``): ``recover_grid`` of another copy of ``pixel/grid.py``, e.g. the
  previous commit's (``git show HEAD~1:pixel/grid.py > /tmp/grid_before.py``), detection included.

Time is the mean per image of the whole ``recover_grid`` (ours, before) or detection + that estimator.

Run: ``python benchmarks/bench_grid.py [--seeds 0:20] [--before FILE]``. Not a test: prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections import defaultdict

import numpy as np

from spriteforge.pixel import grid
from spriteforge.sprites import degrade as D


def centre_sample(img, cy, cx):
    cy, cx = np.asarray(cy), np.asarray(cx)
    yy = np.clip(((cy[:-1] + cy[1:]) // 2), 0, img.shape[0] - 1)
    xx = np.clip(((cx[:-1] + cx[1:]) // 2), 0, img.shape[1] - 1)
    return img[yy[:, None], xx[None, :]]


def load_before(path):
    spec = importlib.util.spec_from_file_location("spriteforge.pixel._grid_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0:20", help="range of art seeds, START:STOP")
    ap.add_argument("--before", default=None, help="another grid.py to compare (detection and cells)")
    args = ap.parse_args(argv)
    a, b = (int(v) for v in args.seeds.split(":"))
    before = load_before(args.before) if args.before else None
    right = defaultdict(lambda: defaultdict(list))
    secs = defaultdict(float)
    n = 0
    for name, scale, seed, truth, fake in D.cases(range(a, b)):
        n += 1
        t = time.perf_counter()
        info = grid.detect_grid(fake)
        t_detect = time.perf_counter() - t
        ok = (info.height, info.width) == truth.shape[:2]
        for col, fn in (("centre", centre_sample), ("median", grid.sample_cells)):
            t = time.perf_counter()
            out = fn(fake, info.cuts_y, info.cuts_x) if ok else fake
            secs[col] += t_detect + time.perf_counter() - t
            right[(name, scale)][col].append(D.cells_right(out, truth))
        t = time.perf_counter()
        out, _ = grid.recover_grid(fake)
        secs["ours"] += time.perf_counter() - t
        right[(name, scale)]["ours"].append(D.cells_right(out, truth))
        if before is not None:
            t = time.perf_counter()
            out, _ = before.recover_grid(fake)
            secs["before"] += time.perf_counter() - t
            right[(name, scale)]["before"].append(D.cells_right(out, truth))
    cols = ["centre", "median"] + (["before"] if before else []) + ["ours"]
    print(f"cells within 24/255, seeds {a}..{b - 1} ({b - a} sprites per row)")
    print(f"{'degradation':<18}{'scale':>6}" + "".join(f"{c:>9}" for c in cols))
    for (name, scale), r in right.items():
        print(f"{name:<18}{scale:>6.1f}" + "".join(f"{100 * np.mean(r[c]):>8.1f}%" for c in cols))
    for scale in D.SCALES:
        rows = [r for (nm, s), r in right.items() if s == scale]
        print(f"{'all':<18}{scale:>6.1f}" + "".join(f"{100 * np.mean([v for r in rows for v in r[c]]):>8.1f}%"
                                                      for c in cols))
    print("time per image (ms): " + ", ".join(f"{c} {1000 * secs[c] / n:.1f}" for c in cols))
    print("speed ratio ours / " + ", ".join(f"{c} {secs['ours'] / secs[c]:.2f}x" for c in cols if c != "ours"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
