"""The array operations beyond + - * / that the framework-free code needs, and their numpy reference.

``samplers/`` and ``lora/`` are written once over an *ops* object that an engine hands them
(``engine.ops``; a denoiser carries its engine's as ``.ops``). Each framework has one ops
class, in ``engines/ops/`` (the one place torch and MLX are imported); the numpy one,
:class:`NumpyOps`, lives here as the reference and the default for numpy arrays.

The protocol (every method on every ops class):

* samplers and guidance: ``where clip abs maximum sqrt``, ``mean_per_sample``,
  ``std_per_sample`` (unbiased, n - 1, as torch.std), ``quantile_per_sample`` (linear
  interpolation between order statistics, numpy's default), ``from_numpy(a, like=None)``,
  ``to_numpy(x)``, ``roll2d(x, dy, dx)`` (over the last two axes: seamless tiling);
* the LoRA core: ``f32``, ``cast_like``, ``reshape``, ``sum_keep``, ``zeros(shape, like)``
  (float32, on ``like``'s device), ``concat(xs, axis)``.

Per-sample reductions treat axis 0 as the batch and return shape ``(B, 1, ..., 1)`` so the
result broadcasts against the input.
"""

from __future__ import annotations

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError


def keep_batch_rank(x, values):
    """Reshape per-sample values of shape (B,) to (B, 1, ..., 1) matching ``x``'s rank."""
    return values.reshape((x.shape[0],) + (1,) * (len(x.shape) - 1))


def sorted_quantile(sorted_rows, q: float, n: int):
    """Linear-interpolation quantile of rows already sorted along axis 1 (any array type)."""
    pos = q * (n - 1)
    lo = int(pos // 1)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_rows[:, lo] * (1.0 - frac) + sorted_rows[:, hi] * frac


class NumpyOps:
    """The ops protocol on numpy arrays (the reference the torch and MLX ops are tested against)."""

    name = "numpy"

    # samplers and guidance -------------------------------------------------
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
        return keep_batch_rank(x, x.reshape(x.shape[0], -1).mean(axis=1))

    def std_per_sample(self, x):
        return keep_batch_rank(x, x.reshape(x.shape[0], -1).std(axis=1, ddof=1))

    def quantile_per_sample(self, x, q: float):
        flat = x.reshape(x.shape[0], -1)
        return keep_batch_rank(x, np.quantile(flat, q, axis=1).astype(x.dtype, copy=False))

    def from_numpy(self, a, like=None):
        a = np.asarray(a)
        return a.astype(like.dtype, copy=False) if like is not None else a

    def to_numpy(self, x):
        return np.asarray(x)

    def roll2d(self, x, dy: int, dx: int):
        return np.roll(x, (dy, dx), axis=(-2, -1))

    # LoRA core ------------------------------------------------------------------
    def f32(self, x):
        return np.asarray(x, dtype=np.float32)

    def cast_like(self, x, like):
        return x.astype(like.dtype, copy=False)

    def reshape(self, x, shape):
        return x.reshape(tuple(shape))

    def sum_keep(self, x, axes):
        return np.sum(x, axis=tuple(axes), keepdims=True)

    def zeros(self, shape, like):
        return np.zeros(tuple(shape), dtype=np.float32)

    def concat(self, xs, axis=0):
        return np.concatenate(list(xs), axis=axis)


NUMPY_OPS = NumpyOps()


def default_ops(x, ops=None):
    """``ops`` when given, else :data:`NUMPY_OPS` for numpy arrays; other arrays need their engine's ops.

    Raises BAD_INPUT for a torch/MLX array without ops: the libraries never import a
    framework (``spriteforge.engines.ops.ops_for(x)`` finds the right ones).
    """
    if ops is not None:
        return ops
    if isinstance(x, (np.ndarray, np.generic)):
        return NUMPY_OPS
    raise SpriteForgeError(BAD_INPUT, f"no array operations were given for a {type(x).__name__}. Pass ops= "
                           "(the engine's `engine.ops`, or spriteforge.engines.ops.ops_for(array)), or use numpy arrays.")
