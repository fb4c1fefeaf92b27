"""The device policy: data plus pure functions.

For a :class:`~spriteforge.engines.devices.DeviceInfo` it decides the weight,
compute, VAE and text-encoder dtypes, the attention kind, slicing/tiling, fp8 and
bf16 support, environment variables to set before torch is imported, and hints for
the user, with a reason for every decision. Every rule is a row in the tables below
so it can be read, tested with simulated devices, and changed in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .devices import DeviceInfo

GiB = 1024**3

# ROCm architectures where fp16/bf16 diffusion gives NaNs or black images: run fp32.
ROCM_FP32_ARCHS = {
    "gfx1103": "Radeon 780M/760M (Phoenix) iGPUs produce NaNs/black images in fp16 and bf16 diffusion",
    "gfx1035": "Radeon 680M (Rembrandt) iGPUs produce NaNs/black images in half precision",
}
# ROCm architectures with fast bf16 (CDNA and RDNA3+).
ROCM_BF16_ARCHS = {"gfx90a", "gfx940", "gfx941", "gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1102", "gfx1150", "gfx1151", "gfx1200", "gfx1201"}
# Archs where AOTriton's flash/mem-efficient attention is experimental (needs the opt-in variable).
ROCM_AOTRITON_EXPERIMENTAL = {"gfx1100", "gfx1101", "gfx1102", "gfx1150", "gfx1151", "gfx1200", "gfx1201"}
# Consumer archs not in ROCm's support list, with the HSA_OVERRIDE_GFX_VERSION that makes them use a supported one.
ROCM_HSA_OVERRIDE = {
    "gfx1031": "10.3.0",
    "gfx1032": "10.3.0",
    "gfx1034": "10.3.0",
    "gfx1035": "10.3.0",
    "gfx1036": "10.3.0",
    "gfx1103": "11.0.0",
    "gfx1150": "11.0.0",
}

LOW_VRAM = 6 * GiB  # at or below: attention slicing and VAE tiling
MID_VRAM = 12 * GiB  # at or below: VAE tiling for large images


@dataclass(frozen=True)
class Policy:
    device: DeviceInfo
    weight_dtype: str
    compute_dtype: str
    vae_dtype: str
    text_encoder_dtype: str
    attention: str  # "sdpa" | "math" | "sliced" | "mlx_fast"
    vae_attention: str
    attention_slicing: bool
    vae_tiling: bool
    vae_slicing: bool
    bf16: bool
    fp8_compute: bool
    env: dict = field(default_factory=dict)
    hints: tuple = ()
    reasons: tuple = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["device"] = self.device.to_dict()
        d["hints"] = list(self.hints)
        d["reasons"] = list(self.reasons)
        return d


def _slicing(mem: int, unified: bool, reasons: list) -> tuple[bool, bool, bool]:
    """(attention_slicing, vae_tiling, vae_slicing) from the memory the device can use."""
    if not mem:
        return False, False, False
    if unified:
        # Unified memory is shared with the OS: count about two thirds of it.
        mem = int(mem * 2 / 3)
    if mem <= LOW_VRAM:
        reasons.append(f"{mem / GiB:.1f} GiB usable: attention slicing, VAE tiling and slicing on")
        return True, True, True
    if mem <= MID_VRAM:
        reasons.append(f"{mem / GiB:.1f} GiB usable: VAE tiling on for large images")
        return False, True, True
    return False, False, False


def decide(device: DeviceInfo, *, dtype_override: str | None = None) -> Policy:
    """The policy for ``device``. ``dtype_override`` ('float32', 'float16', 'bfloat16') forces the weight/compute dtype."""
    reasons: list[str] = []
    hints: list[str] = []
    env: dict[str, str] = {}
    kind = device.kind
    bf16 = False
    fp8 = False
    attention = "sdpa"
    vae_attention = "sdpa"

    if kind == "cuda":
        cc = device.compute_capability or (0, 0)
        if cc >= (8, 0):
            wd = cd = "bfloat16"
            bf16 = True
            reasons.append(f"CUDA sm_{cc[0]}{cc[1]} has fast bf16: bf16 weights and compute")
        elif cc >= (7, 0):
            wd = cd = "float16"
            reasons.append(f"CUDA sm_{cc[0]}{cc[1]} has fp16 tensor cores but no bf16: fp16")
        else:
            wd = cd = "float32"
            reasons.append(f"CUDA sm_{cc[0]}{cc[1]} has slow half precision: fp32")
        fp8 = cc >= (8, 9)
        reasons.append("fp8 compute available (sm_89+)" if fp8 else "no fp8 compute: fp8 weights are upcast per layer")
        # The 4-channel KL VAEs overflow in fp16; bf16 is safe where present.
        vae = "bfloat16" if bf16 else "float32"
        reasons.append(f"VAE in {vae} (fp16 VAEs overflow to NaN on large images)")
        te = wd
    elif kind == "rocm":
        arch = (device.arch or "").split(":")[0]
        if arch in ROCM_FP32_ARCHS:
            wd = cd = vae = te = "float32"
            reasons.append(f"ROCm {arch}: fp32 everywhere ({ROCM_FP32_ARCHS[arch]})")
        elif arch in ROCM_BF16_ARCHS:
            wd = cd = te = "bfloat16"
            bf16 = True
            vae = "float32"
            reasons.append(f"ROCm {arch} has fast bf16: bf16 weights and compute, VAE in fp32")
        else:
            wd = cd = te = "float16"
            vae = "float32"
            reasons.append(f"ROCm {arch or 'unknown arch'}: fp16 weights and compute, VAE in fp32")
        vae_attention = "math"
        reasons.append("no SDPA in the VAE on AMD (slow or failing kernels for the VAE's single-head attention)")
        if arch in ROCM_AOTRITON_EXPERIMENTAL:
            env["TORCH_ROCM_AOTRITON_ENABLE_EXPERIMENTAL"] = "1"
            reasons.append(f"{arch}: AOTriton flash attention is experimental; opt in before torch is imported")
        if arch in ROCM_HSA_OVERRIDE:
            hints.append(
                f"{arch} is not on ROCm's support list; if kernels fail to load, set "
                f"HSA_OVERRIDE_GFX_VERSION={ROCM_HSA_OVERRIDE[arch]} before starting ComfyUI."
            )
    elif kind == "mps":
        mac = device.macos_version or (0,)
        bf16 = tuple(mac) >= (14,)
        wd = cd = te = "float16"
        reasons.append("MPS: fp16 weights and compute")
        if bf16:
            reasons.append(f"macOS {'.'.join(map(str, mac))} supports bf16 on MPS (used for bf16 files)")
        else:
            reasons.append("bf16 on MPS needs macOS 14: bf16 files are cast to fp16")
        vae = "float32"
        reasons.append("MPS: VAE in fp32 (fp16 VAEs give black images on MPS)")
        env["PYTORCH_ENABLE_MPS_FALLBACK"] = "1"
    elif kind == "mlx":
        if device.metal:
            wd = cd = te = "float16"
            bf16 = tuple(device.macos_version or (0,)) >= (14,)
            vae = "float32"
            attention = vae_attention = "mlx_fast"
            reasons.append("MLX on Metal: fp16 weights/compute, fast attention, VAE in fp32")
        else:
            wd = cd = te = vae = "float32"
            attention = vae_attention = "mlx_fast"
            reasons.append("MLX on the CPU: fp32")
    else:
        wd = cd = vae = te = "float32"
        reasons.append("CPU: fp32 (half precision is slow or unsupported on CPUs)")

    if dtype_override:
        if dtype_override not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, not {dtype_override!r}")
        if dtype_override == "bfloat16" and not bf16 and kind != "cpu":
            reasons.append("bf16 requested but the device lacks it: fp16 instead")
            dtype_override = "float16"
        wd = cd = te = dtype_override
        reasons.append(f"weight/compute dtype forced to {dtype_override}")

    unified = device.unified_memory or kind in ("mps", "mlx")
    att_slice, vae_tile, vae_slice = _slicing(device.memory_bytes if kind != "cpu" else 0, unified, reasons)
    if att_slice and attention == "sdpa":
        attention = "sliced"
    return Policy(
        device=device,
        weight_dtype=wd,
        compute_dtype=cd,
        vae_dtype=vae,
        text_encoder_dtype=te,
        attention=attention,
        vae_attention=vae_attention,
        attention_slicing=att_slice,
        vae_tiling=vae_tile,
        vae_slicing=vae_slice,
        bf16=bf16,
        fp8_compute=fp8,
        env=env,
        hints=tuple(hints),
        reasons=tuple(reasons),
    )


def env_before_torch(archs: list[str]) -> dict[str, str]:
    """Environment variables to set before ``import torch`` for the given ROCm archs (read from KFD)."""
    env: dict[str, str] = {}
    for arch in archs:
        if arch in ROCM_AOTRITON_EXPERIMENTAL:
            env["TORCH_ROCM_AOTRITON_ENABLE_EXPERIMENTAL"] = "1"
    return env


def apply_env_before_torch() -> dict[str, str]:
    """Set :func:`env_before_torch`'s variables (never overriding the user's) if torch is not imported yet."""
    import os
    import sys

    if "torch" in sys.modules:
        return {}
    from .devices import probe_rocm_arch_without_torch

    applied = {}
    for k, v in env_before_torch(probe_rocm_arch_without_torch()).items():
        if k not in os.environ:
            os.environ[k] = v
            applied[k] = v
    return applied
