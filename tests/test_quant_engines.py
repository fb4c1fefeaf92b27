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


def _flat(model) -> dict:
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.parameters()))


@pytest.mark.parametrize("kind", ["gguf", "comfy"])
def test_mlx_loads_quantized_files_decoded(files, kind):
    eng = get_engine("mlx")
    p = files[kind]
    h = eng.load_model(p, dtype="float32")
    ref = eng.load_model(p.with_suffix(".decoded.safetensors"), dtype="float32")
    got, want = _flat(h.transformer), _flat(ref.transformer)
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(np.array(got[k]), np.array(want[k])), k
    assert h.extras["dequantized"] == [{"gguf": "q4_0", "comfy": "nvfp4"}[kind]]


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
