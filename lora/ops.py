"""The few array operations the LoRA math needs, for numpy, torch and MLX arrays.

:func:`ops_for` picks the namespace from an array's type, so :mod:`spriteforge.lora.core`
is written once and runs on whatever the engine holds. Frameworks are imported only
when an array of theirs is seen; nothing is imported at module top except numpy.
"""

from __future__ import annotations

import numpy as np


class NumpyOps:
    name = "numpy"

    @staticmethod
    def f32(x):
        return np.asarray(x, dtype=np.float32)

    @staticmethod
    def cast_like(x, like):
        return x.astype(like.dtype, copy=False)

    @staticmethod
    def reshape(x, shape):
        return x.reshape(tuple(shape))

    @staticmethod
    def sum_keep(x, axes):
        return np.sum(x, axis=tuple(axes), keepdims=True)

    @staticmethod
    def sqrt(x):
        return np.sqrt(x)

    @staticmethod
    def zeros(shape, like):
        return np.zeros(tuple(shape), dtype=np.float32)

    @staticmethod
    def concat(xs, axis=0):
        return np.concatenate(list(xs), axis=axis)


class TorchOps:
    name = "torch"

    @staticmethod
    def f32(x):
        import torch

        return x.to(torch.float32)

    @staticmethod
    def cast_like(x, like):
        return x.to(like.dtype)

    @staticmethod
    def reshape(x, shape):
        return x.reshape(tuple(shape))

    @staticmethod
    def sum_keep(x, axes):
        import torch

        return torch.sum(x, dim=tuple(axes), keepdim=True)

    @staticmethod
    def sqrt(x):
        import torch

        return torch.sqrt(x)

    @staticmethod
    def zeros(shape, like):
        import torch

        return torch.zeros(tuple(shape), dtype=torch.float32, device=like.device)

    @staticmethod
    def concat(xs, axis=0):
        import torch

        return torch.cat(list(xs), dim=axis)


def ops_for(x):
    """The operations namespace for the array ``x`` (numpy, torch or MLX)."""
    mod = type(x).__module__ or ""
    if mod.startswith("torch"):
        return TorchOps
    if mod.startswith("mlx"):
        from ..engines.mlx_ops import LoraOps  # MLX code lives in engines/

        return LoraOps
    return NumpyOps
