"""Tensor sources: the tensors of one weights file, read lazily, without running anything in it.

:func:`open_tensors` gives a :class:`SafetensorsFile` (one memory mapping; a tensor whose stored
dtype is the one wanted on a CPU device is a view of the mapping, no copy; any other is read with
one ``readinto`` into a reused buffer and cast/moved from there, so peak RSS stays near the size of
the loaded model) or, for ``.ckpt/.pt/.pth/.bin``, a :class:`TensorDict` of a
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
Both the torch and the MLX loader read files through these.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from ...errors import BAD_INPUT, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ...log import get_logger
from ...models.safetensors_header import TensorInfo, read_header
from ..model_files import dtype_name
from . import quant

log = get_logger("torch")

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a dtype name (``float16``, ``fp16``, ``float8_e4m3fn``, ...)."""
    return getattr(torch, dtype_name(name))


class SafetensorsFile:
    """Lazy per-tensor access to a safetensors or GGUF file through one memory mapping. A quantized weight
    (``header.quant``) comes back as a :class:`~.quant.QTensor` over its stored bytes."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.header = read_header(path)
        self.tensors: dict[str, TensorInfo] = self.header.tensors
        self._base = 0 if self.header.format == "gguf" else 8 + self.header.header_size  # GGUF offsets are absolute
        self._storage = None
        self._fh = None
        self._buf: np.ndarray | None = None
        self._can_map = True

    def keys(self):
        return self.tensors.keys()

    def _mapped(self) -> torch.Tensor:
        if self._storage is None:
            self._storage = torch.UntypedStorage.from_file(self.path, shared=False, nbytes=self.header.file_size)
        return torch.empty(0, dtype=torch.uint8).set_(self._storage)

    def _stored(self, name: str) -> TensorInfo:
        q = self.header.quant.get(name)
        return q.weight if q is not None else self.header.stored[name]

    def view(self, name: str) -> torch.Tensor:
        """A zero-copy tensor over the mapping (pages load when touched), as stored."""
        info = self._stored(name)
        b, e = info.offsets
        dt = torch_dtype(info.dtype)
        raw = self._mapped()[self._base + b : self._base + e]
        if (self._base + b) % max(1, torch.empty(0, dtype=dt).element_size()):
            raw = raw.clone()  # unaligned (rare writers): copy this one tensor
        return raw.view(dt).reshape(info.shape)

    def read(self, name: str) -> torch.Tensor:
        """The tensor read into a reused buffer (valid until the next ``read``)."""
        info = self._stored(name)
        b, e = info.offsets
        n = e - b
        if self._buf is None or self._buf.size < n:
            self._buf = np.empty(max(n, 1 << 20), dtype=np.uint8)
        if self._fh is None:
            self._fh = open(self.path, "rb")
        self._fh.seek(self._base + b)
        mv = memoryview(self._buf)[:n]
        got = self._fh.readinto(mv)
        if got != n:
            raise SpriteForgeError(BAD_INPUT, f"{Path(self.path).name} ended early while reading {name!r} (truncated download?).")
        return torch.from_numpy(self._buf[:n]).view(torch_dtype(info.dtype)).reshape(info.shape)

    def raw(self, name: str) -> bytes:
        """The stored bytes of one tensor (tokenizer data some files carry, ComfyUI's ``spiece_model``)."""
        return self.get(name, None, torch.device("cpu")).numpy().tobytes()

    def stored(self, name: str, device=None) -> torch.Tensor:
        """A stored tensor as the file holds it (a view of the mapping where it can be, else a copy)."""
        if self._can_map:
            try:
                return self.view(name)
            except (RuntimeError, OSError) as exc:  # a platform without private file mappings: read instead
                log.debug("memory mapping %s failed (%s); reading tensors instead", self.path, exc)
                self._can_map = False
        return self.read(name).clone()

    def copied(self, name: str) -> torch.Tensor:
        """A stored tensor in memory of its own, read without touching the mapping (its pages stay out of the
        process's resident memory): for what is kept converted, so only the converted form stays resident."""
        return self.read(name).clone()

    def get(self, name: str, dtype: torch.dtype | None, device: torch.device):
        if name in self.header.quant:
            return quant.load(self.header.quant[name], self.stored, name, device, dtype or torch.float32, self.path,
                              copied=self.copied)
        info = self.tensors[name]
        src = torch_dtype(info.dtype)
        want = src if dtype is None else dtype
        if device.type == "cpu" and want == src and self._can_map:
            try:
                return self.view(name)
            except (RuntimeError, OSError) as exc:  # a platform without private file mappings: read instead
                log.debug("memory mapping %s failed (%s); reading tensors instead", self.path, exc)
                self._can_map = False
        return self.read(name).to(device=device, dtype=want, copy=True)

    def close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._buf = None
        self._storage = None


class TensorDict:
    """Same interface over an in-memory dict (from a ``weights_only`` pickle load)."""

    def __init__(self, sd: dict, path: str = ""):
        self.path = path
        self.sd = sd
        self.tensors = {
            k: TensorInfo(str(v.dtype).replace("torch.", ""), tuple(v.shape)) for k, v in sd.items() if isinstance(v, torch.Tensor)
        }

    def keys(self):
        return self.tensors.keys()

    def raw(self, name: str) -> bytes:
        return self.sd[name].cpu().numpy().tobytes()

    def get(self, name, dtype, device):
        t = self.sd[name]
        return t.to(device=device, dtype=dtype or t.dtype)

    def close(self):
        self.sd = {}


def open_tensors(path: str | os.PathLike):
    """A tensor source for ``path``: safetensors (mapped) or a pickle loaded with ``weights_only``."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return TensorDict(load_pickle(p), str(p))
    return SafetensorsFile(p)


def refused_pickle(p: Path, exc: BaseException) -> SpriteForgeError:
    """The one message for a pickle the weights-only unpickler refused (models and LoRAs alike): it holds objects
    whose loading could run code from the file, so it was not loaded. Nothing of torch's advice to load it unsafely
    is passed on; only the name of the object it refused."""
    found = re.search(r"(?:Unsupported global|GLOBAL) ?:? ?(?:GLOBAL )?([\w.]+)", str(exc))
    what = f" (it refers to {found.group(1)})" if found else ""
    return SpriteForgeError(
        BAD_INPUT,
        f"{p.name} is a pickle file that holds more than plain tensors{what}; loading it could run code from the file, "
        "so it was refused.", hint="Get a .safetensors version of the file: SpriteForge never runs code from a model file.",
        details={"path": str(p), "format": "pickle"})


def load_pickle(p: Path) -> dict:
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # old (non-zip) format cannot be mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything the safe unpickler refuses
        raise refused_pickle(p, exc) from None
    for key in ("state_dict", "model", "module", "ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict) and not isinstance(obj.get(key), torch.Tensor):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"{p.name} does not hold a state dict of tensors.")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}

