"""The shared samplers give the same numbers on the torch and MLX engines, with the same weights and seeded noise."""

from __future__ import annotations

import numpy as np
import pytest

from spriteforge.engines import get_engine
from spriteforge.samplers import SAMPLERS, SCHEDULES, NoiseSampler, make_noise

pytest.importorskip("mlx.core")


def _linear_denoiser(engine, weight: np.ndarray, bias: np.ndarray):
    """A fixed 'network': x0 = tanh(W·x / sqrt(1+s²) + b), the same weights on every engine."""
    w = engine.from_numpy(weight)
    b = engine.from_numpy(bias)

    if engine.name == "torch":
        import torch

        def model(x, sigma):
            h = torch.einsum("oc,bchw->bohw", w, x) / (1.0 + sigma * sigma) ** 0.5
            return torch.tanh(h + b[None, :, None, None])
    else:
        import mlx.core as mx

        def model(x, sigma):
            h = mx.einsum("oc,bchw->bohw", w, x) / (1.0 + sigma * sigma) ** 0.5
            return mx.tanh(h + b[None, :, None, None])

    return model


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_agree_on_torch_and_mlx(name):
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((4, 4)) * 0.5).astype(np.float32)
    bias = (rng.standard_normal(4) * 0.1).astype(np.float32)
    flow = name.startswith("flow")
    if flow:
        sigmas = [float(s) for s in np.linspace(1.0, 0.0, 13)]
    else:
        sigmas = SCHEDULES["karras"](12, 0.03, 14.6)
    shape = (2, 4, 8, 8)
    results = {}
    for eng_name in ("torch", "mlx"):
        eng = get_engine(eng_name, "cpu" if eng_name == "torch" else "auto")
        model = _linear_denoiser(eng, weight, bias)
        x = eng.from_numpy(make_noise(1234, shape) * float(sigmas[0]))
        ns = NoiseSampler(1234, shape, to_array=eng.from_numpy)
        out = SAMPLERS[name](model, x, sigmas, noise_sampler=ns)
        results[eng_name] = eng.to_numpy(out)
    assert np.isfinite(results["torch"]).all()
    np.testing.assert_allclose(results["mlx"], results["torch"], rtol=1e-4, atol=1e-4)


def test_seamless_roll_is_the_same_on_mlx_and_numpy():
    import mlx.core as mx

    from spriteforge.generation.wrappers import roll as _roll

    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    assert np.array_equal(np.array(_roll(mx.array(a), 2, 3)), _roll(a, 2, 3))
