"""Cancel during the long operations: BiRefNet, VAE decode/encode, model loading.

Each test runs the operation once uninterrupted (time ``T``, the result), then again with an
interrupt requested from another thread shortly after it starts, and measures how soon it stops:
it must raise ``Interrupted`` within about a second of the request (plus one step's time, so a
loaded 2-core machine does not flake), well before ``T``; and the next run after the interrupt
must give exactly the uninterrupted result. Real formats: the models are written to files and
loaded through the same code a user's file takes.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from spriteforge import rmbg  # noqa: E402
from spriteforge.engines.torch_models import birefnet as bn  # noqa: E402
from spriteforge.progress import Interrupted, Progress, clear_interrupt, request_interrupt  # noqa: E402
from spriteforge.tests.test_birefnet_loading import TINY, save_tiny, tiny_model  # noqa: E402

LATENCY = 1.0  # seconds after the request, on a CPU


@pytest.fixture(autouse=True)
def _one_thread_no_leak():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    clear_interrupt()
    yield
    clear_interrupt()
    torch.set_num_threads(n)


def _interrupt_after(delay: float, run):
    """Run ``run()`` with an interrupt requested ``delay`` s after it starts; -> (raised, latency, total)."""
    t_req = []

    def fire():
        time.sleep(delay)
        t_req.append(time.perf_counter())
        request_interrupt()

    th = threading.Thread(target=fire, daemon=True)
    t0 = time.perf_counter()
    th.start()
    raised = False
    try:
        run()
    except Interrupted:
        raised = True
    t1 = time.perf_counter()
    th.join()
    clear_interrupt()  # a request that came after the end must not leak into the next run
    return raised, (t1 - t_req[0]) if t_req else float("nan"), t1 - t0


def _timed(run):
    t0 = time.perf_counter()
    out = run()
    return out, time.perf_counter() - t0


def _check(raised, latency, total, T, step):
    print(f"\nuninterrupted {T:.2f} s, longest step {step:.2f} s; stopped {latency:.3f} s after the request, "
          f"{total:.2f} s after the start")
    assert raised, "the operation ran to the end despite the interrupt"
    assert latency < LATENCY + step, f"stopped {latency:.2f} s after the request"
    assert total < 0.3 * T + LATENCY + step  # the request came at 0.3 T


# ----------------------------------------------------------------------------- BiRefNet


@pytest.fixture(scope="module")
def birefnet(tmp_path_factory):
    path = save_tiny(tmp_path_factory.mktemp("birefnet") / "BiRefNet-general.safetensors", tiny_model(3))
    return bn.load_birefnet(path, device="cpu", use_comfy=False)


def test_birefnet_stops_within_a_second_and_reruns_identically(birefnet):
    h = birefnet
    imgs = np.random.default_rng(1).random((2, 512, 512, 3), dtype=np.float32)
    steps = []

    def run(progress=None):
        return rmbg.predict_alpha(imgs, h.predict, resolution=512, chunk_size=1, stages=h.stages, progress=progress)[0]

    last = [time.perf_counter()]

    def tick(n, total):
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now

    (ref, T) = _timed(lambda: run(Progress(h.stages * 2, "t", callback=tick)))
    assert len(steps) == h.stages * 2  # every stage of every chunk reported progress
    raised, latency, total = _interrupt_after(0.3 * T, run)
    _check(raised, latency, total, T, max(steps))
    again = run()
    assert np.array_equal(again, ref)


def test_remove_background_reports_every_stage(birefnet):
    h = birefnet
    seen = []
    prog = Progress((h.stages + 1) * 3, "t", callback=lambda n, t: seen.append(n))
    with prog:
        alpha, _ = rmbg.predict_alpha(np.random.default_rng(2).random((3, 64, 64, 3), dtype=np.float32), h.predict,
                                      resolution=64, chunk_size=2, stages=h.stages, progress=prog)
    # chunks of 2 and 1: each stage advances by the chunk's image count, ending at stages * images
    assert seen[-1] == h.stages * 3 and len(seen) == 2 * h.stages
    assert seen[: h.stages] == [2 * (i + 1) for i in range(h.stages)]


def test_birefnet_auto_chunk_follows_free_memory(birefnet):
    h = birefnet
    per = h.bytes_per_image((1024, 1024))
    assert TINY.backbone not in bn.BYTES_PER_MPX and per == bn.BYTES_PER_MPX["swin_v1_l"]  # unknown: the larger
    # half the free memory, and on a CPU at most CPU_CHUNK_BYTES of activations
    q = h.bytes_per_image((512, 512))
    assert q == per // 4 and bn.CPU_CHUNK_BYTES >= 2 * q  # room for two 512² images under the CPU cap
    assert h.auto_chunk((512, 512), 8, free=int(4.2 * q)) == 2
    assert h.auto_chunk((512, 512), 8, free=int(0.5 * q)) == 1
    cap = max(1, int(bn.CPU_CHUNK_BYTES // per))
    assert h.auto_chunk((1024, 1024), 64, free=1 << 44) == min(cap, 8)
    assert h.auto_chunk((256, 256), 3, free=1 << 44) == 3  # never more than the batch


# ----------------------------------------------------------------------------- VAE


@pytest.fixture(scope="module")
def vae_handle(tmp_path_factory):
    from spriteforge.engines import get_engine
    from spriteforge.engines.base import ModelHandle
    from spriteforge.engines.torch_models.loading import load_vae
    from spriteforge.tests.tiny_models import make_vae

    engine = get_engine("torch", "cpu")
    path = make_vae(tmp_path_factory.mktemp("vae"), 4, layout="original", seed=4)
    vae, cfg = load_vae(engine, path, family="pixart")
    h = ModelHandle(family="pixart", variant="sigma", engine=engine, transformer=None, vae=vae, vae_config=cfg,
                    latent_channels=4, vae_scale_factor=8, scaling_factor=float(cfg.get("scaling_factor") or 1.0))
    return engine, h


def _conv_step_times(module, run):
    """The longest gap between two convolutions of ``module`` during ``run()`` (one interrupt step)."""
    from spriteforge.engines.torch_models.interrupt import conv_steps

    gaps, last = [], [time.perf_counter()]

    def step():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    with conv_steps(module, step):
        out = run()
    return out, max(gaps)


def test_vae_decode_stops_within_a_second_and_reruns_identically(vae_handle):
    engine, h = vae_handle
    z = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 4, 48, 48)).astype(np.float32))
    run = lambda: engine.vae_decode(h, z)  # noqa: E731
    (ref, T) = _timed(run)
    _, step = _conv_step_times(h.vae.decoder, run)
    raised, latency, total = _interrupt_after(0.3 * T, run)
    _check(raised, latency, total, T, step)
    assert np.array_equal(run(), ref)


def test_vae_encode_stops_within_a_second_and_reruns_identically(vae_handle):
    engine, h = vae_handle
    img = np.random.default_rng(6).random((1, 384, 384, 3), dtype=np.float32)
    run = lambda: engine.vae_encode(h, img).numpy()  # noqa: E731
    (ref, T) = _timed(run)
    _, step = _conv_step_times(h.vae.encoder, run)
    raised, latency, total = _interrupt_after(0.3 * T, run)
    _check(raised, latency, total, T, step)
    assert np.array_equal(run(), ref)


# ----------------------------------------------------------------------------- loading


def test_loading_stops_between_tensor_groups(tmp_path, monkeypatch):
    """A load stops at the next tensor group after the request; loading again gives the same weights."""
    from spriteforge.engines import get_engine
    from spriteforge.engines.torch_models import building, loading, tensors
    from spriteforge.tests.tiny_models import make_vae

    engine = get_engine("torch", "cpu")
    path = make_vae(tmp_path, 4, layout="original", seed=7)
    ref, _ = loading.load_vae(engine, path, family="pixart")
    ref_sd = {k: v.clone() for k, v in ref.state_dict().items()}
    # Small groups (one or two tensors each) so this small file has many interrupt points.
    monkeypatch.setattr(building, "LOAD_GROUP_BYTES", 4096)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        n_tensors = len(list(fh.keys()))
    groups = building.load_groups(loading.open_tensors(path), {k: k for k in loading.open_tensors(path).keys()})
    assert len(groups) > n_tensors // 3  # many groups, every tensor in one
    assert sorted(k for g in groups for k in g) == sorted(loading.open_tensors(path).keys())

    request_interrupt()  # pressed before the load: nothing is read
    with pytest.raises(Interrupted):
        loading.load_vae(engine, path, family="pixart")

    seen = []
    real_get = tensors.SafetensorsFile.get

    def counting_get(self, name, dtype, device):  # counts reads of the real loader, then requests Cancel
        seen.append(name)
        if len(seen) == 10:
            request_interrupt()
        return real_get(self, name, dtype, device)

    monkeypatch.setattr(tensors.SafetensorsFile, "get", counting_get)
    with pytest.raises(Interrupted):
        loading.load_vae(engine, path, family="pixart")
    # stopped at the end of the group holding the 10th tensor, far from the end of the file
    group_end = next(sum(len(g) for g in groups[: i + 1]) for i in range(len(groups)) if sum(len(g) for g in groups[: i + 1]) >= 10)
    assert len(seen) == group_end < n_tensors
    monkeypatch.undo()
    again, _ = loading.load_vae(engine, path, family="pixart")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ref_sd.items())


def test_birefnet_loading_stops_between_tensor_groups(tmp_path):
    path = save_tiny(tmp_path / "BiRefNet-general.safetensors", tiny_model(5))
    request_interrupt()
    with pytest.raises(Interrupted):
        bn.load_birefnet(path, device="cpu", use_comfy=False)
    # small groups: the reader reports progress (the interrupt point) after each; same tensors as one read
    sd = bn._read_safetensors(path, group_bytes=4096)
    ref = tiny_model(5).state_dict()
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    h = bn.load_birefnet(path, device="cpu", use_comfy=False)  # after the interrupt: loads normally
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(h.model(x), tiny_model(5).eval()(x), atol=1e-6, rtol=0)
