"""Seeded noise made on the CPU with numpy, so every engine (torch on any device, MLX)
sees exactly the same numbers for the same seed.

Each batch item has its own generator, seeded from ``seed + item index``: the noise of
item ``i`` does not depend on the batch size (seed 5 at batch 1 equals item 0 of a
batch of 4 at seed 5, and item 1 of that batch equals seed 6 at batch 1).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

_SEED_MOD = 2 ** 64
STEP_STREAM = 1


def _seed(seed) -> int:
    return int(seed) % _SEED_MOD  # ComfyUI seeds are unsigned 64-bit; fold negatives in


def _item_shape(shape: Sequence[int]) -> tuple[tuple[int, ...], int]:
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("noise shape needs a batch dimension")
    return shape[1:], shape[0]


def make_noise(seed: int, shape: Sequence[int], batch_index_offset: int = 0) -> np.ndarray:
    """Standard normal float32 noise of ``shape`` (first axis = batch).

    Item ``i`` is drawn from ``numpy.random.Generator(numpy.random.PCG64(seed + batch_index_offset + i))``.
    """
    item, batch = _item_shape(shape)
    out = np.empty((batch,) + item, dtype=np.float32)
    base = _seed(seed) + int(batch_index_offset)
    for i in range(batch):
        rng = np.random.Generator(np.random.PCG64(base + i))
        out[i] = rng.standard_normal(item, dtype=np.float32)
    return out


class NoiseSampler:
    """Fresh noise for ancestral/SDE steps, ``noise_sampler(sigma, sigma_next) -> array``.

    Item ``i`` has a generator seeded from ``SeedSequence([seed + batch_index_offset + i, stream])``
    (a stream distinct from :func:`make_noise`'s), and the k-th call returns the k-th draw of
    each item's generator: deterministic, batch-size independent, and independent of the sigma
    values.  ``to_array`` turns the float32 numpy array into the engine's array type
    (e.g. ``lambda a: torch.from_numpy(a).to(device, dtype)``); ``None`` keeps numpy.
    """

    def __init__(self, seed: int, shape: Sequence[int], to_array: Callable[[np.ndarray], object] | None = None,
                 batch_index_offset: int = 0, stream: int = STEP_STREAM):
        self.item_shape, batch = _item_shape(shape)
        self.shape = (batch,) + self.item_shape
        self.to_array = to_array
        base = _seed(seed) + int(batch_index_offset)
        self._rngs = [np.random.Generator(np.random.PCG64(np.random.SeedSequence([base + i, int(stream)])))
                      for i in range(batch)]

    def draw(self) -> np.ndarray:
        """The next float32 numpy draw (one per batch item, stacked)."""
        out = np.empty(self.shape, dtype=np.float32)
        for i, rng in enumerate(self._rngs):
            out[i] = rng.standard_normal(self.item_shape, dtype=np.float32)
        return out

    def __call__(self, sigma=None, sigma_next=None):
        arr = self.draw()
        return self.to_array(arr) if self.to_array is not None else arr
