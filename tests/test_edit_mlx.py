"""Editing on the MLX engine gives the torch engine's pictures (issue #24.4/6): the Flux.1 and FLUX.2 ports take the
reference tokens and positions the families' ``forward`` builds, from the same real-format files (BFL's single files
with ComfyUI's parts), one and two references, with CFG, a LoRA, img2img; a batch's rows stay independent on both."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spriteforge import pipeline  # noqa: E402
from spriteforge.tests.test_edit import picture  # noqa: E402
from spriteforge.tests.test_mlx_families import TOL, _load, _lora, engines, root  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# family, layout, variant, reference sizes (h, w), options
CASES = [
    ("flux", "original", "dev", [(48, 64)], {}),
    ("flux", "original", "dev", [(64, 48)], {"cfg": 2.0, "width": 48, "height": 48}),
    ("flux", "original", "dev", [(48, 64)], {"lora": True}),
    ("flux2", "original", "klein", [(64, 64)], {"cfg": 3.0}),
    ("flux2", "original", "klein", [(64, 64), (64, 80)], {}),
    ("flux2", "original", "klein", [(64, 80), (64, 64)], {"lora": True, "cfg": 2.0}),
    ("flux2", "original", "dev", [(64, 64), (80, 64)], {"init": True, "denoise": 0.6}),
]


def _refs(sizes):
    return [picture(h, w, float(i)) for i, (h, w) in enumerate(sizes)]


def _handles(engines, root, family, layout, variant, lora):  # noqa: F811
    te, me = engines
    ht, hm = _load(te, root, family, layout, variant), _load(me, root, family, layout, variant)
    if lora:
        from spriteforge.lora import LoRASpec

        spec = [LoRASpec(_lora(root, family), 1.5)]
        ht, hm = te.apply_loras(ht, spec), me.apply_loras(hm, spec)
        assert ht.loras[-1].matched == hm.loras[-1].matched > 0
    return ht, hm


@pytest.mark.parametrize("family,layout,variant,sizes,opts", CASES,
                         ids=[f"{f}-{v}-{len(s)}ref-{'-'.join(o) or 'plain'}" for f, _, v, s, o in CASES])
def test_same_edit_on_both_engines(root, engines, family, layout, variant, sizes, opts):  # noqa: F811
    te, me = engines
    opts = dict(opts)
    ht, hm = _handles(engines, root, family, layout, variant, opts.pop("lora", False))
    refs = _refs(sizes)
    w, h = opts.pop("width", None), opts.pop("height", None)
    kw = {"prompt": "make it red", "negative": "blurry", "seed": 5, "steps": 2, "references": refs, "reference_resize": False, **opts}
    if kw.pop("init", False):
        kw["init_image"] = picture(*sizes[0], 3.0)[None]
    params = pipeline.GenerateParams(**kw)
    a = pipeline.edit(te, ht, params, width=w, height=h)
    b = pipeline.edit(me, hm, params, width=w, height=h)
    want = (1, h or sizes[0][0], w or sizes[0][1], 3)
    assert a.images.shape == b.images.shape == want and a.info["references"] == b.info["references"] == len(refs)
    diff = float(np.abs(a.images - b.images).max())
    print(f"edit {family}-{variant} {len(refs)} ref {sorted(opts)}{' lora' if ht.loras else ''}: max |torch - mlx| = {diff * 255:.4f}/255")
    assert np.isfinite(b.images).all() and b.images.std() > 1e-3
    assert diff <= TOL


@pytest.mark.parametrize("family,variant,sizes", [("flux", "dev", [(48, 64)]), ("flux2", "klein", [(64, 64), (64, 80)])])
def test_edit_batch_one_is_item_zero_of_batch_four(root, engines, family, variant, sizes):  # noqa: F811
    """The references ride along every row; each row is its own picture (seed + i), on both engines."""
    for eng in engines:
        h = _load(eng, root, family, "original", variant)
        p = pipeline.GenerateParams(prompt="make it red", negative="blurry", cfg=2.0, seed=11, steps=2, references=_refs(sizes),
                                    reference_resize=False)
        one = pipeline.edit(eng, h, p).images
        four = pipeline.edit(eng, h, dataclasses.replace(p, batch_size=4)).images
        assert four.shape[0] == 4
        diff = float(np.abs(one[0] - four[0]).max())
        print(f"{eng.name} {family}: |batch 1 - item 0 of batch 4| = {diff * 255:.5f}/255")
        assert diff <= 1e-4
        assert float(np.abs(four[0] - four[1]).max()) > 1e-3
