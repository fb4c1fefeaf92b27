"""The ops protocol of :mod:`spriteforge.samplers.ops` on MLX arrays (samplers, guidance, LoRA core, arrays)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ...samplers.ops import keep_batch_rank, sorted_quantile


class MLXOps:
    name = "mlx"

    # samplers and guidance -------------------------------------------------
    def where(self, cond, a, b):
        return mx.where(cond, a, b)

    def clip(self, x, lo, hi):
        return mx.clip(x, lo, hi)

    def abs(self, x):
        return mx.abs(x)

    def maximum(self, a, b):
        return mx.maximum(a, b)

    def sqrt(self, x):
        return mx.sqrt(x)

    def mean_per_sample(self, x):
        return keep_batch_rank(x, x.reshape(x.shape[0], -1).mean(axis=1))

    def std_per_sample(self, x):
        flat = x.reshape(x.shape[0], -1)
        return keep_batch_rank(x, mx.sqrt(mx.var(flat, axis=1, ddof=1)))

    def quantile_per_sample(self, x, q: float):
        flat = x.reshape(x.shape[0], -1).astype(mx.float32)
        values = sorted_quantile(mx.sort(flat, axis=1), q, flat.shape[1])
        return keep_batch_rank(x, values.astype(x.dtype))

    def from_numpy(self, a, like=None):
        arr = mx.array(np.asarray(a))
        return arr.astype(like.dtype) if like is not None else arr

    def to_numpy(self, x):
        return np.array(x.astype(mx.float32)) if x.dtype == mx.bfloat16 else np.array(x)

    def roll2d(self, x, dy: int, dx: int):
        return mx.roll(mx.roll(x, dy, axis=-2), dx, axis=-1)

    # LoRA core ------------------------------------------------------------------
    def f32(self, x):
        return x.astype(mx.float32)

    def cast_like(self, x, like):
        return x.astype(like.dtype)

    def reshape(self, x, shape):
        return x.reshape(tuple(shape))

    def sum_keep(self, x, axes):
        return mx.sum(x, axis=list(axes), keepdims=True)

    def zeros(self, shape, like):
        return mx.zeros(tuple(shape), dtype=mx.float32)

    def concat(self, xs, axis=0):
        return mx.concatenate(list(xs), axis=axis)

    # files --------------------------------------------------------------------
    def load_safetensors(self, path) -> dict:
        """Every tensor of a safetensors file as MLX arrays (bfloat16 kept)."""
        return dict(mx.load(str(path)))

    def load_pickled(self, path) -> dict:
        """The tensors of a pickled ``.pt``/``.ckpt`` file as MLX arrays. torch reads it (``weights_only``: no code
        in it runs); it is used only for reading."""
        from .for_torch import TorchOps

        return {k: self.from_numpy(v.float().numpy() if v.is_floating_point() else v.numpy())
                for k, v in TorchOps().load_pickled(path).items()}
