"""Engines: one interface over PyTorch (CUDA, ROCm, MPS, CPU) and Apple MLX.

``get_engine("auto")`` picks the best usable engine and device; ``engine_status()``
reports every engine with why it is or is not usable. Frameworks are imported only
when an engine is created or probed, never at import of this package.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import BAD_INPUT, ENGINE_UNAVAILABLE, SpriteForgeError
from .base import FAMILIES, Capabilities, Conditioning, Engine, ModelHandle
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
            hint = "pip install mlx ('mlx[cpu]' on Linux)" if name == "mlx" else "install PyTorch for your GPU"
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


def apple_silicon(status: EngineStatus) -> bool:
    """True when ``status`` is a usable MLX engine on Metal (MLX has Metal only on Apple silicon Macs)."""
    return status.name == "mlx" and status.usable and any(d.kind == "mlx" and d.metal for d in status.devices)


def engine_families(status: EngineStatus) -> tuple:
    """The model families the engine of ``status`` runs (its declared ``capabilities.families``); () if unusable."""
    if not status.usable or not status.devices:
        return ()
    try:
        dev = status.devices[0]
        return tuple(engine_class(status.name)(dev, decide(dev)).capabilities.families)
    except Exception:
        return ()


_TORCH_ONLY_DEVICES = ("cuda", "rocm", "mps", "hip")


def choose_engine(statuses, *, family: str | None = None, device: str = "auto", families_of=engine_families) -> str:
    """The engine ``auto`` stands for, from the engines' statuses (pure: tested on simulated devices).

    MLX on Apple silicon (an MLX device with Metal) when it runs the requested ``family`` (or,
    with no family given, every family), torch elsewhere (CUDA, ROCm, CPU, and Macs for what
    MLX does not run yet); MLX alone when torch is not usable. A torch device name (``cuda``,
    ``mps``...) means torch. ``families_of(status)`` gives an engine's families.
    """
    usable = [s for s in statuses if s.usable]
    if not usable:
        raise SpriteForgeError(ENGINE_UNAVAILABLE, "no engine is usable: install PyTorch (or MLX on a Mac). "
                               "Run `spriteforge doctor` to see what is missing.")
    names = [s.name for s in usable]
    want = (device or "auto").lower()
    if "torch" in names and want.split(":")[0] in _TORCH_ONLY_DEVICES:
        return "torch"
    for s in usable:
        if apple_silicon(s):
            fams = set(families_of(s))
            if (family in fams) if family else fams >= set(FAMILIES):
                return "mlx"
    return "torch" if "torch" in names else names[0]


def _unavailable(name: str) -> SpriteForgeError | None:
    """ENGINE_UNAVAILABLE (with what to do) when engine ``name`` cannot run here, else None."""
    st = next((s for s in engine_status() if s.name == name), None)
    if st is None or st.usable:
        return None
    other = "torch" if name != "torch" else "mlx"
    return SpriteForgeError(ENGINE_UNAVAILABLE, f"the {name} engine is not available on this machine: {st.reason}. "
                            f"Install it, or choose engine '{other}' (or 'auto').", details={"engine": name, "reason": st.reason})


def get_engine(name: str = "auto", device: str = "auto", dtype: str | None = None, *, family: str | None = None) -> Engine:
    """An engine instance (cached per engine/device/dtype).

    ``auto`` is :func:`choose_engine`: MLX on Apple silicon when it runs ``family`` (every
    family when none is given), torch elsewhere.
    """
    if name in ("auto", "", None):
        name = choose_engine(engine_status(), family=family, device=device)
    key = (name, device, dtype)
    if key not in _cache:
        cls = engine_class(name)
        err = _unavailable(name)
        if err is not None:
            raise err
        try:
            dev = pick_device(name, device)
        except SpriteForgeError:
            raise
        except Exception as exc:
            raise SpriteForgeError(ENGINE_UNAVAILABLE, f"the {name} engine cannot start: {exc}.") from exc
        _cache[key] = cls(dev, decide(dev, dtype_override=dtype))
    return _cache[key]


def engine_for(capability: str, device: str = "auto", dtype: str | None = None) -> Engine:
    """The first usable engine (registry order: torch, then MLX) that declares ``capability``
    (a true flag of :class:`Capabilities`, e.g. ``birefnet``); ENGINE_UNAVAILABLE when none does."""
    reasons = []
    for st in engine_status():
        if not st.usable:
            reasons.append(f"{st.name}: {st.reason}")
            continue
        try:
            eng = get_engine(st.name, device, dtype)
        except SpriteForgeError as exc:
            reasons.append(f"{st.name}: {exc.message}")
            continue
        if getattr(eng.capabilities, capability, False):
            return eng
        reasons.append(f"{st.name}: does not run {capability}")
    raise SpriteForgeError(ENGINE_UNAVAILABLE, f"no engine on this machine runs {capability} ({'; '.join(reasons)}). "
                           "Install PyTorch (the torch engine runs everything).", details={"capability": capability})


__all__ = [
    "Capabilities",
    "Conditioning",
    "DeviceInfo",
    "Engine",
    "EngineStatus",
    "FAMILIES",
    "ModelHandle",
    "Policy",
    "REGISTRY",
    "apple_silicon",
    "choose_engine",
    "decide",
    "detect_devices",
    "engine_class",
    "engine_for",
    "engine_families",
    "engine_status",
    "get_engine",
    "pick_device",
]
