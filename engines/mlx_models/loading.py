"""Load DiT models onto MLX from the same files the torch engine takes.

Public entry point: :func:`load_model` (``MLXEngine.load_model`` calls it); also
:func:`load_vae`, :func:`load_text_encoder`, :func:`available_families`, :func:`missing_ports`.

A file means the same on both engines: detection is :mod:`spriteforge.models.detect`, which file
and which part of it is :mod:`..model_files` (shared with the torch loader), the tensors are opened
by :func:`..torch_models.tensors.open_tensors` (memory-mapped safetensors views, or a
``weights_only`` pickle), original layouts are renamed by the torch converters
(:mod:`..torch_models.convert`), tokenizers are found by :mod:`..tokenizers`, and the handle's
fields come from :func:`spriteforge.engines.base.handle_fields`. torch is used here only to read
and rename tensors while loading; nothing of it is kept, and sampling never touches it.

This loads the source files; ``MLXEngine.load_model`` goes through :func:`.cache.load_model`, which
takes a converted cache (``spriteforge convert --engine mlx``) when there is one and calls this
module's :func:`load_model` otherwise.

Loading is lazy, then evaluated block by block (:func:`build`): a tensor of a safetensors file (the
torch view the converters renamed, split or reshaped) becomes an unevaluated mx array over the same bytes
(``mx.load`` of the file, the view's offset and strides by ``mx.as_strided``: :class:`_LazySource`), cast to
the engine's weight dtype, mapped by the port's ``map_weights`` and put into the port (its random initial
parameters are lazy too and never computed) with :func:`layers.load_weights`; then the port's parameters are
evaluated one block at a time (:func:`eval_blocks`), each read from the file straight into MLX memory (the file's
mapping is never touched, so its pages add nothing), so the peak is the loaded model plus one block's
temporaries (fp8 e4m3fn is upcast by ``mx.from_fp8``, exactly). A tensor the converters made anew (a concatenation),
a GGUF or ComfyUI-quantized weight, fp8 e5m2 and pickle files are made eagerly instead (bf16 through an int16 view, fp8
upcast), in groups of 32. What each
load did is on the model: ``model._sf_load`` (:class:`LoadRecord`).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import weakref
from pathlib import Path

import numpy as np

from ...errors import BAD_INPUT, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ...log import get_logger
from ...models import keymaps
from ...models.families import registry
from ...models.families.base import TEXT_ENCODER_PORTS, VAE_PORTS, VISION_TOWERS
from ..base import ModelHandle
from ..model_files import (
    MODEL_KINDS,
    TRANSFORMER_CLASSES,
    checkpoint_text_encoders,
    clip_with_projection,
    coded_errors,
    diffusion_folder,
    diffusion_model_in,
    dtype_name,
    folder_config,
    folder_text_encoders,
    Parts,
    complete,
    resolve,
    text_encoder_in,
    text_encoder_key,
    vae_config_for,
    vae_folder,
    vae_in,
)
from ..tokenizers import find_tokenizer, folder_tokenizer

log = get_logger("mlx")

# port key -> (module in engines/mlx_models, class name): each family's transformer (the family names its port
# module, :mod:`spriteforge.models.families`), then the shared VAE and text-encoder ports
PORTS = {
    **{f.name: (f.mlx_port, f.transformer_class) for f in registry.families()},
    "vae": ("vae", "AutoencoderKL"),
    "vae_flux2": ("vae", "AutoencoderKLFlux2"),
    "dcae": ("dcae", "AutoencoderDC"),
    "vae_qwenimage": ("vae_qwenimage", "AutoencoderKLQwenImage"),
    "vae_qwenimage21": ("vae_qwenimage21", "AutoencoderKLQwenImage21"),
    "t5": ("t5", "T5EncoderModel"),
    "clip": ("clip", "CLIPTextModel"),
    "gemma": ("gemma", "Gemma2Model"),
    "decoder_lm": ("decoder_lm", "DecoderLM"),
    "qwen_vision": ("qwen_vision", "VisionTower"),  # a text encoder's vision tower (VISION_TOWERS: Qwen-Image-Edit)
}
# what each family needs on MLX: its transformer, its VAE, its text encoders
FAMILY_PORTS = {f.name: f.mlx_ports() for f in registry.families()}
TE_PORT = TEXT_ENCODER_PORTS
VAE_PORT = VAE_PORTS

_port_cache: dict = {}


def port(key: str):
    """``(class, map_weights)`` of a port; ImportError/AttributeError when it is not there (yet)."""
    if key not in _port_cache:
        mod_name, cls_name = PORTS[key]
        mod = importlib.import_module(f"{__package__}.{mod_name}")
        _port_cache[key] = (getattr(mod, cls_name), getattr(mod, "map_weights"))
    return _port_cache[key]


def _port_ok(key: str) -> bool:
    try:
        port(key)
        return True
    except Exception as exc:  # noqa: BLE001 - a missing or broken port file: the family is not offered
        log.debug("MLX port %s is not usable: %s", key, exc)
        return False


def missing_ports(family: str) -> list[str]:
    """The port modules (``engines/mlx_models/<name>.py``) ``family`` needs that do not import."""
    return [f"{PORTS[k][0]}.py:{PORTS[k][1]}" for k in FAMILY_PORTS.get(family, ()) if not _port_ok(k)]


def available_families(order=None) -> tuple[str, ...]:
    """The families whose every port imports, in ``order`` (the engines' FAMILIES)."""
    from ..base import FAMILIES

    return tuple(f for f in (order or FAMILIES) if not missing_ports(f))


def _require(family: str, path) -> None:
    if family not in FAMILY_PORTS:
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{Path(str(path)).name}: family {family!r} is not supported.")
    missing = missing_ports(family)
    if missing:
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            f"{Path(str(path)).name} is a {family} model, and the MLX engine has no port of {', '.join(missing)} for it. "
            "Choose engine 'torch' in the loader (on a Mac it runs on MPS).",
            details={"family": family, "missing_ports": missing},
        )


# --------------------------------------------------------------------------- tensors -> mx


def _mx():
    import mlx.core as mx

    return mx


def mx_dtype(name: str):
    mx = _mx()
    return {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}[dtype_name(str(name).replace("mlx.core.", ""))]


def to_mx(t, dtype=None):
    """A torch tensor as an mx array (bf16 through an int16 view, fp8 upcast), floats cast to ``dtype``."""
    import torch

    from ..torch_models.quant import QTensor

    mx = _mx()
    if isinstance(t, QTensor):  # a quantized weight (GGUF, ComfyUI's formats): decoded once, while loading
        t = t.dequantize(torch.float32)
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        a = mx.array(np.ascontiguousarray(t.contiguous().view(torch.int16).numpy())).view(mx.bfloat16)
    elif t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        a = mx.array(np.ascontiguousarray(t.to(torch.float32).numpy()))
    elif t.dtype == torch.bool:
        a = mx.array(np.ascontiguousarray(t.numpy()))
    else:
        a = mx.array(np.ascontiguousarray(t.numpy()))
    if dtype is not None and mx.issubdtype(a.dtype, mx.floating) and a.dtype != dtype:
        a = a.astype(dtype)
    return a


# MLX-quantized weights (``spriteforge convert --engine mlx --quantize 4|8``): mlx.nn.quantize's group size
QUANT_GROUP = 64
# GGUF types MLX's affine layers (``w = scale * q + bias``, groups of 32) hold exactly: bits each
GGUF_AFFINE = {"q4_0": 4, "q4_1": 4, "q8_0": 8}


def _affine_ok(v, dtype) -> bool:
    """A GGUF weight MLX can hold as its own quantized layer exactly: Q4_0/Q4_1/Q8_0 rows, and a weight dtype
    (float32 or float16) that holds GGUF's float16 block scales exactly (bfloat16 does not: decoded instead)."""
    from ..torch_models.quant import QTensor

    mx = _mx()
    return (isinstance(v, QTensor) and v.fmt in GGUF_AFFINE and v.rows_ok and v.ndim == 2
            and dtype in (mx.float32, mx.float16))


def gguf_affine(v, dtype):
    """``(packed uint32 weight, scales, biases, bits)`` of a GGUF Q4_0/Q4_1/Q8_0 weight as MLX's affine quantization
    with groups of 32 (one GGUF block a group). The values come from the gguf package's decoding; only each block's
    float16 scale fields are read here (``d`` first; Q4_1's ``m`` after it): Q4_0 ``w = d(q - 8)`` is scale ``d``, bias
    ``-8d``; Q4_1 ``w = dq + m`` is scale ``d``, bias ``m``; Q8_0 ``w = dq`` (q signed) is ``q + 128`` with bias
    ``-128d``. Every product and sum is exact in float32, so the layer computes the weights GGUF decodes to."""
    mx = _mx()
    bits = GGUF_AFFINE[v.fmt]
    raw = v.data.detach().cpu().numpy()
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, {"q4_0": 18, "q4_1": 20, "q8_0": 34}[v.fmt])
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if v.fmt == "q4_1" else None
    w = v.dequantize(None).float().numpy().reshape(rows, -1, 32)
    offset = {"q4_0": 8, "q8_0": 128}.get(v.fmt, 0)
    base = m if m is not None else -offset * d
    safe = np.where(d == 0, 1, d)[..., None]
    q = np.where(d[..., None] == 0, offset, np.rint((w - base[..., None]) / safe)).astype(np.uint32)
    per = 32 // bits
    q = q.reshape(rows, -1, per)
    packed = np.zeros(q.shape[:2], np.uint32)
    for k in range(per):
        packed |= q[..., k] << np.uint32(bits * k)
    return mx.array(packed), mx.array(d).astype(dtype), mx.array(base).astype(dtype), bits


def _quantized_layer(model, path: str, bits: int, in_dims: int, out_dims: int) -> None:
    """Put an ``nn.QuantizedLinear`` (groups of 32) in place of the ``nn.Linear`` at ``path`` of ``model``."""
    import mlx.nn as nn

    parts = path.split(".")
    parent = model
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, (list, tuple)) else parent[part]
    leaf = int(parts[-1]) if isinstance(parent, (list, tuple)) else parts[-1]
    old = parent[leaf]
    if not isinstance(old, nn.Linear):
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{path} is not a linear layer in the MLX port, but the file "
                               "quantizes it as one. Load the file with engine 'torch'.")
    parent[leaf] = nn.QuantizedLinear(in_dims, out_dims, bias="bias" in old, group_size=32, bits=bits)


def quantize_model(model, bits: int, group_size: int = QUANT_GROUP):
    """``model``'s ``Linear`` layers (those whose input width the group size divides) as MLX's affine-quantized
    layers (``mlx.nn.quantize``); the rest stays as it is. Returns the model."""
    import mlx.nn as nn

    if bits not in (4, 8):
        raise SpriteForgeError(BAD_INPUT, f"--quantize {bits}: MLX-quantized caches hold 4 or 8 bits. Use 4 or 8.")
    nn.quantize(model, group_size=group_size, bits=bits,
                class_predicate=lambda _, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % group_size == 0)
    return model


# torch dtype name -> the mx dtype mx.load gives a safetensors tensor of it; fp8 e4m3fn comes back as its bytes (uint8),
# upcast exactly by ``mx.from_fp8`` (e5m2, which MLX does not decode, is made eagerly)
_LAZY_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "int64": "int64", "int32": "int32",
                "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool", "float8_e4m3fn": "uint8"}


class _LazySource:
    """The tensors of one open safetensors file as unevaluated mx arrays (``mx.load``: each read from the file when
    first evaluated), and :meth:`array`: the mx array of the same bytes as a torch view of the file's mapping."""

    def __init__(self, source, arrays: dict):
        self.spans = sorted((*i.offsets, name) for name, i in source.header.stored.items())
        self.starts = [b for b, _, _ in self.spans]
        self.base = source._base
        self.arrays = arrays

    def array(self, t):
        """The lazy mx array of the torch view ``t`` (bytes ``offset`` on of the mapping), or None when ``t`` does
        not lie within one stored tensor of the same dtype."""
        import bisect

        mx = _mx()
        size = t.element_size()
        offset = t.storage_offset() * size - self.base
        i = bisect.bisect_right(self.starts, offset) - 1
        if i < 0:
            return None
        b, e, name = self.spans[i]
        stored, dtype = self.arrays.get(name), str(t.dtype).replace("torch.", "")
        if stored is None or not t.numel() or dtype not in _LAZY_DTYPES or (offset - b) % size:
            return None
        if dtype == "float8_e4m3fn" and not hasattr(mx, "from_fp8"):  # an older MLX
            return None
        if offset + (sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1) * size > e:
            return None
        if str(stored.dtype).replace("mlx.core.", "") != _LAZY_DTYPES[dtype]:
            return None
        a = mx.as_strided(stored, tuple(t.shape), tuple(t.stride()), (offset - b) // size)
        if dtype == "float8_e4m3fn":
            return mx.from_fp8(a, dtype=mx.float32)  # as :func:`to_mx` upcasts it
        return a if t.is_contiguous() else mx.contiguous(a)


def _lazy_sources(sd: dict) -> dict:
    """``{mapping data_ptr: _LazySource}`` for the safetensors files ``sd``'s torch views map (tensor sources whose
    mapping is open: :class:`..torch_models.tensors.SafetensorsFile`)."""
    import torch

    from ..torch_models.tensors import SafetensorsFile

    mx = _mx()
    out: dict = {}
    for src in list(_OPEN):
        storage = getattr(src, "_storage", None)
        if not isinstance(src, SafetensorsFile) or storage is None or src.header.format != "safetensors":
            continue
        ptr = storage.data_ptr()
        if ptr in out or not any(isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == ptr for v in sd.values()):
            continue
        try:
            out[ptr] = _LazySource(src, mx.load(src.path))
        except Exception as exc:  # noqa: BLE001 - a file MLX's reader refuses: its tensors are made eagerly
            log.debug("mx.load(%s) failed (%s): reading its tensors eagerly", src.path, exc)
    return out


def _lazy_mx_dict(sd: dict, dtype, what: str, record: LoadRecord) -> dict:
    """mx arrays for a dict of torch tensors: lazy (:class:`_LazySource`) where the tensor is a view of an open
    safetensors file, cast to ``dtype`` (unevaluated: :func:`eval_blocks` evaluates them block by block); the rest
    made eagerly (:func:`_to_mx_dict`)."""
    import torch

    mx = _mx()
    sources = _lazy_sources(sd)
    out, eager = {}, {}
    for k, v in sd.items():
        src = sources.get(v.untyped_storage().data_ptr()) if sources and isinstance(v, torch.Tensor) else None
        a = src.array(v) if src is not None else None
        if a is None:
            eager[k] = v
            continue
        if dtype is not None and mx.issubdtype(a.dtype, mx.floating) and a.dtype != dtype:
            a = a.astype(dtype)
        out[k] = a
    sources.clear()  # no reference to the file's loaded arrays is kept: each is freed once its block is evaluated
    record.lazy, record.eager = len(out), len(eager)
    if eager:
        out.update(_to_mx_dict(eager, dtype, what))
    return {k: out[k] for k in sd if k in out}


def _to_mx_dict(sd: dict, dtype, what: str = "model") -> dict:
    """mx arrays for a dict of torch views, made and evaluated in groups of 32 (a Progress step each:
    also the interrupt point), so the peak stays near one copy of the weights."""
    from ...progress import Progress

    mx = _mx()
    out = {}
    items = list(sd.items())
    step = 32
    with Progress(max(1, (len(items) + step - 1) // step), f"loading {what}") as bar:
        for i in range(0, len(items), step):
            group = []
            for k, v in items[i:i + step]:
                out[k] = to_mx(v, dtype)
                group.append(out[k])
            mx.eval(group)
            bar.update()
    return out


def build(key: str, config: dict, sd_torch: dict, dtype, what: str, native: bool = False):
    """The port ``key`` built from ``config``, filled strictly with the torch-named ``sd_torch``, evaluated.
    ``native``: GGUF Q4_0/Q4_1/Q8_0 Linear weights become MLX quantized layers where that is exact (:func:`gguf_affine`)."""
    from . import layers

    mx = _mx()
    cls, map_weights = port(key)
    start = mx.get_active_memory()
    model = cls(dict(config))  # its random initial parameters are lazy: replaced below before anything evaluates them
    record = LoadRecord()
    record.start, record.init = start, mx.get_active_memory() - start
    # what the converted cache (cache.py) needs to rebuild this component: port, config, the file's storage dtype
    object.__setattr__(model, "_sf_port", (key, dict(config), _storage_dtype(sd_torch)))
    affine = {k: gguf_affine(v, dtype) for k, v in sd_torch.items() if native and _affine_ok(v, dtype)}
    mxd = _lazy_mx_dict({k: v for k, v in sd_torch.items() if k not in affine}, dtype, what, record)
    mxd.update({k: a[0] for k, a in affine.items()})
    weights = map_weights(mxd)
    by_id = {id(a[0]): a for a in affine.values()}
    if affine and not all(any(v is a[0] for v in weights.values()) for a in affine.values()):
        return build(key, config, sd_torch, dtype, what, native=False)  # a port that reshapes weights: decoded instead
    sd_torch.clear()
    for k in [k for k, v in weights.items() if id(v) in by_id]:
        packed, scales, biases, bits = by_id[id(weights[k])]
        path = k[: -len(".weight")]
        _quantized_layer(model, path, bits, int(packed.shape[1]) * 32 // bits, int(packed.shape[0]))
        weights[path + ".scales"], weights[path + ".biases"] = scales, biases
    layers.load_weights(model, weights, what=what)
    del weights, mxd
    record.before_eval = mx.get_active_memory() - start
    eval_blocks(model, what, record)
    object.__setattr__(model, "_sf_load", record)
    model.eval()
    return model


class LoadRecord:
    """What one :func:`build` did: ``lazy`` tensors read straight from the file when evaluated, ``eager`` ones made
    while mapping (see the module note), and ``groups``: the bytes of each parameter group :func:`eval_blocks`
    evaluated, in order (``len(groups)`` evaluations; no one of them the whole model). From MLX's own count of the
    bytes it holds (``mx.get_active_memory``): ``init``, what the port's construction made (0 when its random initial
    parameters stay lazy: they are replaced before anything evaluates them); ``before_eval``, what was made before the
    per-block evaluation began (0 when every tensor is lazy); ``held``, after each group, what is held beyond the
    parameters evaluated so far and ``before_eval`` (0 when a block's source tensors and casts are freed once it is
    evaluated)."""

    def __init__(self):
        self.lazy = 0
        self.eager = 0
        self.groups: list[int] = []
        self.start = 0
        self.init = 0
        self.before_eval = 0
        self.held: list[int] = []

    def __repr__(self):
        return (f"LoadRecord(lazy={self.lazy}, eager={self.eager}, groups={len(self.groups)}, largest={max(self.groups, default=0)}, "
                f"init={self.init}, before_eval={self.before_eval}, held={max(self.held, default=0)})")


def block_groups(model) -> list[list]:
    """``model``'s parameters as ``[[(name, array), ...], ...]``, one list per block: a parameter belongs to the
    module path up to the first numeric index of its name (``transformer_blocks.3``, ``encoder.block.5``,
    ``decoder.up_blocks.1``); one without an index to its top-level module (``pos_embed``, ``norm_out``)."""
    from mlx.utils import tree_flatten

    groups: dict = {}
    for name, arr in tree_flatten(model.parameters()):
        parts = name.split(".")
        cut = next((i for i, part in enumerate(parts[:-1]) if part.isdigit()), None)
        key = ".".join(parts[: cut + 1]) if cut is not None else parts[0]
        groups.setdefault(key, []).append((name, arr))
    return list(groups.values())


def eval_blocks(model, what: str = "model", record: LoadRecord | None = None) -> None:
    """Evaluate ``model``'s (lazy) parameters one block at a time (:func:`block_groups`; a Progress step each, also
    the interrupt point), so only one block's source tensors and casts exist at once; MLX's cache of freed buffers
    is emptied afterwards."""
    from ...progress import Progress

    mx = _mx()
    groups = block_groups(model)
    with Progress(max(1, len(groups)), f"loading {what}") as bar:
        for group in groups:
            arrays = [a for _, a in group]
            mx.eval(arrays)
            if record is not None:
                record.groups.append(sum(a.nbytes for a in arrays))
                record.held.append(mx.get_active_memory() - record.start - record.before_eval - sum(record.groups))
            del arrays, group
            bar.update()
    mx.clear_cache()


def _storage_dtype(sd_torch: dict) -> str:
    """The floating dtype most of ``sd_torch``'s elements are stored in (fp8 -> float16, which holds it exactly)."""
    import torch

    count: dict = {}
    for v in sd_torch.values():
        if getattr(v, "is_floating_point", lambda: False)():
            name = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float8_e4m3fn: "float16",
                    torch.float8_e5m2: "float16"}.get(v.dtype, "float32")
            count[name] = count.get(name, 0) + v.numel()
    return max(count, key=count.get) if count else "float32"


# --------------------------------------------------------------------------- configs


def full_config(class_name: str, cfg: dict) -> dict:
    """``cfg`` completed with the diffusers class's defaults: what ``dict(model.config)`` holds on torch."""
    from ..torch_models.building import diffusers_class

    cls = diffusers_class(class_name)
    out = {}
    for name, prm in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or prm.kind in (prm.VAR_KEYWORD, prm.VAR_POSITIONAL):
            continue
        if prm.default is not inspect.Parameter.empty:
            out[name] = prm.default
    for k, v in cfg.items():
        if not k.startswith("_") and (k in out or not out):
            out[k] = v
    # tuples as diffusers' FrozenDict would give them back from JSON: lists are fine for the ports
    return out


def _te_config(key: str, cfg: dict) -> dict:
    import transformers

    from ..torch_models.text_encoders import decoder_config, is_decoder

    if is_decoder(key):
        return decoder_config(cfg).to_dict()
    cfg = {k: v for k, v in cfg.items() if k != "model_type"}
    conf = {"clip_l": transformers.CLIPTextConfig, "clip_g": transformers.CLIPTextConfig, "t5": transformers.T5Config,
            "gemma": transformers.Gemma2Config}[key](**cfg)
    return conf.to_dict()


# --------------------------------------------------------------------------- tensor sources


class FolderTensors:
    """The weight files of one diffusers/transformers component folder as one tensor source."""

    def __init__(self, folder: Path):
        from ...models.detect import weight_files
        from ..torch_models.tensors import open_tensors

        files = weight_files(folder)
        if not files:  # older folders: pytorch_model*.bin, read with torch.load(weights_only=True) like the torch engine
            files = sorted(folder.glob("*.bin"))
        if not files:
            raise SpriteForgeError(BAD_INPUT, f"{folder} holds no weight files (.safetensors or .bin). "
                                   "Put the component's weights there, or load the model from another copy.")
        self.path = str(folder)
        self.sources = [open_tensors(f) for f in files]
        self.tensors = {}
        self._where = {}
        for s in self.sources:
            for k, info in s.tensors.items():
                self.tensors[k] = info
                self._where[k] = s

    def keys(self):
        return self.tensors.keys()

    def get(self, name, dtype, device):
        return self._where[name].get(name, dtype, device)

    def close(self):
        for s in self.sources:
            s.close()


@contextlib.contextmanager
def _folder_weights(folder: Path):
    """The weights of a component folder as ``{name: torch view}``, its files closed afterwards."""
    src = FolderTensors(folder)
    try:
        yield _read(src)
    finally:
        src.close()


# the tensor sources :func:`_read` read from, while they are open: :func:`_lazy_sources` finds a view's file here
_OPEN: "weakref.WeakSet" = weakref.WeakSet()


def _read(source, prefix: str = "", skip=()) -> dict:
    """``{key without prefix: torch view}`` (no copy for safetensors)."""
    import torch

    for s in getattr(source, "sources", (source,)):
        _OPEN.add(s)
    cpu = torch.device("cpu")
    out = {}
    for k in list(source.keys()):
        if k.startswith(prefix) and not any(k.endswith(s) for s in skip):
            out[k[len(prefix):]] = source.get(k, None, cpu)
    return out


# --------------------------------------------------------------------------- components


def _transformer(det, sd: dict, wdt, config: dict | None = None, native: bool = False):
    from ..torch_models import convert

    cfg = full_config(TRANSFORMER_CLASSES[det.family], config if config is not None else det.config)
    sd = convert.convert_transformer(det.family, sd, det.layout)
    model = build(det.family, cfg, sd, wdt, f"{det.family} transformer", native=native)
    return model, cfg


def _vae(cfg: dict, sd: dict, layout: str, variant: str, vdt):
    from ..torch_models import convert

    cls_name = cfg.get("_class_name") or ("AutoencoderDC" if "encoder_block_types" in cfg else "AutoencoderKL")
    key = VAE_PORT.get(cls_name)
    if key is None:
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"VAE class {cls_name!r} has no MLX port. Load the model with engine 'torch'.")
    full = full_config(cls_name, cfg)
    full["_class_name"] = cls_name
    sd = convert.convert_vae(variant or "", sd, layout, cfg)
    return build(key, full, sd, vdt, "VAE"), full


def _te_expected_keys(key: str, conf_dict: dict, with_proj: bool) -> set:
    """The transformers class's own state-dict keys (built on the meta device: no memory)."""
    import transformers
    from accelerate import init_empty_weights

    cfg = {k: v for k, v in conf_dict.items()}
    if key in ("clip_l", "clip_g"):
        conf = transformers.CLIPTextConfig(**cfg)
        cls = transformers.CLIPTextModelWithProjection if with_proj else transformers.CLIPTextModel
    elif key == "t5":
        conf = transformers.T5Config(**cfg)
        cls = transformers.T5EncoderModel
    else:
        conf = transformers.Gemma2Config(**cfg)
        cls = transformers.Gemma2Model
    with init_empty_weights():
        m = cls(conf)
    return set(m.state_dict())


def _text_encoder(key: str, conf_dict: dict, sd: dict, tdt, family, archs=(), vision: dict | None = None):
    import torch

    from ..torch_models import convert
    from ..torch_models.text_encoders import is_decoder

    if is_decoder(key):  # the port's own map_weights takes a ...ForCausalLM state dict as it is (head, vision tower unread)
        tower = None
        if key in VISION_TOWERS and isinstance(vision, dict):
            vis = {k[k.index("visual.") + len("visual."):]: v for k, v in sd.items() if k.startswith(("visual.", "model.visual."))}
            if vis:
                tower = build(VISION_TOWERS[key], vision, vis, tdt, f"{key} vision tower")
        model = build(TE_PORT[key], conf_dict, {k: v for k, v in sd.items() if not keymaps.decoder_unused(k)}, tdt, f"{key} text encoder")
        if tower is not None:
            # carried beside the language model, not inside it (the converted cache writes it as its own component)
            object.__setattr__(model, "_sf_visual", tower)
        return model
    with_proj = key in ("clip_l", "clip_g") and clip_with_projection(key, family, archs)
    expected = _te_expected_keys(key, conf_dict, with_proj)
    out = convert.convert_text_encoder(key if key in ("clip_l", "clip_g", "t5", "gemma") else key, sd, expected)
    if key in ("clip_l", "clip_g"):
        if "text_projection.weight" not in expected:
            out.pop("text_projection.weight", None)
        elif "text_projection.weight" not in out:
            # published clip_l has no projection; ComfyUI then uses the identity, so does the torch loader
            hid = int(conf_dict.get("hidden_size", 768))
            proj = int(conf_dict.get("projection_dim", hid))
            out["text_projection.weight"] = torch.eye(proj, hid)
        conf_dict = dict(conf_dict, architectures=["CLIPTextModelWithProjection" if with_proj else "CLIPTextModel"])
    return build(TE_PORT[key], conf_dict, out, tdt, f"{key} text encoder")


def _weight_dtype(engine, dtype):
    name = dtype_name(dtype or engine.policy.weight_dtype)
    if name not in engine.capabilities.dtypes:
        log.info("dtype %s is not available on this MLX device: %s instead", name, engine.policy.weight_dtype)
        name = engine.policy.weight_dtype
    return name


# --------------------------------------------------------------------------- overrides


def load_vae(engine, path, *, family: str | None = None, variant: str | None = None, dtype=None):
    """A VAE from a single file (original or diffusers layout) or a diffusers ``vae`` folder -> (model, config)."""
    from ..torch_models.tensors import open_tensors

    p = resolve(path, ("vae",))
    vdt = mx_dtype(dtype or engine.policy.vae_dtype)
    if p.is_dir():
        sub = vae_folder(p)
        cfg = folder_config(sub)
        with _folder_weights(sub) as sd:
            return _vae(cfg, sd, "diffusers", "", vdt)
    source = open_tensors(p)
    try:
        det, prefix = vae_in(source.tensors, p.name, family)
        cfg = vae_config_for(det, family, variant)
        return _vae(cfg, _read(source, prefix), det.layout, det.variant or "", vdt)
    finally:
        source.close()


def load_text_encoder(engine, path, *, family: str | None = None, hint: str | None = None, dtype=None):
    """One text encoder from a single file or a transformers folder -> (key, model, tokenizer)."""
    from ..torch_models.tensors import open_tensors

    p = resolve(path, ("text_encoders",))
    tdt = mx_dtype(_weight_dtype(engine, dtype or engine.policy.text_encoder_dtype))
    if p.is_dir():
        key = text_encoder_key(folder_config(p), p.name, hint)
        _require_port(TE_PORT[key], p)
        model = _folder_te(p, key, tdt, family)
        return key, model, find_tokenizer(key, p)
    source = open_tensors(p)
    try:
        det, prefix = text_encoder_in(source.tensors, p.name, hint)
        _require_port(TE_PORT[det.variant], p)
        sd = _read(source, prefix, skip=("spiece_model",))
        model = _text_encoder(det.variant, _te_config(det.variant, det.config), sd, tdt, family, vision=det.config.get("vision_config"))
        tok = find_tokenizer(det.variant, p, source=source)
        return det.variant, model, tok
    finally:
        source.close()


def _require_port(key: str, p) -> None:
    if not _port_ok(key):
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{Path(str(p)).name}: the MLX engine has no port of "
                               f"{PORTS[key][0]}.py:{PORTS[key][1]} yet. Choose engine 'torch' in the loader.",
                               details={"missing_ports": [f"{PORTS[key][0]}.py:{PORTS[key][1]}"]})


def _folder_te(folder: Path, key: str, tdt, family, archs=None):
    import transformers

    archs = archs if archs is not None else (folder_config(folder).get("architectures") or [])
    full = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True).to_dict()
    conf = full.get("text_config") or full  # a vision-language model (Qwen2.5-VL): its language model's config
    with _folder_weights(folder) as sd:
        return _text_encoder(key, conf, sd, tdt, family, archs, vision=full.get("vision_config"))


# --------------------------------------------------------------------------- entry point


def load_model(engine, path, *, vae=None, text_encoders=(), dtype=None) -> ModelHandle:
    """Load a DiT model (file or diffusers folder) with its VAE and text encoders onto MLX, from its own files.

    Takes exactly what :func:`spriteforge.engines.torch_models.loading.load_model` takes; every
    failure is a :class:`SpriteForgeError` (a family without an MLX port: UNSUPPORTED_ARCHITECTURE).
    A converted cache is not looked for here: :func:`.cache.load_model` does that first.
    """
    p = resolve(path, MODEL_KINDS)
    with coded_errors(f"loading {p.name} on MLX"):
        return _load_model(engine, p, vae=vae, text_encoders=text_encoders, dtype=dtype)


def _load_model(engine, p: Path, *, vae=None, text_encoders=(), dtype=None, all_dtype=None) -> ModelHandle:
    """``all_dtype``: every component (VAE and text encoders too) in that dtype (the converter loads in float32)."""
    wname = _weight_dtype(engine, all_dtype or dtype)
    wdt = mx_dtype(wname)
    vdt = mx_dtype(all_dtype or engine.policy.vae_dtype)
    tdt = mx_dtype(_weight_dtype(engine, all_dtype or dtype or engine.policy.text_encoder_dtype))
    # GGUF Q4_0/Q4_1/Q8_0 as MLX quantized layers, except when converting (the cache holds plain or --quantize layers)
    parts = _from_folder(p, vae, wdt, vdt, tdt) if p.is_dir() else _from_file(p, vae, wdt, vdt, tdt, native=all_dtype is None)
    te_dtype = all_dtype or dtype or engine.policy.text_encoder_dtype
    return complete(engine, p, parts, vae=vae, text_encoders=text_encoders,
                    load_vae=lambda path, **kw: load_vae(engine, path, dtype=all_dtype, **kw),
                    load_text_encoder=lambda path, **kw: load_text_encoder(engine, path, dtype=te_dtype, **kw),
                    dtype=wname)


def _check_config(class_name: str, folder: Path) -> None:
    """The torch engine's check that ``folder/config.json`` describes its weights (on the meta device, nothing
    allocated): a config far larger than the weights is BAD_INPUT naming the file on both engines."""
    from ..torch_models.building import diffusers_class
    from ..torch_models.loading import check_config_fits_weights

    check_config_fits_weights(diffusers_class(class_name), folder)


def _from_folder(p: Path, vae, wdt, vdt, tdt) -> Parts:
    det = diffusion_folder(p)
    _require(det.family, p)
    if det.kind != "diffusers":  # a transformer component folder
        det.layout = det.layout or "diffusers"
        tcfg = folder_config(p)
        _check_config(TRANSFORMER_CLASSES[det.family], p)
        with _folder_weights(p) as sd:
            return Parts(det, *_transformer(det, sd, wdt, tcfg))
    tdir = p / "transformer"
    tcfg = folder_config(tdir)
    _check_config(TRANSFORMER_CLASSES[det.family], tdir)
    with _folder_weights(tdir) as sd:
        parts = Parts(det, *_transformer(det, sd, wdt, tcfg))
    index = json.loads((p / "model_index.json").read_text())
    if (p / "vae" / "config.json").exists() and vae is None:
        vcfg = folder_config(p / "vae")
        _check_config(vcfg.get("_class_name", "AutoencoderKL"), p / "vae")
        with _folder_weights(p / "vae") as sd:
            parts.vae, parts.vae_config = _vae(vcfg, sd, "diffusers", "", vdt)
    for sub, key, cls_name in folder_text_encoders(p, det.family, index):
        parts.text_encoders[key] = _folder_te(p / sub, key, tdt, det.family, [cls_name])
        parts.tokenizers[key] = folder_tokenizer(p, sub, index)
    return parts


def _from_file(p: Path, vae, wdt, vdt, tdt, native: bool = False) -> Parts:
    from ..torch_models.tensors import open_tensors

    source = open_tensors(p)
    try:
        det = diffusion_model_in(source.tensors, p)
        _require(det.family, p)
        prefix = det.components.get("transformer", "")
        fp8 = sorted({i.dtype for k, i in source.tensors.items() if k.startswith(prefix) and i.dtype.startswith("float8")})
        stored = getattr(getattr(source, "header", None), "quant", {})
        quantized = sorted({q.format for k, q in stored.items() if k.startswith(prefix)})
        parts = Parts(det, *_transformer(det, _read(source, prefix), wdt, native=native))
        if fp8:
            parts.extras["fp8_upcast"] = fp8[0]  # MLX keeps no fp8: the weights are upcast once while loading
        if quantized:  # GGUF / ComfyUI's formats: decoded once while loading, or MLX quantized layers (gguf_affine)
            parts.extras["quantized_formats"] = quantized
            native_layers = sum(1 for _, m in parts.transformer.named_modules() if type(m).__name__ == "QuantizedLinear")
            if native_layers:
                parts.extras["mlx_quantized_layers"] = native_layers
        if "vae" in det.parts and vae is None:
            vd = det.parts["vae"]
            parts.vae, parts.vae_config = _vae(vae_config_for(vd, det.family, det.variant), _read(source, det.components["vae"]),
                                               vd.layout, vd.variant or "", vdt)
        for comp, sub, te_prefix in checkpoint_text_encoders(det):
            sd = _read(source, te_prefix, skip=("spiece_model",))
            parts.text_encoders[comp] = _text_encoder(comp, _te_config(comp, sub.config), sd, tdt, det.family)
            parts.tokenizers[comp] = find_tokenizer(comp, p, source=source, required=False)
    finally:
        source.close()
    return parts


__all__ = ["load_model", "load_vae", "load_text_encoder", "available_families", "missing_ports", "port", "to_mx",
           "full_config", "PORTS", "FAMILY_PORTS"]
