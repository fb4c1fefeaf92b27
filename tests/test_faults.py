"""Faults: an interrupt mid-sampling, a ComfyUI server that drops mid-batch, out of memory in the VAE and BiRefNet.

* Interrupted sampling leaves nothing behind: the re-run gives the image an uninterrupted run gives, bit for bit
  (through the pipeline with a step callback, and through the runner with its cache shared across the runs).
* ``submit`` over a server that crashes mid-batch, or mid-way through downloading a job's outputs, loses no
  prompt and writes each result once (the fake ComfyUI of tests/test_submit.py).
* A real ``torch.OutOfMemoryError`` raised by a wrapped VAE / BiRefNet forward on a big chunk: the chunk is
  halved and retried, the halving is logged, the result equals the normal run; ``OUT_OF_MEMORY`` is reported only
  when a single item does not fit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from spriteforge.errors import OUT_OF_MEMORY, SpriteForgeError  # noqa: E402
from spriteforge.oom import is_oom, run_in_chunks  # noqa: E402
from spriteforge.progress import Interrupted, clear_interrupt, request_interrupt  # noqa: E402
from spriteforge.tests.test_submit import servers  # noqa: E402,F401  (fake ComfyUI servers with an input image)

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "example_workflows" / "api" / "sprite_demo.json"
needs_demo = pytest.mark.skipif(not (REPO / "demo_model" / "model_index.json").exists(),
                                reason="demo_model/ is not present")


def _oom(msg="CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.8 GiB total capacity)"):
    return torch.OutOfMemoryError(msg)


@pytest.fixture(scope="module")
def demo():
    from spriteforge.resolve import DEMO, load_handle

    if not (REPO / "demo_model" / "model_index.json").exists():
        pytest.skip("demo_model/ is not present")
    return load_handle(DEMO)


@pytest.fixture(autouse=True)
def _no_pending_interrupt():
    clear_interrupt()
    yield
    clear_interrupt()


# --------------------------------------------------------------------------- the helper

def test_run_in_chunks_halves_on_oom_and_keeps_order(caplog):
    calls, freed, sizes = [], [], []

    def fn(a, b):
        calls.append(b - a)
        if b - a > 2:
            raise _oom()
        return list(range(a, b))

    with caplog.at_level(logging.WARNING, logger="spriteforge"):
        out = run_in_chunks(fn, 7, 8, what="test work", on_oom=lambda: freed.append(1), sizes=sizes)
    assert sum(out, []) == list(range(7)) and sizes == [1] * 7  # 7 -> 3 -> 1, and 1 for the rest
    assert calls[:3] == [7, 3, 1] and len(freed) == 2
    assert sum("test work: out of memory with 7 item(s) per chunk; retrying with 3" in r.getMessage()
               for r in caplog.records) == 1
    calls.clear()
    assert sum(run_in_chunks(fn, 8, 8, sizes=(sizes := [])), []) == list(range(8))
    assert calls == [8, 4, 2, 2, 2, 2] and sizes == [2, 2, 2, 2]

    def never(a, b):
        raise MemoryError("cannot allocate")

    with pytest.raises(SpriteForgeError) as e:
        run_in_chunks(never, 4, 4, what="test work")
    assert e.value.code == OUT_OF_MEMORY and "even with 1 item(s)" in e.value.message

    def other(a, b):
        raise KeyError("not memory")

    with pytest.raises(KeyError):  # anything else passes through untouched
        run_in_chunks(other, 4, 4)
    assert is_oom(RuntimeError("[METAL] Command buffer execution failed: Insufficient Memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


# --------------------------------------------------------------------------- VAE

def _wrap_oom(module, name, big: int):
    """Replace ``module.<name>`` (an instance attribute) with one raising a real torch OOM for batches > ``big``."""
    orig = getattr(module, name)
    seen = []

    def wrapped(x, *a, **k):
        seen.append(int(x.shape[0]))
        if x.shape[0] > big:
            raise _oom()
        return orig(x, *a, **k)

    setattr(module, name, wrapped)
    return seen, lambda: delattr(module, name)


@needs_demo
def test_vae_decode_and_encode_halve_on_oom(demo, caplog):
    eng = demo.engine
    lat = np.random.default_rng(0).standard_normal((4, 4, 8, 8)).astype(np.float32)
    ref = eng.vae_decode(demo, lat)
    seen, undo = _wrap_oom(demo.vae, "decode", big=1)
    try:
        with caplog.at_level(logging.WARNING, logger="spriteforge"):
            got = eng.vae_decode(demo, lat)
    finally:
        undo()
    assert seen[:3] == [4, 2, 1] and seen.count(1) == 4
    assert np.abs(got - ref).max() < 1e-5
    assert any("VAE decode: out of memory with 4 item(s)" in r.getMessage() for r in caplog.records)

    imgs = np.clip(ref, 0, 1)
    zref = eng.vae_encode(demo, imgs)
    seen, undo = _wrap_oom(demo.vae, "encode", big=2)
    try:
        z = eng.vae_encode(demo, imgs)
    finally:
        undo()
    assert seen[:2] == [4, 2] and torch.allclose(z, zref, atol=1e-5)

    seen, undo = _wrap_oom(demo.vae, "decode", big=0)  # not even one latent fits: now it is OUT_OF_MEMORY
    try:
        with pytest.raises(SpriteForgeError) as e:
            eng.vae_decode(demo, lat)
    finally:
        undo()
    assert e.value.code == OUT_OF_MEMORY and "VAE decode" in e.value.message and seen[-1] == 1


# --------------------------------------------------------------------------- BiRefNet

@pytest.fixture(scope="module")
def birefnet(tmp_path_factory):
    from safetensors.torch import save_file

    from spriteforge.engines.torch_models import birefnet as bn

    cfg = bn.BiRefNetConfig(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4,
                            dec_inter=8, aspp_inter=8, ipt_inter=8, gdt_channels=4)
    torch.manual_seed(0)
    m = bn.BiRefNet(cfg).eval()
    p = tmp_path_factory.mktemp("birefnet") / "BiRefNet_lite.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))
    return bn.load_birefnet(p, device="cpu", use_comfy=False)


def test_birefnet_chunk_halves_on_oom_from_the_forward(birefnet, caplog):
    from spriteforge import rmbg

    imgs = np.random.default_rng(1).random((4, 32, 32, 3)).astype(np.float32)
    ref = rmbg.remove_background(imgs, birefnet.predict, resolution=64, chunk_size=1)
    seen, undo = _wrap_oom(birefnet.model, "forward", big=1)
    freed = []
    try:
        with caplog.at_level(logging.WARNING, logger="spriteforge"):
            got = rmbg.remove_background(imgs, birefnet.predict, resolution=64, chunk_size=4,
                                         on_oom=lambda: freed.append(1))
        assert seen[:3] == [4, 2, 1] and got.chunks == [1, 1, 1, 1] and len(freed) == 2
        assert np.abs(got.alpha - ref.alpha).max() < 1e-5
        assert any("BiRefNet: out of memory with 4 item(s)" in r.getMessage() for r in caplog.records)
    finally:
        undo()
    seen, undo = _wrap_oom(birefnet.model, "forward", big=0)
    try:
        with pytest.raises(SpriteForgeError) as e:
            rmbg.remove_background(imgs[:2], birefnet.predict, resolution=64, chunk_size=2)
    finally:
        undo()
    assert e.value.code == OUT_OF_MEMORY and seen == [2, 1]


# --------------------------------------------------------------------------- interrupt, then run again

@needs_demo
def test_interrupt_mid_sampling_then_rerun_is_identical(demo):
    from spriteforge.pipeline import GenerateParams, generate_full

    def params(**kw):
        return GenerateParams(prompt="red potion", seed=11, steps=8, width=32, height=32, batch_size=2, **kw)

    ref = generate_full(demo.engine, demo, params()).images
    steps = []

    def cb(state):
        steps.append(state["i"])
        if state["i"] == 3:
            request_interrupt()

    with pytest.raises(Interrupted):
        generate_full(demo.engine, demo, params(callback=cb))
    assert steps == [0, 1, 2, 3]  # it stopped at the step it was asked to, mid-sampling
    again = generate_full(demo.engine, demo, params()).images
    assert np.array_equal(again, ref)


@needs_demo
def test_interrupted_workflow_rerun_with_the_same_cache_is_identical(tmp_path):
    from spriteforge.execution.runner import Cache, run_workflow

    sets = ["3.batch_size=2", "3.steps=6", "3.seed=21"]
    plain = run_workflow(WF, out_dir=tmp_path / "plain", overrides=sets)
    cache = Cache()

    def on_event(kind, d):
        if kind == "executing" and d["node"] == "3":  # the sampler: its first step check stops it
            request_interrupt()

    with pytest.raises(Interrupted):
        run_workflow(WF, out_dir=tmp_path / "cut", overrides=sets, cache=cache, on_event=on_event)
    assert not list((tmp_path / "cut").rglob("*.png"))  # nothing half-written
    again = run_workflow(WF, out_dir=tmp_path / "again", overrides=sets, cache=cache)
    assert {"1", "2"} <= set(again.cached) and "3" in again.executed
    a = sorted(p for p in plain.files if p.suffix == ".png")
    b = sorted(p for p in again.files if p.suffix == ".png")
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 3
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(Image.open(x).convert("RGBA")), np.asarray(Image.open(y).convert("RGBA")))


# --------------------------------------------------------------------------- a server that drops mid-batch

def _two_outputs_wf():
    from spriteforge.execution import graph as G

    return G.fill_defaults({
        "1": {"class_type": "LoadImage", "inputs": {"image": "sprite.png"}},
        "2": {"class_type": "SpriteForgePixelDownscale",
              "inputs": {"image": ["1", 0], "method": "box", "mode": "factor", "factor": 2}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x_big"}},
    })


def _each_once(jobs, out: Path, lines):
    assert [j.status for j in jobs] == ["done"] * len(lines), [(j.status, j.error) for j in jobs]
    files = sorted(p.name for p in out.rglob("*.png"))
    # every prompt's two results, each exactly once: its own file, and one of the shared-prefix ones
    assert [n for n in files if not n.startswith("x_big")] == sorted(f"{t}_00001_.png" for t in lines)
    assert len([n for n in files if n.startswith("x_big")]) == len(lines) and len(files) == 2 * len(lines)
    assert all(len(j.files) == 2 for j in jobs)
    assert sorted(str(f) for j in jobs for f in j.files) == sorted(str(p) for p in out.rglob("*.png"))


def test_submit_server_crash_mid_batch_loses_nothing(servers, tmp_path):
    from spriteforge.execution.submit import submit_workflow

    a = servers("a", crash_after=2, node_delay=0.02)  # runs two prompts, then dies with more in its queue
    b = servers("b", node_delay=0.02)
    lines = [f"p{i}" for i in range(8)]
    events = []
    jobs = submit_workflow(_two_outputs_wf(), [a.url, b.url], prompts=lines, prompt_input="3.filename_prefix",
                           overrides=[], out_dir=tmp_path / "out", timeout=120, poll_interval=0.1, max_inflight=2,
                           on_event=lambda k, d: events.append(k))
    for j, t in zip(jobs, lines):
        assert j.prompt["3"]["inputs"]["filename_prefix"] == t
    assert "server_down" in events and "retry" in events
    assert a.finished == 2 and b.finished >= 6
    _each_once(jobs, tmp_path / "out", lines)


def test_submit_server_drop_while_downloading_writes_each_result_once(servers, tmp_path):
    from spriteforge.execution.submit import submit_workflow

    a = servers("a", drop_on_view=2)  # dies after the first of a job's two downloads
    b = servers("b")
    lines = ["q0", "q1", "q2"]
    jobs = submit_workflow(_two_outputs_wf(), [a.url, b.url], prompts=lines, prompt_input="3.filename_prefix",
                           out_dir=tmp_path / "out", timeout=120, poll_interval=0.1, max_inflight=1)
    assert a.views == 2
    _each_once(jobs, tmp_path / "out", lines)
