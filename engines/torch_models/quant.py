"""Quantized weights on torch: kept in the form the file stores them, dequantized one layer at a time.

A quantized weight (ComfyUI's per-layer formats, GGUF's block types; see
:mod:`spriteforge.models.safetensors_header` and :mod:`spriteforge.models.gguf` for how a file says so) is read
as a :class:`QTensor`: the stored tensor (a view of the file's mapping on a CPU), its scales and its logical
shape. The key maps and diffusers' converters split and join weights by rows (fused q/k/v, swapped
shift/scale halves); a QTensor does that on its stored rows, so nothing is decoded while loading.
:func:`install` then puts each one that lands on a ``Linear`` into a :class:`QuantLinear`, which decodes its
weight only inside its own forward; any other module gets the decoded tensor (a small share of a model).

The maths, per format (all in float32, then the compute dtype):

* ``fp8_e4m3fn_scaled`` / ``fp8_e5m2_scaled`` (ComfyUI's ``float8_*`` and the legacy ``scaled_fp8``):
  ``w = q * scale`` (one float32 scale per tensor);
* ``int8_tensorwise``: ``w = q * scale`` (per tensor, or per output row);
* ``int8_convrot``: the same, then each group of ``convrot_groupsize`` input columns rotated back by the
  normalised regular Hadamard matrix ``H`` (``H`` is symmetric and orthogonal: ``w = (q * scale) @ H``);
* ``mxfp8``: fp8 e4m3 values times a power of two per block of 32 (E8M0 scales, exponent 0 meaning 0);
* ``nvfp4``: e2m1 values (two a byte, high nibble first) times an fp8 e4m3 scale per block of 16 times
  the per-tensor ``weight_scale_2``;
  the block scales of both are stored in cuBLAS's tiled layout (tiles of 128 rows x 4 blocks) and are
  untiled once at load (:func:`untile_scales`);
* GGUF types: ``gguf.quants.dequantize`` (the gguf package's own decoder; nothing here decodes a block).

A format ComfyUI writes that is not one of these (int4 ConvRot, AWQ, asymmetric W4A8...) is refused with
UNSUPPORTED_ARCHITECTURE naming it, never approximated.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ...models.gguf import QUANT_DTYPES as GGUF_TYPES
from ...models.safetensors_header import QuantInfo

# A layer's weight is decoded a slab of rows at a time, each slab's float32 maths at most DECODE_BYTES (at least
# MIN_ROWS rows): QTensor.dequantize fills its result slab by slab; QuantLinear's forward multiplies slab by slab, so
# it never holds the whole decoded weight (see decode_rows)
DECODE_BYTES = 1 << 20
MIN_ROWS = 8


def decode_rows(cols: int) -> int:
    """Rows of a weight ``cols`` wide decoded at a time: ``DECODE_BYTES`` of float32 (a 3072-wide layer: 85 rows)."""
    return max(MIN_ROWS, DECODE_BYTES // (4 * max(1, int(cols))))
COMFY = ("fp8_e4m3fn_scaled", "fp8_e5m2_scaled", "int8_tensorwise", "int8_convrot", "mxfp8", "nvfp4")
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


# --------------------------------------------------------------------------- the maths


@functools.lru_cache(maxsize=8)
def hadamard(size: int) -> torch.Tensor:
    """The normalised regular Hadamard matrix of ConvRot (``size`` a power of 4): Kronecker powers of the
    4x4 regular one, divided by ``sqrt(size)``."""
    if size < 4 or 4 ** round(math.log(size, 4)) != size:
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"a ConvRot group size of {size} is not a power of 4. The "
                               "file is not one ComfyUI writes: use another quantization of the model.")
    h4 = torch.tensor([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=torch.float32)
    h = h4
    while h.shape[0] < size:
        h = torch.kron(h, h4)
    return h / math.sqrt(size)


def untile_scales(tiled: torch.Tensor, rows: int, blocks: int) -> torch.Tensor:
    """Block scales from cuBLAS's tiled layout to ``[rows, blocks]``: the scales are padded to tiles of 128 rows
    x 4 blocks, and in a tile, row ``32a + i`` and block ``c`` sit at ``[i, 4a + c]`` of a 32x16 slab."""
    row_tiles, col_tiles = -(-rows // 128), -(-blocks // 4)
    t = tiled.reshape(row_tiles, col_tiles, 32, 4, 4)  # tile row, tile col, i, a, c
    return t.permute(0, 3, 2, 1, 4).reshape(row_tiles * 128, col_tiles * 4)[:rows, :blocks]


def _e8m0(e: torch.Tensor) -> torch.Tensor:
    """E8M0 exponents as float32: ``2**(e-127)``, and 0 for exponent 0 (as comfy-kitchen reads them)."""
    e = e.to(torch.int32)
    return torch.where(e == 0, torch.zeros((), dtype=torch.int32), e << 23).view(torch.float32)


@functools.lru_cache(maxsize=4)
def _e2m1_pairs(device) -> torch.Tensor:
    """``[256, 2]``: the two e2m1 values of each byte (high nibble first)."""
    lut = torch.tensor(E2M1, dtype=torch.float32)
    b = torch.arange(256)
    return torch.stack([lut[b >> 4], lut[b & 0x0F]], dim=-1).to(device)


def _gguf_dequantize(data: torch.Tensor, fmt: str, shape) -> torch.Tensor:
    import gguf

    arr = data.detach().cpu().numpy()
    return torch.from_numpy(gguf.quants.dequantize(arr, gguf.GGMLQuantizationType[fmt.upper()])).reshape(shape)


def dequantize(fmt: str, data, scale, scale2, group: int, shape) -> torch.Tensor:
    """The float32 weight of stored ``data`` (+ its scales) in format ``fmt``."""
    if fmt in GGUF_TYPES:
        return _gguf_dequantize(data, fmt, shape)
    rows = data.shape[0]
    if fmt in ("fp8_e4m3fn_scaled", "fp8_e5m2_scaled", "int8_tensorwise", "int8_convrot"):
        w = data.to(torch.float32).mul_(scale)  # in place: the cast is already the slab's own copy
        if fmt == "int8_convrot":
            w = (w.reshape(rows, -1, group) @ hadamard(group).to(w.device)).reshape(w.shape)
        return w
    if fmt == "mxfp8":  # scale: the E8M0 exponents, untiled
        return data.to(torch.float32).reshape(rows, -1, 32).mul_(_e8m0(scale).unsqueeze(-1)).reshape(shape)
    if fmt == "nvfp4":  # scale: the fp8 block scales, untiled; each byte is two values, high nibble first
        pairs = F.embedding(data.int(), _e2m1_pairs(data.device))
        # scaled in place (the slab's one float32 copy: its values are the embedding's own output)
        return pairs.reshape(rows, -1, 16).mul_((scale.to(torch.float32) * scale2).unsqueeze(-1)).reshape(shape)
    raise unsupported(fmt)


def unsupported(fmt: str, where: str = "") -> SpriteForgeError:
    return SpriteForgeError(
        UNSUPPORTED_ARCHITECTURE,
        f"{where + ': ' if where else ''}layers quantized as {fmt!r} cannot be computed exactly by SpriteForge, so the "
        "file was not loaded. Use a bf16/fp16 file, an fp8 (scaled or not), int8, MXFP8 or NVFP4 file, or a GGUF "
        "of the model.", details={"format": fmt})


# --------------------------------------------------------------------------- a weight in its stored form


class QTensor:
    """One quantized weight, stored: ``data`` (rows first), per-row or per-tensor ``scale`` (float32; MXFP8's E8M0
    exponents and NVFP4's fp8 block scales as stored, untiled), ``scale2``, ConvRot's ``group``, the logical ``shape``, and ``dtype`` (the compute dtype it decodes
    to). Row slices, chunks, splits and row concatenations stay stored; anything else decodes."""

    def __init__(self, fmt: str, data: torch.Tensor, shape, *, scale=None, scale2=None, group: int = 0,
                 rows_ok: bool = True, dtype: torch.dtype = torch.float32):
        self.fmt, self.data, self.shape = fmt, data, torch.Size(shape)
        self.scale, self.scale2, self.group, self.rows_ok, self.dtype = scale, scale2, group, rows_ok, dtype

    def __repr__(self):
        return f"QTensor({self.fmt}, shape={tuple(self.shape)}, stored={tuple(self.data.shape)})"

    @property
    def device(self):
        return self.data.device

    @property
    def ndim(self):
        return len(self.shape)

    def dim(self):
        return len(self.shape)

    def numel(self):
        return self.shape.numel()

    def size(self, d=None):
        return self.shape if d is None else self.shape[d]

    def is_floating_point(self):
        return True

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale, self.scale2) if isinstance(t, torch.Tensor))

    def dequantize(self, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """The weight in ``dtype`` (default: the compute dtype). The float32 maths runs on :func:`decode_rows` rows at
        a time into the result, so decoding a layer holds one result and one small float32 slab, never a float32 copy."""
        dtype, device = dtype or self.dtype, device or self.data.device
        step = self.slab_rows()
        if not step:
            w = dequantize(self.fmt, self.data, self.scale, self.scale2, self.group, self.shape)
            return w.to(device=device, dtype=dtype)
        out = torch.empty(self.shape, dtype=dtype, device=self.data.device)
        for a, part in self.slabs(step):
            out[a:a + part.shape[0]] = part
        return out.to(device)

    def slab_rows(self) -> int:
        """Rows a slab of :meth:`slabs` holds; 0 when the weight is decoded whole (a small one, or not by rows)."""
        rows = int(self.shape[0]) if self.rows_ok and self.ndim >= 2 else 0
        step = decode_rows(self.shape[1]) if rows else 0
        return step if rows > step else 0

    def slabs(self, step: int, dtype: torch.dtype | None = None, device=None):
        """``(first row, decoded rows)`` of the weight, ``step`` rows at a time (float32, or ``dtype`` on ``device``)."""
        rows = int(self.shape[0])
        for a in range(0, rows, step):
            part = self.rows(a, min(a + step, rows))
            w = dequantize(part.fmt, part.data, part.scale, part.scale2, part.group, part.shape)
            yield a, (w if dtype is None and device is None else w.to(device=device or w.device, dtype=dtype or w.dtype))

    def _like(self, **kw) -> "QTensor":
        fields = dict(fmt=self.fmt, data=self.data, shape=self.shape, scale=self.scale, scale2=self.scale2,
                      group=self.group, rows_ok=self.rows_ok, dtype=self.dtype)
        fields.update(kw)
        return QTensor(fields.pop("fmt"), fields.pop("data"), fields.pop("shape"), **fields)

    def to(self, *args, device=None, dtype=None, **_):
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            elif isinstance(a, (torch.device, str)):
                device = a
        mv = (lambda t: t.to(device) if isinstance(t, torch.Tensor) else t) if device is not None else (lambda t: t)
        return self._like(data=mv(self.data), scale=mv(self.scale), scale2=mv(self.scale2), dtype=dtype or self.dtype)

    # rows: what the key maps and converters do to a weight
    def rows(self, a: int, b: int) -> "QTensor | torch.Tensor":
        if not self.rows_ok:
            return self.dequantize()[a:b]
        per_row = isinstance(self.scale, torch.Tensor) and self.scale.dim() > 0 and self.scale.shape[0] == self.shape[0]
        return self._like(data=self.data[a:b], shape=(b - a, *self.shape[1:]),
                          scale=self.scale[a:b] if per_row else self.scale)

    def split(self, sizes, dim=0):
        if dim not in (0, -len(self.shape)):
            return self.dequantize().split(sizes, dim)
        if isinstance(sizes, int):
            sizes = [min(sizes, self.shape[0] - i) for i in range(0, self.shape[0], sizes)]
        out, a = [], 0
        for n in sizes:
            out.append(self.rows(a, a + n))
            a += n
        return tuple(out)

    def chunk(self, n, dim=0):
        if dim not in (0, -len(self.shape)):
            return self.dequantize().chunk(n, dim)
        step = -(-self.shape[0] // n)
        return self.split(step, 0)

    def __getitem__(self, idx):
        if isinstance(idx, slice) and idx.step in (None, 1):
            a, b, _ = idx.indices(self.shape[0])
            return self.rows(a, b)
        return self.dequantize()[idx]

    @staticmethod
    def cat(parts, dim=0):
        """Rows of the same format joined, stored; a per-tensor scale that differs between parts becomes per row."""
        first = parts[0]
        same = all(isinstance(p, QTensor) and p.fmt == first.fmt and p.rows_ok and p.shape[1:] == first.shape[1:]
                   and p.group == first.group and _same(p.scale2, first.scale2) for p in parts)
        if not same or dim not in (0, -first.ndim):
            return torch.cat([p.dequantize() if isinstance(p, QTensor) else p for p in parts], dim)
        data = torch.cat([p.data for p in parts], 0)
        shape = (sum(p.shape[0] for p in parts), *first.shape[1:])
        if all(_same(p.scale, first.scale) for p in parts):
            scale = first.scale
        else:
            scale = torch.cat([_per_row(p) for p in parts], 0)
        return first._like(data=data, shape=shape, scale=scale)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.cat, torch.concat, torch.concatenate):
            return cls.cat(list(args[0]), *args[1:], **kwargs)
        name = getattr(func, "__name__", "")
        if func in (torch.chunk, torch.Tensor.chunk) or name == "chunk":
            return args[0].chunk(*args[1:], **kwargs)
        if func in (torch.split, torch.Tensor.split) or name == "split":
            return args[0].split(*args[1:], **kwargs)
        # anything else: on the decoded weight (correct; memory of this one tensor)
        return func(*(_decoded(a) for a in args), **{k: _decoded(v) for k, v in kwargs.items()})


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.element_size() == 1 else torch.equal(a, b))


def _per_row(p: QTensor) -> torch.Tensor:
    s = p.scale
    if s.dim() == 0 or s.numel() == 1:
        return s.reshape(1).expand(p.shape[0]).reshape(p.shape[0], *([1] * (p.data.dim() - 1)))
    return s


def _decoded(a):
    if isinstance(a, QTensor):
        return a.dequantize()
    if isinstance(a, (list, tuple)):
        return type(a)(_decoded(x) for x in a)
    return a


# --------------------------------------------------------------------------- reading one from a file


def load(q: QuantInfo, stored, key: str, device, dtype, path: str = "", copied=None) -> QTensor:
    """The :class:`QTensor` of weight ``key`` described by ``q``; ``stored(name)`` gives a stored tensor (a view of
    the file on a CPU). Scales are float32 and untiled; the data stays as the file stores it. ``copied(name)``: a
    stored tensor read into memory of its own without touching the file's mapping, for the scales, which are kept
    converted (a view would leave their stored pages resident beside the copy: MXFP8's and NVFP4's block scales are
    3% and 12% of the file)."""
    fmt = q.format
    aux = copied or stored
    if fmt not in COMFY and fmt not in GGUF_TYPES:
        raise unsupported(fmt, Path(path).name)
    data = stored(key).to(device)
    scale = scale2 = None
    group = 0
    rows_ok = True
    if fmt in GGUF_TYPES:
        rows_ok = data.dim() == 2 and len(q.shape) == 2 and data.shape[0] == q.shape[0]
    elif fmt == "mxfp8" or fmt == "nvfp4":
        rows, cols = data.shape[0], data.shape[1] * (2 if fmt == "nvfp4" else 1)
        block = 32 if fmt == "mxfp8" else 16
        tiled = aux(q.aux["scale"]).to(device)
        # untiled once, kept in their stored 8 bits (a float32 copy would be a quarter of the weights' size again)
        scale = untile_scales(tiled.view(torch.uint8), rows, cols // block).contiguous()
        if fmt == "nvfp4":
            scale = scale.view(torch.float8_e4m3fn)
            scale2 = aux(q.aux["scale_2"]).to(device=device, dtype=torch.float32).reshape(())
    else:
        if "scale" not in q.aux:
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{Path(path).name}: {key} is marked {fmt} but its scale "
                                   "tensor is missing: the file is incomplete. Download it again.")
        scale = aux(q.aux["scale"]).to(device=device, dtype=torch.float32)
        if scale.numel() == data.shape[0] and data.dim() >= 2 and scale.numel() > 1:
            scale = scale.reshape(data.shape[0], *([1] * (data.dim() - 1)))
        elif scale.numel() == 1:
            scale = scale.reshape(())
        if fmt == "int8_convrot":
            group = int(q.params.get("convrot_groupsize", 256))
            hadamard(group)  # refuses a size that is not a power of 4
    return QTensor(fmt, data, q.shape, scale=scale, scale2=scale2, group=group, rows_ok=rows_ok, dtype=dtype)


# --------------------------------------------------------------------------- the layer


class QuantLinear(nn.Linear):
    """A ``Linear`` whose weight stays stored (a :class:`QTensor`); ``weight`` is the decoded weight, made when
    read (the forward, a LoRA) and freed after. The stored tensors are not parameters or buffers: casting the
    model never touches them, moving it moves them."""

    def __init__(self, q: QTensor, bias):
        nn.Module.__init__(self)
        self.out_features, self.in_features = int(q.shape[0]), int(q.shape[1])
        self.__dict__["qweight"] = q
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.dequantize()

    def forward(self, x):
        """``x Wᵀ + b``, the weight decoded :func:`decode_rows` output rows at a time, each slab multiplied into its
        columns of the result as soon as it is decoded (a layer never holds its whole decoded weight)."""
        q = self.qweight
        bias = None if self.bias is None else self.bias.to(x.dtype)
        step = q.slab_rows()
        if not step:
            return F.linear(x, q.dequantize(x.dtype, x.device), bias)
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
        for a, w in q.slabs(step, x.dtype, x.device):
            b = a + w.shape[0]
            out[..., a:b] = F.linear(x, w, None if bias is None else bias[a:b])
        return out

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        moved = fn(torch.empty(0, device=self.qweight.device))
        if moved.device != self.qweight.device:
            self.__dict__["qweight"] = self.qweight.to(moved.device)
        return self

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.qweight.fmt}"


def install(model: nn.Module, sd: dict, dtype: torch.dtype) -> dict:
    """Every :class:`QTensor` of ``sd`` (model keys) put into ``model``: a ``Linear``'s weight of the same shape
    becomes a :class:`QuantLinear` (the weight key leaves ``sd``), any other is decoded to ``dtype``."""
    out = {}
    for key, v in sd.items():
        if not isinstance(v, QTensor):
            out[key] = v
            continue
        path, _, leaf = key.rpartition(".")
        mod = _submodule(model, path)
        if leaf == "weight" and type(mod) is nn.Linear and tuple(mod.weight.shape) == tuple(v.shape):
            v.dtype = dtype
            parent, _, name = path.rpartition(".")
            _submodule(model, parent)._modules[name] = QuantLinear(v, mod.bias)
        else:
            out[key] = v.dequantize(dtype)
    return out


def _submodule(model, path):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def stored_bytes(model: nn.Module) -> int:
    """Bytes the quantized layers of ``model`` hold in their stored form."""
    return sum(m.qweight.nbytes for m in model.modules() if isinstance(m, QuantLinear))


def formats(model: nn.Module) -> dict[str, int]:
    """``{format: layers}`` of the quantized layers of ``model``."""
    out: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, QuantLinear):
            out[m.qweight.fmt] = out.get(m.qweight.fmt, 0) + 1
    return out
