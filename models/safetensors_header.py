"""Read a safetensors header without touching the tensor data.

A safetensors file is ``<u64 little-endian N><N bytes of JSON><data>``. The JSON maps
each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into
the data part) plus an optional ``"__metadata__"`` string map. Reading it costs one
``read`` of ``8 + N`` bytes, so it is instant on a multi-gigabyte file.

Everything is validated: a truncated file, a header that is not JSON, offsets past the
end of the file, or a size that disagrees with dtype x shape raise ``BAD_INPUT`` with
the file name, so a damaged download is reported before anything is loaded.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError
from .gguf import QUANT_DTYPES as GGUF_QUANT_DTYPES
from .gguf import read_gguf

# safetensors dtype code -> (canonical name, bytes per element)
DTYPES: dict[str, tuple[str, float]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "U16": ("uint16", 2),
    "U32": ("uint32", 4),
    "U64": ("uint64", 8),
    "F4": ("float4_e2m1fn_x2", 0.5),
    "F8_E8M0": ("float8_e8m0fnu", 1),
}
# short names used in the reference manifests and elsewhere -> canonical
ALIASES = {
    "f64": "float64",
    "f32": "float32",
    "f16": "float16",
    "bf16": "bfloat16",
    "fp32": "float32",
    "fp16": "float16",
    "f8_e4m3": "float8_e4m3fn",
    "f8_e5m2": "float8_e5m2",
    "fp8_e4m3fn": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
    "i64": "int64",
    "i32": "int32",
    "u8": "uint8",
    "bool": "bool",
}
FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"}
MAX_HEADER = 100 * 1024 * 1024  # the format's own limit is 100 MB


def canonical_dtype(name: str) -> str:
    """``"BF16"``, ``"bf16"``, ``"bfloat16"`` -> ``"bfloat16"``."""
    if name in DTYPES:
        return DTYPES[name][0]
    low = name.lower()
    return ALIASES.get(low, low)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # canonical name ("bfloat16")
    shape: tuple[int, ...]
    offsets: tuple[int, int] = (0, 0)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n


@dataclass(frozen=True)
class QuantInfo:
    """How one quantized weight is stored: ``format`` (a :data:`QUANT_DTYPES` name), the stored tensor ``weight``,
    its companion tensors by role (``scale``, ``scale_2``: keys of :attr:`Header.stored`) and the layer's JSON
    ``params`` (ConvRot's group size)."""
    format: str
    weight: TensorInfo
    shape: tuple = ()  # the logical shape
    aux: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


@dataclass
class Header:
    """A weights file's table of tensors. ``tensors`` is the file as a model sees it: a quantized weight is one
    entry with its logical shape and its format as ``dtype`` (``nvfp4``, ``q4_k``...), its scales and markers are
    not listed; ``quant`` says how each such weight is stored and ``stored`` holds every stored tensor by name."""
    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict = field(default_factory=dict)
    file_size: int = 0
    header_size: int = 0
    format: str = "safetensors"
    quant: dict = field(default_factory=dict)
    stored: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.stored:
            self.stored = dict(self.tensors)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}


def _bad(path, what: str) -> SpriteForgeError:
    return SpriteForgeError(
        BAD_INPUT,
        f"{Path(path).name} is not a valid safetensors file: {what}. The file is truncated or damaged: download or export "
        "it again.",
        details={"path": str(path)},
    )


# what a file that is not safetensors starts with: (magic, what it is)
OTHER_FORMATS = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"GGUF", "a GGUF file"), (b"PK\x03\x04", "a zip archive (PyTorch's .pt/.ckpt pickles are zip archives)"),
    (b"version https://git-lfs", "a Git LFS pointer (the repository was cloned without its large files)"),
    (b"<!DOCTYPE", "a web page"), (b"<html", "a web page"), (b"<!doctype", "a web page"),
) + tuple((b"\x80" + bytes([v]), "a Python pickle") for v in range(2, 6))


def _refuse_other_format(p: Path, head: bytes) -> None:
    """Raise a true message when ``head`` (a file's first bytes) is a format other than safetensors (and GGUF,
    which :func:`read_header` reads); return otherwise."""
    for magic, what in OTHER_FORMATS:
        if head.startswith(magic) and magic != b"GGUF":
            raise SpriteForgeError(BAD_INPUT, f"{p.name} is {what}, not a safetensors or GGUF file. SpriteForge loads "
                                   ".safetensors and .gguf files and diffusers folders: give the model's .safetensors "
                                   "or .gguf file.", details={"path": str(p), "format": what})


def _whole(value) -> bool:
    """A JSON integer (not a float such as ``1e999``, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_info(p: Path, name: str, info) -> TensorInfo:
    """One header entry, checked field by field: a dtype the format knows, a shape of whole sizes, and
    ``data_offsets`` ``[begin, end]`` exactly dtype x shape bytes apart."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise _bad(p, f"entry {name!r} is malformed (it needs dtype, shape and data_offsets)")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in DTYPES:
        raise _bad(p, f"tensor {name!r} has unknown dtype {str(code)[:40]!r}")
    if not isinstance(shape, list) or not all(_whole(s) and s >= 0 for s in shape):
        raise _bad(p, f"tensor {name!r} has a shape that is not a list of whole non-negative sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(o) for o in offsets) \
            or not 0 <= offsets[0] <= offsets[1]:
        raise _bad(p, f"tensor {name!r} has data_offsets that are not two whole numbers 0 <= begin <= end")
    ti = TensorInfo(DTYPES[code][0], tuple(shape), (offsets[0], offsets[1]))
    want = ti.numel * DTYPES[code][1]
    if offsets[1] - offsets[0] != want:
        raise _bad(p, f"tensor {name!r} occupies {offsets[1] - offsets[0]} bytes but {code}{list(shape)} needs {int(want)}")
    return ti


def _check_extents(p: Path, tensors: dict[str, TensorInfo], data_size: int) -> None:
    """No two tensors share bytes, and none reaches past the end of the file."""
    prev_end, prev_name = 0, None
    for name, ti in sorted(tensors.items(), key=lambda kv: kv[1].offsets):
        begin, end = ti.offsets
        if begin < prev_end and end > begin:
            raise _bad(p, f"tensors {prev_name!r} and {name!r} overlap (bytes {begin}..{prev_end} of the data)")
        if end > prev_end:
            prev_end, prev_name = end, name
    if prev_end > data_size:
        raise _bad(p, f"tensors reach byte {prev_end} of the data but the file holds only {data_size} (truncated)")


def read_header(path: str | os.PathLike) -> Header:
    """The parsed and validated header of the safetensors file ``path``."""
    p = Path(path)
    if not p.is_file():
        raise SpriteForgeError(MODEL_NOT_FOUND, f"{p} does not exist or is not a file.", details={"path": str(p)})
    size = p.stat().st_size
    if size < 8:
        raise _bad(p, f"only {size} bytes long")
    with open(p, "rb") as fh:
        head = fh.read(32)
        if head.startswith(b"GGUF"):
            return _gguf_header(p)
        (n,) = struct.unpack("<Q", head[:8])
        if n <= 1 or n > MAX_HEADER or 8 + n > size:
            _refuse_other_format(p, head)
        if n <= 1 or n > MAX_HEADER:
            raise _bad(p, f"header length {n} is not plausible")
        fh.seek(8)
        if 8 + n > size:
            raise _bad(p, f"the header says {n} bytes but the file has only {size - 8} after the length (truncated)")
        raw = fh.read(n)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(p, f"the header is not JSON ({exc.__class__.__name__})") from None
    except RecursionError:  # a header of arrays nested thousands deep
        raise _bad(p, "the header's JSON is nested too deeply to be a safetensors header") from None
    if not isinstance(data, dict):
        raise _bad(p, "the header is not a JSON object")
    meta = data.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        meta = {}
    tensors = {name: _tensor_info(p, name, info) for name, info in data.items()}
    _check_extents(p, tensors, size - 8 - n)
    meta = {str(k): str(v) for k, v in meta.items()}
    logical, quant = quantized_view(p, tensors, meta, 8 + n)
    return Header(str(p), logical, meta, size, n, quant=quant, stored=tensors)


# --------------------------------------------------------------------------- quantized layers (ComfyUI's formats)

# what ComfyUI's per-layer ``comfy_quant`` JSON (or ``_quantization_metadata``) names -> SpriteForge's format name
COMFY_FORMATS = {"float8_e4m3fn": "fp8_e4m3fn_scaled", "float8_e5m2": "fp8_e5m2_scaled", "mxfp8": "mxfp8",
                 "nvfp4": "nvfp4", "int8_tensorwise": "int8_tensorwise"}
COMFY_QUANT = ".comfy_quant"
SCALE_SUFFIXES = {"scale": (".weight_scale", ".scale_weight"), "scale_2": (".weight_scale_2",),
                  "input_scale": (".input_scale", ".scale_input")}
QUANT_DTYPES = frozenset({"fp8_e4m3fn_scaled", "fp8_e5m2_scaled", "mxfp8", "nvfp4", "int8_tensorwise", "int8_convrot"})


# every quantized format name a TensorInfo's dtype can hold (ComfyUI's and GGUF's), and every dtype of a weight
ALL_QUANT_DTYPES = QUANT_DTYPES | GGUF_QUANT_DTYPES
WEIGHT_DTYPES = frozenset(FLOAT_DTYPES) | ALL_QUANT_DTYPES


def _read_json_tensor(p: Path, ti: TensorInfo, base: int) -> dict:
    with open(p, "rb") as fh:
        fh.seek(base + ti.offsets[0])
        raw = fh.read(ti.offsets[1] - ti.offsets[0])
    try:
        out = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad(p, "a comfy_quant marker does not hold JSON") from None
    return out if isinstance(out, dict) else {}


def _layer_formats(p: Path, tensors: dict, meta: dict, base: int) -> dict[str, dict]:
    """``{layer: its JSON}`` of every layer ComfyUI marks as quantized: ``<layer>.comfy_quant`` tensors, the
    ``_quantization_metadata`` metadata entry, and the legacy ``scaled_fp8`` marker (every fp8 weight beside a
    ``scale_weight``)."""
    layers: dict[str, dict] = {}
    if "_quantization_metadata" in meta:
        try:
            listed = json.loads(meta["_quantization_metadata"]).get("layers", {})
        except (json.JSONDecodeError, AttributeError):
            raise _bad(p, "its _quantization_metadata is not the JSON object ComfyUI writes") from None
        layers.update({k: dict(v) for k, v in listed.items() if isinstance(v, dict)})
    for name, ti in tensors.items():
        if name.endswith(COMFY_QUANT):
            layers[name[: -len(COMFY_QUANT)]] = _read_json_tensor(p, ti, base)
    if any(k == "scaled_fp8" or k.endswith(".scaled_fp8") for k in tensors):
        for name, ti in tensors.items():
            layer = name[: -len(".weight")]
            if name.endswith(".weight") and ti.dtype in ("float8_e4m3fn", "float8_e5m2") and layer + ".scale_weight" in tensors:
                layers.setdefault(layer, {"format": ti.dtype})
    return layers


def _logical_shape(fmt: str, stored: tuple) -> tuple:
    return (*stored[:-1], stored[-1] * 2) if fmt == "nvfp4" else stored


def quantized_view(p: Path, tensors: dict, meta: dict, base: int) -> tuple[dict, dict]:
    """``(tensors as a model sees them, {weight key: QuantInfo})`` for the quantized layers of a safetensors file
    (no quantized layer: the tensors as they are). A format ComfyUI writes that SpriteForge cannot compute
    exactly keeps its ComfyUI name as ``dtype`` (loading refuses it by that name)."""
    layers = _layer_formats(p, tensors, meta, base)
    if not layers:
        return tensors, {}
    logical = dict(tensors)
    quant = {}
    for layer, spec in layers.items():
        key = layer + ".weight"
        if key not in tensors:
            continue
        name = str(spec.get("format", ""))
        fmt = COMFY_FORMATS.get(name, name or "unknown")
        if fmt == "int8_tensorwise" and spec.get("convrot"):
            fmt = "int8_convrot"
        aux = {}
        for role, suffixes in SCALE_SUFFIXES.items():
            for suffix in suffixes:
                if layer + suffix in tensors:
                    aux[role] = layer + suffix
                    logical.pop(layer + suffix, None)
        logical.pop(layer + COMFY_QUANT, None)
        w = tensors[key]
        logical[key] = TensorInfo(fmt, _logical_shape(fmt, w.shape), w.offsets)
        quant[key] = QuantInfo(fmt, w, logical[key].shape, aux, dict(spec))
    for k in [k for k in logical if k == "scaled_fp8" or k.endswith(".scaled_fp8") or k.endswith(COMFY_QUANT)]:
        logical.pop(k)
    return logical, quant


def _gguf_header(p: Path) -> Header:
    """A GGUF file's table (:func:`.gguf.read_gguf`) as a :class:`Header`: quantized tensors listed with their type
    as ``dtype`` and their ``uint8`` block rows in ``quant``."""
    entries, meta, size = read_gguf(p)
    tensors, quant = {}, {}
    for name, dtype, shape, offsets, stored in entries:
        tensors[name] = TensorInfo(dtype, shape, offsets)
        if stored is not None:
            quant[name] = QuantInfo(dtype, TensorInfo("uint8", stored, offsets), shape)
    return Header(str(p), tensors, meta, size, 0, format="gguf", quant=quant)


def header_from_manifest(manifest: dict) -> Header:
    """A :class:`Header` from a reference manifest (``{"tensors": {key: {"shape", "dtype"}}}``)."""
    tensors = {
        k: TensorInfo(canonical_dtype(v["dtype"]), tuple(int(s) for s in v["shape"])) for k, v in manifest["tensors"].items()
    }
    return Header(manifest.get("name", "manifest"), tensors)


@functools.lru_cache(maxsize=None)
def _fp8_table(exp_bits: int, bias: int, finite_max: bool) -> np.ndarray:
    """float32 values of all 256 fp8 bit patterns (sign, ``exp_bits`` exponent, the rest mantissa).
    ``finite_max`` (e4m3fn): no infinities, only S.1111.111 is NaN; otherwise (e5m2) IEEE-style inf/NaN."""
    man_bits = 7 - exp_bits
    out = np.empty(256, np.float32)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        e = (b >> man_bits) & ((1 << exp_bits) - 1)
        m = b & ((1 << man_bits) - 1)
        top = (1 << exp_bits) - 1
        if finite_max and e == top and m == (1 << man_bits) - 1:
            out[b] = np.nan
        elif not finite_max and e == top:
            out[b] = sign * np.inf if m == 0 else np.nan
        elif e == 0:
            out[b] = sign * (m / (1 << man_bits)) * 2.0 ** (1 - bias)
        else:
            out[b] = sign * (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
    return out


_NUMPY_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "int64": np.int64,
                 "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
                 "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64}


def read_numpy(path: str | os.PathLike, names=None) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file (or those in ``names``) as numpy arrays, without a framework: bfloat16 and
    fp8 (e4m3fn, e5m2), which numpy has no dtype for, come back as float32 (exact). Validated by
    :func:`read_header` first; a name the file lacks is a KeyError."""
    header = read_header(path)
    data = np.memmap(header.path, dtype=np.uint8, mode="r", offset=8 + header.header_size)
    out = {}
    wanted = header.tensors if names is None else {n: header.tensors[n] for n in names}
    for name, ti in wanted.items():
        raw = data[ti.offsets[0]:ti.offsets[1]]
        if ti.dtype == "bfloat16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif ti.dtype in ("float8_e4m3fn", "float8_e5m2"):
            table = _fp8_table(4, 7, True) if ti.dtype == "float8_e4m3fn" else _fp8_table(5, 15, False)
            arr = table[raw]
        elif ti.dtype in _NUMPY_DTYPES:
            arr = np.array(raw.view(np.dtype(_NUMPY_DTYPES[ti.dtype]).newbyteorder("<")))
        else:
            raise SpriteForgeError(BAD_INPUT, f"{Path(header.path).name}: tensor {name!r} is stored as {ti.dtype}, "
                                   "which SpriteForge cannot read without a framework. Save it as float16 or float32.")
        out[name] = np.ascontiguousarray(arr).reshape(ti.shape)
    return out

