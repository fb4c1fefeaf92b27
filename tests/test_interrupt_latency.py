"""Cancel during the long operations: BiRefNet, VAE decode/encode, model loading, a sampler step, text encoding.

Each test runs the operation once uninterrupted (the result), then again with Cancel requested from inside the
operation at a known point (a progress step, a convolution, a transformer or encoder block), and counts how much
work ran after the request: at most one unit (the one running when Cancel came), never the rest. Then the next
run after the interrupt must give exactly the uninterrupted result. Counting, not timing: the tests say the same
on a loaded machine. How long Cancel takes in seconds is measured in ``benchmarks/bench_cancel.py``. Real
formats: the models are written to files (or are the built-in demo model) and loaded through the code a user's
file takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spriteforge import pipeline, rmbg  # noqa: E402
from spriteforge.engines.torch_models import birefnet as bn  # noqa: E402
from spriteforge.progress import Interrupted, Progress, clear_interrupt, request_interrupt  # noqa: E402
from spriteforge.tests.test_birefnet_loading import TINY, save_tiny, tiny_model  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "demo_model"


@pytest.fixture(autouse=True)
def _one_thread_no_leak():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    clear_interrupt()
    yield
    clear_interrupt()
    torch.set_num_threads(n)


class Events:
    """What ran, in order: ``("start"|"end", unit)``, with ``"cancel"`` where Cancel was requested."""

    def __init__(self, cancel_at=None):
        self.log: list = []
        self.cancel_at = cancel_at  # (kind, unit, occurrence): request Cancel at that event

    def add(self, kind, unit):
        self.log.append((kind, unit))
        if self.cancel_at is not None and self.cancel_at[:2] == (kind, unit):
            seen = sum(1 for e in self.log if e == (kind, unit))
            if seen == self.cancel_at[2]:
                self.log.append("cancel")
                request_interrupt()

    def ended_after_cancel(self) -> int:
        """How many units finished after the request (the one running then counts)."""
        assert "cancel" in self.log, "the cancel point was never reached"
        i = self.log.index("cancel")
        return sum(1 for e in self.log[i:] if isinstance(e, tuple) and e[0] == "end")

    def started_after_cancel(self) -> int:
        i = self.log.index("cancel")
        return sum(1 for e in self.log[i + 1:] if isinstance(e, tuple) and e[0] == "start")


def _torch_probe(modules, events):
    """Forward hooks logging each module's start and end (registered before the engine's own hooks)."""
    hs = []
    for i, m in enumerate(modules):
        hs.append(m.register_forward_pre_hook(lambda _m, _a, i=i: events.add("start", i)))
        hs.append(m.register_forward_hook(lambda _m, _a, _o, i=i: events.add("end", i)))
    return hs


class _MLXProbe:
    """An MLX block called through a probe logging its start and end (MLX modules have no hooks)."""

    def __init__(self, inner, i, events):
        self.inner, self.i, self.events = inner, i, events

    def __call__(self, *args, **kwargs):
        self.events.add("start", self.i)
        out = self.inner(*args, **kwargs)
        self.events.add("end", self.i)
        return out


class probed_blocks:
    """Context manager: the blocks in list ``blocks`` (a torch ModuleList or an MLX module's list) log to ``events``."""

    def __init__(self, blocks, events):
        self.blocks, self.events = blocks, events

    def __enter__(self):
        if isinstance(self.blocks, torch.nn.ModuleList):
            self.hooks = _torch_probe(self.blocks, self.events)
        else:
            self.saved = list(self.blocks)
            self.blocks[:] = [_MLXProbe(b, i, self.events) for i, b in enumerate(self.saved)]
        return self

    def __exit__(self, *exc):
        if isinstance(self.blocks, torch.nn.ModuleList):
            for h in self.hooks:
                h.remove()
        else:
            self.blocks[:] = self.saved
        return False


# ----------------------------------------------------------------------------- BiRefNet


@pytest.fixture(scope="module")
def birefnet(tmp_path_factory):
    path = save_tiny(tmp_path_factory.mktemp("birefnet") / "BiRefNet-general.safetensors", tiny_model(3))
    return bn.load_birefnet(path, device="cpu", use_comfy=False)


def test_birefnet_stops_at_the_next_stage_and_reruns_identically(birefnet):
    h = birefnet
    imgs = np.random.default_rng(1).random((2, 256, 256, 3), dtype=np.float32)

    def run(progress=None):
        return rmbg.predict_alpha(imgs, h.predict, resolution=256, chunk_size=1, stages=h.stages, progress=progress)[0]

    ref = run()
    events = Events(cancel_at=("end", "stage", 2))  # Cancel right after the second stage of the first image
    with pytest.raises(Interrupted):
        run(Progress(h.stages * 2, "t", callback=lambda n, total: events.add("end", "stage")))
    assert events.ended_after_cancel() == 0  # no further stage reported: the next stage boundary stopped it
    assert len(events.log) == 3 < h.stages * 2
    assert np.array_equal(run(), ref)


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


def _convs(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def _cancel_at_conv(module, run, k):
    """``run()`` with Cancel requested as the ``k``-th convolution of ``module`` starts; -> events."""
    convs = _convs(module)
    assert len(convs) > k + 5
    events = Events(cancel_at=("start", k, 1))
    hooks = _torch_probe(convs, events)
    try:
        with pytest.raises(Interrupted):
            run()
    finally:
        for hk in hooks:
            hk.remove()
    return events


def test_vae_decode_stops_within_one_convolution_and_reruns_identically(vae_handle):
    engine, h = vae_handle
    z = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 4, 24, 24)).astype(np.float32))
    run = lambda: engine.vae_decode(h, z)  # noqa: E731
    ref = run()
    events = _cancel_at_conv(h.vae.decoder, run, 6)
    assert events.ended_after_cancel() <= 1 and events.started_after_cancel() == 0
    assert np.array_equal(run(), ref)


def test_vae_encode_stops_within_one_convolution_and_reruns_identically(vae_handle):
    engine, h = vae_handle
    img = np.random.default_rng(6).random((1, 192, 192, 3), dtype=np.float32)
    run = lambda: engine.vae_encode(h, img).numpy()  # noqa: E731
    ref = run()
    events = _cancel_at_conv(h.vae.encoder, run, 6)
    assert events.ended_after_cancel() <= 1 and events.started_after_cancel() == 0
    assert np.array_equal(run(), ref)


# ----------------------------------------------------------------------------- sampler steps and text encoding


@pytest.fixture(scope="module")
def demo_handles():
    from spriteforge.engines import get_engine

    names = ["torch"]
    try:
        import mlx.core  # noqa: F401

        names.append("mlx")
    except ImportError:  # MLX is not installed everywhere (its tests are skipped there too)
        pass
    return {name: get_engine(name, "cpu").load_model(str(DEMO)) for name in names}


ENGINES = ["torch", "mlx"]


def _handle(demo_handles, name):
    if name not in demo_handles:
        pytest.skip("MLX is not installed")
    return demo_handles[name]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_sampler_step_stops_within_one_transformer_block_and_reruns_identically(demo_handles, engine_name):
    """Cancel in the middle of a step (block 2 of 6, second step): no further block runs; the step is not finished."""
    h = _handle(demo_handles, engine_name)
    params = pipeline.GenerateParams(prompt="red potion", seed=3, steps=3, width=32, height=32, batch_size=2)
    ref = pipeline.sample(h.engine, h, params).latents
    blocks = h.transformer.transformer_blocks
    assert len(blocks) == 6
    events = Events(cancel_at=("start", 2, 2))
    with probed_blocks(blocks, events), pytest.raises(Interrupted):
        pipeline.sample(h.engine, h, params)
    print(f"{engine_name}: {events.ended_after_cancel()} block(s) finished after Cancel, of {len(blocks)} per step")
    assert events.ended_after_cancel() <= 1 and events.started_after_cancel() == 0
    assert np.array_equal(pipeline.sample(h.engine, h, params).latents, ref)


@pytest.mark.parametrize("engine_name", ENGINES)
def test_text_encoding_stops_within_one_encoder_layer_and_reruns_identically(demo_handles, engine_name):
    h = _handle(demo_handles, engine_name)
    eng = h.engine
    prompts = ["red potion", "a blue slime"]
    ref = eng.to_numpy(eng.encode_text(h, prompts).embeds)
    layers = h.text_encoders["t5"].encoder.block
    assert len(layers) == 2
    events = Events(cancel_at=("start", 0, 1))
    with probed_blocks(layers, events), pytest.raises(Interrupted):
        eng.encode_text(h, prompts)
    assert events.ended_after_cancel() <= 1 and events.started_after_cancel() == 0
    assert np.array_equal(eng.to_numpy(eng.encode_text(h, prompts).embeds), ref)


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
