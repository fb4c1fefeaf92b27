"""MLX loading is lazy and evaluated block by block (issue 23.7), and gives the same weights as making every tensor at once.

Tiny real-format files in bfloat16 (PixArt-Sigma and Flux in their original layouts, whose fused qkv the converters
split into views at an offset, Flux's final modulation a concatenation), PixArt-Sigma in fp8 (e4m3fn) and the demo
diffusers folder are loaded
through ``MLXEngine.load_model``. What each load did is read from its record (``model._sf_load``,
:class:`spriteforge.engines.mlx_models.loading.LoadRecord`): how many tensors were lazy, what MLX held (its own byte
count, not the process's RSS) before the per-block evaluation began and after each block, and the parameter groups it
evaluated. A loader that reads the whole file before evaluating, keeps the file's tensors after a block is done, or
evaluates the model in one go fails these; no time or RSS threshold is involved.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402

from spriteforge.engines.mlx_models import loading  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_model"


@pytest.fixture(scope="module")
def me():
    from spriteforge.engines import get_engine

    return get_engine("mlx", "cpu")


def _original(path: Path, model, to_original, dtype=torch.bfloat16) -> Path:
    sd = to_original({k: v.detach() for k, v in model.state_dict().items()})
    return tm._save_file({k: v.to(dtype) for k, v in sd.items()}, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlx_loading")
    pixart = lambda sd: tm.pixart_to_original(sd, tokens=300)  # noqa: E731
    return {
        "pixart": (_original(root / "pixart-bf16.safetensors", tm.build_pixart("sigma", 0), pixart), "transformer_blocks", 2),
        "flux": (_original(root / "flux-bf16.safetensors", tm.build_flux("dev", 0), tm.flux_to_original),
                 "transformer_blocks", 1),
        # fp8 (e4m3fn) weights: read lazily as their bytes and upcast by mx.from_fp8
        "pixart-fp8": (_original(root / "pixart-fp8.safetensors", tm.build_pixart("sigma", 0), pixart, torch.float8_e4m3fn),
                       "transformer_blocks", 2),
    }


FILES = ["pixart", "flux", "pixart-fp8"]


def _params(model) -> dict:
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.parameters()))


def _block_bytes(model, name: str) -> list[int]:
    return [sum(v.nbytes for v in _params(b).values()) for b in getattr(model, name)]


@pytest.mark.parametrize("family", FILES)
def test_single_file_is_read_lazily_and_evaluated_block_by_block(me, files, family):
    import gc

    path, blocks_attr, n_blocks = files[family]
    gc.collect()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    model = me.load_model(path).transformer
    peak = mx.get_peak_memory() - base
    rec = model._sf_load
    params = _params(model)
    assert all(v.dtype == mx.float32 for v in params.values())  # cast from bf16/fp8 while loading (MLX-CPU: fp32)
    # every tensor is read lazily from the file but what the converter concatenated anew (Flux's final modulation)
    assert rec.eager <= (2 if family == "flux" else 0) and rec.lazy >= len(params) - rec.eager - 2, rec
    # each block is evaluated on its own: as many evaluations as blocks and top-level modules, one per block
    blocks = _block_bytes(model, blocks_attr)
    assert len(blocks) == n_blocks
    assert len(rec.groups) == len(loading.block_groups(model)) >= n_blocks + 2
    assert sum(rec.groups) == sum(v.nbytes for v in params.values())
    for b in blocks:
        assert b in rec.groups
    # nothing of the weights was made before the per-block evaluation began (no random initial parameter of the port,
    # no file tensor; Flux's concatenated final modulation is smaller), and no source tensor or cast outlives its block
    # (MLX's own count of the bytes it holds)
    assert rec.init < min(blocks) / 4 and rec.before_eval < min(blocks) / 4, rec
    assert len(rec.held) == len(rec.groups) and max(rec.held) < min(blocks) / 4, rec
    # so MLX's peak while loading is the loaded parameters plus one block's temporaries (its bf16 or fp8 source: half
    # or a quarter of a float32 block), not a second copy of the model
    total = sum(rec.groups)
    print(f"{family}: parameters {total} B, largest block {max(rec.groups)} B, MLX peak while loading {peak} B")
    assert peak <= total + max(rec.groups), (peak, total, rec)


@pytest.mark.parametrize("family", FILES)
def test_lazy_weights_equal_the_eager_ones(me, files, family):
    """The lazy arrays (views at offsets of the file's fused tensors) hold exactly what making each tensor at once
    (copies of the converted torch tensors: the eager path) gives."""
    from spriteforge.engines.base import handle_fields  # noqa: F401  (the engine's own imports, as a load makes them)
    from spriteforge.engines.model_files import TRANSFORMER_CLASSES, diffusion_model_in
    from spriteforge.engines.torch_models import convert
    from spriteforge.engines.torch_models.tensors import open_tensors

    path = files[family][0]
    lazy = _params(me.load_model(path).transformer)
    src = open_tensors(path)
    try:
        det = diffusion_model_in(src.tensors, path)
        sd = {k: src.get(k, None, torch.device("cpu")) for k in src.keys()}
        sd = {k: v.clone() for k, v in convert.convert_transformer(det.family, sd, det.layout).items()}
    finally:
        src.close()
    cfg = loading.full_config(TRANSFORMER_CLASSES[det.family], det.config)
    eager_model = loading.build(det.family, cfg, sd, mx.float32, "eager")
    assert eager_model._sf_load.lazy == 0 and eager_model._sf_load.eager > 0  # copies: nothing to read lazily
    eager = _params(eager_model)
    assert sorted(eager) == sorted(lazy)
    for k, v in eager.items():
        assert lazy[k].dtype == v.dtype and np.array_equal(np.array(lazy[k]), np.array(v)), k


@pytest.mark.skipif(not (DEMO / "model_index.json").exists(), reason="demo_model/ is not present")
def test_diffusers_folder_components_are_lazy(me):
    h = me.load_model(DEMO)
    for what, model in [("transformer", h.transformer), ("vae", h.vae), *h.text_encoders.items()]:
        rec = model._sf_load
        assert rec.lazy > 0 and rec.eager == 0, (what, rec)
        assert len(rec.groups) > 1 and rec.before_eval < max(rec.groups) / 4, (what, rec)
