"""Weights kept in the narrower dtype the file stores them in, each layer upcast to the compute dtype only for its
own forward pass: fp8 where the device can hold fp8 tensors (an fp8 file costs fp8 memory, not bf16), and bf16/fp16
on a CPU computing in float32 (the weights stay views of the file's mapping: a bf16 file costs its own size plus one
layer, not twice it)."""

from __future__ import annotations

import threading

import torch

from ...models.safetensors_header import TensorInfo

FP8 = ("float8_e4m3fn", "float8_e5m2")
_FP8_TYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def has_fp8(tensors: dict[str, TensorInfo]) -> bool:
    return any(t.dtype in FP8 for t in tensors.values())


HALF = ("bfloat16", "float16")


def keep_fp8(engine) -> bool:
    """Keep fp8 storage (and upcast per layer at run time) where the device can hold fp8 tensors."""
    return engine.device.kind in ("cuda", "rocm", "cpu")


def keep_half(engine, weight_dtype: torch.dtype) -> tuple[str, ...]:
    """The stored dtypes kept as stored (and upcast per layer): bf16 and fp16 on a CPU computing in float32."""
    return HALF if engine.device.kind == "cpu" and weight_dtype == torch.float32 else ()


# layers whose output never shares memory with their weights: their upcast weights may live in one reused buffer
_PLAIN = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.LayerNorm, torch.nn.GroupNorm,
          torch.nn.Embedding)


def _stored_numel(mod, stored) -> int:
    return sum(p.numel() for p in mod._parameters.values() if p is not None and p.dtype in stored)


def enable_upcast(model, stored: tuple, compute: torch.dtype, *, reuse: bool = False) -> int:
    """Every layer holding a weight of a ``stored`` dtype upcasts it to ``compute`` for its own forward only.
    ``reuse``: plain layers (Linear, Conv, norms, Embedding) upcast into one buffer the size of the largest, reused
    layer after layer (a thread each), so a run holds one layer in ``compute``, not whatever the allocator keeps of
    a fresh copy per layer. Returns the number of layers."""
    hooked = [m for m in model.modules() if _stored_numel(m, stored)]
    plain = [_stored_numel(m, stored) for m in hooked if isinstance(m, _PLAIN)]
    scratch = _Scratch(compute, max(plain)) if reuse and plain else None
    for mod in hooked:
        up = _Upcast(compute, stored, scratch if isinstance(mod, _PLAIN) else None)
        mod.register_forward_pre_hook(up.pre)
        mod.register_forward_hook(_Upcast.post)
    return len(hooked)


def enable_fp8(model, tensors, weight_dtype):
    """Keep fp8 weights stored as fp8 and upcast them one layer at a time, only for its forward.

    Returns the fp8 dtype most of ``tensors`` are stored in (None when no layer holds fp8)."""
    fp8 = [t.dtype for t in tensors.values() if t.dtype in FP8]
    if not fp8:
        return None
    n = enable_upcast(model, _FP8_TYPES, weight_dtype)
    return max(set(fp8), key=fp8.count) if n else None


class _Scratch(threading.local):
    """One ``numel``-element buffer of ``dtype`` per thread, made on first use."""

    def __init__(self, dtype: torch.dtype, numel: int):
        self.dtype, self.numel, self.buf = dtype, numel, None

    def get(self) -> torch.Tensor:
        if self.buf is None:
            self.buf = torch.empty(self.numel, dtype=self.dtype)
        return self.buf


class _Upcast:
    def __init__(self, compute: torch.dtype, stored: tuple, scratch: _Scratch | None = None):
        self.compute = compute
        self.stored = stored
        self.scratch = scratch

    def pre(self, mod, args):
        stored = {}
        buf = self.scratch.get() if self.scratch is not None else None
        at = 0
        for name, p in mod._parameters.items():
            if p is not None and p.dtype in self.stored:
                stored[name] = p
                if buf is not None and p.device == buf.device:
                    up = buf[at:at + p.numel()].view(p.shape).copy_(p)
                    at += p.numel()
                else:
                    up = p.to(self.compute)
                mod._parameters[name] = torch.nn.Parameter(up, requires_grad=False)
        mod.__dict__["_sf_fp8_stored"] = stored
        if any(torch.is_tensor(a) and a.dtype in self.stored for a in args):  # cast to a stored weight's dtype upstream
            return tuple(a.to(self.compute) if torch.is_tensor(a) and a.dtype in self.stored else a for a in args)
        return None

    @staticmethod
    def post(mod, args, out):
        for name, p in mod.__dict__.pop("_sf_fp8_stored", {}).items():
            mod._parameters[name] = p
        return out
