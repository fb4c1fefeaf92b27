"""Shape quality of the shipped demo model: silhouette IoU of its sprites against the procedural class shapes.

Sprites are made the way ``spriteforge generate`` makes them (the pack's torch engine and pipeline with the PixArt
defaults, DPM-Solver++ 2M, 20 steps, CFG 4.5, then the magenta key removed by ``pixel.alpha.key_to_alpha``) on
held-out noise seeds, and each alpha is scored by :func:`spriteforge.sprites.metrics.caption_shape_iou`: the best
IoU against the generator's own silhouettes for the caption's object, size and outline state over 48 shape
variations. The figures (and the same measure with more seeds, ``benchmarks/bench_demo_shapes.py``) are in
``demo_model/MODEL_CARD.md``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from spriteforge import sprites as S
from spriteforge.sprites import metrics as M

REPO = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("SPRITEFORGE_DEMO_MODEL_DIR", REPO / "demo_model"))
SEEDS = (2000, 2001)  # held out: the other demo-model tests use 0-8 and 100+, the benchmark 1000+

# Floors for the shipped model. Measured on these seeds: lowest object potion 0.81 (coin 0.82, key 0.82, sword
# 0.83), mean 0.87. The model before the retraining of issue #15 fails both: on the benchmark's seeds its swords
# scored 0.29, mushrooms 0.60, keys 0.61, mean 0.72 (this model, with terrains: 0.84, 0.91, 0.80, mean 0.87).
PER_OBJECT_FLOOR = 0.55
MEAN_FLOOR = 0.78


def _captions(kind: str, k: int) -> list[str]:
    cols = list(S.COLORS)
    return [f"{cols[(3 * k) % 12]} {kind}", f"small {cols[(3 * k + 5) % 12]} {kind} with outline"]


# --------------------------------------------------------------------------- the measure itself


def test_measure_scores_the_generators_own_sprites_high_and_other_objects_low():
    rng = np.random.default_rng(11)
    own, other = [], []
    for kind in S.KINDS:
        for _ in range(3):
            spec = S.SpriteSpec(kind, "red", ("small", "", "large")[int(rng.integers(3))], bool(rng.integers(2)), int(rng.integers(2**31 - 1)))
            m = S.silhouette(S.render(spec))
            own.append(M.shape_iou(m, kind, spec.size, spec.outline))
            wrong = S.KINDS[(S.KINDS.index(kind) + 1 + int(rng.integers(len(S.KINDS) - 1))) % len(S.KINDS)]
            other.append(M.shape_iou(m, wrong, spec.size, spec.outline))
    assert min(own) > 0.7 and np.mean(own) > 0.88, np.round(own, 2)
    assert np.mean(other) < 0.65, np.round(other, 2)
    # degenerate masks score low: nothing, everything, a blob in a corner
    empty, full = np.zeros((32, 32), bool), np.ones((32, 32), bool)
    corner = np.zeros((32, 32), bool)
    corner[:6, :6] = True
    for m in (empty, full, corner):
        assert M.shape_iou(m, "sword") < 0.3 and M.caption_shape_iou(m, "large red potion with outline") < 0.6


# --------------------------------------------------------------------------- the shipped model


@lru_cache(maxsize=1)
def _scores() -> dict:
    pytest.importorskip("torch")
    import torch

    from spriteforge import pipeline as P
    from spriteforge.engines import get_engine
    from spriteforge.pixel.alpha import key_to_alpha

    eng = get_engine("torch", "cpu")
    h = eng.load_model(str(MODEL))
    out = {}
    # One thread: a 1.8 M-parameter DiT on 16 tokens gains nothing from two, and on a machine busy with other
    # work two threads made each call about 15 times slower (0.6 s -> 9 s per prompt measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for k, kind in enumerate(S.KINDS):
            vals = []
            for cap in _captions(kind, k):
                res = P.generate_full(eng, h, P.GenerateParams(prompt=cap, seed=SEEDS[0], steps=20, cfg=4.5, width=32,
                                                               height=32, batch_size=len(SEEDS)))
                for im in key_to_alpha(res.images):
                    vals.append(M.caption_shape_iou(M.silhouette(im), cap))
            out[kind] = vals
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="demo_model/ is not present")
def test_every_object_has_a_clean_silhouette():
    scores = _scores()
    means = {k: round(float(np.mean(v)), 3) for k, v in scores.items()}
    low = {k: v for k, v in means.items() if v < PER_OBJECT_FLOOR}
    assert not low, (low, means)
    assert np.mean(list(means.values())) > MEAN_FLOOR, means
