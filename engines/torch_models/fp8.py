"""fp8-stored weights on torch: kept as fp8 where the device can hold fp8 tensors, each layer upcast
to the compute dtype only for its own forward pass (so an fp8 file costs fp8 memory, not bf16)."""

from __future__ import annotations

import torch

from ...models.safetensors_header import TensorInfo

FP8 = ("float8_e4m3fn", "float8_e5m2")
_FP8_TYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def has_fp8(tensors: dict[str, TensorInfo]) -> bool:
    return any(t.dtype in FP8 for t in tensors.values())


def keep_fp8(engine) -> bool:
    """Keep fp8 storage (and upcast per layer at run time) where the device can hold fp8 tensors."""
    return engine.device.kind in ("cuda", "rocm", "cpu")


def enable_fp8(model, tensors, weight_dtype):
    """Keep fp8 weights stored as fp8 and upcast them one layer at a time, only for its forward.

    Returns the fp8 dtype most of ``tensors`` are stored in (None when no layer holds fp8)."""
    fp8 = [t.dtype for t in tensors.values() if t.dtype in FP8]
    if not fp8:
        return None
    n = 0
    for mod in model.modules():
        if any(p is not None and p.dtype in _FP8_TYPES for p in mod._parameters.values()):
            mod.register_forward_pre_hook(_Fp8Upcast(weight_dtype).pre)
            mod.register_forward_hook(_Fp8Upcast.post)
            n += 1
    return max(set(fp8), key=fp8.count) if n else None


class _Fp8Upcast:
    def __init__(self, compute: torch.dtype):
        self.compute = compute

    def pre(self, mod, args):
        stored = {}
        for name, p in mod._parameters.items():
            if p is not None and p.dtype in _FP8_TYPES:
                stored[name] = p
                mod._parameters[name] = torch.nn.Parameter(p.to(self.compute), requires_grad=False)
        mod.__dict__["_sf_fp8_stored"] = stored

    @staticmethod
    def post(mod, args, out):
        for name, p in mod.__dict__.pop("_sf_fp8_stored", {}).items():
            mod._parameters[name] = p
        return out
