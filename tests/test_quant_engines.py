"""Quantized files on both engines, LoRAs on quantized bases, and MLX-quantized caches.

* MLX loads a GGUF and a ComfyUI-quantized file (decoded once while loading) to the very weights it loads from
  the decoded reference file;
* ``convert --engine mlx --quantize 8|4`` writes MLX-quantized layers (group size 64) with the manifest and
  hashes, loads them as MLX's quantized layers, and a LoRA on them leaves them unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_gguf as G  # noqa: E402
import test_quant as Q  # noqa: E402
import tiny_models as tm  # noqa: E402

from spriteforge.engines import get_engine  # noqa: E402
from spriteforge.lora import LoRASpec  # noqa: E402

mx = pytest.importorskip("mlx.core")  # the MLX engine is optional (the torch side: test_quant.py, test_gguf.py)
nn = pytest.importorskip("mlx.nn")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("qe")
    src = tm.make_flux(root, layout="original", variant="dev")
    return {"root": root, "src": src,
            "gguf": G.write_gguf(load_file(str(src)), root / "flux-q4_0.gguf", T.Q4_0),
            "comfy": Q.write_quantized(src, root / "flux-nvfp4.safetensors", "nvfp4")}


def test_native_layers_compute_and_take_a_lora(files, tmp_path):
    """An MLX model from a Q8_0 GGUF (native quantized layers): a LoRA on a native layer adds its update to the
    decoded weight, the stored arrays unchanged."""
    from spriteforge.engines.mlx_models import lora as ML
    from spriteforge.engines.torch_models.loading import load_model as torch_load

    eng = get_engine("mlx")
    p = files["root"] / "flux-Q8_0.gguf"
    if not p.exists():
        G.write_gguf(load_file(str(files["src"])), p, T.Q8_0)
    h = eng.load_model(p, dtype="float32")
    ref = eng.load_model(p.with_suffix(".decoded.safetensors"), dtype="float32")
    name = "transformer_blocks.0.attn.to_q"
    assert isinstance(ML._get(h.transformer, name), nn.QuantizedLinear)
    x = mx.array(np.random.default_rng(1).standard_normal((1, 300, 64)).astype(np.float32))
    assert np.allclose(np.array(ML._get(h.transformer, name)(x)), np.array(ML._get(ref.transformer, name)(x)), atol=1e-4)
    lora = Q.lora_file(tmp_path, torch_load(get_engine("torch", "cpu"), files["src"]).transformer)
    before = _flat(h.transformer)
    hl, rl = ML.apply_loras(h, [LoRASpec(lora, 0.8)]), ML.apply_loras(ref, [LoRASpec(lora, 0.8)])
    for merge in (False, True):
        hl, rl = ML.apply_loras(h, [LoRASpec(lora, 0.8)], merge=merge), ML.apply_loras(ref, [LoRASpec(lora, 0.8)], merge=merge)
        assert np.allclose(np.array(ML._get(hl.transformer, name)(x)), np.array(ML._get(rl.transformer, name)(x)), atol=1e-4)
    assert all(v is before[k] for k, v in _flat(h.transformer).items())


def _flat(model) -> dict:
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.parameters()))


def _dense(model) -> dict:
    """``{path.weight: float weights}`` of an MLX model, its quantized layers decoded (``mx.dequantize``)."""
    from spriteforge.engines.mlx_models import lora as ML

    out = {}
    for k, v in _flat(model).items():
        path, _, leaf = k.rpartition(".")
        layer = ML._get(model, path) if path else model
        if isinstance(layer, nn.QuantizedLinear):
            if leaf == "weight":
                out[k] = ML.dense_weight(layer)
            elif leaf == "bias":
                out[k] = v
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("kind", ["comfy", "q4_0", "q4_1", "q8_0", "q5_k"])
def test_mlx_loads_quantized_files(files, kind):
    """ComfyUI's formats and the other GGUF types are decoded while loading (the very weights of the decoded file);
    GGUF Q4_0/Q4_1/Q8_0 become MLX's quantized layers, whose decoded weights are bit-identical to GGUF's."""
    eng = get_engine("mlx")
    if kind == "comfy":
        p = files["comfy"]
    else:
        qtype = kind.split("-")[0].upper()
        p = files["root"] / f"flux-{qtype}.gguf"
        if not p.exists():
            G.write_gguf(load_file(str(files["src"])), p, getattr(T, qtype))
    h = eng.load_model(p, dtype="float32")
    ref = eng.load_model(p.with_suffix(".decoded.safetensors"), dtype="float32")
    native = [n for n, m in h.transformer.named_modules() if isinstance(m, nn.QuantizedLinear)]
    if kind in ("q4_0", "q4_1", "q8_0"):
        assert len(native) >= 10 and h.extras["mlx_quantized_layers"] == len(native)
        assert {ML_bits(h.transformer, n) for n in native} == {8 if kind == "q8_0" else 4}
    else:
        assert not native
    got, want = _dense(h.transformer), _flat(ref.transformer)
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(np.array(got[k]), np.array(want[k])), k
    assert h.extras["quantized_formats"] == [{"comfy": "nvfp4"}.get(kind, kind)]


def ML_bits(model, name):
    from spriteforge.engines.mlx_models import lora as ML

    return ML._get(model, name).bits


@pytest.mark.parametrize("bits", [8, 4])
def test_convert_mlx_quantized_cache(files, bits, tmp_path):
    from spriteforge.engines.mlx_models import cache
    from spriteforge.engines.mlx_models import lora as ML

    eng = get_engine("mlx")
    out = cache.convert(eng, files["src"], out=tmp_path / f"q{bits}", quantize=bits)
    man = cache.read_manifest(out)
    assert man["components"]["transformer"]["quantize"] == {"bits": bits, "group_size": 64}
    h = eng.load_model(out, dtype="float32")  # verified against the manifest's hashes
    dense = eng.load_model(files["src"], dtype="float32")
    qlayers = [n for n, m in h.transformer.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert len(qlayers) >= 10
    # the quantized layers decode to the float weights within the quantization step
    for n in qlayers:
        wq = np.array(ML.dense_weight(ML._get(h.transformer, n)))
        wf = np.array(ML._get(dense.transformer, n)["weight"])
        assert np.abs(wq - wf).max() <= np.abs(wf).max() * {8: 0.01, 4: 0.15}[bits]
    # a LoRA on the quantized layers: W' = decoded W + the LoRA's update, the stored arrays unchanged
    from spriteforge.engines.torch_models.loading import load_model as torch_load

    lora = Q.lora_file(tmp_path, torch_load(get_engine("torch", "cpu"), files["src"]).transformer)
    before = {k: v for k, v in _flat(h.transformer).items()}
    hl, dl = ML.apply_loras(h, [LoRASpec(lora, 0.8)]), ML.apply_loras(dense, [LoRASpec(lora, 0.8)])
    name = "transformer_blocks.0.attn.to_q"
    x = mx.array(np.random.default_rng(0).standard_normal((1, 300, 64)).astype(np.float32))
    layer, dlayer = ML._get(hl.transformer, name), ML._get(dl.transformer, name)
    delta = dlayer.sf_patched_weight() - ML._get(dense.transformer, name)["weight"]
    want = x @ (ML.dense_weight(ML._get(h.transformer, name)) + delta).T + ML._get(h.transformer, name)["bias"]
    assert np.allclose(np.array(layer(x)), np.array(want), atol=1e-4)
    assert all(v is before[k] for k, v in _flat(h.transformer).items())


def flux_out(model):
    """The MLX Flux port's output on fixed inputs (a 3x5 token latent, 6 text tokens, guidance 3.5)."""
    rng = np.random.default_rng(2)
    r = lambda *s: mx.array(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    ids = np.zeros((15, 3), np.float32)
    ids[:, 1], ids[:, 2] = np.repeat(np.arange(3), 5), np.tile(np.arange(5), 3)
    return np.array(model(r(1, 15, 64), r(1, 6, tm.T5_DIM), r(1, tm.CLIP_DIM), mx.array([0.5]), img_ids=mx.array(ids),
                          txt_ids=mx.zeros((6, 3)), guidance=mx.array([3.5])).astype(mx.float32))


@pytest.mark.parametrize("how", ["gguf-q8_0", "gguf-q4_1", "cache-8", "cache-4"])
def test_quantized_mlx_flux_runs_whole(files, how, tmp_path):
    """The whole MLX Flux port with MLX quantized layers (GGUF mapped natively, or a --quantize cache) runs, in the
    layers' compute dtype, and gives the outputs of the decoded weights (GGUF) or close to the float model (cache)."""
    from spriteforge.engines.mlx_models import cache

    eng = get_engine("mlx")
    kind, what, *rest = how.split("-")
    dtype = rest[0] if rest else "float32"
    if kind == "gguf":
        p = files["root"] / f"flux-{what.upper()}.gguf"
        if not p.exists():
            G.write_gguf(load_file(str(files["src"])), p, getattr(T, what.upper()))
        h, ref = eng.load_model(p, dtype=dtype), eng.load_model(p.with_suffix(".decoded.safetensors"), dtype=dtype)
    else:
        h = eng.load_model(cache.convert(eng, files["src"], out=tmp_path / "c", quantize=int(what)), dtype=dtype)
        ref = eng.load_model(files["src"], dtype=dtype)
    assert isinstance(h.transformer.proj_out, nn.QuantizedLinear) and h.transformer.dtype == mx_dtype(dtype)
    out, want = flux_out(h.transformer), flux_out(ref.transformer)
    err = np.abs(out - want).max() / np.abs(want).max()
    assert err < {"gguf": 1e-4 if dtype == "float32" else 1e-2, "cache": 0.02 if what == "8" else 0.3}[kind], err


def mx_dtype(name):
    return getattr(mx, name)


@pytest.fixture
def zimage_models(tmp_path, monkeypatch):
    """A models root with a tiny Z-Image under the release names (as test_zimage's), caches under its mlx_cache/."""
    from spriteforge import paths
    from spriteforge.tests import tiny_models as tmm
    from spriteforge.tests.tiny_qwen import make_qwen3

    root = tmp_path / "models"
    tmm.make_zimage(root / "diffusion_models", layout="original")
    make_qwen3(root / "text_encoders", seed=1)
    tmm.make_vae(root / "vae", 16, layout="original", seed=2, name="ae.safetensors")
    monkeypatch.delenv("SPRITEFORGE_MLX_CACHE", raising=False)
    paths.set_models_root(root)
    yield root
    paths.set_models_root(None)


def _node_picture(h):
    from spriteforge.nodes import generate as NG

    cond = NG.EncodePrompt.execute(h, "a red knight", "blurry")[0]
    lat = NG.Sampler.execute(h, cond, seed=1, steps=2, cfg=2.0, width=32, height=32)[0]
    return NG.VAEDecode.execute(h, lat)[0].numpy()


def test_load_model_node_q8_q4_use_the_mlx_quantized_cache(zimage_models):
    """Load Model's dtype q8/q4: on MLX (engine mlx, or auto) the first load writes the source's quantized cache
    (``models/mlx_cache/<name>-q<bits>-<key>``, what ``convert --quantize`` writes), later loads read it; the
    transformer's and text encoder's linear layers are MLX quantized layers of those bits, the picture close to the
    float model's. The torch engine refuses q8/q4 when the prompt is queued and when it runs."""
    from spriteforge.engines.mlx_models import cache
    from spriteforge.errors import SpriteForgeError
    from spriteforge.nodes import loaders

    args = dict(vae="ae.safetensors", text_encoder_1="qwen_3_4b.safetensors", device="cpu")
    model = "zimage-original.safetensors"
    dense = _node_picture(loaders.LoadModel.execute(model, engine="mlx", dtype="auto", **args)[0])
    assert not (zimage_models / "mlx_cache").exists()  # a plain load makes no cache
    for bits, engine in ((8, "mlx"), (4, "auto")):
        assert loaders.LoadModel.validate_inputs(model=model, engine=engine, dtype=f"q{bits}", **args) is True
        h = loaders.LoadModel.execute(model, engine=engine, dtype=f"q{bits}", **args)[0]
        assert h.engine.name == "mlx"
        folders = sorted((zimage_models / "mlx_cache").glob(f"zimage-original-q{bits}-*"))
        assert len(folders) == 1 and cache.is_cache(folders[0])
        man = cache.read_manifest(folders[0])
        assert man["components"]["transformer"]["quantize"] == {"bits": bits, "group_size": 64}
        assert man["components"]["te_qwen3_4b"]["quantize"] == {"bits": bits, "group_size": 64}
        for part in (h.transformer, h.text_encoders["qwen3_4b"]):
            q = [m for _, m in part.named_modules() if isinstance(m, nn.QuantizedLinear)]
            assert q and {m.bits for m in q} == {bits}
        img = _node_picture(h)
        assert np.abs(img - dense).mean() < {8: 0.01, 4: 0.08}[bits], np.abs(img - dense).mean()
        written = {f: f.stat().st_mtime_ns for f in folders[0].rglob("*")}
        again = loaders.LoadModel.execute(model, engine="mlx", dtype=f"q{bits}", **args)[0]  # read, not written again
        assert {f: f.stat().st_mtime_ns for f in folders[0].rglob("*")} == written
        assert np.array_equal(_node_picture(again), img)
    # a plain load still reads the source (the quantized caches are not its default cache)
    assert np.array_equal(_node_picture(loaders.LoadModel.execute(model, engine="mlx", dtype="auto", **args)[0]), dense)
    msg = loaders.LoadModel.validate_inputs(model=model, engine="torch", dtype="q8", **args)
    assert msg is not True and msg.startswith("dtype: ") and "engine mlx" in msg
    with pytest.raises(SpriteForgeError) as e:
        loaders.LoadModel.execute(model, engine="torch", dtype="q4", **args)
    assert e.value.code == "BAD_INPUT" and "torch engine" in e.value.message
