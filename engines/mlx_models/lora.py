"""LoRAs on MLX models, without changing the loaded model.

The MLX twin of :mod:`spriteforge.engines.torch_models.lora`, over the same framework-free
core: :func:`spriteforge.lora.files.read_lora` reads the file (as MLX arrays),
:func:`spriteforge.lora.plan.plan` matches it onto the model's layers (``{path: weight
shape}``, found by walking the MLX module tree, in torch's ``(out, in[, kh, kw])`` order) and
:func:`spriteforge.lora.core.patched_weight` computes the update with the MLX ops of
:mod:`spriteforge.engines.ops.for_mlx`.

:func:`apply_loras` returns a new handle whose transformer / text encoders are *structural
copies* of the loaded ones: every module (and Python list of modules) on the path to a
patched layer is copied, every array and every untouched sub-tree is shared. Each patched
layer becomes a same-class copy (``isinstance`` holds, parameter paths are unchanged) that
shares the base weight and bias and keeps its patches outside the parameter tree:

* plain LoRAs on a Linear fed few tokens (fewer than ``in·out/(in+out)``): ``base(x) +
  strength·alpha/rank·(x·downᵀ)·upᵀ``, without building the patched weight;
* otherwise (LoHa, LoKr, DoRA, full diffs, convolutions, many tokens): the patched weight
  ``W'`` for that layer, computed lazily on each call;
* ``merge=True``: ``W'`` computed once and held by the copy as its ``weight``.

The base model's modules and arrays are never written (MLX arrays are immutable values and
no module of the base tree is modified), stacking appends to a layer's patch list and a LoRA
at strength 0 changes nothing.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace as dc_replace

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...errors import SpriteForgeError
from ...log import get_logger
from ...lora.apply import plan_specs
from ...lora.core import patched_weight
from ...lora.layouts import FUSED_ALIASES
from ..ops import mlx_ops
from .layers import Conv2d as _SFConv2d

log = get_logger("mlx")

_FUSED_PARTS = {part: fused for part, (fused, _, _) in FUSED_ALIASES.items()}  # to_q -> to_qkv, ...
_CONVS = (nn.Conv1d, nn.Conv2d, _SFConv2d)


# -- the module tree -----------------------------------------------------------------------


def base_module(m):
    """The loaded (unpatched) layer behind a patched one."""
    return m.__dict__.get("_sf_base", m)


def is_patched(m) -> bool:
    return "_sf_patches" in m.__dict__


def _kind(m) -> str | None:
    """``linear`` / ``conv`` for the layers a LoRA can patch, else None."""
    if not isinstance(m, nn.Module) or "weight" not in m or not isinstance(m["weight"], mx.array):
        return None
    if isinstance(m, nn.Linear) and m["weight"].ndim == 2:
        return "linear"
    if isinstance(m, nn.QuantizedLinear):  # MLX-quantized (convert --quantize): patched on its decoded weight
        return "qlinear"
    if isinstance(m, _CONVS) and m["weight"].ndim in (3, 4):
        return "conv"
    return None


def dense_weight(m):
    """A layer's weight as floats: an MLX-quantized Linear's decoded (``mx.dequantize``), any other's as it is."""
    if isinstance(m, nn.QuantizedLinear):
        return mx.dequantize(m["weight"], m["scales"], m.get("biases"), group_size=m.group_size, bits=m.bits)
    return m["weight"]


def torch_shape(w) -> tuple:
    """An MLX weight's shape in torch order: Linear ``(out, in)`` as is, conv ``(O, kh, kw, I)`` as ``(O, I, kh, kw)``."""
    s = tuple(int(d) for d in w.shape)
    return s if len(s) == 2 else (s[0], s[-1]) + s[1:-1]


def _to_torch_layout(w):
    return w if w.ndim == 2 else mx.moveaxis(w, -1, 1)


def _to_mlx_layout(w):
    return w if w.ndim == 2 else mx.moveaxis(w, 1, -1)


def _flag(m, key) -> bool:
    return bool(m.__dict__.get(key, False) or (m.get(key, False) is True))


def _get(model, path: str):
    node = model
    for part in path.split(".") if path else []:
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    return node


def layer_shapes(model) -> dict:
    """``{module path: weight shape in torch order}`` of the layers of an MLX model a LoRA can patch.

    In an attention that holds a fused ``to_qkv`` / ``to_added_qkv`` and says so
    (``fused_projections``), the separate q/k/v layers are left out, so LoRAs for them land
    on rows of the fused layer (as on torch).
    """
    out = {}
    mods = dict(model.named_modules())
    for name, m in mods.items():
        b = base_module(m)
        if _kind(b) is None:
            continue
        parent, _, leaf = name.rpartition(".")
        pm = mods.get(parent)
        if pm is not None and leaf in _FUSED_PARTS and _flag(pm, "fused_projections") and _FUSED_PARTS[leaf] in pm:
            continue
        out[name] = torch_shape(dense_weight(b)) if _kind(b) == "qlinear" else torch_shape(b["weight"])
    return out


# -- patched layers ------------------------------------------------------------------------

_CLASSES: dict[type, type] = {}


def _patched_class(cls: type) -> type:
    if cls in _CLASSES:
        return _CLASSES[cls]

    def __call__(self, x, *args, **kwargs):
        if _kind(self) == "qlinear":  # the stored layer never changes: W' is made from its decoded weight
            if self.__dict__.get("_sf_merged"):
                return _dense_forward(self, self.__dict__["_sf_merged_weight"], x)
            if _low_rank_ok(self, x):
                return _low_rank_forward(self, cls.__call__(self, x), x)
            return _dense_forward(self, self.sf_patched_weight(x), x)
        if self.__dict__.get("_sf_merged"):
            return cls.__call__(self, x, *args, **kwargs)
        if _kind(self) == "linear" and _low_rank_ok(self, x):
            return _low_rank_forward(self, cls.__call__(self, x), x)
        view = copy.copy(self)  # keeps the layer's own settings (padding mode...), shares its arrays
        view.__class__ = cls
        view["weight"] = self.sf_patched_weight(x)
        return cls.__call__(view, x, *args, **kwargs)

    def sf_patched_weight(self, x=None):
        """The layer's weight with its patches applied, in the MLX layout and the weight's dtype."""
        w = dense_weight(base_module(self))
        return _to_mlx_layout(patched_weight(_to_torch_layout(w), self.__dict__["_sf_patches"], ops=mlx_ops()))

    new = type(f"LoRA{cls.__name__}", (cls,), {"__call__": __call__, "sf_patched_weight": sf_patched_weight,
                                                 "__module__": __name__})
    _CLASSES[cls] = new
    return new


def _low_rank_ok(module, x) -> bool:
    """Plain LoRAs on a Linear with few tokens: ``x·downᵀ·upᵀ`` is cheaper than building ``W'``."""
    for p in module.__dict__["_sf_patches"]:
        if p.kind != "lora" or p.dora_scale is not None:
            return False
    out_f, in_f = torch_shape(dense_weight(base_module(module))) if _kind(module) == "qlinear" else module["weight"].shape
    tokens = x.size // max(1, x.shape[-1])
    return tokens * (in_f + out_f) < in_f * out_f


def _low_rank_forward(module, y, x):
    """``y + Σ strength·alpha/rank·(x·downᵀ)·upᵀ`` with ``y = base(x)`` (the update of :func:`patched_weight`, unmerged)."""
    in_f = int(x.shape[-1])
    for p in module.__dict__["_sf_patches"]:
        if p.strength == 0:
            continue
        down = p.tensors["down"].reshape(-1, in_f).astype(x.dtype)
        up = p.tensors["up"].reshape(-1, down.shape[0]).astype(x.dtype)
        d = ((x @ down.T) @ up.T) * (p.scale * p.strength)
        if p.rows:
            a, b = p.rows
            y = mx.concatenate([y[..., :a], y[..., a:b] + d, y[..., b:]], axis=-1)
        else:
            y = y + d
    return y


def _make_patched(old, patches, merge: bool):
    base = base_module(old)
    prev = old.__dict__.get("_sf_patches", ())
    new = copy.copy(base)
    new.__class__ = _patched_class(type(base))
    new.__dict__["_sf_base"] = base
    new.__dict__["_sf_patches"] = tuple(prev) + tuple(patches)
    new.__dict__["_sf_merged"] = False
    if merge:
        w = new.sf_patched_weight()
        mx.eval(w)
        if _kind(base) == "qlinear":
            new.__dict__["_sf_merged_weight"] = w
        else:
            new["weight"] = w
        new.__dict__["_sf_merged"] = True
    return new


def _dense_forward(module, w, x):
    y = x @ w.astype(x.dtype).T
    return y + module["bias"].astype(x.dtype) if "bias" in module else y


def _copy_container(c):
    return list(c) if isinstance(c, list) else copy.copy(c)


def patched_copy(model, patch_map: dict, *, merge: bool = False):
    """A copy of ``model`` sharing all its arrays, with the layers in ``patch_map`` patched."""
    if not patch_map:
        return model
    root = copy.copy(model)
    copied = {id(root)}
    for name, patches in patch_map.items():
        parts = name.split(".")
        parent = root
        for p in parts[:-1]:
            key = int(p) if isinstance(parent, (list, tuple)) else p
            child = parent[key]
            if id(child) not in copied:
                if isinstance(parent, tuple):
                    raise TypeError(f"cannot patch {name}: the MLX port keeps its layers in a tuple, not a list")
                child = _copy_container(child)
                copied.add(id(child))
                parent[key] = child
            parent = child
        leaf = int(parts[-1]) if isinstance(parent, (list, tuple)) else parts[-1]
        parent[leaf] = _make_patched(parent[leaf], patches, merge)
    return root


def merged_weights(model) -> dict:
    """``{parameter path: array}`` of a (possibly patched) MLX model with every patch applied (tests, export)."""
    from mlx.utils import tree_flatten

    out = {}
    for name, m in model.named_modules():
        if is_patched(m):
            out[f"{name}.weight" if name else "weight"] = m.sf_patched_weight()
    for k, v in tree_flatten(model.parameters()):
        out.setdefault(k, v)
    return out


# -- applying ------------------------------------------------------------------------------


def _as_mx(t):
    if isinstance(t, mx.array):
        return t
    if type(t).__module__.startswith("torch"):  # an in-memory LoRA of torch tensors (or a .pt file)
        t = t.detach().cpu()
        return mx.array(t.float().numpy() if t.is_floating_point() else t.numpy())
    return mx.array(np.asarray(t))


def _getter(tensors):
    cache = {}

    def get(key):
        if key not in cache:
            cache[key] = _as_mx(tensors[key])
        return cache[key]

    return get


def _is_module(m) -> bool:
    return isinstance(m, nn.Module)


def apply_loras(handle, specs, *, merge: bool = False):
    """MLX implementation of :func:`spriteforge.lora.apply_loras` (specs already normalised).

    ``handle.transformer`` and the MLX modules in ``handle.text_encoders`` are patched; the
    returned handle records an :class:`~spriteforge.lora.apply.AppliedLoRA` per spec.
    """
    if handle.transformer is not None and not _is_module(handle.transformer):
        from ...errors import BAD_INPUT

        raise SpriteForgeError(BAD_INPUT, f"this model's transformer is a {type(handle.transformer).__name__}, not an MLX "
                               "model, so the MLX engine cannot apply LoRAs to it. Load the model with engine 'mlx' "
                               "(or apply the LoRA on the engine that loaded it).")
    t0 = time.perf_counter()
    tr_shapes = layer_shapes(handle.transformer) if _is_module(handle.transformer) else None
    te_shapes = {k: layer_shapes(v) for k, v in (handle.text_encoders or {}).items() if _is_module(v)}
    tr_maps, te_maps, records = plan_specs(handle, specs, ops=mlx_ops(), getter=_getter, transformer_shapes=tr_shapes,
                                           text_encoder_shapes=te_shapes, log=log)
    new_tr = patched_copy(handle.transformer, tr_maps, merge=merge) if tr_maps else handle.transformer
    new_te = dict(handle.text_encoders or {})
    for comp, pm in te_maps.items():
        new_te[comp] = patched_copy(new_te[comp], pm, merge=merge)
    log.debug("applied %d LoRA(s) in %.3fs", len(records), time.perf_counter() - t0)
    return dc_replace(handle, transformer=new_tr, text_encoders=new_te, loras=tuple(handle.loras) + tuple(records))
