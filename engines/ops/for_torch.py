"""The ops protocol of :mod:`spriteforge.samplers.ops` on torch tensors (samplers, guidance, LoRA core, arrays)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...samplers.ops import keep_batch_rank, sorted_quantile


class TorchOps:
    name = "torch"

    # samplers and guidance -------------------------------------------------
    def where(self, cond, a, b):
        return torch.where(cond, a, b)

    def clip(self, x, lo, hi):
        return torch.clamp(x, lo, hi)

    def abs(self, x):
        return x.abs()

    def maximum(self, a, b):
        if not torch.is_tensor(b):
            b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
        return torch.maximum(a, b)

    def sqrt(self, x):
        return torch.sqrt(x)

    def mean_per_sample(self, x):
        return keep_batch_rank(x, x.reshape(x.shape[0], -1).mean(dim=1))

    def std_per_sample(self, x):
        return keep_batch_rank(x, x.reshape(x.shape[0], -1).std(dim=1))

    def quantile_per_sample(self, x, q: float):
        flat = x.reshape(x.shape[0], -1)
        if flat.dtype != torch.float64:
            flat = flat.float()
        values = sorted_quantile(flat.sort(dim=1).values, q, flat.shape[1])
        return keep_batch_rank(x, values.to(x.dtype))

    def from_numpy(self, a, like=None):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(device=like.device, dtype=like.dtype) if like is not None else t

    def to_numpy(self, x):
        return x.detach().float().cpu().numpy()

    def roll2d(self, x, dy: int, dx: int):
        return x.roll(shifts=(dy, dx), dims=(-2, -1))

    # LoRA core ------------------------------------------------------------------
    def f32(self, x):
        return x.to(torch.float32)

    def cast_like(self, x, like):
        return x.to(like.dtype)

    def reshape(self, x, shape):
        return x.reshape(tuple(shape))

    def sum_keep(self, x, axes):
        return torch.sum(x, dim=tuple(axes), keepdim=True)

    def zeros(self, shape, like):
        return torch.zeros(tuple(shape), dtype=torch.float32, device=like.device)

    def concat(self, xs, axis=0):
        return torch.cat(list(xs), dim=axis)

    # files --------------------------------------------------------------------
    def load_safetensors(self, path) -> dict:
        """Every tensor of a safetensors file as CPU tensors (dtypes kept)."""
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")

    def load_pickled(self, path) -> dict:
        """The tensors of a pickled ``.pt``/``.ckpt`` file on the CPU, read as the model loader reads one
        (``weights_only``: no code in it runs; a file that would need more is refused, saying so)."""
        from ..torch_models.tensors import load_pickle

        return load_pickle(Path(path))
