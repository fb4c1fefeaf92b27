"""What the MLX port tests share: torch weights as MLX arrays, and the one closeness rule they are held to."""

from __future__ import annotations

import numpy as np


def mx_weights(model_or_state) -> dict:
    """A torch module's state dict (or a state dict) as float32 MLX arrays under the same names."""
    import mlx.core as mx

    sd = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    return {k: mx.array(v.detach().float().numpy()) for k, v in sd.items()}


def assert_close(out, ref, what: str = "", rel: float = 1e-4) -> float:
    """``out`` (the port's) within ``rel * (1 + max|ref|)`` of ``ref`` (the torch class's), same shape; prints and
    returns the largest difference."""
    out, ref = np.asarray(out, dtype=np.float32), np.asarray(ref, dtype=np.float32)
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    diff = float(np.abs(out - ref).max())
    tol = rel * (1.0 + float(np.abs(ref).max()))
    print(f"{what}: max |diff| {diff:.3g} (max |ref| {float(np.abs(ref).max()):.3g})")
    assert diff <= tol, f"{what}: max |diff| {diff} > {tol}"
    return diff
