from __future__ import annotations

import numpy as np
import pytest

from spriteforge.engines import REGISTRY, engine_status, get_engine
from spriteforge.errors import SpriteForgeError


def test_torch_engine_on_cpu_declares_capabilities_and_round_trips_arrays():
    eng = get_engine("torch", "cpu")
    caps = eng.capabilities
    assert eng.device.kind == "cpu" and caps.lora and "float32" in caps.dtypes
    assert set(caps.families) == {"pixart", "sd3", "flux", "sana", "dit", "zimage", "flux2", "qwenimage", "krea2", "qwenimage21"}
    a = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    assert np.array_equal(eng.to_numpy(eng.from_numpy(a)), a)
    eng.sync()
    assert eng.describe()["policy"]["weight_dtype"] == "float32"


def test_engine_status_reports_every_registered_engine():
    st = {s.name: s for s in engine_status()}
    assert set(st) == set(REGISTRY)
    assert st["torch"].usable
    for s in st.values():
        assert s.reason


def test_unknown_engine_and_device_give_coded_errors():
    with pytest.raises(SpriteForgeError) as ei:
        get_engine("tensorflow")
    assert ei.value.code == "BAD_INPUT"
    with pytest.raises(SpriteForgeError) as ei:
        get_engine("torch", "cuda:7")
    assert ei.value.code == "ENGINE_UNAVAILABLE"


def test_mlx_engine_arrays_and_honest_capabilities(tmp_path):
    pytest.importorskip("mlx.core")
    eng = get_engine("mlx")
    a = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    assert np.array_equal(eng.to_numpy(eng.from_numpy(a)), a)
    # every family has a port and LoRAs apply (tests/test_mlx_*.py hold the parity checks)
    assert eng.capabilities.lora is True
    assert set(eng.capabilities.families) == {"pixart", "sd3", "flux", "sana", "dit", "zimage", "flux2", "qwenimage", "krea2", "qwenimage21"}
    assert eng.capabilities.birefnet is False
    with pytest.raises(SpriteForgeError) as ei:
        eng.load_model(tmp_path / "x.safetensors")
    assert ei.value.code == "MODEL_NOT_FOUND"
