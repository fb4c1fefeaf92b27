"""MLX implementations of the small array-operation namespaces used by the shared, framework-free code.

``samplers/`` and ``lora/`` are written once over injected operations; their numpy and torch versions
live beside them, the MLX ones here, so that ``engines/`` stays the one place that imports mlx.
"""

from __future__ import annotations

import numpy as np

from ..samplers.ops import _keep, _sorted_quantile


class SamplerOps:
    """The samplers' array operations on MLX arrays (see :mod:`spriteforge.samplers.ops`)."""

    name = "mlx"

    def where(self, cond, a, b):
        import mlx.core as mx
        return mx.where(cond, a, b)

    def clip(self, x, lo, hi):
        import mlx.core as mx
        return mx.clip(x, lo, hi)

    def abs(self, x):
        import mlx.core as mx
        return mx.abs(x)

    def maximum(self, a, b):
        import mlx.core as mx
        return mx.maximum(a, b)

    def sqrt(self, x):
        import mlx.core as mx
        return mx.sqrt(x)

    def mean_per_sample(self, x):
        return _keep(x, x.reshape(x.shape[0], -1).mean(axis=1))

    def std_per_sample(self, x):
        import mlx.core as mx
        flat = x.reshape(x.shape[0], -1)
        return _keep(x, mx.sqrt(mx.var(flat, axis=1, ddof=1)))

    def quantile_per_sample(self, x, q: float):
        import mlx.core as mx
        flat = x.reshape(x.shape[0], -1).astype(mx.float32)
        values = _sorted_quantile(mx.sort(flat, axis=1), q, flat.shape[1])
        return _keep(x, values.astype(x.dtype))

    def from_numpy(self, a, like=None):
        import mlx.core as mx
        arr = mx.array(np.asarray(a))
        return arr.astype(like.dtype) if like is not None else arr

    def to_numpy(self, x):
        return np.array(x)


class LoraOps:
    """The LoRA core's array operations on MLX arrays (see :mod:`spriteforge.lora.ops`)."""

    name = "mlx"

    @staticmethod
    def f32(x):
        import mlx.core as mx

        return x.astype(mx.float32)

    @staticmethod
    def cast_like(x, like):
        return x.astype(like.dtype)

    @staticmethod
    def reshape(x, shape):
        return x.reshape(tuple(shape))

    @staticmethod
    def sum_keep(x, axes):
        import mlx.core as mx

        return mx.sum(x, axis=list(axes), keepdims=True)

    @staticmethod
    def sqrt(x):
        import mlx.core as mx

        return mx.sqrt(x)

    @staticmethod
    def zeros(shape, like):
        import mlx.core as mx

        return mx.zeros(tuple(shape), dtype=mx.float32)

    @staticmethod
    def concat(xs, axis=0):
        import mlx.core as mx

        return mx.concatenate(list(xs), axis=axis)


def load_safetensors(path) -> dict:
    """Every tensor of a safetensors file as MLX arrays."""
    import mlx.core as mx

    return dict(mx.load(str(path)))


def roll2d(x, dy: int, dx: int):
    """``x`` rolled by (dy, dx) over its last two axes (seamless tiling)."""
    import mlx.core as mx

    return mx.roll(mx.roll(x, dy, axis=-2), dx, axis=-1)
