"""One array-operations class per framework: the ops protocol of :mod:`spriteforge.samplers.ops`.

:class:`~spriteforge.samplers.ops.NumpyOps` (the reference, in the libraries layer),
:class:`.for_torch.TorchOps` and :class:`.for_mlx.MLXOps`. Engines hand theirs to the
framework-free code as ``engine.ops``; :func:`ops_for` picks one from an array's type for
code that holds arrays but no engine (ComfyUI's tensors in ``comfy_bridge``, tests).
torch and MLX are imported only when one of their arrays (or engines) is used.
"""

from __future__ import annotations

import numpy as np

from ...errors import BAD_INPUT, SpriteForgeError
from ...samplers.ops import NUMPY_OPS, NumpyOps

_LOADED: dict = {}


def torch_ops():
    """The torch ops (one shared instance)."""
    if "torch" not in _LOADED:
        from .for_torch import TorchOps

        _LOADED["torch"] = TorchOps()
    return _LOADED["torch"]


def mlx_ops():
    """The MLX ops (one shared instance)."""
    if "mlx" not in _LOADED:
        from .for_mlx import MLXOps

        _LOADED["mlx"] = MLXOps()
    return _LOADED["mlx"]


def _framework(x) -> str:
    module = type(x).__module__ or ""
    if module.startswith("torch"):
        return "torch"
    if module.startswith("mlx"):
        return "mlx"
    if isinstance(x, (np.ndarray, np.generic)):
        return "numpy"
    return ""


def ops_for(x):
    """The ops for array ``x`` (numpy, torch or MLX), chosen by its type; BAD_INPUT for anything else."""
    fw = _framework(x)
    if fw == "torch":
        return torch_ops()
    if fw == "mlx":
        return mlx_ops()
    if fw == "numpy":
        return NUMPY_OPS
    raise SpriteForgeError(BAD_INPUT, f"Unsupported array type {type(x).__name__}. Pass a numpy array, torch tensor or MLX array.")


def to_numpy(x, engine=None) -> np.ndarray | None:
    """``x`` (numpy, torch, MLX, an engine array or nested lists) as a float32 numpy array; None stays None."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    fw = _framework(x)
    if fw in ("torch", "mlx"):
        return np.asarray(ops_for(x).to_numpy(x), dtype=np.float32)
    if engine is not None:
        return np.asarray(engine.to_numpy(x), dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


__all__ = ["NumpyOps", "NUMPY_OPS", "mlx_ops", "ops_for", "to_numpy", "torch_ops"]
