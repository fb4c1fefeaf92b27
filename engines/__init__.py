"""Engines: one interface over PyTorch (CUDA, ROCm, MPS, CPU) and Apple MLX.

``get_engine("auto")`` picks the best usable engine and device; ``engine_status()``
reports every engine with why it is or is not usable. Frameworks are imported only
when an engine is created or probed, never at import of this package.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import BAD_INPUT, ENGINE_UNAVAILABLE, SpriteForgeError
from .base import FAMILIES, Capabilities, Engine, ModelHandle
from .devices import DeviceInfo, detect_devices
from .policy import Policy, decide

# name -> (module, class, package needed)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "torch": ("torch_engine", "TorchEngine", "torch"),
    "mlx": ("mlx_engine", "MLXEngine", "mlx"),
}


@dataclass
class EngineStatus:
    name: str
    usable: bool
    reason: str
    devices: list

    def to_dict(self) -> dict:
        return {"name": self.name, "usable": self.usable, "reason": self.reason, "devices": [d.to_dict() for d in self.devices]}


def engine_class(name: str) -> type[Engine]:
    if name not in REGISTRY:
        raise SpriteForgeError(BAD_INPUT, f"unknown engine {name!r}; choose one of {', '.join(REGISTRY)} or 'auto'.")
    mod, cls, _ = REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)


def engine_status() -> list[EngineStatus]:
    """Every registered engine, usable or not, with the reason and its devices."""
    out = []
    devices = detect_devices()
    for name, (_, _, package) in REGISTRY.items():
        try:
            importlib.import_module(package)
        except Exception as exc:
            hint = "pip install 'comfyui-spriteforge[mlx]'" if name == "mlx" else "install PyTorch for your GPU"
            out.append(EngineStatus(name, False, f"{package} is not importable ({exc.__class__.__name__}): {hint}", []))
            continue
        devs = [d for d in devices if (d.backend == name)]
        out.append(EngineStatus(name, bool(devs), "ok" if devs else "no device", devs))
    return out


def pick_device(engine: str, device: str = "auto") -> DeviceInfo:
    """The device for ``engine``: ``auto`` (the first GPU, else CPU) or a kind/label such as ``cuda:1``, ``mps``, ``cpu``."""
    devs = [d for d in detect_devices() if d.backend == engine]
    if not devs:
        raise SpriteForgeError(ENGINE_UNAVAILABLE, f"the {engine} engine has no usable device on this machine.")
    if device in ("auto", "", None):
        return devs[0]
    want = device.lower()
    for d in devs:
        if want in (d.kind, d.torch_device, f"{d.kind}:{d.index}") or (want == "gpu" and d.kind != "cpu"):
            return d
    raise SpriteForgeError(
        ENGINE_UNAVAILABLE,
        f"device {device!r} is not available to the {engine} engine; available: {', '.join(d.torch_device for d in devs)}.",
    )


_cache: dict[tuple, Engine] = {}


def get_engine(name: str = "auto", device: str = "auto", dtype: str | None = None) -> Engine:
    """An engine instance (cached per engine/device/dtype)."""
    if name in ("auto", "", None):
        usable = [s for s in engine_status() if s.usable]
        if not usable:
            raise SpriteForgeError(ENGINE_UNAVAILABLE, "no engine is usable: install PyTorch (or MLX on a Mac).")
        # torch first: it runs every family; MLX when it is the only one.
        name = "torch" if any(s.name == "torch" for s in usable) else usable[0].name
    key = (name, device, dtype)
    if key not in _cache:
        cls = engine_class(name)
        try:
            dev = pick_device(name, device)
        except SpriteForgeError:
            raise
        except Exception as exc:
            raise SpriteForgeError(ENGINE_UNAVAILABLE, f"the {name} engine cannot start: {exc}.") from exc
        _cache[key] = cls(dev, decide(dev, dtype_override=dtype))
    return _cache[key]


__all__ = [
    "Capabilities",
    "DeviceInfo",
    "Engine",
    "EngineStatus",
    "FAMILIES",
    "ModelHandle",
    "Policy",
    "REGISTRY",
    "decide",
    "detect_devices",
    "engine_class",
    "engine_status",
    "get_engine",
    "pick_device",
]
