"""The few array operations beyond + - * / that the sampling code needs, per framework.

:func:`ops_for` picks the implementation by duck typing on the array's type (numpy,
torch, MLX).  torch and MLX are imported lazily inside the methods, never at module top,
so importing :mod:`spriteforge.samplers` needs only numpy.

Per-sample reductions treat axis 0 as the batch and return shape ``(B, 1, ..., 1)`` so
the result broadcasts against the input.  ``std_per_sample`` is the unbiased (n - 1)
standard deviation, as torch.std.  ``quantile_per_sample`` uses linear interpolation
between order statistics (numpy's default method).
"""

from __future__ import annotations

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError


def _keep(x, values):
    """Reshape per-sample values of shape (B,) to (B, 1, ..., 1) matching ``x``'s rank."""
    return values.reshape((x.shape[0],) + (1,) * (len(x.shape) - 1))


class NumpyOps:
    name = "numpy"

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def clip(self, x, lo, hi):
        return np.clip(x, lo, hi)

    def abs(self, x):
        return np.abs(x)

    def maximum(self, a, b):
        return np.maximum(a, b)

    def sqrt(self, x):
        return np.sqrt(x)

    def mean_per_sample(self, x):
        return _keep(x, x.reshape(x.shape[0], -1).mean(axis=1))

    def std_per_sample(self, x):
        return _keep(x, x.reshape(x.shape[0], -1).std(axis=1, ddof=1))

    def quantile_per_sample(self, x, q: float):
        flat = x.reshape(x.shape[0], -1)
        return _keep(x, np.quantile(flat, q, axis=1).astype(x.dtype, copy=False))

    def from_numpy(self, a, like=None):
        a = np.asarray(a)
        return a.astype(like.dtype, copy=False) if like is not None else a

    def to_numpy(self, x):
        return np.asarray(x)


def _sorted_quantile(sorted_rows, q: float, n: int):
    """Linear-interpolation quantile of rows already sorted along axis 1."""
    pos = q * (n - 1)
    lo = int(pos // 1)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_rows[:, lo] * (1.0 - frac) + sorted_rows[:, hi] * frac


class TorchOps:
    name = "torch"

    def where(self, cond, a, b):
        import torch
        return torch.where(cond, a, b)

    def clip(self, x, lo, hi):
        import torch
        return torch.clamp(x, lo, hi)

    def abs(self, x):
        return x.abs()

    def maximum(self, a, b):
        import torch
        if not torch.is_tensor(b):
            b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
        return torch.maximum(a, b)

    def sqrt(self, x):
        return x.sqrt()

    def mean_per_sample(self, x):
        return _keep(x, x.reshape(x.shape[0], -1).mean(dim=1))

    def std_per_sample(self, x):
        return _keep(x, x.reshape(x.shape[0], -1).std(dim=1))

    def quantile_per_sample(self, x, q: float):
        import torch
        flat = x.reshape(x.shape[0], -1)
        if flat.dtype != torch.float64:
            flat = flat.float()
        values = _sorted_quantile(flat.sort(dim=1).values, q, flat.shape[1])
        return _keep(x, values.to(x.dtype))

    def from_numpy(self, a, like=None):
        import torch
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(device=like.device, dtype=like.dtype) if like is not None else t

    def to_numpy(self, x):
        return x.detach().float().cpu().numpy()


_NUMPY, _TORCH = NumpyOps(), TorchOps()
_MLX: list = []


def ops_for(x):
    """The ops namespace for array ``x``: numpy, torch or MLX, chosen by its type."""
    module = type(x).__module__ or ""
    if module.startswith("torch"):
        return _TORCH
    if module.startswith("mlx"):
        if not _MLX:  # MLX code lives in engines/ (the one place mlx is imported)
            from ..engines.mlx_ops import SamplerOps

            _MLX.append(SamplerOps())
        return _MLX[0]
    if isinstance(x, (np.ndarray, np.generic)):
        return _NUMPY
    raise SpriteForgeError(BAD_INPUT, f"Unsupported array type {type(x).__name__}. Pass a numpy array, torch tensor or MLX array.")
