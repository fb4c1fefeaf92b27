"""LoRA files stored as bfloat16 safetensors or as pickled ``.pt``: read without a framework where that is possible
(bfloat16/fp8 safetensors), through the engine where it is not (pickles, weights only), with the same result as the
float32 safetensors file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from spriteforge.errors import BAD_INPUT, SpriteForgeError
from spriteforge.lora import LoRASpec, apply_loras, inspect_lora, read_lora
from spriteforge.lora.files import load_numpy
from spriteforge.tests import test_lora_util as U
from spriteforge.tests.test_lora_torch import _write


def test_bf16_and_fp8_safetensors_read_exactly_without_torch(tmp_path):
    g = torch.Generator().manual_seed(0)
    t = {"a.lora_down.weight": (torch.randn(4, 8, generator=g) * 3).bfloat16(),
         "a.lora_up.weight": torch.randn(8, 4, generator=g).to(torch.float8_e4m3fn),
         "a.alpha": torch.tensor(2.0, dtype=torch.bfloat16),
         "b.lora_down.weight": torch.randn(2, 8, generator=g).to(torch.float8_e5m2)}
    path = tmp_path / "mixed.safetensors"
    save_file(t, str(path))
    got = load_numpy(path)
    for k, v in t.items():
        assert got[k].dtype == np.float32 and np.array_equal(got[k], v.float().numpy()), k


def test_pickled_lora_applies_like_its_safetensors_twin(tmp_path):
    h = U.handle("pixart")
    path, _, keys = _write(tmp_path, "kohya", "pixart", h.transformer)
    pt = tmp_path / "same.pt"
    torch.save(load_file(str(path)), str(pt))
    a = apply_loras(h, [LoRASpec(path, 0.8)])
    b = apply_loras(h, [LoRASpec(pt, 0.8)])
    assert b.loras[-1].matched == len(keys)
    torch.testing.assert_close(U.run("pixart", b.transformer), U.run("pixart", a.transformer), rtol=0, atol=0)
    # described the same way (the engine reads the pickle, weights only)
    from spriteforge.engines.ops import torch_ops

    ia, ib = inspect_lora(path), inspect_lora(pt, load_pickled=torch_ops().load_pickled)
    assert {k: ia[k] for k in ("format", "family", "ranks")} == {k: ib[k] for k in ("format", "family", "ranks")}


def test_pickled_lora_without_an_engine_is_a_coded_error(tmp_path):
    pt = tmp_path / "style.ckpt"
    torch.save({"x.lora_down.weight": torch.zeros(2, 4), "x.lora_up.weight": torch.zeros(4, 2)}, str(pt))
    with pytest.raises(SpriteForgeError) as e:
        read_lora(pt)
    assert e.value.code == BAD_INPUT and ".safetensors" in str(e.value)


def test_pickled_lora_with_code_in_it_is_refused(tmp_path):
    """weights_only: a pickle that would run code is not loaded (coded BAD_INPUT, nothing runs)."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    pt = tmp_path / "evil.pt"
    pt.write_bytes(pickle.dumps({"x.lora_down.weight": Evil()}, protocol=2))
    from spriteforge.engines.ops import torch_ops

    with pytest.raises(SpriteForgeError) as e:
        read_lora(pt, load_pickled=torch_ops().load_pickled)
    assert e.value.code == BAD_INPUT
    assert not (tmp_path / "pwned").exists()


def test_pickled_lora_on_the_mlx_engine_matches_torch(tmp_path):
    pytest.importorskip("mlx.core")
    from spriteforge.tests.test_lora_mlx import assert_same_weights, mlx_handle

    h = U.handle("pixart")
    path, _, keys = _write(tmp_path, "kohya", "pixart", h.transformer)
    pt = tmp_path / "same.pt"
    torch.save(load_file(str(path)), str(pt))
    m_new = apply_loras(mlx_handle(h), [LoRASpec(pt, 0.7)])
    assert m_new.loras[-1].matched == len(keys)
    assert_same_weights(apply_loras(h, [LoRASpec(path, 0.7)]).transformer, m_new.transformer)


def test_bf16_alphas_are_inspected_without_torch(tmp_path):
    path = tmp_path / "bf16.safetensors"
    key = "lora_unet_transformer_blocks_0_attn1_to_q"
    save_file({f"{key}.lora_down.weight": torch.ones(4, 8, dtype=torch.bfloat16),
               f"{key}.lora_up.weight": torch.ones(8, 4, dtype=torch.bfloat16),
               f"{key}.alpha": torch.tensor(3.0, dtype=torch.bfloat16)}, str(path))
    assert inspect_lora(path)["alphas"] == [3.0]
