"""LoRAs on torch models, without changing the loaded model.

:func:`apply_loras` returns a new handle whose transformer / text encoders are *shallow
structural copies* of the loaded ones: every module on the path to a patched layer is
copied (a few hundred bytes each), every Parameter and every untouched sub-tree is
shared. Each patched ``Linear``/``Conv`` becomes a same-class copy (``isinstance`` still
holds, the state-dict names are unchanged) that shares the base weight and bias and
holds its list of :class:`~spriteforge.lora.core.Patch`. Its forward computes
``W' = patched_weight(W, patches)`` — the one engine-agnostic function — for that layer
only and frees it after use; for plain LoRAs on a Linear layer fed few tokens (fewer than
``in·out/(in+out)``) it adds ``strength·alpha/rank·(x·downᵀ)·upᵀ`` to the base output
instead, the same update without building ``W'``. So:

* the base model is bit-identical after any number of applications; removing a LoRA is
  using the handle without it; two graph branches hold different LoRAs at once;
* peak memory is base + LoRA tensors + one layer's patched weight (in float32);
* stacking (a LoRA on a handle that has LoRAs) appends to the layer's patch list.

``merge=True`` computes each patched weight once, layer by layer, and keeps it in the new
handle: sampling then runs at base speed, at the cost of one extra copy of every patched
layer (never of the whole model, unless the LoRA touches every layer).
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import replace as dc_replace

import torch
import torch.nn.functional as F
from torch import nn

from ...log import get_logger
from ...lora.apply import check_engine, plan_specs
from ...lora.core import patched_weight
from ...lora.layouts import FUSED_ALIASES
from ..ops import torch_ops

log = get_logger("torch")

PATCHABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def base_module(m: nn.Module) -> nn.Module:
    """The loaded (unpatched) module behind a patched one."""
    return m.__dict__.get("_sf_base", m)


def is_patched(m: nn.Module) -> bool:
    return "_sf_patches" in m.__dict__


_FUSED_PARTS = {part: fused for part, (fused, _, _) in FUSED_ALIASES.items()}  # to_q -> to_qkv, ...


def layer_shapes(model: nn.Module) -> dict:
    """``{module name: weight shape}`` of the layers a LoRA can patch.

    In an attention whose projections diffusers has fused (``fuse_qkv_projections()``),
    the separate q/k/v layers are left out (the forward no longer uses them), so LoRAs
    for them land on rows of the fused layer.
    """
    out = {}
    fused_attn = {name for name, m in model.named_modules() if getattr(m, "fused_projections", False)}
    for name, m in model.named_modules():
        b = base_module(m)
        if isinstance(b, PATCHABLE) and getattr(b, "weight", None) is not None:
            parent, _, leaf = name.rpartition(".")
            if parent in fused_attn and leaf in _FUSED_PARTS and hasattr(model.get_submodule(parent), _FUSED_PARTS[leaf]):
                continue
            q = b.__dict__.get("qweight")  # a quantized layer: its shape without decoding it
            out[name] = tuple(q.shape if q is not None else b.weight.shape)
    return out


def _shallow(m: nn.Module) -> nn.Module:
    c = copy.copy(m)
    d = c.__dict__
    for k, v in list(d.items()):
        if k.startswith("_") and type(v) in (dict, OrderedDict, set):  # _parameters, _modules, _buffers, hooks
            d[k] = copy.copy(v)
    return c


_CLASSES: dict[type, type] = {}


def _patched_class(cls: type) -> type:
    if cls in _CLASSES:
        return _CLASSES[cls]

    def forward(self, x, *args, **kwargs):
        merged = self.__dict__.get("_sf_merged")
        if merged is not None:  # kept in the stored dtype; a layer upcast per forward (bf16 on a CPU) computes in x's
            w = merged if merged.dtype == x.dtype or not x.is_floating_point() else merged.to(x.dtype)
        elif isinstance(self, nn.Linear) and _low_rank_ok(self, x):
            return _low_rank_forward(self, x)
        else:
            w = self.sf_patched_weight(x)
        if isinstance(self, nn.Linear):
            return F.linear(x, w, self.bias)
        return self._conv_forward(x, w, self.bias)

    def sf_patched_weight(self, x=None):
        w = self.weight
        like = w
        if not (w.dtype.is_floating_point and w.element_size() >= 2) and x is not None:
            like = x  # fp8 storage: compute dtype is the input's
        patches = _on_device(self, w.device)
        return patched_weight(w, patches, like=like, ops=torch_ops())

    new = type(f"LoRA{cls.__name__}", (cls,), {"forward": forward, "sf_patched_weight": sf_patched_weight,
                                                 "__module__": __name__})
    _CLASSES[cls] = new
    return new


def _low_rank_ok(module, x) -> bool:
    """Plain LoRAs on a Linear with few tokens: ``x·downᵀ·upᵀ`` is cheaper than building ``W'``."""
    w = module.weight
    if not (w.dtype.is_floating_point and w.element_size() >= 2) or x.dtype != w.dtype:
        return False
    for p in module.__dict__["_sf_patches"]:
        if p.kind != "lora" or p.dora_scale is not None or len(p.tensors["down"].shape) != 2:
            return False
    out_f, in_f = w.shape
    tokens = x.numel() // max(1, x.shape[-1])
    return tokens * (in_f + out_f) < in_f * out_f


def _low_rank_forward(module, x):
    """``x·Wᵀ + b + Σ strength·alpha/rank·(x·downᵀ)·upᵀ`` (the same update as :func:`patched_weight`, unmerged)."""
    y = F.linear(x, module.weight, module.bias)
    for p in _on_device(module, module.weight.device):
        if p.strength == 0:
            continue
        d = F.linear(F.linear(x, p.tensors["down"].to(x.dtype)), p.tensors["up"].to(x.dtype)) * (p.scale * p.strength)
        if p.rows:
            a, b = p.rows
            y = torch.cat([y[..., :a], y[..., a:b] + d, y[..., b:]], dim=-1)
        else:
            y = y + d
    return y


def _on_device(module, device):
    patches = module.__dict__["_sf_patches"]
    first = next(iter(patches[0].tensors.values()))
    if first.device == device:
        return patches
    moved = tuple(_patch_to(p, device, None) for p in patches)
    module.__dict__["_sf_patches"] = moved
    return moved


def _patch_to(p, device, dtype):
    def mv(t):
        if t is None:
            return None
        return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)

    return dc_replace(p, tensors={k: mv(v) for k, v in p.tensors.items()}, dora_scale=mv(p.dora_scale))


def _make_patched(old: nn.Module, patches, merge: bool) -> nn.Module:
    base = base_module(old)
    prev = old.__dict__.get("_sf_patches", ())
    new = _shallow(base)
    new.__class__ = _patched_class(type(base))
    new.__dict__["_sf_base"] = base
    new.__dict__["_sf_patches"] = tuple(prev) + tuple(patches)
    new.__dict__.pop("_sf_merged", None)
    if merge:
        with torch.no_grad():
            new.__dict__["_sf_merged"] = new.sf_patched_weight()
    return new


def patched_copy(model: nn.Module, patch_map: dict, *, merge: bool = False) -> nn.Module:
    """A copy of ``model`` sharing all its parameters, with the layers in ``patch_map`` patched."""
    if not patch_map:
        return model
    root = _shallow(model)
    copied = {id(root)}
    for name, patches in patch_map.items():
        parts = name.split(".") if name else []
        parent = root
        for p in parts[:-1]:
            child = parent._modules[p]
            if id(child) not in copied:
                child = _shallow(child)
                copied.add(id(child))
                parent._modules[p] = child
            parent = child
        leaf = parts[-1]
        parent._modules[leaf] = _make_patched(parent._modules[leaf], patches, merge)
    return root


def _getter(tensors, device):
    cache = {}

    def get(key):
        if key not in cache:
            t = tensors[key]
            if not isinstance(t, torch.Tensor):
                t = torch.as_tensor(t)
            cache[key] = t.to(device) if device is not None else t
        return cache[key]

    return get


def _device_of(model):
    for p in model.parameters():
        return p.device
    return None


def apply_loras(handle, specs, *, merge: bool = False):
    """Torch implementation of :func:`spriteforge.lora.apply_loras` (specs already normalised)."""
    check_engine(handle)
    t0 = time.perf_counter()
    tr_shapes = layer_shapes(handle.transformer) if handle.transformer is not None else None
    te_shapes = {k: layer_shapes(v) for k, v in (handle.text_encoders or {}).items() if isinstance(v, nn.Module)}
    dev = _device_of(handle.transformer) if handle.transformer is not None else None
    tr_maps, te_maps, records = plan_specs(handle, specs, ops=torch_ops(), getter=lambda t: _getter(t, dev),
                                           transformer_shapes=tr_shapes, text_encoder_shapes=te_shapes, log=log)
    new_tr = patched_copy(handle.transformer, tr_maps, merge=merge) if tr_maps else handle.transformer
    new_te = dict(handle.text_encoders or {})
    for comp, pm in te_maps.items():
        te_dev = _device_of(new_te[comp])
        if te_dev is not None and te_dev != dev:
            pm = {k: [_patch_to(p, te_dev, None) for p in v] for k, v in pm.items()}
        new_te[comp] = patched_copy(new_te[comp], pm, merge=merge)
    log.debug("applied %d LoRA(s) in %.3fs", len(records), time.perf_counter() - t0)
    return dc_replace(handle, transformer=new_tr, text_encoders=new_te, loras=tuple(handle.loras) + tuple(records))


def merged_state_dict(model: nn.Module) -> dict:
    """``{name: weight}`` of a (possibly patched) model with every patch applied (tests, export)."""
    out = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if is_patched(m):
                out[f"{name}.weight"] = m.sf_patched_weight()
    for k, v in model.state_dict().items():
        out.setdefault(k, v)
    return out
