"""What the machine has: CUDA, ROCm, MPS, CPU and MLX devices.

:class:`DeviceInfo` is plain data so the device policy (``policy.py``) can be tested
with simulated devices. :func:`detect_devices` fills it from torch and mlx, imported
lazily; nothing here runs at import time.
"""

from __future__ import annotations

import glob
import os
import platform
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class DeviceInfo:
    """One compute device as the policy sees it.

    ``kind`` is ``cuda``, ``rocm``, ``mps``, ``cpu`` or ``mlx``. ``arch`` is the ROCm
    ``gcnArchName`` base (``gfx1100``), the CUDA ``sm_89`` string, or the Apple chip name.
    """

    kind: str
    index: int = 0
    name: str = ""
    memory_bytes: int = 0
    compute_capability: tuple[int, int] | None = None
    arch: str | None = None
    macos_version: tuple[int, ...] | None = None
    unified_memory: bool = False
    backend: str = "torch"
    metal: bool | None = None  # mlx: Metal (True) or mlx[cpu] (False)
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def torch_device(self) -> str:
        if self.kind in ("cuda", "rocm"):
            return f"cuda:{self.index}"
        if self.kind == "mps":
            return "mps"
        return "cpu"

    @property
    def label(self) -> str:
        base = {"rocm": "ROCm", "cuda": "CUDA", "mps": "MPS", "cpu": "CPU", "mlx": "MLX"}[self.kind]
        bits = [base]
        if self.name:
            bits.append(self.name)
        if self.arch:
            bits.append(self.arch)
        return " ".join(bits)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        return d


def macos_version() -> tuple[int, ...] | None:
    if platform.system() != "Darwin":
        return None
    ver = platform.mac_ver()[0]
    try:
        return tuple(int(p) for p in ver.split(".") if p)
    except ValueError:
        return None


def total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def probe_rocm_arch_without_torch() -> list[str]:
    """gfx names of AMD GPUs from the KFD topology (Linux), read before torch is imported.

    Used to set ROCm environment variables that must exist before ``import torch``.
    ``gfx_target_version`` 110003 reads as gfx1103; 90010 as gfx90a.
    """
    out = []
    for prop in sorted(glob.glob("/sys/class/kfd/kfd/topology/nodes/*/properties")):
        try:
            text = open(prop, encoding="ascii").read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("gfx_target_version"):
                v = int(line.split()[1])
                if v:
                    out.append(gfx_from_target_version(v))
    return out


def gfx_from_target_version(v: int) -> str:
    major, minor, step = v // 10000, (v // 100) % 100, v % 100
    return f"gfx{major}{minor:x}{step:x}" if major < 10 else f"gfx{major}{minor}{step:x}"


def _torch_devices() -> list[DeviceInfo]:
    try:
        import torch
    except Exception:
        return []
    devs: list[DeviceInfo] = []
    if torch.cuda.is_available():
        hip = getattr(torch.version, "hip", None)
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            common = {"index": i, "name": p.name, "memory_bytes": int(p.total_memory)}
            if hip:
                arch = getattr(p, "gcnArchName", "") or ""
                devs.append(DeviceInfo(kind="rocm", arch=arch.split(":")[0] or None, extra={"hip": hip, "gcnArchName": arch}, **common))
            else:
                devs.append(DeviceInfo(kind="cuda", compute_capability=(p.major, p.minor), arch=f"sm_{p.major}{p.minor}",
                                       extra={"cuda": torch.version.cuda}, **common))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devs.append(
            DeviceInfo(
                kind="mps",
                name=platform.processor() or "Apple silicon",
                memory_bytes=total_memory(),
                arch=_apple_chip(),
                macos_version=macos_version(),
                unified_memory=True,
            )
        )
    devs.append(DeviceInfo(kind="cpu", name=platform.processor() or platform.machine(), memory_bytes=total_memory()))
    return devs


def _apple_chip() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=2)
        return out.stdout.strip() or None
    except Exception:
        return None


def _mlx_devices() -> list[DeviceInfo]:
    try:
        import mlx.core as mx  # noqa: F401  (engines/ is the one place mlx may be imported)
    except Exception:
        return []
    metal = False
    try:
        metal = bool(mx.metal.is_available())
    except Exception:
        metal = False
    return [
        DeviceInfo(
            kind="mlx",
            backend="mlx",
            name="Metal GPU" if metal else "CPU",
            memory_bytes=total_memory(),
            arch=_apple_chip() if metal else None,
            macos_version=macos_version(),
            unified_memory=True,
            metal=metal,
        )
    ]


def detect_devices() -> list[DeviceInfo]:
    """Every usable device, best first per backend (GPUs before the CPU)."""
    return _torch_devices() + _mlx_devices()
